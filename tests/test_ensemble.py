"""Probabilistic ensemble dynamics: batched layers, propagation, soft bounds, NLL, fitting, imagination."""

import functools
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded

from reverie.envs import WorldModelEnv
from reverie.envs.fast_rollout import plain_modules
from reverie.modules import WorldModel
from reverie.modules.ensemble import (
    EnsembleDynamics,
    EnsembleLinear,
    GaussianEnsemble,
    soft_bound_logvar,
)
from reverie.objectives.ensemble_fit import fit_ensemble, member_mse
from reverie.objectives.ensemble_loss import EnsembleNLLLoss, gaussian_nll


def _linear_of(layer: EnsembleLinear, m: int) -> nn.Linear:
    lin = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        lin.weight.copy_(layer.weight[m].T)
        lin.bias.copy_(layer.bias[m])
    return lin


def _member_mlp(ens: GaussianEnsemble, m: int):
    """Member ``m`` of ``ens`` as separate nn.Linear layers: x (B, in) -> (mean, logvar)."""
    layers = [_linear_of(layer, m) for layer in ens.layers]
    head = _linear_of(ens.head, m)

    def run(x):
        h = (x - ens.input_mean) / ens.input_std
        for lin in layers:
            h = ens.activation(lin(h))
        mean, raw = head(h).chunk(2, dim=-1)
        return mean, soft_bound_logvar(raw, ens.min_logvar, ens.max_logvar)

    return run


def _small_ensemble(**kw) -> GaussianEnsemble:
    kw = {"num_members": 5, "hidden": 16, "depth": 2, **kw}
    ens = GaussianEnsemble(3, 2, **kw)
    ens.fit_input_stats(torch.randn(200, 3) * 2 + 1)
    return ens


def _all_members(ens: GaussianEnsemble, x: torch.Tensor):
    """Every member on every row: ``(M, R, out)`` means and logvars (via forward_members)."""
    return ens.forward_members(x.expand(ens.num_members, *x.shape))


# ---------------------------------------------------------------------- layers and members
def test_ensemble_linear_equals_separate_linears():
    layer = EnsembleLinear(7, 5, num_members=4)
    assert layer.weight.shape == (4, 7, 5) and layer.bias.shape == (4, 5)
    x = torch.randn(4, 33, 7)
    y = layer(x)
    # batched and separate matmuls may sum in different orders (CPU kernels differ):
    # equal up to float32 rounding
    close = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)
    for m in range(4):
        close(y[m], _linear_of(layer, m)(x[m]))
    # a subset of members, in any order
    sub = layer(x[:2], members=torch.tensor([3, 1]))
    close(sub[0], _linear_of(layer, 3)(x[0]))
    close(sub[1], _linear_of(layer, 1)(x[1]))
    with pytest.raises(ValueError, match=r"\(K=4, B, in=7\).*\(3, 33, 7\)"):
        layer(x[:3])


def test_ensemble_linear_init_is_per_member_like_nn_linear():
    layer = EnsembleLinear(50, 400, num_members=3)
    bound = 1 / math.sqrt(50)
    for m in range(3):
        w = layer.weight[m]
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.01  # U(-b, b) has std b/sqrt(3)
    assert not torch.equal(layer.weight[0], layer.weight[1])


def test_forward_members_equals_loop_over_members():
    ens = _small_ensemble()
    x = torch.randn(5, 11, 3)
    mean, logvar = ens.forward_members(x)
    assert mean.shape == logvar.shape == (5, 11, 2)
    for m in range(5):
        ref_mean, ref_logvar = _member_mlp(ens, m)(x[m])
        # batched and separate matmuls may sum in different orders (CPU kernels differ),
        # and the log-variance bounds add ~10: equal up to float32 rounding
        torch.testing.assert_close(mean[m], ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logvar[m], ref_logvar, rtol=1e-5, atol=1e-5)


