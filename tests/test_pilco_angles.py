"""Angles in PILCO: trigonometric moments, GPs that predict an angle's change and read its
sine and cosine (``GPWorldModel(angle_dims=...)``), and controllers on a subset of the state
(``RBFController(input_dims=...)``).

Monte-Carlo checks use 200k samples and 5 standard errors (helpers from
``test_pilco_modules``); the moment matching is exact for Gaussian inputs, so the only
tolerance is sampling error.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch.func import functional_call

from reverie.modules.gp_world_model import GPWorldModel
from reverie.modules.moment_matching import expected_saturating_cost, trig_moments
from reverie.modules.rbf_controller import RBFController
from tests.test_pilco_modules import (
    DT,
    N_MC,
    ReferenceGP,
    assert_within,
    gen,
    mc_cov,
    mc_mean,
    random_controller,
    random_cov,
    rbf_network,
    sample_gaussian,
)

# observation (v, cos phi, sin phi, phi): the angle phi is dim 3, its sine dim 2, cosine dim 1
ANGLES = {3: (2, 1)}
INPUTS, TARGETS = [0, 1, 2], [0, 3]


# ------------------------------------------------------------------ trig_moments
def test_trig_moments_hand_computed():
    # x ~ N(0.3, 0.5^2): E[sin x] = e^{-s/2} sin m, E[cos x] = e^{-s/2} cos m with s = 0.25;
    # Var[cos x] = (1 + e^{-2s} cos 2m) / 2 - E[cos x]^2; cov[x, sin x] = s e^{-s/2} cos m
    m, s = 0.3, 0.25
    mean, cov, cross = trig_moments(torch.tensor([m], dtype=DT), torch.tensor([[s]], dtype=DT), [0])
    e_sin, e_cos = math.exp(-s / 2) * math.sin(m), math.exp(-s / 2) * math.cos(m)
    torch.testing.assert_close(mean, torch.tensor([e_sin, e_cos], dtype=DT), rtol=1e-12, atol=1e-14)
    var_sin = (1 - math.exp(-2 * s) * math.cos(2 * m)) / 2 - e_sin**2
    var_cos = (1 + math.exp(-2 * s) * math.cos(2 * m)) / 2 - e_cos**2
    cov_sc = math.exp(-2 * s) * math.sin(2 * m) / 2 - e_sin * e_cos
    torch.testing.assert_close(cov, torch.tensor([[var_sin, cov_sc], [cov_sc, var_cos]], dtype=DT),
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cross, torch.tensor([[s * e_cos, -s * e_sin]], dtype=DT), rtol=1e-12, atol=1e-14)
    # a known angle: exact sine and cosine, no spread
    mean, cov, _ = trig_moments(torch.tensor([1.0], dtype=DT), torch.zeros(1, 1, dtype=DT), [0])
    torch.testing.assert_close(mean, torch.tensor([math.sin(1.0), math.cos(1.0)], dtype=DT))
    assert cov.abs().max() < 1e-15


def test_trig_moments_match_monte_carlo():
    """Two correlated angles among three coordinates, batched."""
    g = gen(200)
    m = torch.stack([torch.tensor([0.4, -1.0, 2.5], dtype=DT), torch.tensor([-2.0, 0.3, 0.1], dtype=DT)])
    S = torch.stack([random_cov(3, g, scale=0.6), random_cov(3, g, scale=0.4)])
    mean, cov, cross = trig_moments(m, S, [0, 2])
    assert mean.shape == (2, 4) and cov.shape == (2, 4, 4) and cross.shape == (2, 3, 4)
    for b in range(2):
        x = sample_gaussian(m[b], S[b], N_MC, g)
        t = torch.cat([torch.sin(x[:, [0, 2]]), torch.cos(x[:, [0, 2]])], -1)  # [sin A, cos A]
        mean_mc, mean_se = mc_mean(t)
        cov_mc, cov_se = mc_cov(t, t)
        cross_mc, cross_se = mc_cov(x, t)
        assert_within(mean[b], mean_mc, mean_se, "trig mean")
        assert_within(cov[b], cov_mc, cov_se, "trig covariance")
        assert_within(cross[b], cross_mc, cross_se, "cov[x, trig]")


# ------------------------------------------------------------------ GPWorldModel(angle_dims)
def angle_gp(n=25, seed=210):
    """A GP on observations (v, cos phi, sin phi, phi) and its reference GP on
    inputs (v, cos, sin, u) -> targets Delta (v, phi)."""
    g = gen(seed)
    phi = 3.0 * torch.randn(n, generator=g, dtype=DT)
    v = torch.randn(n, generator=g, dtype=DT)
    obs = torch.stack([v, torch.cos(phi), torch.sin(phi), phi], -1)
    act = torch.randn(n, 1, generator=g, dtype=DT)
    d_phi = 0.1 * v + 0.05 * act[:, 0]
    d_v = -0.3 * torch.sin(phi) + 0.2 * act[:, 0]
    nphi = phi + d_phi
    nxt = torch.stack([v + d_v, torch.cos(nphi), torch.sin(nphi), nphi], -1)
    data = TensorDict({"observation": obs, "action": act, ("next", "observation"): nxt}, [n])
    ls = 0.8 + 0.8 * torch.rand(2, 4, generator=g, dtype=DT)
    sv, nv = torch.tensor([0.3, 0.05], dtype=DT), torch.full((2,), 1e-3, dtype=DT)
    model = GPWorldModel(4, 1, angle_dims=ANGLES)
    model.set_data(data, lengthscales=ls, signal_var=sv, noise_var=nv)
    inputs = torch.cat([obs[:, INPUTS], act], -1)
    targets = (nxt - obs)[:, TARGETS].T
    return model, ReferenceGP(inputs, targets, ls, sv, nv), data


def test_gp_angle_dims_layout_and_validation():
    model, _, _ = angle_gp()
    assert model.input_obs == INPUTS and model.target_obs == TARGETS
    assert model.train_inputs.shape == (25, 4) and model.beta.shape == (2, 25)
    assert model.lengthscales.shape == (2, 4)
    for bad in ({3: (3, 1)}, {3: (2, 2)}, {4: (2, 1)}, {3: (2, 1), 0: (2, 1)}):
        with pytest.raises(ValueError, match="angle_dims"):
            GPWorldModel(4, 1, angle_dims=bad)


def test_gp_angle_dims_propagate_matches_monte_carlo():
    """Observation belief N(m, S) (sine and cosine as Gaussian coordinates, as moment matching
    assumes), u = K x + b + eps: the predicted (v, phi) moments are exact; the next sine and
    cosine are the trigonometric moments of the predicted Gaussian (v, phi)."""
    model, ref, _ = angle_gp()
    g = gen(211)
    m_x = torch.tensor([0.2, -0.9, 0.3, 2.8], dtype=DT)
    S_x = random_cov(4, g, scale=0.25)
    K = 0.5 * torch.randn(1, 4, generator=g, dtype=DT)
    b = torch.tensor([0.1], dtype=DT)
    S_eps = torch.tensor([[0.04]], dtype=DT)
    m_u, S_u, cross = K @ m_x + b, K @ S_x @ K.T + S_eps, S_x @ K.T
    mean, cov = model.propagate(m_x, S_x, m_u, S_u, cross)
    assert mean.shape == (4,) and cov.shape == (4, 4)
    assert torch.linalg.eigvalsh(cov).min() > -1e-12

    x = sample_gaussian(m_x, S_x, N_MC, g)
    u = x @ K.T + b + sample_gaussian(torch.zeros(1, dtype=DT), S_eps, N_MC, g)
    d_mean, d_var = ref(torch.cat([x[:, INPUTS], u], -1))
    nxt = x[:, TARGETS] + d_mean + d_var.sqrt() * torch.randn(N_MC, 2, generator=g, dtype=DT)
    mean_mc, mean_se = mc_mean(nxt)
    cov_mc, cov_se = mc_cov(nxt, nxt)
    assert_within(mean[TARGETS], mean_mc, mean_se, "predicted (v, phi) mean")
    assert_within(cov[TARGETS][:, TARGETS], cov_mc, cov_se, "predicted (v, phi) covariance")
    # sine and cosine of the next angle: moments of the predicted Gaussian, cross-covariances included
    t_mean, t_cov, t_cross = trig_moments(mean[TARGETS], cov[TARGETS][:, TARGETS], [1])
    torch.testing.assert_close(mean[[2, 1]], t_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cov[[2, 1]][:, [2, 1]], t_cov, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cov[TARGETS][:, [2, 1]], t_cross, rtol=1e-12, atol=1e-14)
    # the GP reads the sine and cosine, not the unwrapped angle: a full turn changes nothing
    # but the angle itself
    turned = m_x + torch.tensor([0.0, 0.0, 0.0, 2 * math.pi], dtype=DT)
    mean2, cov2 = model.propagate(turned, S_x, m_u, S_u, cross)
    torch.testing.assert_close(mean2, mean + torch.tensor([0, 0, 0, 2 * math.pi], dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(cov2, cov, rtol=0, atol=1e-12)


def test_gp_angle_dims_point_path_and_state_dict():
    model, ref, _ = angle_gp()
    g = gen(212)
    phi = torch.randn(6, generator=g, dtype=DT)
    obs = torch.stack([torch.randn(6, generator=g, dtype=DT), phi.cos(), phi.sin(), phi], -1)
    act = torch.randn(6, 1, generator=g, dtype=DT)
    mean, var = model.predict(obs, act)
    d_mean, d_var = ref(torch.cat([obs[:, INPUTS], act], -1))
    torch.testing.assert_close(mean[:, TARGETS], obs[:, TARGETS] + d_mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(var[:, TARGETS], d_var, rtol=1e-9, atol=1e-10)
    damp = torch.exp(-0.5 * d_var[:, 1])  # E[sin phi'] = exp(-var/2) sin(mean)
    torch.testing.assert_close(mean[:, 2], damp * torch.sin(mean[:, 3]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mean[:, 1], damp * torch.cos(mean[:, 3]), rtol=1e-12, atol=1e-14)
    # forward with point inputs is the same path; the belief path with S = 0 agrees on (v, phi)
    td = model(TensorDict({"observation": obs, "action": act}, [6]))
    torch.testing.assert_close(td["next", "observation", "mean"], mean)
    b_mean, b_var = model.propagate(obs, torch.zeros(6, 4, 4, dtype=DT), act,
                                    torch.zeros(6, 1, 1, dtype=DT), torch.zeros(6, 4, 1, dtype=DT))
    torch.testing.assert_close(b_mean, mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(b_var.diagonal(dim1=-2, dim2=-1), var, rtol=1e-9, atol=1e-10)
    # a state_dict round trip into a fresh model with the same layout
    fresh = GPWorldModel(4, 1, angle_dims=ANGLES)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.predict(obs, act)[0], mean, rtol=0, atol=0)


def test_gp_angle_dims_fit_on_a_pendulum():
    """The marginal-likelihood fit on (v, cos, sin, phi, u) -> Delta (v, phi) predicts held-out
    transitions, including angles one full turn away from the data."""
    pytest.importorskip("gpytorch")
    model, _, data = angle_gp(n=60, seed=213)
    fit = model.fit(data, max_iter=100)
    assert fit["n"] == 60 and model.lengthscales.shape == (2, 4)
    g = gen(214)
    phi = 2 * torch.randn(20, generator=g, dtype=DT) + 2 * math.pi  # a turn away
    v = torch.randn(20, generator=g, dtype=DT)
    act = torch.randn(20, 1, generator=g, dtype=DT)
    obs = torch.stack([v, phi.cos(), phi.sin(), phi], -1)
    mean, _ = model.predict(obs, act)
    true_v = v - 0.3 * torch.sin(phi) + 0.2 * act[:, 0]
    true_phi = phi + 0.1 * v + 0.05 * act[:, 0]
    assert (mean[:, 0] - true_v).abs().max() < 0.1
    assert (mean[:, 3] - true_phi).abs().max() < 0.05


def test_imagined_rollout_with_angles_gradcheck():
    """2-step belief rollout (angles in the model, controller on (v, cos, sin)) -> expected cost:
    analytic gradients w.r.t. the controller parameters match finite differences."""
    model, _, _ = angle_gp(n=10, seed=215)
    torch.manual_seed(216)
    ctrl = RBFController(4, 1, 1.5, n_basis=3, input_dims=(0, 1, 2)).double()
    names = [n for n, _ in ctrl.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in ctrl.parameters())
    m0 = torch.tensor([0.1, -1.0, 0.0, math.pi], dtype=DT)
    S0 = torch.diag(torch.tensor([0.01, 1e-4, 0.01, 0.01], dtype=DT))
    target = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=DT)
    W = torch.diag(torch.tensor([0.1, 4.0, 4.0, 0.0], dtype=DT))  # upright: cos = 1, sin = 0

    def total_cost(*values):
        m, S, total = m0, S0, 0.0
        for _ in range(2):
            a_m, a_v, cio = functional_call(ctrl, dict(zip(names, values, strict=True)), (m, S))
            m, S = model.propagate(m, S, a_m, a_v, cio)
            total = total + expected_saturating_cost(m, S, target, W)
        return total

    assert torch.autograd.gradcheck(total_cost, params, eps=1e-6, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(total_cost(*params), params)
    assert all(gr.abs().sum() > 0 for gr in grads)


# ------------------------------------------------------------------ RBFController(input_dims)
def test_rbf_controller_input_dims_match_monte_carlo():
    """The network reads coordinates (0, 2) of a 3-d belief; cov[x, u] covers all three."""
    ctrl = random_controller(2, 2, None, seed=220)
    sub = RBFController(3, 2, None, n_basis=ctrl.n_basis, input_dims=(0, 2)).double()
    sub.load_state_dict(ctrl.state_dict())
    g = gen(221)
    m = torch.tensor([0.2, -0.4, 0.1], dtype=DT)
    S = random_cov(3, g, scale=0.5)
    with torch.no_grad():
        mean, cov, cio = sub(m, S)
    assert cio.shape == (3, 2)
    x = sample_gaussian(m, S, N_MC, g)
    u = rbf_network(x[:, [0, 2]], ctrl)
    mean_mc, mean_se = mc_mean(u)
    cov_mc, cov_se = mc_cov(u, u)
    cio_mc, cio_se = mc_cov(x, u)
    assert_within(mean, mean_mc, mean_se, "action mean")
    assert_within(cov, cov_mc, cov_se, "action covariance")
    assert_within(cio, cio_mc, cio_se, "cov[x, u] over all coordinates")
    # the unread coordinate does not change the action at a point
    with torch.no_grad():
        a = sub(m, torch.zeros(3, 3, dtype=DT))[0]
        b = sub(m + torch.tensor([0.0, 5.0, 0.0], dtype=DT), torch.zeros(3, 3, dtype=DT))[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input_dims"):
        RBFController(3, 1, None, input_dims=(0, 3))
    # initialize reads the selected coordinates
    states = torch.randn(50, 3, dtype=DT) + torch.tensor([0.0, 100.0, 0.0], dtype=DT)
    sub.initialize(states, lengthscale=torch.tensor([1.0, 0.7], dtype=DT))
    assert sub.centers.abs().max() < 10
    torch.testing.assert_close(sub.log_lengthscales.exp()[0], torch.tensor([1.0, 0.7], dtype=DT))
