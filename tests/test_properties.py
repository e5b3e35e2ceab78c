"""Property-based tests (Hypothesis) of the library's maths (issue 17, item 4).

Covered: lambda-returns (Dreamer and DreamerV3), the Gaussian and categorical KL terms with
free nats / free bits, the Gaussian NLL of the ensemble loss, PILCO's GP moment matching
(against Monte Carlo), the CEM / iCEM / MPPI planners on convex quadratics, and DreamerV3's
symlog / symexp and two-hot encoding.

Every test is derandomised (a fixed example sequence per test function: CI-stable) and has no
deadline; ``database=None`` keeps Hypothesis from writing a ``.hypothesis`` folder. Random
tensors beyond a few dozen numbers come from a ``torch.Generator`` seeded by a drawn integer,
so each example is reproducible from its printed seed. Maths is checked in float64 so that
the tolerances (justified next to each assertion) sit far above rounding error and far below
any real discrepancy.
"""

from __future__ import annotations

import bisect
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from reverie.modules.ensemble import EnsembleDynamics
from reverie.modules.gp_world_model import GPWorldModel
from reverie.modules.moment_matching import se_basis_moments
from reverie.objectives.dreamer_math import gaussian_kl, kl_free_nats, lambda_returns
from reverie.objectives.dreamer_v3_math import (
    categorical_kl,
    kl_balance,
    lambda_returns_v3,
    symexp,
    symexp_bins,
    symlog,
    two_hot_decode,
    two_hot_encode,
)
from reverie.objectives.ensemble_loss import EnsembleNLLLoss, gaussian_nll
from reverie.planners import CEMPlanner, ICEMPlanner, MPPIPlanner

DT = torch.float64
LOG_2PI = math.log(2.0 * math.pi)


def props(max_examples: int) -> settings:
    """Settings of every property here: few, derandomised examples and no deadline.

    ``function_scoped_fixture`` is suppressed because conftest's autouse fixture seeds the
    global torch RNG once per test, not per example; nothing here uses the global RNG.
    """
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


seeds = st.integers(0, 2**31 - 1)


@st.composite
def tensors(draw, shape: tuple[int, ...], lo: float, hi: float,
            elements: st.SearchStrategy[float] | None = None) -> torch.Tensor:
    """A float64 tensor of ``shape`` with Hypothesis-drawn (shrinkable) entries."""
    n = math.prod(shape)
    values = draw(st.lists(elements if elements is not None else floats(lo, hi),
                           min_size=n, max_size=n))
    return torch.tensor(values, dtype=DT).reshape(shape)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=rtol)


# =============================================================================== lambda-returns
#
# Convention (both lambda_returns and lambda_returns_v3): index t of each (*B, H, 1) input is
# the transition t -> t+1: r = reward[t], c = continuation[t] (terminated = 1 - c),
# v_{t+1} = next_value[t], and R_t = r_t + gamma c_t ((1 - lambda_t) v_{t+1} + lambda_t R_{t+1})
# with R_H := v_H = next_value[H-1] (the bootstrap).
#
# Returns are at most |r| + |v| <= 20 per step over <= 9 terms, so float64 rounding is
# ~1e-13; every comparison below uses atol 1e-9 (any real discrepancy is O(1)).
RET_ATOL = 1e-9


@st.composite
def return_problems(draw):
    """``(reward, next_value, continuation, gamma, lambda)``; continuations mix exact 0/1 flags
    with fractional probabilities (DreamerV3's continue head)."""
    batch, horizon = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    shape = (batch, horizon, 1)
    reward = draw(tensors(shape, -10.0, 10.0))
    value = draw(tensors(shape, -10.0, 10.0))
    cont = draw(tensors(shape, 0.0, 1.0, st.sampled_from([0.0, 1.0]) | floats(0.0, 1.0)))
    gamma, lmbda = draw(floats(0.0, 1.0)), draw(floats(0.0, 1.0))
    return reward, value, cont, gamma, lmbda


def reference_recursion(r, v, c, gamma, lam):
    """Plain-Python backward recursion on lists of floats (``lam`` a list: per-step lambda)."""
    horizon = len(r)
    out = [0.0] * horizon
    following = v[-1]  # R_H = v_H
    for t in reversed(range(horizon)):
        out[t] = r[t] + gamma * c[t] * ((1.0 - lam[t]) * v[t] + lam[t] * following)
        following = out[t]
    return out


def n_step_return(r, v, c, gamma, t, n):
    """``G_t^(n) = sum_{k<n} (prod_{j<k} gamma c_{t+j}) r_{t+k} + (prod_{j<n} gamma c_{t+j})
    v_{t+n}`` (Python floats)."""
    total, disc = 0.0, 1.0
    for k in range(n):
        total += disc * r[t + k]
        disc *= gamma * c[t + k]
    return total + disc * v[t + n - 1]


