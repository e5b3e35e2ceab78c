"""PILCO modules: GPWorldModel, RBFController, ExponentialQuadraticCost, the belief envs and
the cart-pole swing-up task.

Monte-Carlo comparisons use ``N = 200_000`` samples, an independent reference (the GP
posterior and the RBF network written out here from the training data and the
hyper-parameters) and a tolerance of ``Z = 5`` standard errors estimated from the samples
(``std(g) / sqrt(N)`` for a mean, ``std((g - E g)(h - E h)) / sqrt(N)`` for a covariance).
All maths in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.func import functional_call
from torchrl.envs import GymEnv, TransformedEnv
from torchrl.envs.utils import check_env_specs

import reverie.envs  # noqa: F401  (registers reverie/CartPoleSwingUp-v0)
from reverie.envs import ImaginedEnv, MeanActionSelector
from reverie.envs.cartpole_swingup import (
    PARAMS,
    CartPoleSwingUp,
    cartpole_derivatives,
    swingup_cost_matrix,
)
from reverie.modules.gp_world_model import GPWorldModel
from reverie.modules.moment_matching import expected_saturating_cost
from reverie.modules.rbf_controller import RBFController
from reverie.objectives.saturating_cost import ExponentialQuadraticCost

DT = torch.float64
N_MC = 200_000
Z = 5.0
CARTPOLE = "reverie/CartPoleSwingUp-v0"
TARGET = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=DT)


# ----------------------------------------------------------------------------- helpers
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cov(d: int, g: torch.Generator, scale: float = 0.4) -> torch.Tensor:
    a = scale * torch.randn(d, d, generator=g, dtype=DT)
    return a @ a.T + 0.02 * torch.eye(d, dtype=DT)


def sample_gaussian(mean, cov, n, g):
    return mean + torch.randn(n, mean.shape[-1], generator=g, dtype=DT) @ torch.linalg.cholesky(cov).T


def mc_mean(samples):
    return samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])


def mc_cov(a, b):
    n = a.shape[0]
    prod = (a - a.mean(0))[:, :, None] * (b - b.mean(0))[:, None, :]
    return prod.sum(0) / (n - 1), prod.std(0) / math.sqrt(n)


def assert_within(actual, expected, se, what=""):
    err = (actual - expected).abs()
    assert bool((err <= Z * se + 1e-12).all()), (
        f"{what}: analytic vs MC beyond {Z} standard errors\nanalytic={actual}\nMC={expected}\n"
        f"err/se={err / (se + 1e-300)}"
    )


def se_kernel(x, centers, lengthscales, signal_var):
    """``x (N, d)``, ``centers (n, d)``, ``lengthscales (E, d)`` -> ``(E, N, n)``."""
    diff = (x[None, :, None, :] - centers[None, None]) / lengthscales[:, None, None, :]
    return signal_var[:, None, None] * torch.exp(-0.5 * diff.square().sum(-1))


class ReferenceGP:
    """Independent GP posterior from the data and the hyper-parameters (Rasmussen & Williams 2.2)."""

    def __init__(self, inputs, targets, lengthscales, signal_var, noise_var):
        self.x, self.ls, self.sv, self.nv = inputs, lengthscales, signal_var, noise_var
        gram = se_kernel(inputs, inputs, lengthscales, signal_var)
        gram = gram + noise_var[:, None, None] * torch.eye(inputs.shape[0], dtype=DT)
        self.gram_inv = torch.linalg.inv(gram)  # (E, n, n)
        self.alpha = torch.linalg.solve(gram, targets[..., None])[..., 0]  # (E, n)

    def __call__(self, z, chunk=50_000):
        """Posterior mean ``(N, E)`` and variance with noise ``(N, E)`` at inputs ``z (N, d)``."""
        means, variances = [], []
        for part in z.split(chunk):
            k = se_kernel(part, self.x, self.ls, self.sv)  # (E, N, n)
            means.append((k * self.alpha[:, None]).sum(-1).T)
            quad = torch.einsum("ani,aij,anj->an", k, self.gram_inv, k)
            variances.append((self.sv[:, None] - quad + self.nv[:, None]).T)
        return torch.cat(means), torch.cat(variances)


def smooth_dataset(D, F, n, g, noise=0.02):
    obs = torch.randn(n, D, generator=g, dtype=DT)
    act = torch.randn(n, F, generator=g, dtype=DT)
    mix = torch.randn(D + F, D, generator=g, dtype=DT)
    delta = 0.5 * torch.sin(torch.cat([obs, act], -1) @ mix) + noise * torch.randn(n, D, generator=g, dtype=DT)
    return TensorDict({"observation": obs, "action": act, ("next", "observation"): obs + delta}, [n])


def conditioned_gp(D, F, n=25, seed=0):
    """A GPWorldModel with ``set_data`` (fixed hyper-parameters) and its reference GP."""
    g = gen(seed)
    data = smooth_dataset(D, F, n, g)
    ls = 0.8 + 1.2 * torch.rand(D, D + F, generator=g, dtype=DT)
    sv = 0.3 + 0.5 * torch.rand(D, generator=g, dtype=DT)
    nv = torch.full((D,), 4e-3, dtype=DT)
    model = GPWorldModel(D, F)
    model.set_data(data, lengthscales=ls, signal_var=sv, noise_var=nv)
    inputs = torch.cat([data["observation"], data["action"]], -1)
    targets = (data["next", "observation"] - data["observation"]).T
    return model, ReferenceGP(inputs, targets, ls, sv, nv), data


def belief_td(mean, var, act_mean, act_var, cross):
    lead = mean.shape[:-1]
    return TensorDict({
        ("observation", "mean"): mean, ("observation", "var"): var,
        ("action", "mean"): act_mean, ("action", "var"): act_var,
        ("action", "cross_covariance"): cross,
    }, lead)


def joint_blocks(joint, D):
    """Split a joint ``[x, u]`` covariance into ``cov[x]``, ``cov[u]`` and ``cov[x, u]``."""
    return joint[..., :D, :D], joint[..., D:, D:], joint[..., :D, D:]


def rbf_network(x, ctrl):
    """Reference RBF network ``u~(x) (N, F)`` of an RBFController."""
    ones = torch.ones(ctrl.output_dim, dtype=DT)
    k = se_kernel(x, ctrl.centers.detach(), ctrl.log_lengthscales.detach().exp(), ones)
    return (k * ctrl.weights.detach()[:, None, :]).sum(-1).T


def belief_policy(controller):
    return TensorDictModule(
        controller,
        in_keys=[("observation", "mean"), ("observation", "var")],
        out_keys=[("action", "mean"), ("action", "var"), ("action", "cross_covariance")],
    )


def raises_key_error(fn, *arg, names):
    """``fn(*arg)`` raises a KeyError whose message names ``names`` (a key's repr)."""
    with pytest.raises(KeyError) as info:
        fn(*arg)
    message = info.value.args[0]
    assert names in message, message
    return message


def swingup_cost(**kwargs):
    return ExponentialQuadraticCost(TARGET, torch.as_tensor(swingup_cost_matrix(), dtype=DT), **kwargs)


# ------------------------------------------------------------- GPWorldModel.propagate vs MC
@pytest.mark.parametrize("D,F,seed", [(2, 1, 0), (2, 2, 1)])
def test_gp_propagate_matches_monte_carlo(D, F, seed):
    """x ~ N(m, S), u = K x + b + eps (jointly Gaussian, exact cross-covariance S K^T),
    Delta ~ N(GP mean, GP variance incl. noise), next = x + Delta."""
    model, ref, _ = conditioned_gp(D, F, seed=seed)
    g = gen(100 + seed)
    m_x = 0.3 * torch.randn(D, generator=g, dtype=DT)
    S_x = random_cov(D, g)
    K = 0.7 * torch.randn(F, D, generator=g, dtype=DT)
    b = 0.2 * torch.randn(F, generator=g, dtype=DT)
    S_eps = random_cov(F, g, scale=0.3)
    m_u, S_u, cross = K @ m_x + b, K @ S_x @ K.T + S_eps, S_x @ K.T
    mean, cov = model.propagate(m_x, S_x, m_u, S_u, cross)
    assert mean.shape == (D,) and cov.shape == (D, D)

    x = sample_gaussian(m_x, S_x, N_MC, g)
    u = x @ K.T + b + sample_gaussian(torch.zeros(F, dtype=DT), S_eps, N_MC, g)
    d_mean, d_var = ref(torch.cat([x, u], -1))
    nxt = x + d_mean + d_var.sqrt() * torch.randn(N_MC, D, generator=g, dtype=DT)
    mean_mc, mean_se = mc_mean(nxt)
    cov_mc, cov_se = mc_cov(nxt, nxt)
    assert_within(mean, mean_mc, mean_se, "next-state mean")
    assert_within(cov, cov_mc, cov_se, "next-state covariance")
    # the action matters (cross-covariance and action variance are used, not dropped):
    # ignoring them changes the answer by many standard errors
    _, wrong_cov = model.propagate(m_x, S_x, m_u, torch.zeros(F, F, dtype=DT), torch.zeros(D, F, dtype=DT))
    assert ((wrong_cov - cov_mc).abs() / cov_se).max() > 20


def test_gp_predict_matches_reference_posterior():
    model, ref, _ = conditioned_gp(3, 2, seed=2)
    g = gen(3)
    obs, act = torch.randn(7, 3, generator=g, dtype=DT), torch.randn(7, 2, generator=g, dtype=DT)
    mean, var = model.predict(obs, act)
    r_mean, r_var = ref(torch.cat([obs, act], -1))
    torch.testing.assert_close(mean, obs + r_mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(var, r_var, rtol=0, atol=1e-10)


def point_td(obs, act):
    return TensorDict({("observation", "mean"): obs, ("action", "mean"): act}, obs.shape[:-1])


@pytest.mark.parametrize("F", [1, 2])
def test_gp_zero_covariance_belief_is_point_posterior(F):
    D = 3
    model, _, _ = conditioned_gp(D, F, seed=4)
    g = gen(5)
    obs, act = torch.randn(6, D, generator=g, dtype=DT), torch.randn(6, F, generator=g, dtype=DT)
    belief = belief_td(obs, torch.zeros(6, D, D, dtype=DT), act, torch.zeros(6, F, F, dtype=DT),
                       torch.zeros(6, D, F, dtype=DT))
    out = model(belief)
    point = model(point_td(obs, act))  # no ("observation", "var"): the point path
    p_mean, p_var = model.predict(obs, act)
    torch.testing.assert_close(point["next", "observation", "mean"], p_mean, rtol=0, atol=0)
    torch.testing.assert_close(point["next", "observation", "var"], torch.diag_embed(p_var), rtol=0, atol=0)
    torch.testing.assert_close(out["next", "observation", "mean"], p_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["next", "observation", "var"], torch.diag_embed(p_var), rtol=0, atol=1e-10)
    # missing action variance / cross-covariance mean a deterministic action
    partial = belief.exclude(("action", "var"), ("action", "cross_covariance"))
    out2 = model(partial)
    torch.testing.assert_close(out2["next", "observation", "mean"], p_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(out2["next", "observation", "var"], torch.diag_embed(p_var), rtol=0, atol=1e-10)


def test_gp_forward_plain_tensor_inputs():
    """Documented: the point path reads a plain ``"observation"`` / ``"action"`` tensor, and the
    belief path a plain ``"action"`` tensor (a deterministic action)."""
    D, F = 3, 1
    model, _, _ = conditioned_gp(D, F, seed=4)
    g = gen(5)
    obs, act = torch.randn(6, D, generator=g, dtype=DT), torch.randn(6, F, generator=g, dtype=DT)
    p_mean, p_var = model.predict(obs, act)
    point = model(TensorDict({"observation": obs, "action": act}, [6]))
    torch.testing.assert_close(point["next", "observation", "mean"], p_mean, rtol=0, atol=0)
    torch.testing.assert_close(point["next", "observation", "var"], torch.diag_embed(p_var), rtol=0, atol=0)
    belief = TensorDict({("observation", "mean"): obs, ("observation", "var"): torch.zeros(6, D, D, dtype=DT),
                         "action": act}, [6])
    out = model(belief)
    torch.testing.assert_close(out["next", "observation", "mean"], p_mean, rtol=0, atol=1e-12)


def test_gp_forward_batched_leading_dims_match_elementwise():
    D, F = 2, 2
    model, _, _ = conditioned_gp(D, F, seed=6)
    g = gen(7)
    lead = (3, 4)
    m = torch.randn(*lead, D, generator=g, dtype=DT)
    a = torch.randn(*lead, F, generator=g, dtype=DT)
    S, Sa, C = joint_blocks(torch.stack([random_cov(D + F, g) for _ in range(12)]).reshape(*lead, D + F, D + F), D)
    out = model(belief_td(m, S, a, Sa, C))
    mean, var = out["next", "observation", "mean"], out["next", "observation", "var"]
    assert mean.shape == (*lead, D) and var.shape == (*lead, D, D)
    point = model(point_td(m, a))
    pmean, pvar = point["next", "observation", "mean"], point["next", "observation", "var"]
    assert pmean.shape == (*lead, D) and pvar.shape == (*lead, D, D)
    for i in range(lead[0]):
        for j in range(lead[1]):
            one_m, one_v = model.propagate(m[i, j], S[i, j], a[i, j], Sa[i, j], C[i, j])
            torch.testing.assert_close(mean[i, j], one_m, rtol=1e-12, atol=1e-13)
            torch.testing.assert_close(var[i, j], one_v, rtol=1e-12, atol=1e-13)
            p_m, p_v = model.predict(m[i, j], a[i, j])
            torch.testing.assert_close(pmean[i, j], p_m, rtol=1e-12, atol=1e-13)
            torch.testing.assert_close(pvar[i, j], torch.diag(p_v), rtol=1e-12, atol=1e-13)


def test_gp_forward_errors():
    model = GPWorldModel(2, 1)
    obs, act = torch.zeros(3, 2, dtype=DT), torch.zeros(3, 1, dtype=DT)
    with pytest.raises(RuntimeError, match="fit"):
        model.predict(obs, act)
    model, _, _ = conditioned_gp(2, 1)
    raises_key_error(model, TensorDict({("observation", "mean"): obs}, [3]), names="('action', 'mean')")
    with pytest.raises(ValueError, match="full covariance"):
        model(TensorDict({("observation", "mean"): obs, ("observation", "var"): torch.zeros(3, 2, dtype=DT),
                          ("action", "mean"): act}, [3]))


# --------------------------------------------------------------- state_dict round trip
def _assert_same_predictions(a: GPWorldModel, b: GPWorldModel, D, F):
    g = gen(8)
    obs, act = torch.randn(4, D, generator=g, dtype=DT), torch.randn(4, F, generator=g, dtype=DT)
    S, Sa, C = joint_blocks(torch.stack([random_cov(D + F, g) for _ in range(4)]), D)
    for td in (point_td(obs, act), belief_td(obs, S, act, Sa, C)):
        out_a, out_b = a(td.clone()), b(td.clone())
        for key in (("next", "observation", "mean"), ("next", "observation", "var")):
            assert torch.equal(out_a[key], out_b[key]), key


def test_gp_state_dict_round_trip_set_data():
    D, F = 2, 2
    model, _, _ = conditioned_gp(D, F, n=17)
    fresh = GPWorldModel(D, F)
    assert not fresh.is_fitted
    fresh.load_state_dict(model.state_dict())
    assert fresh.is_fitted and fresh.train_inputs.shape == (17, D + F)
    _assert_same_predictions(model, fresh, D, F)
    # and again into a model fitted on a different amount of data (buffers change size)
    other, _, _ = conditioned_gp(D, F, n=9, seed=3)
    other.load_state_dict(model.state_dict())
    _assert_same_predictions(model, other, D, F)


@pytest.fixture(scope="module")
def fitted_sine_gp():
    """``Delta = 0.1 sin(x) + 0.05 u`` on 60 points, fitted by marginal likelihood."""
    pytest.importorskip("gpytorch")
    pytest.importorskip("botorch")
    g = gen(20)

    def delta(x, u):
        return 0.1 * torch.sin(x) + 0.05 * u

    x = 3.0 * (2 * torch.rand(60, 1, generator=g, dtype=DT) - 1)
    u = 2 * torch.rand(60, 1, generator=g, dtype=DT) - 1
    data = TensorDict({"observation": x, "action": u,
                       ("next", "observation"): x + delta(x, u) + 1e-3 * torch.randn(60, 1, generator=g, dtype=DT)},
                      [60])
    model = GPWorldModel(1, 1, max_snr=None)  # the maximum-likelihood noise, unbounded
    info = model.fit(data)
    return model, info, delta


def test_gp_fit_predicts_held_out_points(fitted_sine_gp):
    model, info, delta = fitted_sine_gp
    assert info["n"] == 60 and math.isfinite(info["mll"])
    g = gen(21)
    x = 2.5 * (2 * torch.rand(200, 1, generator=g, dtype=DT) - 1)
    u = 0.9 * (2 * torch.rand(200, 1, generator=g, dtype=DT) - 1)
    mean, var = model.predict(x, u)
    err = (mean - (x + delta(x, u))).abs()
    assert err.max() < 0.01, err.max()  # the signal is ~0.15; noise 1e-3
    assert bool((var > 0).all()) and var.max() < 1e-3
    assert model.noise_var.item() < 1e-4


def test_gp_fit_reports_marginal_likelihood(fitted_sine_gp):
    """``fit`` returns the marginal log-likelihood per point of the fitted hyper-parameters:
    ``(-1/2 y^T K^-1 y - 1/2 log|K| - n/2 log 2 pi) / n`` with ``K = K_f + s^2 I``."""
    model, info, _ = fitted_sine_gp
    n = model.train_inputs.shape[0]
    quad = (model.train_targets * model.beta).sum(-1)  # y^T K^-1 y
    logdet = -torch.logdet(model.inv_gram)
    expected = ((-0.5 * quad - 0.5 * logdet - 0.5 * n * math.log(2 * math.pi)) / n).mean()
    assert info["mll"] == pytest.approx(expected.item(), abs=1e-4)


def test_gp_fit_state_dict_round_trip(fitted_sine_gp):
    model, _, _ = fitted_sine_gp
    fresh = GPWorldModel(1, 1)
    fresh.load_state_dict(model.state_dict())
    _assert_same_predictions(model, fresh, 1, 1)


def test_gp_fit_bounds_the_signal_to_noise_ratio():
    """A noise-free target drives the ML noise to its floor; ``max_snr`` bounds alpha / s."""
    pytest.importorskip("gpytorch")
    g = gen(23)
    x = 2 * torch.rand(40, 1, generator=g, dtype=DT) - 1
    data = TensorDict({"observation": x, "action": torch.zeros(40, 1, dtype=DT),
                       ("next", "observation"): x + 0.3 * torch.sin(3 * x)}, [40])
    free = GPWorldModel(1, 1, max_snr=None)
    free.fit(data)
    bounded = GPWorldModel(1, 1, max_snr=50.0)
    bounded.fit(data)
    assert (free.signal_var / free.noise_var).item() > 50.0**2  # unbounded: near-singular Gram
    torch.testing.assert_close(bounded.noise_var, bounded.signal_var / 50.0**2)
    assert bounded.beta.abs().max() < free.beta.abs().max()


def test_gp_fit_and_set_data_errors():
    model = GPWorldModel(2, 1)
    data = smooth_dataset(2, 1, 10, gen(22))
    hyper = dict(lengthscales=torch.ones(2, 3, dtype=DT), signal_var=torch.ones(2, dtype=DT),
                 noise_var=torch.full((2,), 0.01, dtype=DT))
    for method in (lambda d: model.fit(d), lambda d: model.set_data(d, **hyper)):
        raises_key_error(method, data.exclude("action"), names="at 'action'")
        raises_key_error(method, data.exclude("next"), names="at ('next', 'observation')")
        with pytest.raises(ValueError, match="last dim"):
            method(TensorDict({**data.exclude("action").to_dict(),
                               "action": torch.zeros(10, 2, dtype=DT)}, [10]))
        with pytest.raises(ValueError, match="last dim"):
            method(TensorDict({"observation": torch.zeros(10, 3, dtype=DT), "action": data["action"],
                               ("next", "observation"): torch.zeros(10, 3, dtype=DT)}, [10]))
    assert not model.is_fitted


# ------------------------------------------------------------------- RBFController
def random_controller(D, F, max_action, n_basis=8, seed=30):
    torch.manual_seed(seed)
    ctrl = RBFController(D, F, max_action, n_basis=n_basis).double()
    with torch.no_grad():
        ctrl.weights.normal_(0.0, 1.0)
        ctrl.log_lengthscales.uniform_(-0.2, 0.5)
    return ctrl


def test_rbf_controller_without_squash_matches_monte_carlo():
    D, F = 3, 2
    ctrl = random_controller(D, F, None)
    assert ctrl.max_action is None
    g = gen(31)
    m = 0.3 * torch.randn(D, generator=g, dtype=DT)
    S = random_cov(D, g, scale=0.5)
    with torch.no_grad():
        mean, cov, cio = ctrl(m, S)
    x = sample_gaussian(m, S, N_MC, g)
    u = rbf_network(x, ctrl)
    mean_mc, mean_se = mc_mean(u)
    cov_mc, cov_se = mc_cov(u, u)
    cio_mc, cio_se = mc_cov(x, u)
    assert_within(mean, mean_mc, mean_se, "action mean")
    assert_within(cov, cov_mc, cov_se, "action covariance")
    assert_within(cio, cio_mc, cio_se, "cov[x, u]")


def test_rbf_controller_point_input_with_squash_is_exact():
    D, F = 4, 2
    amp = torch.tensor([2.0, 5.0], dtype=DT)
    ctrl = random_controller(D, F, amp)
    x = torch.randn(6, D, dtype=DT)
    with torch.no_grad():
        mean, cov, cio = ctrl(x, torch.zeros(6, D, D, dtype=DT))
    torch.testing.assert_close(mean, amp * torch.sin(rbf_network(x, ctrl)), rtol=0, atol=1e-12)
    torch.testing.assert_close(cov, torch.zeros_like(cov), rtol=0, atol=1e-12)
    torch.testing.assert_close(cio, torch.zeros_like(cio), rtol=0, atol=0)
    assert bool((mean.abs() <= amp).all())


def test_rbf_controller_squash_consistent_with_moments():
    """With a belief, the action is the sin-squash of the RBF moments and cov[x, a] = cov[x, u~] J."""
    D, F = 3, 2
    ctrl = random_controller(D, F, 3.0)
    plain = random_controller(D, F, None)
    plain.load_state_dict({k: v for k, v in ctrl.state_dict().items() if k != "max_action"})
    g = gen(32)
    m, S = torch.randn(D, generator=g, dtype=DT), random_cov(D, g)
    with torch.no_grad():
        a_mean, a_cov, a_cio = ctrl(m, S)
        u_mean, u_cov, u_cio = plain(m, S)
    damp = torch.exp(-0.5 * u_cov.diagonal())
    torch.testing.assert_close(a_mean, 3.0 * damp * torch.sin(u_mean), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a_cio, u_cio * (3.0 * damp * torch.cos(u_mean)), rtol=1e-12, atol=1e-14)
    assert bool((torch.linalg.eigvalsh(a_cov) > -1e-12).all())
    assert bool((a_cov.diagonal() <= 9.0).all())


def test_rbf_controller_shapes_and_errors():
    ctrl = RBFController(5, 2, 10.0, n_basis=4).double()
    assert torch.equal(ctrl.max_action, torch.tensor([10.0, 10.0], dtype=DT))
    lead = (3, 4)
    m = torch.randn(*lead, 5, dtype=DT)
    S = 0.1 * torch.eye(5, dtype=DT).expand(*lead, 5, 5)
    mean, cov, cio = ctrl(m, S)
    assert mean.shape == (*lead, 2) and cov.shape == (*lead, 2, 2) and cio.shape == (*lead, 5, 2)
    assert mean.dtype == cov.dtype == cio.dtype == DT
    with pytest.raises(ValueError, match="expected mean"):
        ctrl(torch.zeros(3, 4, dtype=DT), torch.zeros(3, 4, 4, dtype=DT))
    with pytest.raises(ValueError, match="max_action"):
        RBFController(5, 2, torch.ones(3))


def test_rbf_controller_initialize():
    g = gen(33)
    states = torch.randn(200, 3, generator=g, dtype=DT) * torch.tensor([0.1, 1.0, 3.0], dtype=DT)
    ctrl = RBFController(3, 2, 1.0, n_basis=6).double()
    assert ctrl.initialize(states) is ctrl
    std = states.std(0)
    torch.testing.assert_close(ctrl.log_lengthscales.exp(), std.expand(2, 3), rtol=1e-12, atol=0)
    # each centre is a data point plus N(0, 0.1^2) jitter
    nearest = (ctrl.centers[:, None] - states[None]).norm(dim=-1).min(1).values
    assert nearest.max() < 0.1 * 6
    ctrl.initialize(states, lengthscale=1.0)  # PILCO's unit-scale start
    torch.testing.assert_close(ctrl.log_lengthscales.exp(), torch.ones(2, 3, dtype=DT))


# ------------------------------------------------------------------- gradients
def test_imagined_rollout_cost_gradcheck_wrt_controller_parameters():
    """3-step belief rollout through GPWorldModel.propagate and the squashed controller."""
    D, F = 2, 1
    model, _, _ = conditioned_gp(D, F, n=10, seed=40)
    ctrl = random_controller(D, F, 1.5, n_basis=3, seed=41)
    names = [n for n, _ in ctrl.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in ctrl.parameters())
    m0 = torch.tensor([0.2, -0.1], dtype=DT)
    S0 = 0.05 * torch.eye(D, dtype=DT)
    target, W = torch.tensor([0.5, 0.0], dtype=DT), torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=DT)

    def total_cost(*values):
        m, S, total = m0, S0, 0.0
        for _ in range(3):
            a_m, a_v, cio = functional_call(ctrl, dict(zip(names, values, strict=True)), (m, S))
            m, S = model.propagate(m, S, a_m, a_v, cio)
            total = total + expected_saturating_cost(m, S, target, W)
        return total

    assert torch.autograd.gradcheck(total_cost, params, eps=1e-6, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(total_cost(*params), params)
    assert all(gr.abs().sum() > 0 for gr in grads)


# --------------------------------------------------------------- ExponentialQuadraticCost
def _cost_td(lead=(2, 3), D=6, seed=50):
    g = gen(seed)
    m = torch.randn(*lead, D, generator=g, dtype=DT)
    S = torch.stack([random_cov(D, g) for _ in range(math.prod(lead))]).reshape(*lead, D, D)
    return TensorDict({("observation", "mean"): m, ("observation", "var"): S}, lead)


def test_exponential_quadratic_cost_reductions():
    td = _cost_td()
    W = torch.as_tensor(swingup_cost_matrix(), dtype=DT)
    expected = expected_saturating_cost(td["observation", "mean"], td["observation", "var"], TARGET, W)
    none = swingup_cost(reduction="none")(td)
    assert none.batch_size == (2, 3)
    torch.testing.assert_close(none["loss_cost"], expected, rtol=0, atol=0)
    torch.testing.assert_close(swingup_cost(reduction="mean")(td)["loss_cost"], expected.mean())
    torch.testing.assert_close(swingup_cost(reduction="sum")(td)["loss_cost"], expected.sum())
    assert swingup_cost()(td)["loss_cost"].shape == ()  # default: mean
    # defaults: origin target and identity weights
    default = ExponentialQuadraticCost(reduction="none")(td)["loss_cost"]
    torch.testing.assert_close(
        default, expected_saturating_cost(td["observation", "mean"], td["observation", "var"],
                                          torch.zeros(6, dtype=DT), torch.eye(6, dtype=DT)))
    # point on the target: zero cost
    on_target = TensorDict({("observation", "mean"): TARGET[None], ("observation", "var"): torch.zeros(1, 6, 6, dtype=DT)}, [1])
    assert swingup_cost(reduction="sum")(on_target)["loss_cost"].item() == 0.0


def test_exponential_quadratic_cost_errors_and_keys():
    with pytest.raises(ValueError, match="reduction"):
        ExponentialQuadraticCost(reduction="max")
    with pytest.raises(ValueError, match="target"):
        ExponentialQuadraticCost(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="weights"):
        ExponentialQuadraticCost(weights=torch.zeros(2, 3))
    td = _cost_td()
    cost = swingup_cost()
    message = raises_key_error(cost, td.exclude(("observation", "var")), names="('observation', 'var')")
    assert "('observation', 'mean') is not" not in message
    raises_key_error(cost, td.exclude(("observation", "mean")), names="('observation', 'mean') is not")
    with pytest.raises(ValueError, match="covariance shape"):
        cost(TensorDict({("observation", "mean"): torch.zeros(3, 5, dtype=DT),
                         ("observation", "var"): torch.zeros(3, 4, 4, dtype=DT)}, [3]))
    # set_keys reads other keys
    renamed = TensorDict({("belief", "m"): td["observation", "mean"], ("belief", "S"): td["observation", "var"]}, td.batch_size)
    cost.set_keys(loc=("belief", "m"), scale=("belief", "S"))
    torch.testing.assert_close(cost(renamed)["loss_cost"], swingup_cost()(td)["loss_cost"])


def test_cost_as_reward():
    td = _cost_td()
    reward_module = swingup_cost().as_reward()
    nxt = TensorDict({("next", "observation", "mean"): td["observation", "mean"],
                      ("next", "observation", "var"): td["observation", "var"]}, td.batch_size)
    out = reward_module(nxt)
    reward = out["next", "reward"]
    assert reward.shape == (2, 3, 1)
    expected = -swingup_cost(reduction="none")(td)["loss_cost"]
    torch.testing.assert_close(reward[..., 0], expected, rtol=0, atol=0)
    assert bool(((reward <= 0) & (reward >= -1)).all())
    raises_key_error(reward_module, nxt.exclude(("next", "observation", "var")),
                     names="('next', 'observation', 'var')")
    # another belief key
    custom = swingup_cost().as_reward(("belief",))
    out = custom(TensorDict({("belief", "mean"): td["observation", "mean"],
                             ("belief", "var"): td["observation", "var"]}, td.batch_size))
    torch.testing.assert_close(out["next", "reward"], reward)


# ------------------------------------------------------------------ envs
def _cartpole_data(steps=30, seed=0):
    env = GymEnv(CARTPOLE)
    env.set_seed(seed)
    torch.manual_seed(seed)
    r = env.rollout(steps, break_when_any_done=False)
    return TensorDict({"observation": r["observation"], "action": r["action"].to(DT),
                       ("next", "observation"): r["next", "observation"]}, [steps])


@pytest.fixture(scope="module")
def cartpole_gp():
    pytest.importorskip("gpytorch")
    data = _cartpole_data()
    model = GPWorldModel(6, 1, angle_dims={5: (3, 2)})
    model.fit(data, max_iter=100)
    assert model.is_fitted
    return model, data


def test_imagined_env_with_gp_and_rbf_controller(cartpole_gp):
    gp, data = cartpole_gp
    torch.manual_seed(60)
    ctrl = RBFController(6, 1, 10.0, n_basis=5, input_dims=(0, 1, 2, 3, 4)).double()
    ctrl.initialize(data["observation"])
    policy = belief_policy(ctrl)
    cost = swingup_cost()
    env = ImaginedEnv(gp, GymEnv(CARTPOLE), batch_size=[1], reward_module=cost.as_reward())
    start = TensorDict({("observation", "mean"): data["observation"][:1],
                        ("observation", "var"): 0.01 * torch.eye(6, dtype=DT)[None]}, [1])
    rollout = env.rollout(5, policy, tensordict=env.reset(start.clone()))
    mean, var = rollout["next", "observation", "mean"], rollout["next", "observation", "var"]
    assert mean.shape == (1, 5, 6) and var.shape == (1, 5, 6, 6)
    assert rollout["observation", "mean"].shape == (1, 5, 6)
    assert rollout["action", "mean"].shape == (1, 5, 1)
    assert rollout["action", "cross_covariance"].shape == (1, 5, 6, 1)
    reward = rollout["next", "reward"]
    assert reward.shape == (1, 5, 1) and bool(torch.isfinite(reward).all())
    assert bool(((reward <= 0) & (reward >= -1)).all())
    assert bool((torch.linalg.eigvalsh(var) > -1e-9).all())
    # the first step is exactly controller -> propagate -> expected cost
    with torch.no_grad():
        a_m, a_v, cio = ctrl(start["observation", "mean"], start["observation", "var"])
        m1, S1 = gp.propagate(start["observation", "mean"], start["observation", "var"], a_m, a_v, cio)
        m2, S2 = gp.propagate(m1, S1, *ctrl(m1, S1))
    torch.testing.assert_close(mean[:, 0], m1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var[:, 0], S1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean[:, 1], m2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rollout["observation", "mean"][:, 1], m1, rtol=0, atol=0)
    torch.testing.assert_close(reward[:, 0, 0], -cost.expected_cost(m1, S1), rtol=1e-10, atol=1e-12)
    # the gradient of the imagined return reaches every controller parameter
    reward.sum().backward()
    for name, p in ctrl.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert p.grad.abs().sum() > 0, name


def test_imagined_env_check_env_specs(cartpole_gp):
    gp, _ = cartpole_gp
    env = ImaginedEnv(gp, GymEnv(CARTPOLE), batch_size=[1], reward_module=swingup_cost().as_reward())
    assert env.observation_spec["observation", "mean"].dtype == DT
    check_env_specs(env)


def _state_from_obs(obs: np.ndarray) -> np.ndarray:
    """Invert the cart-pole observation ``(x, x_dot, cos phi, sin phi, phi_dot, phi)``, ``phi = theta - pi``."""
    x, v, c, s, w, phi = obs
    assert (math.cos(phi), math.sin(phi)) == pytest.approx((c, s), abs=1e-12)
    return np.array([x, v, w, phi + math.pi])


def test_mean_action_selector_on_cartpole():
    env = TransformedEnv(GymEnv(CARTPOLE), MeanActionSelector())
    env.set_seed(0)
    td = env.reset()
    assert td["observation", "mean"].shape == (6,) and td["observation", "mean"].dtype == DT
    assert td["observation", "var"].shape == (6, 6)
    assert bool((td["observation", "var"] == 0).all())
    check_env_specs(env)

    torch.manual_seed(70)
    ctrl = RBFController(6, 1, 10.0, n_basis=5, input_dims=(0, 1, 2, 3, 4)).double()
    with torch.no_grad():
        ctrl.weights.normal_(0.0, 3.0)  # large actions: the cart visibly moves
    with torch.no_grad():
        rollout = env.rollout(5, belief_policy(ctrl), tensordict=env.reset())
    actions = rollout["action", "mean"]
    assert actions.shape == (5, 1) and bool((actions.abs() <= 10).all())
    assert actions.abs().max() > 0.5
    # the executed action is the policy's mean: replay it on the raw simulator
    sim = CartPoleSwingUp()
    sim.reset(seed=0)
    sim.state = _state_from_obs(rollout["observation", "mean"][0].numpy())
    for t in range(5):
        obs, reward, *_ = sim.step(actions[t].to(torch.float32).numpy())
        np.testing.assert_allclose(rollout["next", "observation", "mean"][t].numpy(), obs, rtol=0, atol=1e-9)
        assert rollout["next", "reward"][t].item() == pytest.approx(reward, abs=1e-6)
        assert bool((rollout["next", "observation", "var"][t] == 0).all())
    # policy outputs at the point beliefs are the deterministic actions
    with torch.no_grad():
        point = ctrl(rollout["observation", "mean"], rollout["observation", "var"])[0]
    torch.testing.assert_close(point, actions, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ cart-pole dynamics
def test_cartpole_derivatives_hand_computed():
    # theta = pi/2 (pole horizontal): cos = 0, sin = 1. With M = m = 0.5, l = 0.5, b = 0.1,
    # g = 9.82, x_dot = 1, theta_dot = 2, u = 1, f = u - b x_dot = 0.9:
    # (M + m) x_ddot = f + m l/2 theta_dot^2 sin = 0.9 + 0.5 -> x_ddot = 1.4
    # (2 l / 3) theta_ddot = -g sin -> theta_ddot = -3 g / (2 l) = -29.46
    out = cartpole_derivatives(np.array([0.3, 1.0, 2.0, np.pi / 2]), 1.0, **PARAMS)
    np.testing.assert_allclose(out, [1.0, 1.4, -29.46, 2.0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("state,force", [
    ((0.1, -0.4, 1.3, 0.7), 2.5), ((0.0, 2.0, -3.0, 2.9), -7.0), ((-1.0, 0.3, 0.5, -4.0), 0.0)])
def test_cartpole_derivatives_solve_lagrange_equations(state, force):
    """Euler-Lagrange of ``L = (M+m)/2 x'^2 + m l/2 x' th' cos th + m l^2/6 th'^2 + m g l/2 cos th``
    with the generalised force ``u - b x'`` on ``x``:
    ``(M+m) x'' + m l/2 cos th th'' = u - b x' + m l/2 th'^2 sin th`` and
    ``m l/2 cos th x'' + m l^2/3 th'' = -m g l/2 sin th``."""
    M, m, ell, b, g = (PARAMS[k] for k in ("M", "m", "length", "b", "g"))
    x, v, w, th = state
    c, s = math.cos(th), math.sin(th)
    mass = np.array([[M + m, m * ell / 2 * c], [m * ell / 2 * c, m * ell**2 / 3]])
    rhs = np.array([force - b * v + m * ell / 2 * w**2 * s, -m * g * ell / 2 * s])
    acc, ang = np.linalg.solve(mass, rhs)
    out = cartpole_derivatives(np.array(state), force, **PARAMS)
    np.testing.assert_allclose(out, [v, acc, ang, w], rtol=1e-12, atol=1e-12)


def test_cartpole_energy_conserved_without_friction_and_force():
    M, m, ell, g = PARAMS["M"], PARAMS["m"], PARAMS["length"], PARAMS["g"]
    params = {**PARAMS, "b": 0.0}

    def energy(z):
        x, v, w, th = z
        return ((M + m) / 2 * v**2 + m * ell / 2 * v * w * math.cos(th) + m * ell**2 / 6 * w**2
                - m * g * ell / 2 * math.cos(th))

    z = np.array([0.0, 0.5, 3.0, 1.0])
    e0 = energy(z)
    h = 1e-3
    energies = []
    for _ in range(2000):
        k1 = cartpole_derivatives(z, 0.0, **params)
        k2 = cartpole_derivatives(z + 0.5 * h * k1, 0.0, **params)
        k3 = cartpole_derivatives(z + 0.5 * h * k2, 0.0, **params)
        k4 = cartpole_derivatives(z + h * k3, 0.0, **params)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        energies.append(energy(z))
    energies = np.array(energies)
    assert np.abs(energies - e0).max() <= 1e-6 * abs(e0)
    # the motion is non-trivial (kinetic and potential energy exchange)
    assert abs(z[3] - 1.0) > 0.5
    # with friction the energy decays
    z2 = np.array([0.0, 0.5, 3.0, 1.0])
    for _ in range(2000):
        k1 = cartpole_derivatives(z2, 0.0, **PARAMS)
        k2 = cartpole_derivatives(z2 + 0.5 * h * k1, 0.0, **PARAMS)
        k3 = cartpole_derivatives(z2 + 0.5 * h * k2, 0.0, **PARAMS)
        k4 = cartpole_derivatives(z2 + h * k3, 0.0, **PARAMS)
        z2 = z2 + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert energy(z2) < e0 - 1e-3


def test_cartpole_hanging_equilibrium_and_upright_instability():
    for x in (0.0, 1.7):
        np.testing.assert_array_equal(cartpole_derivatives(np.array([x, 0.0, 0.0, 0.0]), 0.0), np.zeros(4))
    # small deflections from hanging down are restoring; from upright they grow
    assert cartpole_derivatives(np.array([0.0, 0.0, 0.0, 0.1]), 0.0)[2] < 0
    assert cartpole_derivatives(np.array([0.0, 0.0, 0.0, np.pi + 0.1]), 0.0)[2] > 0


def test_cartpole_env_starts_hanging_down():
    env = CartPoleSwingUp()
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        assert obs.shape == (6,) and obs.dtype == np.float64
        assert (np.cos(obs[5]), np.sin(obs[5])) == pytest.approx((obs[2], obs[3]), abs=1e-12)
        assert obs[2] < -0.9, f"cos(phi) = {obs[2]}: the pole should start hanging down"
        assert not info["upright"]
        obs, reward, terminated, truncated, info = env.step(np.zeros(1, dtype=np.float32))
        assert -1.0 <= reward <= 0.0 and not terminated and not truncated
    # the torchrl wrapper: float64 observations, episode of 40 steps
    genv = GymEnv(CARTPOLE)
    genv.set_seed(1)
    td = genv.reset()
    assert td["observation"].dtype == DT and td["observation"][2] < -0.9


def test_cartpole_env_reward_range_and_truncation():
    env = CartPoleSwingUp()
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    phis = []
    for t in range(40):
        obs, reward, terminated, truncated, _ = env.step(rng.uniform(-10, 10, size=1).astype(np.float32))
        assert -1.0 <= reward <= 0.0
        assert not terminated and truncated == (t == 39)
        phis.append(obs[5])
        assert obs[5] == pytest.approx(env.state[3] - np.pi, abs=1e-12)  # unwrapped: theta - pi
    # spinning the pole keeps the angle continuous (no 2 pi jumps between steps of 0.1 s)
    env.reset(seed=4)
    env.state = np.array([0.0, 0.0, 30.0, 0.0])  # fast rotation: several turns
    previous = env._obs()[5]
    for _ in range(20):
        obs, *_ = env.step(np.zeros(1, dtype=np.float32))
        assert abs(obs[5] - previous) < np.pi
        previous = obs[5]
    assert abs(previous - phis[0]) > 2 * np.pi


def test_swingup_cost_matrix_hand_computed():
    ell, width = 0.5, 0.25
    W = swingup_cost_matrix(ell, width)
    assert W.shape == (6, 6)
    np.testing.assert_allclose(W, W.T)
    assert np.linalg.eigvalsh(W).min() > -1e-12
    # x = 0.3, phi = pi/2 (pole horizontal, pointing to -x): tip (0.3 - 0.5, 0) = (-0.2, 0);
    # target (0, 0.5): d^2 = 0.04 + 0.25 = 0.29, d^2 / width^2 = 4.64
    obs = np.array([0.3, 1.7, 0.0, 1.0, -2.0, np.pi / 2])  # velocities and the angle do not enter
    diff = obs - TARGET.numpy()
    assert diff @ W @ diff == pytest.approx(4.64, rel=1e-12)
    # upright over the cart at x = 0: zero
    up = np.array([0.0, 5.0, 1.0, 0.0, 3.0, 2 * np.pi]) - TARGET.numpy()
    assert up @ W @ up == pytest.approx(0.0, abs=1e-15)
    # hanging down at x = 0: d = 2 l
    down = np.array([0.0, 0.0, -1.0, 0.0, 0.0, -np.pi]) - TARGET.numpy()
    assert down @ W @ down == pytest.approx((2 * ell) ** 2 / width**2, rel=1e-12)


def test_cartpole_measurement_noise_is_on_the_observation_only():
    import numpy as np

    from reverie.envs import CartPoleSwingUp

    clean, noisy = CartPoleSwingUp(), CartPoleSwingUp(obs_noise=0.01)
    obs_c, _ = clean.reset(seed=3)
    obs_n, _ = noisy.reset(seed=3)
    assert np.array_equal(clean.state, noisy.state)  # the same true start state
    assert not np.array_equal(obs_c, obs_n) and np.abs(obs_c - obs_n).max() < 0.1
    out_c, out_n = clean.step(np.array([2.0])), noisy.step(np.array([2.0]))
    assert np.array_equal(clean.state, noisy.state)
    assert out_c[1] == out_n[1]  # the reward is computed on the true state
    assert np.allclose(out_c[0], clean._obs())  # noise-free by default
    with pytest.raises(ValueError, match="obs_noise"):
        CartPoleSwingUp(obs_noise=-1.0)