def test_input_normalisation_is_fitted_and_floored():
    ens = GaussianEnsemble(3, 1, num_members=2, hidden=4, depth=1)
    x = torch.randn(500, 3) * torch.tensor([2.0, 0.5, 0.0]) + torch.tensor([1.0, -1.0, 4.0])
    ens.fit_input_stats(x)
    torch.testing.assert_close(ens.input_mean, x.mean(0))
    torch.testing.assert_close(ens.input_std[:2], x[:, :2].std(0, unbiased=False))
    assert ens.input_std[2] == 1.0  # a constant input is centred, not divided by ~0


# ---------------------------------------------------------------------- propagation
@pytest.mark.parametrize("rows", [12, 7, 1])
def test_fixed_propagation_row_i_uses_elite_i_mod_k(rows):
    ens = _small_ensemble(num_elites=3)
    ens.set_elites(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3]))
    assert ens.elite_idx.tolist() == [0, 2, 4]
    x = torch.randn(rows, 3)
    mean, logvar = ens(x)
    means, logvars = _all_members(ens, x)
    for i in range(rows):
        member = ens.elite_idx[i % 3]
        torch.testing.assert_close(mean[i], means[member, i])
        torch.testing.assert_close(logvar[i], logvars[member, i])
    # the assignment depends only on the flattened row index: (*B, in) is flattened
    mean_b, _ = ens(x.reshape(1, rows, 3))
    torch.testing.assert_close(mean_b.reshape(rows, 2), mean)


def test_fixed_propagation_keeps_members_across_calls_and_particles_cover_elites():
    ens = _small_ensemble()  # 5 elites
    x = torch.randn(4, 10, 3)  # 4 candidates x 10 particles (particles innermost)
    first, _ = ens(x)
    second, _ = ens(x)
    assert torch.equal(first, second)
    means, _ = _all_members(ens, x.reshape(40, 3))
    # rows 10c + p use member (10c + p) % 5: each candidate's particles use every member twice
    members = torch.arange(40) % 5
    torch.testing.assert_close(first.reshape(40, 2), means[members, torch.arange(40)])
    assert all(torch.bincount(members.reshape(4, 10)[c], minlength=5).eq(2).all() for c in range(4))


def _assigned_members(ens, x, out_mean):
    means, _ = _all_members(ens, x)  # (M, R, out)
    err = (means - out_mean).abs().amax(-1)  # (M, R)
    assert err.min(0).values.max() < 1e-5  # every row matches one member's output
    return err.argmin(0)


@pytest.mark.parametrize("rows", [12, 13])
def test_random_propagation_is_a_fresh_balanced_assignment(rows):
    ens = _small_ensemble(num_elites=3, propagation="random")
    ens.set_elites(torch.tensor([0.5, 0.1, 0.2, 0.9, 0.3]))
    ens.generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3)
    assignments = []
    for _ in range(3):
        mean, logvar = ens(x)
        members = _assigned_members(ens, x, mean)
        assert set(members.tolist()) <= set(ens.elite_idx.tolist())
        counts = torch.bincount(members, minlength=5)[ens.elite_idx]
        assert counts.max() - counts.min() <= 1 and counts.sum() == rows  # balanced
        _, logvars = _all_members(ens, x)
        torch.testing.assert_close(logvar, logvars[members, torch.arange(rows)])
        assignments.append(members)
    assert not torch.equal(assignments[0], assignments[1])  # re-drawn at every call
    # reproducible with the same generator seed
    ens.generator = torch.Generator().manual_seed(0)
    assert torch.equal(_assigned_members(ens, x, ens(x)[0]), assignments[0])


def test_mean_propagation_is_the_mixture_moments():
    ens = _small_ensemble(num_elites=2, propagation="mean")
    ens.set_elites(torch.tensor([0.5, 0.1, 0.2, 0.9, 0.3]))
    x = torch.randn(2, 6, 3)
    mean, logvar = ens(x)
    means, logvars = _all_members(ens, x.reshape(12, 3))
    elite_means, elite_vars = means[[1, 2]], logvars[[1, 2]].exp()
    torch.testing.assert_close(mean, elite_means.mean(0).reshape(2, 6, 2))
    total = elite_vars.mean(0) + ((elite_means - elite_means.mean(0)) ** 2).mean(0)
    torch.testing.assert_close(logvar, total.log().reshape(2, 6, 2))


