"""Exact moment matching (PILCO) against Monte Carlo, hand computations and finite differences.

Every Monte-Carlo comparison uses ``N = 200_000`` samples and an independent reference
implementation of the function being integrated (plain kernels written out here, never
the code under test). The tolerance is ``Z = 5`` Monte-Carlo standard errors, estimated
from the same samples: for a mean ``E[g]`` the standard error is ``std(g) / sqrt(N)``; for a
covariance ``cov[g, h]`` it is ``std((g - E g)(h - E h)) / sqrt(N)``. With fixed seeds the
tests are deterministic; at 5 standard errors a correct implementation fails with
probability below ``1e-6`` per entry, and a wrong one (a missing determinant, a transposed
cross-covariance, a dropped variance term) is off by many standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from reverie.modules.moment_matching import (
    expected_saturating_cost,
    gp_point_posterior,
    joint_input_belief,
    next_state_belief,
    psd_cholesky,
    se_basis_moments,
    sin_squash_moments,
)

DT = torch.float64
N_MC = 200_000
Z = 5.0


# ----------------------------------------------------------------------------- helpers
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cov(d: int, g: torch.Generator, scale: float = 0.5) -> torch.Tensor:
    """A random full (correlated) SPD covariance."""
    a = scale * torch.randn(d, d, generator=g, dtype=DT)
    return a @ a.T + 0.05 * torch.eye(d, dtype=DT)


def random_basis(d: int, E: int, n: int, g: torch.Generator):
    centers = torch.randn(n, d, generator=g, dtype=DT)
    lengthscales = 0.7 + 1.3 * torch.rand(E, d, generator=g, dtype=DT)  # ARD, in [0.7, 2]
    signal_var = 0.5 + torch.rand(E, generator=g, dtype=DT)
    beta = torch.randn(E, n, generator=g, dtype=DT)
    return centers, lengthscales, signal_var, beta


def kernel(x: torch.Tensor, centers: torch.Tensor, lengthscales: torch.Tensor, signal_var: torch.Tensor):
    """Reference SE kernel ``k_a(x, c_i)``: ``x (N, d)`` -> ``(E, N, n)``."""
    out = []
    for a in range(lengthscales.shape[0]):
        diff = (x[:, None, :] - centers[None]) / lengthscales[a]  # (N, n, d)
        out.append(signal_var[a] * torch.exp(-0.5 * diff.square().sum(-1)))
    return torch.stack(out)


def sample_gaussian(mean: torch.Tensor, cov: torch.Tensor, n: int, g: torch.Generator):
    chol = torch.linalg.cholesky(cov)
    return mean + torch.randn(n, mean.shape[-1], generator=g, dtype=DT) @ chol.T


def mc_mean(samples: torch.Tensor):
    """Mean of ``(N, k)`` samples and its standard error."""
    return samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])


def mc_cov(a: torch.Tensor, b: torch.Tensor):
    """``cov[a, b]`` of ``(N, p)``, ``(N, q)`` samples -> ``(p, q)`` and its standard error."""
    n = a.shape[0]
    ca, cb = a - a.mean(0), b - b.mean(0)
    prod = ca[:, :, None] * cb[:, None, :]  # (N, p, q)
    return prod.sum(0) / (n - 1), prod.std(0) / math.sqrt(n)


def assert_within(actual, expected, se, z=Z, what=""):
    err = (actual - expected).abs()
    bound = z * se + 1e-12
    assert bool((err <= bound).all()), (
        f"{what}: |analytic - MC| exceeds {z} standard errors\nanalytic={actual}\nMC={expected}\n"
        f"err/se={err / (se + 1e-300)}"
    )


def exact_gp(d: int, E: int, n: int, g: torch.Generator):
    """A real GP posterior conditioned on random data with noise: returns its parts."""
    centers, lengthscales, signal_var, _ = random_basis(d, E, n, g)
    noise_var = 0.01 + 0.05 * torch.rand(E, generator=g, dtype=DT)
    y = torch.sin(centers @ torch.randn(d, E, generator=g, dtype=DT)).T  # (E, n)
    y = y + noise_var.sqrt()[:, None] * torch.randn(E, n, generator=g, dtype=DT)
    gram = kernel(centers, centers, lengthscales, signal_var)  # (E, n, n)
    gram = gram + noise_var[:, None, None] * torch.eye(n, dtype=DT)
    inv_gram = torch.linalg.inv(gram)
    beta = (inv_gram @ y[..., None])[..., 0]
    return centers, lengthscales, signal_var, beta, inv_gram, noise_var


def gp_reference(x, centers, lengthscales, signal_var, beta, inv_gram):
    """Reference posterior mean ``(N, E)`` and latent variance ``(N, E)`` (no noise)."""
    k = kernel(x, centers, lengthscales, signal_var)  # (E, N, n)
    mean = (k * beta[:, None, :]).sum(-1).T
    var = signal_var[:, None] - torch.einsum("ani,aij,anj->an", k, inv_gram, k)
    return mean, var.T


# ------------------------------------------------------------- se_basis_moments vs MC
@pytest.mark.parametrize("d,E,n,seed", [(3, 2, 20, 0), (2, 3, 25, 1)])
def test_se_basis_moments_match_monte_carlo(d, E, n, seed):
    g = gen(seed)
    centers, lengthscales, signal_var, beta = random_basis(d, E, n, g)
    m = 0.5 * torch.randn(d, generator=g, dtype=DT)
    S = random_cov(d, g)
    mu, sigma, cio = se_basis_moments(m, S, centers, lengthscales, signal_var, beta)
    assert mu.shape == (E,) and sigma.shape == (E, E) and cio.shape == (d, E)

    x = sample_gaussian(m, S, N_MC, g)
    f = (kernel(x, centers, lengthscales, signal_var) * beta[:, None, :]).sum(-1).T  # (N, E)
    mean_mc, mean_se = mc_mean(f)
    cov_mc, cov_se = mc_cov(f, f)
    cio_mc, cio_se = mc_cov(x, f)
    assert_within(mu, mean_mc, mean_se, what="mean")
    assert_within(sigma, cov_mc, cov_se, what="covariance")
    assert_within(cio, cio_mc, cio_se, what="cov[x, f]")
    # the outputs are genuinely correlated and the comparison is informative
    assert sigma[0, 1].abs() > 10 * cov_se[0, 1]
    assert torch.allclose(sigma, sigma.T, atol=0)
    assert bool((torch.linalg.eigvalsh(sigma) > -1e-10).all())


def test_se_basis_moments_with_inv_gram_law_of_total_variance():
    """A GP: cov[m(x)] + diag E[v(x)] (law of total variance), mean E[m(x)], cov[x, m(x)]."""
    g = gen(2)
    d, E, n = 3, 2, 25
    centers, lengthscales, signal_var, beta, inv_gram, _ = exact_gp(d, E, n, g)
    m = 0.3 * torch.randn(d, generator=g, dtype=DT)
    S = random_cov(d, g)
    mu, sigma, cio = se_basis_moments(m, S, centers, lengthscales, signal_var, beta, inv_gram)

    x = sample_gaussian(m, S, N_MC, g)
    post_mean, post_var = gp_reference(x, centers, lengthscales, signal_var, beta, inv_gram)
    assert bool((post_var > 0).all())
    mean_mc, mean_se = mc_mean(post_mean)
    cov_mc, cov_se = mc_cov(post_mean, post_mean)
    ev_mc, ev_se = mc_mean(post_var)
    cio_mc, cio_se = mc_cov(x, post_mean)
    total = cov_mc + torch.diag(ev_mc)
    total_se = (cov_se.square() + torch.diag(ev_se).square()).sqrt()
    assert_within(mu, mean_mc, mean_se, what="mean")
    assert_within(sigma, total, total_se, what="covariance (law of total variance)")
    assert_within(cio, cio_mc, cio_se, what="cov[x, m(x)]")
    # the expected-variance term matters: leaving it out would fail by many standard errors
    assert bool(((sigma - cov_mc).diagonal() > 20 * total_se.diagonal()).all())


def test_se_basis_moments_zero_cov_is_point_posterior():
    g = gen(3)
    d, E, n = 3, 3, 15
    centers, lengthscales, signal_var, beta, inv_gram, _ = exact_gp(d, E, n, g)
    m = torch.randn(5, d, generator=g, dtype=DT)
    S = torch.zeros(5, d, d, dtype=DT)
    mu, sigma, cio = se_basis_moments(m, S, centers, lengthscales, signal_var, beta, inv_gram)
    mean_ref, var_ref = gp_reference(m, centers, lengthscales, signal_var, beta, inv_gram)
    torch.testing.assert_close(mu, mean_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma, torch.diag_embed(var_ref), rtol=0, atol=1e-10)
    assert bool((cio == 0).all())
    # and gp_point_posterior agrees with the reference (with and without noise)
    noise = torch.tensor([0.1, 0.2, 0.3], dtype=DT)
    pm, pv = gp_point_posterior(m, centers, lengthscales, signal_var, beta, inv_gram, noise)
    torch.testing.assert_close(pm, mean_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(pv, var_ref + noise, rtol=0, atol=1e-12)
    pm, pv = gp_point_posterior(m, centers, lengthscales, signal_var, beta)
    assert bool((pv == 0).all())
    # without inv_gram (an RBF network): zero variance at a point
    _, sigma0, _ = se_basis_moments(m, S, centers, lengthscales, signal_var, beta)
    torch.testing.assert_close(sigma0, torch.zeros_like(sigma0), rtol=0, atol=1e-12)


def test_se_basis_moments_batched_leading_dims_match_elementwise():
    g = gen(4)
    d, E, n = 2, 2, 10
    centers, lengthscales, signal_var, beta, inv_gram, _ = exact_gp(d, E, n, g)
    m = torch.randn(3, 4, d, generator=g, dtype=DT)
    S = torch.stack([random_cov(d, g) for _ in range(12)]).reshape(3, 4, d, d)
    mu, sigma, cio = se_basis_moments(m, S, centers, lengthscales, signal_var, beta, inv_gram)
    assert mu.shape == (3, 4, E) and sigma.shape == (3, 4, E, E) and cio.shape == (3, 4, d, E)
    for i in range(3):
        for j in range(4):
            one = se_basis_moments(m[i, j], S[i, j], centers, lengthscales, signal_var, beta, inv_gram)
            for batched, single in zip((mu, sigma, cio), one, strict=True):
                torch.testing.assert_close(batched[i, j], single, rtol=1e-12, atol=1e-13)


def test_se_basis_moments_docstring_value_1d():
    """``E[exp(-x^2 / (2 l^2))]`` for ``x ~ N(m, s)`` is ``(1 + s/l^2)^(-1/2) exp(-m^2 / (2 (l^2 + s)))``."""
    m, s, ell = 0.7, 0.4, 1.3
    mu, sigma, cio = se_basis_moments(
        torch.tensor([m], dtype=DT), torch.tensor([[s]], dtype=DT), torch.zeros(1, 1, dtype=DT),
        torch.tensor([[ell]], dtype=DT), torch.ones(1, dtype=DT), torch.ones(1, 1, dtype=DT))
    expected = (1 + s / ell**2) ** -0.5 * math.exp(-(m**2) / (2 * (ell**2 + s)))
    assert mu.item() == pytest.approx(expected, rel=1e-12)
    # E[k^2] is the same integral with l^2 / 2
    second = (1 + 2 * s / ell**2) ** -0.5 * math.exp(-(m**2) / (2 * (ell**2 / 2 + s)))
    assert sigma.item() == pytest.approx(second - expected**2, rel=1e-10)
    # cov[x, k(x)] = s (s + l^2)^{-1} (0 - m) E[k]  (Stein's lemma)
    assert cio.item() == pytest.approx(s / (s + ell**2) * (-m) * expected, rel=1e-12)


# --------------------------------------------------------------- sin squash vs MC
def test_sin_squash_moments_match_monte_carlo():
    g = gen(5)
    K = 2
    m = torch.tensor([0.4, -1.1], dtype=DT)
    S = torch.tensor([[0.6, 0.3], [0.3, 0.9]], dtype=DT)
    amp = torch.tensor([2.0, 0.5], dtype=DT)
    y_mean, y_cov, J = sin_squash_moments(m, S, amp)
    assert y_mean.shape == (K,) and y_cov.shape == (K, K) and J.shape == (K, K)

    u = sample_gaussian(m, S, N_MC, g)
    y = amp * torch.sin(u)
    mean_mc, mean_se = mc_mean(y)
    cov_mc, cov_se = mc_cov(y, y)
    cuy_mc, cuy_se = mc_cov(u, y)
    assert_within(y_mean, mean_mc, mean_se, what="mean")
    assert_within(y_cov, cov_mc, cov_se, what="covariance")
    assert_within(S @ J, cuy_mc, cuy_se, what="cov[u, y] = S J")
    # a jointly Gaussian z: cov[z, y] = cov[z, u] J (Stein's lemma)
    Bz = torch.tensor([[1.0, -0.5], [0.3, 2.0], [0.0, 1.0]], dtype=DT)
    z = u @ Bz.T + 0.3 * torch.randn(N_MC, 3, generator=g, dtype=DT)
    czy_mc, czy_se = mc_cov(z, y)
    assert_within((Bz @ S) @ J, czy_mc, czy_se, what="cov[z, y]")


def test_sin_squash_moments_exact_values():
    # docstring: 4 Var[sin u] for u ~ N(0, 1) = 2 (1 - e^-2)
    y_mean, y_cov, J = sin_squash_moments(torch.zeros(1, dtype=DT), torch.ones(1, 1, dtype=DT), 2.0)
    assert y_mean.item() == 0.0
    assert y_cov.item() == pytest.approx(2 * (1 - math.exp(-2)), rel=1e-12)
    assert J.item() == pytest.approx(2 * math.exp(-0.5), rel=1e-12)
    # a point: exactly a sin(m), no variance
    m = torch.tensor([[0.3, -2.0], [1.0, 5.0]], dtype=DT)
    y_mean, y_cov, _ = sin_squash_moments(m, torch.zeros(2, 2, 2, dtype=DT), 3.0)
    torch.testing.assert_close(y_mean, 3 * torch.sin(m), rtol=0, atol=1e-15)
    torch.testing.assert_close(y_cov, torch.zeros_like(y_cov), rtol=0, atol=1e-14)


# ----------------------------------------------------------- expected saturating cost
def saturating_cost_reference(x, target, weights):
    diff = x - target
    return 1 - torch.exp(-0.5 * ((diff @ weights) * diff).sum(-1))


@pytest.mark.parametrize("rank", [3, 1])
def test_expected_saturating_cost_matches_monte_carlo(rank):
    g = gen(6 + rank)
    D = 3
    target = torch.randn(D, generator=g, dtype=DT)
    m = target + 0.4 * torch.randn(D, generator=g, dtype=DT)  # mid-range cost: informative
    S = random_cov(D, g, scale=0.6)
    A = torch.randn(rank, D, generator=g, dtype=DT)
    W = 0.5 * A.T @ A  # PSD; rank 1 is rank-deficient
    assert torch.linalg.matrix_rank(W).item() == rank
    value = expected_saturating_cost(m, S, target, W)
    assert value.shape == ()
    c = saturating_cost_reference(sample_gaussian(m, S, N_MC, g), target, W)
    mean_mc, se = mc_mean(c[:, None])
    assert_within(value.reshape(1), mean_mc, se, what=f"E[cost], rank {rank}")
    assert 0.2 < value.item() < 0.8


def test_expected_saturating_cost_1d_closed_form_and_batch():
    """``E[1 - exp(-w x^2 / 2)]``, ``x ~ N(m, s)``: ``1 - (1 + s w)^(-1/2) exp(-w m^2 / (2 (1 + s w)))``."""
    m = torch.tensor([[0.0], [0.5], [-2.0], [1.0]], dtype=DT)
    s = torch.tensor([0.0, 0.3, 1.5, 4.0], dtype=DT)
    w = 2.5
    value = expected_saturating_cost(m, s[:, None, None], torch.zeros(1, dtype=DT),
                                     torch.tensor([[w]], dtype=DT))
    assert value.shape == (4,)
    mm = m[:, 0]
    expected = 1 - (1 + s * w) ** -0.5 * torch.exp(-w * mm**2 / (2 * (1 + s * w)))
    torch.testing.assert_close(value, expected, rtol=1e-13, atol=1e-15)
    assert value[0].item() == 0.0  # a point on the target costs nothing
    # target shift: the cost depends on m - t only
    shifted = expected_saturating_cost(m + 3.0, s[:, None, None], torch.full((1,), 3.0, dtype=DT),
                                       torch.tensor([[w]], dtype=DT))
    torch.testing.assert_close(shifted, value, rtol=1e-12, atol=1e-14)


def test_expected_saturating_cost_batched_matches_elementwise():
    g = gen(9)
    D = 3
    m = torch.randn(2, 3, D, generator=g, dtype=DT)
    S = torch.stack([random_cov(D, g) for _ in range(6)]).reshape(2, 3, D, D)
    A = torch.randn(2, D, generator=g, dtype=DT)
    t = torch.randn(D, generator=g, dtype=DT)
    value = expected_saturating_cost(m, S, t, A.T @ A)
    assert value.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            one = expected_saturating_cost(m[i, j], S[i, j], t, A.T @ A)
            torch.testing.assert_close(value[i, j], one, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------- belief glue
def test_joint_input_and_next_state_belief():
    g = gen(10)
    D, F = 3, 2
    full = random_cov(D + F, g)
    full = 0.5 * (full + full.T)  # exactly symmetric (A A^T can differ by an ulp across the diagonal)
    mean = torch.randn(D + F, generator=g, dtype=DT)
    jm, jc = joint_input_belief(mean[:D], full[:D, :D], mean[D:], full[D:, D:], full[:D, D:])
    torch.testing.assert_close(jm, mean, rtol=0, atol=0)
    torch.testing.assert_close(jc, full, rtol=0, atol=0)
    # x' = x + delta: cov[x'] = S + S_d + C + C^T with C = cov[x, delta]
    d_mean = torch.randn(D, generator=g, dtype=DT)
    d_var = random_cov(D, g)
    c = torch.randn(D + F, D, generator=g, dtype=DT)
    nm, nv = next_state_belief(mean[:D], full[:D, :D], d_mean, d_var, c)
    torch.testing.assert_close(nm, mean[:D] + d_mean, rtol=0, atol=1e-15)
    expected = full[:D, :D] + d_var + c[:D] + c[:D].T
    torch.testing.assert_close(nv, expected, rtol=0, atol=1e-14)


def test_psd_cholesky_jitter_and_error():
    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=DT)
    chol = psd_cholesky(singular)
    torch.testing.assert_close(chol @ chol.T, singular, rtol=0, atol=1e-6)
    spd = random_cov(3, gen(11))
    torch.testing.assert_close(psd_cholesky(spd), torch.linalg.cholesky(spd), rtol=0, atol=0)
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        psd_cholesky(-torch.eye(2, dtype=DT))


# ------------------------------------------------------------------ gradients
def _sym(c):
    return 0.5 * (c + c.transpose(-1, -2))


@pytest.mark.parametrize("recompute,max_elements", [(False, 2**21), (True, 2**21), (True, 1)])
def test_se_basis_moments_gradcheck(recompute, max_elements):
    """``max_elements=1``: one output pair per (checkpointed) block."""
    g = gen(12)
    d, E, n = 2, 2, 6
    centers, lengthscales, signal_var, beta, inv_gram, _ = exact_gp(d, E, n, g)
    m = (0.3 * torch.randn(d, generator=g, dtype=DT)).requires_grad_()
    S = random_cov(d, g).requires_grad_()

    def fn(mean, cov):
        return se_basis_moments(mean, _sym(cov), centers, lengthscales, signal_var, beta, inv_gram,
                                recompute=recompute, max_elements=max_elements)

    assert torch.autograd.gradcheck(fn, (m, S), eps=1e-6, atol=1e-6, rtol=1e-5)

    def fn_rbf(mean, cov):  # no inv_gram (the RBF controller's case), batched
        return se_basis_moments(mean, _sym(cov), centers, lengthscales, signal_var, beta,
                                recompute=recompute, max_elements=max_elements)

    mb = (0.3 * torch.randn(2, d, generator=g, dtype=DT)).requires_grad_()
    Sb = torch.stack([random_cov(d, g) for _ in range(2)]).requires_grad_()
    assert torch.autograd.gradcheck(fn_rbf, (mb, Sb), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_se_basis_moments_recompute_and_blocks_equal_stored():
    """Values and gradients are the same stored or recomputed, in one block or pair by pair."""
    g = gen(13)
    d, E, n = 3, 3, 12
    centers, lengthscales, signal_var, beta, inv_gram, _ = exact_gp(d, E, n, g)
    m = torch.randn(4, d, generator=g, dtype=DT)
    S = torch.stack([random_cov(d, g) for _ in range(4)])
    w_mu, w_sigma, w_cio = (torch.randn(4, E, generator=g, dtype=DT),
                            torch.randn(4, E, E, generator=g, dtype=DT),
                            torch.randn(4, d, E, generator=g, dtype=DT))
    results = {}
    for recompute, max_elements in ((False, 2**21), (True, 2**21), (False, 1), (True, 1), (None, 1)):
        inputs = [t.clone().requires_grad_() for t in (m, S, lengthscales, beta, signal_var)]
        mean, cov, ls, b, sv = inputs
        out = se_basis_moments(mean, cov, centers, ls, sv, b, inv_gram, recompute=recompute,
                               max_elements=max_elements)
        mu, sigma, cio = out
        loss = (w_mu * mu).sum() + (w_sigma * sigma).sum() + (w_cio * cio).sum()
        results[recompute, max_elements] = ([o.detach() for o in out], torch.autograd.grad(loss, inputs))
    ref_out, ref_grads = results[False, 2**21]
    assert all(gr.abs().sum() > 0 for gr in ref_grads)
    for key, (out, grads) in results.items():
        for got, want in zip([*out, *grads], [*ref_out, *ref_grads], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=lambda m, k=key: f"{k}: {m}")


def test_expected_saturating_cost_gradcheck():
    g = gen(14)
    D = 3
    m = torch.randn(2, D, generator=g, dtype=DT).requires_grad_()
    S = torch.stack([random_cov(D, g) for _ in range(2)]).requires_grad_()
    t = torch.randn(D, generator=g, dtype=DT).requires_grad_()
    A = torch.randn(2, D, generator=g, dtype=DT)
    W = A.T @ A  # rank-deficient

    def fn(mean, cov, target):
        return expected_saturating_cost(mean, _sym(cov), target, W)

    assert torch.autograd.gradcheck(fn, (m, S, t), eps=1e-6, atol=1e-7, rtol=1e-5)