def reference_mixture(r, v, c, gamma, lam):
    """The forward view: ``R_t = (1 - lam) sum_{n<N} lam^(n-1) G^(n) + lam^(N-1) G^(N)``,
    ``N = H - t`` (Sutton & Barto eq. 12.3, truncated at the horizon)."""
    horizon = len(r)
    out = []
    for t in range(horizon):
        steps = horizon - t
        mixed = sum((1.0 - lam) * lam ** (n - 1) * n_step_return(r, v, c, gamma, t, n)
                    for n in range(1, steps))
        out.append(mixed + lam ** (steps - 1) * n_step_return(r, v, c, gamma, t, steps))
    return out


def per_row(fn, reward, value, cont, *args) -> torch.Tensor:
    """Apply a list-based reference to every batch row of ``(B, H, 1)`` tensors."""
    rows = [fn(r.flatten().tolist(), v.flatten().tolist(), c.flatten().tolist(), *args)
            for r, v, c in zip(reward, value, cont, strict=True)]
    return torch.tensor(rows, dtype=DT)[..., None]


@props(100)
@given(return_problems(), st.booleans(), st.data())
def test_lambda_returns_match_reference_recursion(problem, per_step_lambda, data):
    reward, value, cont, gamma, lmbda = problem
    expected = per_row(reference_recursion, reward, value, cont, gamma,
                       [lmbda] * reward.shape[-2])
    close(lambda_returns_v3(reward, value, cont, gamma, lmbda), expected, RET_ATOL)
    close(lambda_returns(reward, value, 1.0 - cont, gamma, lmbda), expected, RET_ATOL)
    if per_step_lambda:  # a (*B, H, 1) lambda: each step its own
        lam = data.draw(tensors(tuple(reward.shape), 0.0, 1.0), label="lambda_t")
        rows = [reference_recursion(r.flatten().tolist(), v.flatten().tolist(),
                                    c.flatten().tolist(), gamma, lt.flatten().tolist())
                for r, v, c, lt in zip(reward, value, cont, lam, strict=True)]
        expected = torch.tensor(rows, dtype=DT)[..., None]
        close(lambda_returns(reward, value, 1.0 - cont, gamma, lam), expected, RET_ATOL)


@props(80)
@given(return_problems())
def test_lambda_returns_equal_the_n_step_mixture(problem):
    """The recursion equals the forward-view average of n-step returns (a different formula)."""
    reward, value, cont, gamma, lmbda = problem
    expected = per_row(reference_mixture, reward, value, cont, gamma, lmbda)
    close(lambda_returns_v3(reward, value, cont, gamma, lmbda), expected, RET_ATOL)


@props(80)
@given(return_problems())
def test_lambda_one_is_the_bootstrapped_monte_carlo_return(problem):
    reward, value, cont, gamma, _ = problem
    horizon = reward.shape[-2]
    expected = per_row(
        lambda r, v, c: [n_step_return(r, v, c, gamma, t, horizon - t) for t in range(horizon)],
        reward, value, cont)
    close(lambda_returns_v3(reward, value, cont, gamma, 1.0), expected, RET_ATOL)


@props(80)
@given(return_problems())
def test_lambda_zero_is_the_one_step_td_target(problem):
    reward, value, cont, gamma, _ = problem
    close(lambda_returns_v3(reward, value, cont, gamma, 0.0), reward + gamma * cont * value,
          RET_ATOL)
    close(lambda_returns(reward, value, 1.0 - cont, gamma, 0.0), reward + gamma * cont * value,
          RET_ATOL)


@props(80)
@given(return_problems(), st.data(), floats(-3.0, 3.0), floats(-3.0, 3.0))
def test_lambda_returns_are_linear_in_rewards_and_values(problem, data, a, b):
    reward, value, cont, gamma, lmbda = problem
    reward2 = data.draw(tensors(tuple(reward.shape), -10.0, 10.0), label="reward2")
    value2 = data.draw(tensors(tuple(reward.shape), -10.0, 10.0), label="value2")

    def ret(r, v):
        return lambda_returns_v3(r, v, cont, gamma, lmbda)

    # superposition of rewards alone: the second reward stream bootstraps from value 0
    close(ret(reward + reward2, value), ret(reward, value) + ret(reward2, torch.zeros_like(value)),
          RET_ATOL)
    # full linearity in (reward, value); magnitudes grow by |a| + |b| <= 6
    close(ret(a * reward + b * reward2, a * value + b * value2),
          a * ret(reward, value) + b * ret(reward2, value2), 6 * RET_ATOL)


@props(100)
@given(return_problems(), st.data())
def test_zero_continuation_cuts_the_return(problem, data):
    """``c_t = 0``: ``R_t = r_t`` exactly, and nothing after step t (rewards of later steps,
    values from ``v_{t+1}`` on) changes ``R_0 .. R_t``, bit for bit."""
    reward, value, cont, gamma, lmbda = problem
    horizon = reward.shape[-2]
    t = data.draw(st.integers(0, horizon - 1), label="t")
    cont = cont.clone()
    cont[:, t] = 0.0
    other_reward, other_value = reward.clone(), value.clone()
    other_reward[:, t + 1:] = data.draw(tensors((reward.shape[0], horizon - t - 1, 1), -10, 10))
    other_value[:, t:] = data.draw(tensors((reward.shape[0], horizon - t, 1), -10, 10))
    for fn, flags in ((lambda_returns_v3, cont), (lambda_returns, 1.0 - cont)):
        base = fn(reward, value, flags, gamma, lmbda)
        other = fn(other_reward, other_value, flags, gamma, lmbda)
        assert torch.equal(base[:, t], reward[:, t])
        assert torch.equal(base[:, : t + 1], other[:, : t + 1])


