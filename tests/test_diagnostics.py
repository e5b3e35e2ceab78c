"""Tests for reverie.diagnostics: open-loop prediction, error table, plots."""

from __future__ import annotations

import csv
import doctest
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

import reverie.diagnostics.open_loop as open_loop_module
from reverie.diagnostics import (
    decoded_observation,
    open_loop_predict,
    plot_open_loop,
    prediction_errors,
    run_diagnostics,
    write_error_table,
)
from reverie.modules import WorldModel

torch.set_num_threads(1)

DTYPE = torch.float64
OBS_DIM, ACT_DIM = 3, 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- a known system
def _rotation(theta: float, radius: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return radius * torch.tensor([[c, -s], [s, c]], dtype=DTYPE)


def _system_a(theta: float = 0.3, radius: float = 0.99) -> torch.Tensor:
    a = torch.zeros(OBS_DIM, OBS_DIM, dtype=DTYPE)
    a[:2, :2] = _rotation(theta, radius)
    a[2, 2] = 0.9
    return a


B = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.05, 0.05]], dtype=DTYPE)


def _reward(x: torch.Tensor) -> torch.Tensor:
    return -x.pow(2).sum(-1, keepdim=True)


class LinearDynamics(torch.nn.Module):
    """x' = A x + B a with fixed matrices."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T + action @ self.b.T


class Reward(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _reward(x)


def _linear_world_model(a: torch.Tensor) -> WorldModel:
    """Latent = observation (identity encoder), dynamics A x + B a, reward -|x'|^2."""
    return WorldModel(
        TensorDictModule(torch.nn.Identity(), ["observation"], ["latent"]),
        TensorDictModule(LinearDynamics(a, B), ["latent", "action"], [("next", "latent")]),
        TensorDictModule(Reward(), [("next", "latent")], [("next", "reward")]),
    )


def _true_trajectory(n_steps: int, seed: int = 0, a: torch.Tensor | None = None) -> TensorDict:
    """T transitions of the true linear system under random actions."""
    a = _system_a() if a is None else a
    gen = torch.Generator().manual_seed(seed)
    obs = torch.zeros(n_steps + 1, OBS_DIM, dtype=DTYPE)
    obs[0] = torch.randn(OBS_DIM, generator=gen, dtype=DTYPE)
    actions = torch.randn(n_steps, ACT_DIM, generator=gen, dtype=DTYPE)
    for t in range(n_steps):
        obs[t + 1] = a @ obs[t] + B @ actions[t]
    return TensorDict(
        {
            "observation": obs[:-1],
            "action": actions,
            "next": {
                "observation": obs[1:],
                "reward": _reward(obs[1:]),
                "done": torch.zeros(n_steps, 1, dtype=torch.bool),
            },
        },
        batch_size=[n_steps],
    )


NEXT_LATENT = ("next", "latent")


# --------------------------------------------------------------------------- open_loop_predict
def test_exact_model_has_zero_error_at_every_horizon():
    traj = _true_trajectory(80)
    result = open_loop_predict(
        _linear_world_model(_system_a()), traj, 50, predicted_observation=NEXT_LATENT
    )
    assert result.predicted_observation.shape == (31, 50, OBS_DIM)
    assert result.true_observation.shape == (31, 50, OBS_DIM)
    assert result.predicted_reward.shape == result.true_reward.shape == (31, 50, 1)
    assert result.initial_observation.shape == (31, OBS_DIM)
    assert result.start.tolist() == list(range(31))
    errors = prediction_errors(result)
    assert errors["horizon"] == list(range(1, 51))
    assert max(errors["obs_rmse"]) < 1e-10
    assert max(errors["reward_rmse"]) < 1e-10
    assert max(max(row) for row in errors["obs_rmse_per_dim"]) < 1e-10
    # the trajectory moves: the constant baseline is far from zero
    assert min(errors["baseline_obs_rmse"]) > 1e-2