def test_unknown_propagation_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="fixed.*random.*mean"):
        GaussianEnsemble(3, 2, propagation="ts1")
    ens = _small_ensemble()
    with pytest.raises(ValueError, match=r"in_dim=3.*\(4, 5\)"):
        ens(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"M=5.*\(4, 2, 3\)"):
        ens.forward_members(torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        ens.set_elites(torch.zeros(3))


# ---------------------------------------------------------------------- soft bounds
def test_soft_bounds_keep_logvar_in_range_and_train_the_bounds():
    ens = _small_ensemble()
    with torch.no_grad():
        ens.max_logvar.fill_(0.5)
        ens.min_logvar.fill_(-10.0)
    for big in (1e4, -1e4):
        with torch.no_grad():
            ens.head.bias[:, 2:] = big  # the raw log-variance half of the head
        _, logvar = ens(torch.randn(20, 3))
        assert logvar.min() >= -10.0 and logvar.max() <= 0.5 + 1e-4
        ens.zero_grad()
        logvar.sum().backward()
        bound = ens.max_logvar if big > 0 else ens.min_logvar
        assert bound.grad is not None and (bound.grad.abs() > 1.0).all()
    # in the middle of the range the bounds barely act
    raw = torch.linspace(-6, -2, 11)
    bounded = soft_bound_logvar(raw, torch.tensor(-10.0), torch.tensor(0.5))
    torch.testing.assert_close(bounded, raw, atol=0.1, rtol=0.0)


# ---------------------------------------------------------------------- NLL and the loss
def test_gaussian_nll_by_hand():
    mean = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.5]])
    target = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    by_hand = [
        0.5 * (1.0 + 0.0),
        0.5 * (4.0 / 4.0 + math.log(4.0)),
        0.5 * (0.0 - 1.0),
        0.5 * (1.0 * math.exp(-0.5) + 0.5),
    ]
    assert gaussian_nll(mean, logvar, target).item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    per_row = gaussian_nll(mean, logvar, target, dim=-1)
    torch.testing.assert_close(
        per_row, torch.tensor([(by_hand[0] + by_hand[1]) / 2, (by_hand[2] + by_hand[3]) / 2])
    )
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2,\)"):
        gaussian_nll(mean, logvar, target[:, 0])


def _batch(members=3, batch=16, obs_dim=2, action_dim=1, reward=False):
    obs = torch.randn(members, batch, obs_dim)
    nxt = {"observation": obs + 0.3 * torch.randn(members, batch, obs_dim)}
    if reward:
        nxt["reward"] = torch.randn(members, batch, 1)
    return TensorDict(
        {"observation": obs, "action": torch.randn(members, batch, action_dim), "next": nxt},
        [members, batch],
    )