# ============================================================================== KL divergences
#
# Reference: torch.distributions.kl_divergence. KL values reach ~1e5 (std ratios up to e^6),
# so comparisons are relative (rtol 1e-9, float64 rounding ~1e-15) plus atol 1e-12 near 0.


@st.composite
def gaussian_pairs(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    mean_q, mean_p = draw(tensors(shape, -5.0, 5.0)), draw(tensors(shape, -5.0, 5.0))
    std_q = draw(tensors(shape, -3.0, 3.0)).exp()
    std_p = draw(tensors(shape, -3.0, 3.0)).exp()
    return mean_q, std_q, mean_p, std_p


@props(100)
@given(gaussian_pairs())
def test_gaussian_kl_matches_torch_and_is_nonnegative(pair):
    mean_q, std_q, mean_p, std_p = pair
    kl = gaussian_kl(mean_q, std_q, mean_p, std_p)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean_q, std_q), torch.distributions.Normal(mean_p, std_p)
    ).sum(-1)
    close(kl, reference, atol=1e-12, rtol=1e-9)
    assert (kl >= -1e-12).all()  # KL >= 0; -1e-12 allows rounding of O(1) terms
    assert gaussian_kl(mean_q, std_q, mean_q, std_q).abs().max() <= 1e-12  # KL(q || q) = 0


@st.composite
def categorical_pairs(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 6)))
    return draw(tensors(shape, -4.0, 4.0)), draw(tensors(shape, -4.0, 4.0))


@props(100)
@given(categorical_pairs(), floats(-10.0, 10.0))
def test_categorical_kl_matches_torch_and_is_nonnegative(pair, shift):
    logits_q, logits_p = pair
    kl = categorical_kl(logits_q, logits_p)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=logits_q),
        torch.distributions.Categorical(logits=logits_p),
    ).sum(-1)
    close(kl, reference, atol=1e-12, rtol=1e-9)
    assert (kl >= -1e-12).all()
    # identical distributions, also with unnormalised logits shifted by a constant (softmax
    # invariance; the shift costs ~|shift| * 1e-16 of rounding)
    assert categorical_kl(logits_q, logits_q + shift).abs().max() <= 1e-12


def analytic_kl_grads(logits_q, logits_p):
    """Gradients of ``sum_s KL(q_s || p_s)``: ``d/d logits_p = p - q`` and
    ``d/d logits_q = q (log q - log p - KL_s)``."""
    log_q, log_p = logits_q.log_softmax(-1), logits_p.log_softmax(-1)
    q, p = log_q.exp(), log_p.exp()
    kl_s = (q * (log_q - log_p)).sum(-1, keepdim=True)
    return q * (log_q - log_p - kl_s), p - q


@props(100)
@given(categorical_pairs(), floats(0.0, 3.0))
def test_kl_balance_free_bits(pair, free_nats):
    """Forward: both terms equal ``max(KL, free_nats)``. Gradients: ``dyn`` reaches only the
    prior and ``rep`` only the posterior, with the analytic KL gradient where unclamped and
    exactly zero where clamped."""
    logits_q = pair[0].clone().requires_grad_(True)
    logits_p = pair[1].clone().requires_grad_(True)
    dyn, rep = kl_balance(logits_q, logits_p, free_nats=free_nats)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=pair[0]),
        torch.distributions.Categorical(logits=pair[1])).sum(-1)
    assert torch.equal(dyn, rep)
    assert (dyn >= free_nats).all()  # clamp_min: never below the floor
    close(dyn.detach(), kl.clamp_min(free_nats), atol=1e-12, rtol=1e-9)

    grad_q, grad_p = analytic_kl_grads(pair[0], pair[1])
    clamped = (kl < free_nats - 1e-9)[:, None, None]  # ties (|KL - floor| < 1e-9) unchecked
    free = (kl > free_nats + 1e-9)[:, None, None]
    dyn_q, dyn_p = torch.autograd.grad(dyn.sum(), (logits_q, logits_p), allow_unused=True,
                                       materialize_grads=True)
    rep_q, rep_p = torch.autograd.grad(rep.sum(), (logits_q, logits_p), allow_unused=True,
                                       materialize_grads=True)
    assert torch.equal(dyn_q, torch.zeros_like(dyn_q))  # stop-gradient on the posterior
    assert torch.equal(rep_p, torch.zeros_like(rep_p))  # stop-gradient on the prior
    for got, want in ((dyn_p, grad_p), (rep_q, grad_q)):
        assert torch.equal(got * clamped, torch.zeros_like(got))  # below the floor: no gradient
        close(got * free, want * free, atol=1e-12)