def test_perturbed_model_error_grows_and_k1_by_hand():
    traj = _true_trajectory(80)
    a_true, a_model = _system_a(), _system_a(theta=0.33, radius=1.0)
    horizon = 30
    result = open_loop_predict(
        _linear_world_model(a_model), traj, horizon, predicted_observation=NEXT_LATENT
    )
    errors = prediction_errors(result)
    rmse = errors["obs_rmse"]
    assert all(later > earlier for earlier, later in zip(rmse, rmse[1:], strict=False))
    assert rmse[-1] > 10 * rmse[0]

    # k = 1 by hand: the error is (A_model - A_true) o_s for every start s
    starts = traj["observation"][: 80 - horizon + 1]
    diff = starts @ (a_model - a_true).T
    assert rmse[0] == pytest.approx(diff.pow(2).mean().sqrt().item(), rel=1e-10)
    per_dim = diff.pow(2).mean(0).sqrt().tolist()
    assert errors["obs_rmse_per_dim"][0] == pytest.approx(per_dim, rel=1e-10)
    pred_next = starts @ a_model.T + traj["action"][: 80 - horizon + 1] @ B.T
    true_reward = traj["next", "reward"][: 80 - horizon + 1]
    reward_rmse = (_reward(pred_next) - true_reward).pow(2).mean().sqrt().item()
    assert errors["reward_rmse"][0] == pytest.approx(reward_rmse, rel=1e-10)


def test_constant_baseline_matches_hand_computation():
    traj = _true_trajectory(40, seed=3)
    horizon = 7
    errors = prediction_errors(
        open_loop_predict(
            _linear_world_model(_system_a()), traj, horizon, predicted_observation=NEXT_LATENT
        )
    )
    obs, next_obs = traj["observation"], traj["next", "observation"]
    n_starts = 40 - horizon + 1
    for k in range(1, horizon + 1):
        sq = [(next_obs[s + k - 1] - obs[s]).pow(2) for s in range(n_starts)]
        sq = torch.stack(sq)  # (S, D)
        assert errors["baseline_obs_rmse"][k - 1] == pytest.approx(
            sq.mean().sqrt().item(), rel=1e-12
        )
        assert errors["baseline_obs_rmse_per_dim"][k - 1] == pytest.approx(
            sq.mean(0).sqrt().tolist(), rel=1e-12
        )


class Counting(torch.nn.Module):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.module(x)


def _nonlinear_world_model(seed: int = 0, latent_dim: int = 4) -> WorldModel:
    torch.manual_seed(seed)
    encoder = Counting(torch.nn.Linear(OBS_DIM, latent_dim).double())
    dynamics = torch.nn.Sequential(
        torch.nn.Linear(latent_dim + ACT_DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, latent_dim)
    ).double()
    return WorldModel(
        TensorDictModule(encoder, ["observation"], ["latent"]),
        TensorDictModule(dynamics, ["latent", "action"], [("next", "latent")]),
        TensorDictModule(
            torch.nn.Linear(latent_dim, 1).double(), [("next", "latent")], [("next", "reward")]
        ),
        decoder=TensorDictModule(
            torch.nn.Linear(latent_dim, OBS_DIM).double(), ["latent"], ["reconstructed_observation"]
        ),
    )


def test_matches_hand_written_open_loop_rollout():
    """Batched prediction == a plain loop: encode o_s once, then z <- dyn(z, a), decode z."""
    traj = _true_trajectory(20, seed=1)
    wm = _nonlinear_world_model()
    horizon = 6
    result = open_loop_predict(wm, traj, horizon, predicted_observation=decoded_observation(wm))
    assert wm.encoder.module.calls == 1  # all starts encoded at once, never re-encoded
    enc, dyn = wm.encoder.module.module, wm.dynamics.module
    rew, dec = wm.reward_head.module, wm.decoder.module
    with torch.no_grad():
        for s in range(20 - horizon + 1):
            z = enc(traj["observation"][s])
            for k in range(horizon):
                z = dyn(torch.cat([z, traj["action"][s + k]]))
                torch.testing.assert_close(result.predicted_observation[s, k], dec(z))
                torch.testing.assert_close(result.predicted_reward[s, k], rew(z))
                torch.testing.assert_close(
                    result.true_observation[s, k], traj["next", "observation"][s + k]
                )
                torch.testing.assert_close(result.true_reward[s, k], traj["next", "reward"][s + k])

    # a hand-written callable on the carried latent gives the same thing
    again = open_loop_predict(
        wm,
        traj,
        horizon,
        predicted_observation=lambda td: wm.decode(td)["reconstructed_observation"],
    )
    torch.testing.assert_close(again.predicted_observation, result.predicted_observation)