@pytest.mark.parametrize("learn_reward", [False, True])
def test_nll_loss_terms_and_gradients(learn_reward):
    dyn = EnsembleDynamics(2, 1, num_members=3, hidden=8, depth=2, learn_reward=learn_reward)
    batch = _batch(reward=learn_reward)
    dyn.fit_output_stats(
        batch["observation"], batch["next", "observation"],
        batch["next", "reward"] if learn_reward else None,
    )
    with torch.no_grad():
        dyn.model.max_logvar.fill_(1.0)
        dyn.model.min_logvar.fill_(-4.0)
    loss = EnsembleNLLLoss(dyn, logvar_bound_weight=0.1)
    out = loss(batch)
    assert set(out.keys()) == {"loss_nll", "loss_logvar_bounds", "mse"}
    mean, logvar = dyn.predict_members(batch["observation"], batch["action"])
    reward = batch["next", "reward"] if learn_reward else None
    target = dyn.normalise_targets(batch["observation"], batch["next", "observation"], reward)
    assert target.shape == (3, 16, 2 + learn_reward)
    expected = sum(gaussian_nll(mean[m], logvar[m], target[m]) for m in range(3))
    torch.testing.assert_close(out["loss_nll"], expected)
    dims = 2 + learn_reward
    torch.testing.assert_close(out["loss_logvar_bounds"], torch.tensor(0.1 * dims * (1.0 + 4.0)))
    torch.testing.assert_close(out["mse"], ((mean - target) ** 2).mean())
    assert not out["mse"].requires_grad
    (out["loss_nll"] + out["loss_logvar_bounds"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dyn.parameters())


def test_nll_loss_keys_and_errors():
    dyn = EnsembleDynamics(2, 1, num_members=3, hidden=8, depth=1)
    loss = EnsembleNLLLoss(dyn)
    batch = _batch()
    shared = loss(batch[0])  # a (B,) batch is shared by all members
    assert shared["loss_nll"].shape == ()
    loss.set_keys(observation="obs", next_observation=("next", "obs"))
    renamed = batch.clone()
    renamed.rename_key_("observation", "obs")
    renamed.rename_key_(("next", "observation"), ("next", "obs"))
    torch.testing.assert_close(loss(renamed)["loss_nll"], EnsembleNLLLoss(dyn)(batch)["loss_nll"])
    with pytest.raises(KeyError, match="obs.* is not in the batch"):
        loss(batch)
    loss = EnsembleNLLLoss(dyn)
    with pytest.raises(ValueError, match=r"M=3, B.*\(4, 16\)"):
        loss(_batch(members=4))
    bad = batch.clone()
    bad["action"] = torch.randn(3, 16, 2)
    with pytest.raises(ValueError, match=r"'action' has shape \(3, 16, 2\), expected \(3, 16, 1\)"):
        loss(bad)
    with pytest.raises(KeyError, match="reward"):
        EnsembleNLLLoss(EnsembleDynamics(2, 1, num_members=3, learn_reward=True))(batch)


# ---------------------------------------------------------------------- fitting
def _sine_data(n, noise_std, generator):
    """1-D system: s' = s + sin(s) + noise(s), the action is a constant 0 (ignored)."""
    x = torch.rand(n, 1, generator=generator) * 6 - 3
    delta = torch.sin(x) + noise_std(x) * torch.randn(n, 1, generator=generator)
    return TensorDict(
        {"observation": x, "action": torch.zeros(n, 1), "next": {"observation": x + delta}}, [n]
    )


@pytest.mark.parametrize(
    "noise_std",
    [lambda x: torch.full_like(x, 0.1), lambda x: 0.05 + 0.1 * (x + 3) / 6],
    ids=["homoscedastic", "heteroscedastic"],
)
def test_fit_learns_mean_and_noise_of_a_stochastic_system(noise_std):
    generator = torch.Generator().manual_seed(0)
    data = _sine_data(2000, noise_std, generator)
    dyn = EnsembleDynamics(1, 1, num_members=5, num_elites=3, hidden=64, depth=3, sample=False)
    loss = EnsembleNLLLoss(dyn)
    metrics = fit_ensemble(
        dyn, loss, torch.optim.Adam(dyn.parameters(), lr=3e-3), data,
        batch_size=64, max_epochs=60, patience=10, generator=generator,
    )
    assert metrics["epochs"] < 60  # stopped early
    grid = torch.linspace(-2.5, 2.5, 101).unsqueeze(-1)
    with torch.no_grad():
        mean, logvar = dyn.model(torch.cat([grid, torch.zeros_like(grid)], -1), propagation="mean")
    predicted_mean = mean * dyn.target_std + dyn.target_mean
    predicted_std = (0.5 * logvar).exp() * dyn.target_std
    rmse = (predicted_mean - torch.sin(grid)).pow(2).mean().sqrt()
    assert rmse < 0.05, rmse
    relative = ((predicted_std - noise_std(grid)) / noise_std(grid)).abs()
    assert relative.max() < 0.3, relative.max()


def test_fit_bootstraps_each_member_and_picks_elites_on_the_holdout():
    n = 400
    obs = torch.arange(n, dtype=torch.float32).unsqueeze(-1)  # the observation names the row
    data = TensorDict(
        {"observation": obs, "action": torch.randn(n, 1),
         "next": {"observation": obs + 0.01 * torch.randn(n, 1)}},
        [n],
    )
    dyn = EnsembleDynamics(1, 1, num_members=4, num_elites=2, hidden=16, depth=2)
    loss = EnsembleNLLLoss(dyn)
    seen = []
    loss.register_forward_hook(lambda mod, args, out: seen.append(args[0]["observation"].clone()))
    opt = torch.optim.Adam(dyn.parameters(), lr=1e-3)
    metrics = fit_ensemble(
        dyn, loss, opt, data, batch_size=100, max_epochs=2, generator=torch.Generator().manual_seed(3)
    )
    assert metrics["epochs"] == 2 and metrics["steps"] == 8 and len(metrics["train_nll"]) == 2
    # the holdout split is the generator's first permutation
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    hold, train_rows = perm[:80], set(perm[80:].tolist())
    first_epoch = torch.cat(seen[:4], dim=1).squeeze(-1).long()  # (M, 320)
    for m in range(4):
        rows = first_epoch[m].tolist()
        assert set(rows) <= train_rows  # never a holdout row
        assert len(set(rows)) < len(rows)  # sampled with replacement
    assert not torch.equal(first_epoch[0].sort().values, first_epoch[1].sort().values)
    # elites: the members with the lowest holdout MSE (of the restored weights)
    holdout_mse = member_mse(loss, data[hold])
    torch.testing.assert_close(holdout_mse, torch.tensor(metrics["holdout_mse"]))
    expected = holdout_mse.argsort()[:2].sort().values
    assert dyn.model.elite_idx.tolist() == expected.tolist() == metrics["elite_idx"]


def test_fit_is_deterministic_given_the_generator():
    data = _sine_data(300, lambda x: torch.full_like(x, 0.1), torch.Generator().manual_seed(0))
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        dyn = EnsembleDynamics(1, 1, num_members=3, hidden=16, depth=2)
        metrics = fit_ensemble(
            dyn, EnsembleNLLLoss(dyn), torch.optim.Adam(dyn.parameters(), 1e-2), data,
            batch_size=32, max_epochs=3, max_steps=5, generator=torch.Generator().manual_seed(7),
        )
        results.append((metrics, dyn.state_dict()))
    assert results[0][0] == results[1][0] and results[0][0]["steps"] == 5
    for key, value in results[0][1].items():
        assert torch.equal(value, results[1][1][key]), key


def test_fit_accepts_rollout_shaped_data_and_names_missing_keys():
    dyn = EnsembleDynamics(2, 1, num_members=2, hidden=8, depth=1)
    loss = EnsembleNLLLoss(dyn)
    data = _batch(members=4, batch=25)  # e.g. (envs, time) from a collector: flattened
    data["next", "done"] = torch.zeros(4, 25, 1, dtype=torch.bool)  # extra keys are ignored
    metrics = fit_ensemble(dyn, loss, torch.optim.Adam(dyn.parameters()), data, max_epochs=1)
    assert metrics["steps"] == 1 and len(metrics["holdout_mse"]) == 2
    with pytest.raises(KeyError, match="lacks.*next.*observation"):
        fit_ensemble(dyn, loss, torch.optim.Adam(dyn.parameters()), data.exclude(("next", "observation")))
    with pytest.raises(ValueError, match="loss_module.dynamics"):
        fit_ensemble(EnsembleDynamics(2, 1), loss, torch.optim.Adam(dyn.parameters()), data)


# ---------------------------------------------------------------------- the dynamics component
def test_dynamics_samples_around_the_denormalised_mean_reproducibly():
    dyn = EnsembleDynamics(2, 1, num_members=3, hidden=8, depth=1, learn_reward=True)
    obs, action = torch.randn(50, 2), torch.randn(50, 1)
    dyn.fit_input_stats(obs, action)
    dyn.fit_output_stats(obs, obs + torch.randn(50, 2), torch.randn(50, 1))
    torch.manual_seed(0)
    first = dyn(obs, action)
    torch.manual_seed(0)
    second = dyn(obs, action)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[1].shape == (50, 1)
    assert not torch.equal(dyn(obs, action)[0], first[0])  # fresh noise without reseeding
    dyn.generator = torch.Generator().manual_seed(4)
    third = dyn(obs, action)
    dyn.generator = torch.Generator().manual_seed(4)
    assert torch.equal(dyn(obs, action)[0], third[0])
    # the noise follows the predicted std: z-scores of the samples are standard normal
    dyn.sample = False
    mean_next, mean_reward = dyn(obs.repeat(200, 1), action.repeat(200, 1))
    dyn.sample = True
    next_obs, reward = dyn(obs.repeat(200, 1), action.repeat(200, 1))
    mean, logvar = dyn.model(torch.cat([obs, action], -1).repeat(200, 1))
    z = (torch.cat([next_obs - mean_next, reward - mean_reward], -1) / dyn.target_std) / (
        0.5 * logvar
    ).exp()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_state_dict_round_trip_preserves_predictions():
    kw = {"num_members": 5, "num_elites": 3, "hidden": 16, "depth": 2, "sample": False}
    dyn = EnsembleDynamics(2, 1, learn_reward=True, **kw)
    obs, action = torch.randn(40, 2) * 3, torch.randn(40, 1)
    dyn.fit_input_stats(obs, action)
    dyn.fit_output_stats(obs, obs + torch.randn(40, 2), torch.randn(40, 1) + 5)
    dyn.set_elites(torch.tensor([0.4, 0.1, 0.3, 0.2, 0.9]))
    with torch.no_grad():
        dyn.model.max_logvar.add_(torch.tensor([0.3, -0.2, 0.1]))
        dyn.model.min_logvar.add_(1.0)
    clone = EnsembleDynamics(2, 1, learn_reward=True, **kw)
    assert clone.model.elite_idx.tolist() == [0, 1, 2, 3, 4]  # all members until set_elites
    clone.load_state_dict(dyn.state_dict())
    assert clone.model.elite_idx.tolist() == [1, 2, 3]
    for propagation in ("fixed", "mean"):
        dyn.propagation = clone.propagation = propagation
        for a, b in zip(dyn(obs, action), clone(obs, action), strict=True):
            assert torch.equal(a, b)


def _linear_system_model(dyn):
    encoder = TensorDictModule(nn.Identity(), ["observation"], ["latent"])
    dynamics = TensorDictModule(dyn, in_keys=["latent", "action"], out_keys=[("next", "latent")])
    reward = TensorDictModule(
        lambda z: -(z**2).sum(-1, keepdim=True), [("next", "latent")], [("next", "reward")]
    )
    return WorldModel(encoder, dynamics, reward), dynamics


def test_imagined_rollout_tracks_a_learned_linear_system():
    generator = torch.Generator().manual_seed(0)
    n = 2000
    obs = torch.rand(n, 2, generator=generator) * 2 - 1
    action = torch.rand(n, 2, generator=generator) * 2 - 1
    data = TensorDict(
        {"observation": obs, "action": action, "next": {"observation": obs + 0.1 * action}}, [n]
    )
    dyn = EnsembleDynamics(2, 2, num_members=3, hidden=32, depth=2, sample=False)
    fit_ensemble(
        dyn, EnsembleNLLLoss(dyn), torch.optim.Adam(dyn.parameters(), lr=3e-3), data,
        batch_size=64, max_epochs=15, generator=generator,
    )
    world_model, dynamics = _linear_system_model(dyn)
    assert plain_modules(dynamics) == [dynamics]  # takes WorldModelEnv's fast path
    env = WorldModelEnv(
        world_model,
        observation_spec=Composite(latent=Unbounded((2,))),
        action_spec=Bounded(-1.0, 1.0, (2,)),
    )
    gain = torch.tensor([[-2.0, 0.5], [-0.5, -1.0]])
    policy = TensorDictModule(lambda z: torch.tanh(z @ gain.T + 0.3), ["latent"], ["action"])
    start = world_model.encode(TensorDict({"observation": torch.rand(8, 2) - 0.5}, [8]))
    with torch.no_grad():
        rollout = env.rollout(20, policy, tensordict=start)
        env.fast_rollout = False
        generic = env.rollout(20, policy, tensordict=start)
    torch.testing.assert_close(rollout["next", "latent"], generic["next", "latent"])
    true = [start["latent"]]
    for _ in range(20):
        x = true[-1]
        true.append(x + 0.1 * torch.tanh(x @ gain.T + 0.3))
    true = torch.stack(true[1:], dim=1)  # (8, 20, 2)
    assert rollout["next", "latent"].shape == (8, 20, 2)
    error = (rollout["next", "latent"] - true).abs().max()
    assert error < 0.03, error
    assert (true - start["latent"].unsqueeze(1)).abs().max() > 0.3  # the states do move


def test_sampled_imagined_rollouts_are_reproducible_with_a_seed():
    dyn = EnsembleDynamics(2, 1, num_members=5, hidden=8, depth=1, propagation="random")
    world_model, _ = _linear_system_model(dyn)
    env = WorldModelEnv(
        world_model,
        observation_spec=Composite(latent=Unbounded((2,))),
        action_spec=Bounded(-1.0, 1.0, (1,)),
    )
    policy = TensorDictModule(lambda z: torch.tanh(z[..., :1]), ["latent"], ["action"])
    start = TensorDict({"latent": torch.randn(4, 10, 2)}, [4, 10])  # candidates x particles
    with torch.no_grad():
        torch.manual_seed(5)
        first = env.rollout(6, policy, tensordict=start)
        torch.manual_seed(5)
        second = env.rollout(6, policy, tensordict=start)
        third = env.rollout(6, policy, tensordict=start)
    assert torch.equal(first["next", "latent"], second["next", "latent"])
    assert not torch.equal(first["next", "latent"], third["next", "latent"])


def test_inference_path_equals_training_path_exactly():
    """The no-grad planning path (direct baddbmm, in-place SiLU) computes the same numbers."""
    from reverie.modules import GaussianEnsemble

    torch.manual_seed(0)
    ens = GaussianEnsemble(4, 3, num_members=5, hidden=16, depth=3, num_elites=3)
    ens.set_elites(torch.tensor([0.3, 0.1, 0.5, 0.2, 0.4]))
    x = torch.randn(11, 4)
    for propagation in ("fixed", "mean"):
        mean_g, logvar_g = ens(x, propagation=propagation)
        with torch.no_grad():
            mean_n, logvar_n = ens(x, propagation=propagation)
        assert torch.equal(mean_g.detach(), mean_n) and torch.equal(logvar_g.detach(), logvar_n)


def test_fit_refuses_a_nan_observation_before_touching_the_model():
    from reverie.validation import NonFiniteError

    data = _sine_data(100, lambda x: torch.full_like(x, 0.1), torch.Generator().manual_seed(0))
    data["next", "observation"][17, 0] = float("nan")
    dyn = EnsembleDynamics(1, 1, num_members=3, num_elites=2, hidden=8, depth=1)
    before = [p.detach().clone() for p in dyn.parameters()]
    with pytest.raises(NonFiniteError, match=r"fit_ensemble: \('next', 'observation'\).*\(17, 0\)"):
        fit_ensemble(dyn, EnsembleNLLLoss(dyn), torch.optim.Adam(dyn.parameters()), data)
    assert all(torch.equal(a, b) for a, b in zip(before, dyn.parameters(), strict=True))


def test_a_batch_of_another_dtype_names_the_key():
    dyn = EnsembleDynamics(2, 1, num_members=3, hidden=8, depth=1)
    batch = TensorDict({"observation": torch.randn(5, 2, dtype=torch.float64),
                        "action": torch.randn(5, 1), "next": {"observation": torch.randn(5, 2)}}, [5])
    with pytest.raises(TypeError, match=r"'observation' is torch.float64 but the ensemble is torch.float32"):
        EnsembleNLLLoss(dyn)(batch)