@props(150)
@given(st.lists(floats(0.0, 10.0), min_size=1, max_size=8), floats(0.0, 5.0), st.booleans())
def test_kl_free_nats(values, free_nats, delayed):
    kl = torch.tensor(values, dtype=DT, requires_grad=True)
    out = kl_free_nats(kl, free_nats, delayed_clamp=delayed)
    n, mean = len(values), sum(values) / len(values)
    # the mean of n copies of the floor can round below it by ~n ulps: 1e-12 relative slack
    assert out.item() >= free_nats * (1 - 1e-12)
    want = max(mean, free_nats) if delayed else sum(max(v, free_nats) for v in values) / n
    assert out.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    # clamping each step first never gives less than clamping the mean (Jensen, max convex)
    eager = kl_free_nats(kl.detach(), free_nats, delayed_clamp=False).item()
    lazy = kl_free_nats(kl.detach(), free_nats, delayed_clamp=True).item()
    assert eager >= lazy - 1e-12
    (grad,) = torch.autograd.grad(out, kl)
    for v, g in zip(values, grad.tolist(), strict=True):
        level = mean if delayed else v  # what the clamp compares with the floor
        if level < free_nats - 1e-9:
            assert g == 0.0  # clamped: no gradient at all
        elif level > free_nats + 1e-9:
            assert g == pytest.approx(1.0 / n, rel=1e-12)


# =============================================================================== Gaussian NLL
#
# gaussian_nll documents that it drops the 0.5 log(2 pi) per element:
#     gaussian_nll == mean(-Normal(mean, exp(logvar / 2)).log_prob(target)) - 0.5 log(2 pi).
# Terms reach 0.5 * 20^2 * e^6 ~ 8e4, so the comparison is relative (float64: rtol 1e-10).


@props(100)
@given(st.integers(1, 4), st.integers(1, 3), st.sampled_from([None, -1, 0, (0, 1)]), st.data())
def test_gaussian_nll_is_normal_log_prob_without_the_constant(batch, dim_out, dim, data):
    shape = (batch, dim_out)
    mean = data.draw(tensors(shape, -10.0, 10.0), label="mean")
    logvar = data.draw(tensors(shape, -6.0, 6.0), label="logvar")
    target = data.draw(tensors(shape, -10.0, 10.0), label="target")
    nll = -torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(target)
    expected = (nll.mean() if dim is None else nll.mean(dim)) - 0.5 * LOG_2PI
    close(gaussian_nll(mean, logvar, target, dim=dim), expected, atol=1e-10, rtol=1e-10)


@props(25)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), seeds)
def test_ensemble_loss_nll_sums_member_normal_nlls(obs_dim, action_dim, members, batch, seed):
    """``loss_nll = sum_m mean_{b,d} [-log N(y | mu_m, sigma_m^2)] - M * 0.5 log(2 pi)`` with
    ``y = (s' - s - mu_y) / sigma_y`` (normalised deltas), on a float64 ensemble."""
    g = torch.Generator().manual_seed(seed)
    dyn = EnsembleDynamics(obs_dim, action_dim, num_members=members, hidden=8, depth=2,
                           generator=g).double()
    obs = torch.randn(members, batch, obs_dim, generator=g, dtype=DT)
    action = torch.randn(members, batch, action_dim, generator=g, dtype=DT)
    next_obs = obs + 0.3 * torch.randn(members, batch, obs_dim, generator=g, dtype=DT)
    dyn.fit_output_stats(obs, next_obs)
    td = TensorDict({"observation": obs, "action": action,
                     "next": {"observation": next_obs}}, [members, batch])
    out = EnsembleNLLLoss(dyn)(td)
    with torch.no_grad():
        mean, logvar = dyn.predict_members(obs, action)
        target = (next_obs - obs - dyn.target_mean) / dyn.target_std
        nll = -torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(target)
    expected = nll.mean((-2, -1)).sum() - members * 0.5 * LOG_2PI
    close(out["loss_nll"].detach(), expected, atol=1e-10, rtol=1e-10)


# ============================================================================ moment matching
#
# PILCO's moment matching of a GP with SE kernels for an input x ~ N(m, S) is exact, so it
# must agree with Monte Carlo: draw x_1..x_N from N(m, S), push each through the GP posterior
# mean f(x) (a plain reference implementation below, not the code under test) and add the
# posterior variance v(x):
#     E[f(x)]                  ~ mean_i f(x_i)
#     cov[f_a, f_b] + d_ab E[v_a] ~ mean_i (f_a(x_i) - fbar_a)(f_b(x_i) - fbar_b) + d_ab v_a(x_i)
#     cov[x, f_a]              ~ mean_i (x_i - m)(f_a(x_i) - fbar_a)
# Each right-hand side is a sample mean of some h_i, whose standard error is std(h) / sqrt(N)
# (estimated from the same samples). The tolerance is Z = 5 standard errors: for a correct
# implementation an entry fails with probability ~6e-7 (the h_i are bounded, N = 5000 makes
# the CLT accurate), while a wrong term (a mis-weighted determinant or posterior variance, a
# mis-scaled cross-covariance, a missing noise term) is off by many standard errors. The absolute slack covers float64
# cancellation in E[f^2] - E[f]^2, of relative size ~1e-16 times the bound
# (alpha^2 sum_i |beta_i|)^2 on f^2.
N_MC, Z = 5000, 5.0