def test_decoder_callable_recovers_exact_model():
    """Latent z = W o, dynamics conjugated by W, decoder W^-1: predictions are exact."""
    a = _system_a()
    w = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, -1.0], [0.3, 0.0, 1.5]], dtype=DTYPE)
    w_inv = torch.linalg.inv(w)
    encoder = torch.nn.Linear(OBS_DIM, OBS_DIM, bias=False).double()
    decoder = torch.nn.Linear(OBS_DIM, OBS_DIM, bias=False).double()
    with torch.no_grad():
        encoder.weight.copy_(w)
        decoder.weight.copy_(w_inv)

    class DecodedReward(torch.nn.Module):
        def forward(self, z):
            return _reward(z @ w_inv.T)

    wm = WorldModel(
        TensorDictModule(encoder, ["observation"], ["latent"]),
        TensorDictModule(LinearDynamics(w @ a @ w_inv, w @ B), ["latent", "action"], [NEXT_LATENT]),
        TensorDictModule(DecodedReward(), [NEXT_LATENT], [("next", "reward")]),
        decoder=TensorDictModule(decoder, ["latent"], ["reconstructed_observation"]),
    )
    traj = _true_trajectory(30)
    result = open_loop_predict(wm, traj, 10, predicted_observation=decoded_observation(wm))
    errors = prediction_errors(result)
    assert max(errors["obs_rmse"]) < 1e-10
    assert max(errors["reward_rmse"]) < 1e-10
    # reading the latent itself is not the observation here: it is visibly wrong
    wrong = prediction_errors(open_loop_predict(wm, traj, 10, predicted_observation=NEXT_LATENT))
    assert min(wrong["obs_rmse"]) > 1e-2


def test_batched_trajectories_equal_separate_calls():
    trajs = [_true_trajectory(25, seed=seed) for seed in (0, 1)]
    wm = _linear_world_model(_system_a(theta=0.35))
    both = open_loop_predict(wm, torch.stack(trajs), 5, predicted_observation=NEXT_LATENT)
    assert both.num_starts == 2 * 21
    assert both.trajectory_index.tolist() == [0] * 21 + [1] * 21
    for i, traj in enumerate(trajs):
        alone = open_loop_predict(wm, traj, 5, predicted_observation=NEXT_LATENT)
        rows = both.trajectory_index == i
        torch.testing.assert_close(both.predicted_observation[rows], alone.predicted_observation)
        torch.testing.assert_close(both.true_observation[rows], alone.true_observation)
        torch.testing.assert_close(both.predicted_reward[rows], alone.predicted_reward)


def test_windows_crossing_an_episode_end_are_skipped():
    first, second = _true_trajectory(12, seed=0), _true_trajectory(12, seed=1)
    first["next", "done"][-1] = True
    traj = torch.cat([first, second])  # two episodes back to back, T = 24
    horizon = 4
    result = open_loop_predict(
        _linear_world_model(_system_a()), traj, horizon, predicted_observation=NEXT_LATENT
    )
    # a window may end on the done step (s = 8) but not contain it earlier (s = 9, 10, 11)
    expected = [s for s in range(24 - horizon + 1) if not 9 <= s <= 11]
    assert result.start.tolist() == expected
    assert max(prediction_errors(result)["obs_rmse"]) < 1e-10

    short = _true_trajectory(6)
    short["next", "done"][2] = True
    with pytest.raises(ValueError, match="crosses an episode end"):
        open_loop_predict(
            _linear_world_model(_system_a()), short, 5, predicted_observation=NEXT_LATENT
        )