def se_kernel(x, centers, lengthscales, signal_var):
    """Reference ``k_a(x, c_i)``: ``x (N, d)``, ``centers (n, d)`` -> ``(E, N, n)``."""
    diff = (x[None, :, None, :] - centers[None, None]) / lengthscales[:, None, None, :]
    return signal_var[:, None, None] * torch.exp(-0.5 * diff.square().sum(-1))


def reference_gp(train_x, train_y, lengthscales, signal_var, noise_var):
    """``f(x) -> (posterior mean (E, N), latent posterior variance (E, N))`` of independent
    zero-mean GPs, by a plain linear solve."""
    n = train_x.shape[0]
    gram = se_kernel(train_x, train_x, lengthscales, signal_var)
    gram = gram + noise_var[:, None, None] * torch.eye(n, dtype=DT)
    inv = torch.linalg.inv(gram)
    beta = torch.linalg.solve(gram, train_y[..., None])[..., 0]  # (E, n)

    def posterior(x):
        k = se_kernel(x, train_x, lengthscales, signal_var)  # (E, N, n)
        return (k * beta[:, None]).sum(-1), signal_var[:, None] - torch.einsum(
            "ani,aij,anj->an", k, inv, k)

    return posterior, beta, inv


@st.composite
def gp_problems(draw, input_dim, outputs):
    """Random GP (hyper-parameters, few training points) and a narrow Gaussian input."""
    d, n_out = draw(input_dim), draw(outputs)
    n = draw(st.integers(2, 6))
    input_std = draw(floats(0.05, 0.5))
    g = torch.Generator().manual_seed(draw(seeds))
    train_x = torch.randn(n, d, generator=g, dtype=DT)
    train_y = torch.randn(n_out, n, generator=g, dtype=DT)
    lengthscales = 0.5 + 1.5 * torch.rand(n_out, d, generator=g, dtype=DT)
    signal_var = 0.5 + torch.rand(n_out, generator=g, dtype=DT)
    noise_var = 0.01 + 0.09 * torch.rand(n_out, generator=g, dtype=DT)
    mean = 0.5 * torch.randn(d, generator=g, dtype=DT)  # near the data
    a = torch.randn(d, d, generator=g, dtype=DT)
    cov = input_std**2 * (a @ a.T / d + 0.1 * torch.eye(d, dtype=DT))  # correlated, SPD
    return train_x, train_y, lengthscales, signal_var, noise_var, mean, cov, g


def assert_mc_mean(predicted: torch.Tensor, samples: torch.Tensor, atol: float) -> None:
    """``predicted (k,)`` vs sample means of ``samples (N, k)`` within Z standard errors."""
    estimate = samples.mean(0)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    excess = (predicted - estimate).abs() - (Z * stderr + atol)
    assert (excess <= 0).all(), (
        f"predicted {predicted.tolist()} vs Monte Carlo {estimate.tolist()} "
        f"(standard errors {stderr.tolist()})")


def mc_moments_check(mu, sigma, cio, x, mean, f, v, atol):
    """``f, v (E, N)`` at samples ``x (N, d)``: check ``mu (E,)``, ``sigma (E, E)`` (with the
    expected posterior variance on its diagonal) and ``cio = cov[x, f] (d, E)``."""
    n_out = f.shape[0]
    centred = (f - f.mean(1, keepdim=True)).T  # (N, E)
    assert_mc_mean(mu, f.T, atol)
    second = centred[:, :, None] * centred[:, None, :] + torch.diag_embed(v.T)  # (N, E, E)
    assert_mc_mean(sigma.reshape(-1), second.reshape(-1, n_out * n_out), atol)
    cross = (x - mean)[:, :, None] * centred[:, None, :]  # (N, d, E)
    assert_mc_mean(cio.reshape(-1), cross.reshape(x.shape[0], -1), atol)


@props(50)
@given(gp_problems(st.integers(1, 3), st.integers(1, 2)))
def test_gp_moment_matching_agrees_with_monte_carlo(problem):
    train_x, train_y, lengthscales, signal_var, noise_var, mean, cov, g = problem
    posterior, beta, inv = reference_gp(train_x, train_y, lengthscales, signal_var, noise_var)
    mu, sigma, cio = se_basis_moments(mean, cov, train_x, lengthscales, signal_var, beta, inv)
    x = mean + torch.randn(N_MC, mean.shape[0], generator=g, dtype=DT) @ torch.linalg.cholesky(
        cov).T
    f, v = posterior(x)
    bound = signal_var * beta.abs().sum(-1)  # |f_a| <= alpha_a^2 sum_i |beta_ai|
    mc_moments_check(mu, sigma, cio, x, mean, f, v, atol=1e-12 * (1 + bound.max().item()) ** 2)


@props(30)
@given(gp_problems(st.integers(2, 3), st.just(1)), st.data())
def test_gp_world_model_propagate_agrees_with_monte_carlo(problem, data):
    """``GPWorldModel.propagate`` (PILCO eqs. 10-23): the next state ``x + Delta([x, u])`` for
    a joint Gaussian ``[x, u]`` (obs_dim D, action_dim 1, with a cross-covariance) has the
    Monte-Carlo mean and covariance, the GP noise included."""
    train_x, _, _, _, _, mean, cov, g = problem
    d_in = train_x.shape[1]
    obs_dim = d_in - 1
    n = train_x.shape[0]
    delta = torch.randn(n, obs_dim, generator=g, dtype=DT)
    lengthscales = 0.5 + 1.5 * torch.rand(obs_dim, d_in, generator=g, dtype=DT)
    signal_var = 0.5 + torch.rand(obs_dim, generator=g, dtype=DT)
    noise_var = 0.01 + 0.09 * torch.rand(obs_dim, generator=g, dtype=DT)
    model = GPWorldModel(obs_dim, 1)
    dataset = TensorDict({"observation": train_x[:, :obs_dim], "action": train_x[:, obs_dim:],
                          "next": {"observation": train_x[:, :obs_dim] + delta}}, [n])
    model.set_data(dataset, lengthscales=lengthscales, signal_var=signal_var,
                   noise_var=noise_var)
    D = obs_dim
    next_mean, next_cov = model.propagate(mean[:D], cov[:D, :D], mean[D:], cov[D:, D:],
                                          cov[:D, D:])
    posterior, beta, _ = reference_gp(train_x, delta.T, lengthscales, signal_var, noise_var)
    x = mean + torch.randn(N_MC, d_in, generator=g, dtype=DT) @ torch.linalg.cholesky(cov).T
    f, v = posterior(x)
    nxt = x[:, :D] + f.T  # (N, D)
    centred = nxt - nxt.mean(0)
    second = centred[:, :, None] * centred[:, None, :] + torch.diag_embed(v.T + noise_var)
    atol = 1e-12 * (1 + (signal_var * beta.abs().sum(-1)).max().item() + 3.0) ** 2
    assert_mc_mean(next_mean, nxt, atol)
    assert_mc_mean(next_cov.reshape(-1), second.reshape(N_MC, -1), atol)


# =================================================================================== planners
#
# Objective (*E, N, H, A) -> (*E, N): a convex quadratic -sum_t d_t^T Q d_t in actions
# normalised by the box width, d_t = (a_t - a*_t) / width, with Q's eigenvalues in [0.5, 2]
# (so a single temperature suits every box). With a* inside the box the plan must come close
# to a*; with a separable (diagonal) Q and some a* outside it, the constrained optimum is the
# projection clip(a*), i.e. the nearest bound. The planners are stochastic (noise from a
# seeded generator); the tolerances are about 3x the worst error seen over 500 random
# problems per planner and case while this test was written (PLAN_TOL).

# most decision variables H * A per env (H <= 3, A <= 2): MPPI with an adaptive std and a low
# temperature keeps ~1 effective sample in more dimensions, its std collapses in the first
# iteration and it stalls (worst error 0.25-0.5 widths at H = A = 2: a limit of the method)
MAX_DIMS = {"cem": 6, "icem": 6, "mppi": 2}


def make_planner(kind: str, low, high, horizon: int, **overrides):
    if kind == "cem":
        options = dict(num_candidates=200, num_elites=20, iterations=12)
        return CEMPlanner(low, high, horizon, **{**options, **overrides})
    if kind == "icem":
        options = dict(num_candidates=200, num_elites=20, iterations=12)
        return ICEMPlanner(low, high, horizon, **{**options, **overrides})
    options = dict(num_candidates=300, iterations=15, temperature=0.01, adapt_std=True)
    return MPPIPlanner(low, high, horizon, **{**options, **overrides})