def test_too_short_trajectory_raises_naming_t_and_h(tmp_path):
    traj = _true_trajectory(10)
    wm = _linear_world_model(_system_a())
    with pytest.raises(ValueError, match=r"T=10.*H=20") as info:
        open_loop_predict(wm, traj, 20, predicted_observation=NEXT_LATENT)
    assert "longer" in str(info.value) and "smaller horizon" in str(info.value)
    with pytest.raises(ValueError, match=r"T=10.*H=50"):
        run_diagnostics(wm, traj, tmp_path / "diag", predicted_observation=NEXT_LATENT)
    assert not (tmp_path / "diag").exists()
    # exactly H transitions is enough: one start
    assert open_loop_predict(wm, traj, 10, predicted_observation=NEXT_LATENT).num_starts == 1


def test_bad_arguments():
    traj = _true_trajectory(10)
    wm = _linear_world_model(_system_a())
    with pytest.raises(ValueError, match="off by one"):
        open_loop_predict(wm, traj, 3, predicted_observation="latent")
    with pytest.raises(ValueError, match="horizon"):
        open_loop_predict(wm, traj, 0, predicted_observation=NEXT_LATENT)
    with pytest.raises(KeyError, match="reconstructed"):
        open_loop_predict(wm, traj, 3, predicted_observation=("next", "reconstructed"))
    with pytest.raises(ValueError, match="features"):
        open_loop_predict(wm, traj, 3, predicted_observation=lambda td: td["latent"][:, :2])


def test_eval_mode_used_and_restored():
    wm = _nonlinear_world_model()
    seen = []
    wm.dynamics.module.register_forward_hook(lambda m, i, o: seen.append(m.training))
    wm.train()
    open_loop_predict(wm, _true_trajectory(8), 3, predicted_observation=decoded_observation(wm))
    assert seen == [False] * 3
    assert all(m.training for m in wm.modules())


# --------------------------------------------------------------------------- outputs
def test_run_diagnostics_writes_files(tmp_path):
    traj = _true_trajectory(70)
    wm = _linear_world_model(_system_a(theta=0.32))
    out = tmp_path / "diagnostics"
    errors = run_diagnostics(
        wm, traj, out, predicted_observation=NEXT_LATENT, obs_labels=["x", "y", "z"]
    )
    assert errors["num_starts"] == 21 and len(errors["obs_rmse"]) == 50
    for name in ("imagined_vs_real.png", "prediction_error.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    with open(out / "prediction_error.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 50
    assert [int(r["k"]) for r in rows] == list(range(1, 51))
    assert float(rows[4]["obs_rmse"]) == pytest.approx(errors["obs_rmse"][4])
    assert float(rows[4]["obs_rmse/y"]) == pytest.approx(errors["obs_rmse_per_dim"][4][1])
    assert float(rows[0]["baseline_obs_rmse/z"]) == pytest.approx(
        errors["baseline_obs_rmse_per_dim"][0][2]
    )
    md = (out / "prediction_error.md").read_text().splitlines()
    assert md[0].startswith("| k | obs RMSE | constant baseline")
    assert [line.split("|")[1].strip() for line in md[2:]] == ["1", "5", "10", "25", "50"]


def test_table_and_plots_for_short_horizon(tmp_path):
    traj = _true_trajectory(30)
    result = open_loop_predict(
        _linear_world_model(_system_a()), traj, 12, predicted_observation=NEXT_LATENT
    )
    errors = prediction_errors(result)
    write_error_table(errors, tmp_path / "e.csv", tmp_path / "e.md", horizons=(1, 5, 10, 25))
    md = (tmp_path / "e.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md[2:]] == ["1", "5", "10", "12"]
    assert float(md[2].split("|")[4]) < 1e-10  # model / baseline ratio of an exact model
    png = plot_open_loop(result, tmp_path / "sub" / "ol.png", start=3)
    assert png.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="labels"):
        plot_open_loop(result, tmp_path / "x.png", obs_labels=["only one"])


def test_docstring_examples_run():
    failures, attempted = doctest.testmod(open_loop_module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failures == 0