@st.composite
def box_problems(draw, kind: str, outside: bool):
    envs, horizon = draw(st.integers(1, 3)), draw(st.integers(1, min(3, MAX_DIMS[kind])))
    action_dim = draw(st.integers(1, min(2, MAX_DIMS[kind] // horizon)))
    return box_problem(outside, envs, horizon, action_dim, draw(seeds))


def box_problem(outside: bool, envs: int, horizon: int, action_dim: int, seed: int):
    """Bounds ``(A,)``, optimum ``(E, H, A)``, ``Q (A, A)`` and the planner's generator."""
    g = torch.Generator().manual_seed(seed)
    shape = (envs, horizon, action_dim)
    low = -2.0 + 1.5 * torch.rand(action_dim, generator=g, dtype=DT)
    width = 0.5 + 2.5 * torch.rand(action_dim, generator=g, dtype=DT)
    high = low + width
    optimum = low + (0.1 + 0.8 * torch.rand(shape, generator=g, dtype=DT)) * width
    eigen = 0.5 + 1.5 * torch.rand(action_dim, generator=g, dtype=DT)
    if outside:  # some coordinates 0.1-1 widths beyond a random side; Q diagonal
        beyond = (0.1 + 0.9 * torch.rand(shape, generator=g, dtype=DT)) * width
        side = torch.rand(shape, generator=g) < 0.5
        moved = torch.where(side, low - beyond, high + beyond)
        optimum = torch.where(torch.rand(shape, generator=g) < 0.6, moved, optimum)
        quad = torch.diag(eigen)
    else:
        rotation, _ = torch.linalg.qr(torch.randn(action_dim, action_dim, generator=g,
                                                  dtype=DT))
        quad = rotation @ torch.diag(eigen) @ rotation.T
    return low, high, optimum, quad, g


def quadratic(optimum, quad, low, high):
    def objective(actions):  # (E, N, H, A) -> (E, N)
        d = (actions - optimum[:, None]) / (high - low)
        return -torch.einsum("enha,ab,enhb->en", d, quad, d)

    return objective


PLAN_TOL = {  # in box widths, (optimum inside, outside); worst seen over 500 problems:
    "cem": (0.002, 0.03),  # 0.00056, 0.0102 (the mean; min_std and momentum leave a residue)
    "icem": (0.02, 0.15),  # 0.0055, 0.0507 (the best sample, not a converged mean)
    "mppi": (0.04, 0.05),  # 0.0136, 0.0170
}


@pytest.mark.parametrize("kind", ["cem", "icem", "mppi"])
@pytest.mark.parametrize("outside", [False, True], ids=["inside", "outside"])
@props(25)
@given(data=st.data())
def test_planners_find_the_box_constrained_optimum(kind, outside, data):
    low, high, optimum, quad, g = data.draw(box_problems(kind, outside), label="problem")
    planner = make_planner(kind, low, high, optimum.shape[-2])
    plan = planner.plan(quadratic(optimum, quad, low, high), (optimum.shape[0],), generator=g)
    assert ((plan >= low) & (plan <= high)).all()
    target = torch.maximum(torch.minimum(optimum, high), low)  # == optimum when inside
    error = ((plan - target).abs() / (high - low)).max().item()
    assert error <= PLAN_TOL[kind][outside], f"plan {plan.tolist()} vs optimum {target.tolist()}"


@pytest.mark.parametrize("kind", ["cem", "icem", "icem-mean", "mppi", "mppi-fixed"])
@props(20)
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), floats(0.05, 20.0),
       st.integers(1, 3), seeds)
def test_planners_never_leave_the_bounds(kind, envs, horizon, action_dim, spread, rounds, seed):
    """Every candidate the objective sees, and every plan, lies in ``[low, high]`` -- with a
    sampling spread up to 20x the box, some zero-width dimensions, an objective pulling to a
    corner and repeated warm-started plans."""
    g = torch.Generator().manual_seed(seed)
    low = -2.0 + 1.5 * torch.rand(action_dim, generator=g, dtype=DT)
    width = 0.1 + 2.0 * torch.rand(action_dim, generator=g, dtype=DT)
    degenerate = torch.rand(action_dim, generator=g) < 0.2  # low == high is a valid box
    high = low + torch.where(degenerate, torch.zeros_like(width), width)
    slope = torch.randn(envs, 1, 1, action_dim, generator=g, dtype=DT)
    width = width.max().item()
    base = kind.split("-")[0]
    overrides = {"cem": dict(init_std=spread * width, iterations=3),
                 "icem": dict(init_std=spread * width, iterations=3,
                              return_mean=kind == "icem-mean"),
                 "mppi": dict(noise_std=spread * width, iterations=3,
                              adapt_std=kind == "mppi")}[base]
    planner = make_planner(base, low, high, horizon, **overrides)
    seen = []

    def objective(actions):
        seen.append(bool(((actions >= low) & (actions <= high)).all()))
        return (actions * slope).sum((-2, -1)) - 1e3 * (actions - high).square().sum((-2, -1))

    for _ in range(rounds):
        plan = planner.plan(objective, (envs,), generator=g)
        assert plan.shape == (envs, horizon, action_dim)
        assert ((plan >= low) & (plan <= high)).all()
    assert seen and all(seen)


# ========================================================================= symlog and two-hot
#
# symexp(symlog(x)): log1p and expm1 are accurate to ~1 ulp; symlog's absolute error
# eps * |symlog x| <= 691 eps (|x| <= 1e300) becomes a relative error of the same size after
# expm1, so rtol 1e-12 (> 691 * 2.2e-16 = 1.5e-13) bounds rounding with room to spare.


@props(300)
@given(floats(-1e300, 1e300))
def test_symexp_inverts_symlog(x):
    t = torch.tensor([x], dtype=DT)
    close(symexp(symlog(t)), t, atol=0.0, rtol=1e-12)
    assert torch.equal(symlog(-t), -symlog(t))  # odd, exactly (sign * log1p(|x|))
    assert torch.equal(symexp(-t.clamp(-700, 700)), -symexp(t.clamp(-700, 700)))
    assert (symlog(t).abs() <= t.abs() * (1 + 1e-15)).all()  # log1p(y) <= y (1 ulp slack)


@props(200)
@given(floats(-700.0, 700.0))
def test_symlog_inverts_symexp(y):
    t = torch.tensor([y], dtype=DT)
    close(symlog(symexp(t)), t, atol=1e-15, rtol=1e-13)


@props(150)
@given(st.lists(floats(-1e300, 1e300), min_size=2, max_size=20))
def test_symlog_is_monotone(values):
    xs = torch.tensor(sorted(values), dtype=DT)
    ys = symlog(xs)
    # non-decreasing (distinct huge inputs may round to one output), and sign-preserving
    assert (ys[1:] >= ys[:-1]).all()
    assert torch.equal(torch.sign(ys), torch.sign(xs))


@st.composite
def bin_grids(draw):
    """``symexp_bins(K, low, high)`` in float64: symmetric ranges (DreamerV3) or not."""
    num_bins = draw(st.integers(2, 64) | st.just(255))
    low = draw(floats(-20.0, -0.5))
    high = -low if draw(st.booleans()) else draw(floats(low + 0.5, 20.0))
    return symexp_bins(num_bins, low, high, dtype=DT), low, high


@st.composite
def values_in_range(draw, bins, low, high):
    """A value inside ``[bins[0], bins[-1]]``: exactly a bin, or symexp of a uniform point."""
    if draw(st.booleans()):
        return bins[draw(st.integers(0, bins.shape[0] - 1))].item()
    x = symexp(torch.tensor(draw(floats(low, high)), dtype=DT))
    return x.clamp(bins[0], bins[-1]).item()


@props(250)
@given(bin_grids(), st.data())
def test_two_hot_round_trip_inside_the_range(grid, data):
    bins, low, high = grid
    assert (bins[1:] > bins[:-1]).all()  # strictly increasing bins
    if low == -high:  # documented: exactly antisymmetric, so uniform logits decode to 0
        assert torch.equal(bins, -bins.flip(0))
    x = data.draw(values_in_range(bins, low, high), label="x")
    weights = two_hot_encode(torch.tensor([x], dtype=DT), bins)[0]
    assert (weights >= 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    nonzero = weights.nonzero().flatten().tolist()
    assert 1 <= len(nonzero) <= 2 and nonzero[-1] - nonzero[0] <= 1  # adjacent entries
    # the bins bracketing x (computed here with bisect, not torch.searchsorted): weights
    # outside them must be zero, and the encoding's mean / the decoded value must be x, up to
    # a few ulps of the bracketing bins (|B_lo| + |B_hi|)
    upper = min(max(bisect.bisect_left(bins.tolist(), x), 1), bins.shape[0] - 1)
    assert set(nonzero) <= {upper - 1, upper}
    scale = bins[upper - 1].abs().item() + bins[upper].abs().item()
    assert (weights * bins).sum().item() == pytest.approx(x, rel=0, abs=1e-12 * scale)
    decoded = two_hot_decode(weights.log(), bins).item()
    assert decoded == pytest.approx(x, rel=0, abs=1e-12 * scale)


@props(100)
@given(bin_grids(), floats(1e-6, 1e6), st.booleans())
def test_two_hot_clips_values_outside_the_range(grid, gap, above):
    """Beyond the outermost bins all the weight lands on the end bin (and decodes to it)."""
    bins = grid[0]
    end = bins[-1] if above else bins[0]
    # at least 1e-6 (1 + |end|) past the end: far more than an ulp, so strictly outside
    x = end.item() + (1.0 if above else -1.0) * gap * (1.0 + end.abs().item())
    weights = two_hot_encode(torch.tensor([x], dtype=DT), bins)[0]
    expected = torch.zeros_like(weights)
    expected[-1 if above else 0] = 1.0
    assert torch.equal(weights, expected)
    decoded = two_hot_decode(weights.log(), bins).item()
    assert decoded == pytest.approx(end.item(), rel=1e-12)


@props(100)
@given(st.integers(2, 64) | st.just(255), floats(0.5, 20.0), st.data())
def test_two_hot_symmetric_logits_decode_to_zero(num_bins, high, data):
    """Antisymmetric bins with mirror-symmetric logits (e.g. a fresh, uniform head) decode
    to exactly 0."""
    bins = symexp_bins(num_bins, -high, high, dtype=DT)
    half = data.draw(tensors(((num_bins + 1) // 2,), -5.0, 5.0), label="logits")
    logits = torch.cat([half, half[: num_bins // 2].flip(0)])
    assert torch.equal(logits, logits.flip(0))
    assert two_hot_decode(logits, bins).item() == 0.0
