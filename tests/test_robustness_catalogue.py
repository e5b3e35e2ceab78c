"""Bad inputs and faults of docs/robustness.md that no other test file covers.

Each test is small (no training beyond the toy recipe's debug preset) and proves one row,
or a few related rows, of the catalogue: the error type, what its message names, and what
happens to the data or the run folder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from reverie.cli import main
from reverie.runs import CheckpointError, load_checkpoint, save_checkpoint
from tests.helpers import SpecOnlyEnv, make_world_model, start_td

DT = torch.float64
DEBUG = ["--preset", "debug"]  # toy recipe: 240 env steps in batches of 4, checkpoint every 80




def _files(run_dir: Path) -> dict[Path, bytes]:
    """Every file of a run folder with its bytes, without the lock file."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


def _interrupted_toy_run(tmp_path: Path, capsys) -> Path:
    """A toy run killed after step 100: checkpoint at step 80, resumable."""
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, f"run_dir={run}", "stop_after=100"]) == 130
    capsys.readouterr()
    return run


# ------------------------------------------------------------------ modules, keys, dtypes
def _missing_key_cases():
    """(call, [fragments its KeyError message must hold]): the component, the missing key and
    a key that is present (every message lists the keys the input holds)."""
    from reverie.modules.ensemble import EnsembleDynamics
    from reverie.modules.gp_world_model import GPWorldModel
    from reverie.objectives import WorldModelLoss
    from reverie.objectives.ensemble_fit import fit_ensemble
    from reverie.objectives.ensemble_loss import EnsembleNLLLoss
    from reverie.objectives.saturating_cost import ExponentialQuadraticCost

    wm = make_world_model()
    transitions = TensorDict({"observation": torch.randn(6, 3), "action": torch.randn(6, 1),
                              ("next", "observation"): torch.randn(6, 3),
                              ("next", "reward"): torch.randn(6, 1)}, [6])
    dyn = EnsembleDynamics(3, 1, num_members=2, hidden=8, depth=1)
    no_next = transitions.exclude(("next", "observation"))
    cost = ExponentialQuadraticCost(torch.zeros(2, dtype=DT), torch.eye(2, dtype=DT))
    belief = TensorDict({("observation", "mean"): torch.zeros(4, 2, dtype=DT)}, [4])
    return {
        "WorldModel": (lambda: wm.step(TensorDict({"action": torch.randn(2, 1)}, [2])),
                       ["WorldModel.dynamics", "'latent'", "it holds ['action']"]),
        "WorldModelLoss": (lambda: WorldModelLoss(wm)(transitions.exclude(("next", "reward"))),
                           ["WorldModelLoss", "('next', 'reward')", "keys:", "'action'"]),
        "EnsembleNLLLoss": (lambda: EnsembleNLLLoss(dyn)(no_next),
                            ["EnsembleNLLLoss", "('next', 'observation')", "keys:", "'action'"]),
        "fit_ensemble": (lambda: fit_ensemble(dyn, EnsembleNLLLoss(dyn), torch.optim.Adam(dyn.parameters()),
                                              no_next),
                         ["fit_ensemble", "('next', 'observation')", "it holds", "'action'"]),
        "GPWorldModel": (lambda: GPWorldModel(3, 1).set_data(no_next.double(), **{
            "lengthscales": torch.ones(3, 4, dtype=DT), "signal_var": torch.ones(3, dtype=DT),
            "noise_var": torch.ones(3, dtype=DT)}),
                         ["GPWorldModel", "('next', 'observation')", "it has", "'action'"]),
        "ExponentialQuadraticCost": (lambda: cost(belief),
                                     ["ExponentialQuadraticCost", "('observation', 'var')", "keys:",
                                      "('observation', 'mean')"]),
    }


@pytest.mark.parametrize("component", ["WorldModel", "WorldModelLoss", "EnsembleNLLLoss", "fit_ensemble",
                                       "GPWorldModel", "ExponentialQuadraticCost"])
def test_a_missing_key_names_the_component_the_key_and_the_keys_present(component):
    call, fragments = _missing_key_cases()[component]
    with pytest.raises(KeyError) as info:
        call()
    message = info.value.args[0]
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_an_input_of_the_wrong_width_or_dtype_names_the_component_shape_and_dtype():
    from reverie.modules.components import ComponentError

    wm = make_world_model()  # float32 Linear encoder for 3-d observations
    wide = TensorDict({"observation": torch.randn(2, 5)}, [2])
    with pytest.raises(ComponentError, match=r"WorldModel\.encoder.*'observation' \(2, 5\) torch\.float32"):
        wm.encode(wide)
    double = TensorDict({"observation": torch.randn(2, 3, dtype=DT)}, [2])
    with pytest.raises(ComponentError, match=r"WorldModel\.encoder.*'observation' \(2, 3\) torch\.float64"):
        wm.encode(double)


def test_an_action_of_another_dtype_than_the_model_names_the_component_and_dtype():
    from reverie.envs import WorldModelEnv
    from reverie.modules.components import ComponentError

    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    td = env.reset(start_td(wm))
    td["action"] = torch.ones(5, 1, dtype=DT)
    with pytest.raises(ComponentError, match=r"WorldModel\.dynamics.*'action' \(5, 1\) torch\.float64"):
        env.step(td)


def test_rssm_world_model_filter_names_a_missing_key_and_needs_a_time_dim():
    from reverie.modules import RSSMPosterior, RSSMPrior, RSSMWorldModel

    prior = RSSMPrior(action_dim=2, hidden_dim=8, rnn_hidden_dim=6, state_dim=4)
    posterior = RSSMPosterior(hidden_dim=8, state_dim=4, rnn_hidden_dim=6, obs_embed_dim=5)
    wm = RSSMWorldModel(torch.nn.Linear(3, 5), prior, posterior, torch.nn.Linear(10, 1))
    trajectory = TensorDict({"observation": torch.randn(7, 3), "action": torch.zeros(7, 2)}, [7])
    with pytest.raises(KeyError, match=r"no 'action' \(it holds \['observation'\]\)"):
        wm.filter(trajectory.exclude("action"))
    with pytest.raises(ValueError, match=r"needs a time dim"):
        wm.filter(trajectory[0])


def test_mean_action_selector_names_the_missing_action_key():
    from torchrl.envs import GymEnv, TransformedEnv

    from reverie.envs import MeanActionSelector

    env = TransformedEnv(GymEnv("Pendulum-v1"), MeanActionSelector())
    td = env.reset()
    with pytest.raises(KeyError) as info:
        env.step(td)  # neither "action" nor ("action", "mean")
    message = info.value.args[0]
    assert "MeanActionSelector" in message and "('action', 'mean')" in message
    assert "the tensordict has" in message and "('observation', 'mean')" in message


def test_dreamer_model_losses_name_a_missing_key_and_the_keys_present():
    from reverie.objectives import DreamerModelLoss, DreamerV3ModelLoss

    # Dreamer v1: the true reward is read before the world model runs
    loss = DreamerModelLoss(TensorDictModule(torch.nn.Identity(), [("next", "observation")],
                                             [("next", "reco_observation")]))
    loss.set_keys(observation=("next", "observation"), reconstruction=("next", "reco_observation"))
    batch = TensorDict({"action": torch.zeros(2, 3, 1), ("next", "observation"): torch.randn(2, 3, 4)},
                       [2, 3])
    with pytest.raises(KeyError) as info:
        loss(batch)
    message = info.value.args[0]
    assert "DreamerModelLoss" in message and "('next', 'reward')" in message
    assert "'action'" in message and "('next', 'observation')" in message  # the keys present

    # DreamerV3: the reward and the termination flag
    class Fixed(torch.nn.Module):
        def forward(self, _):
            z = torch.zeros
            return z(1, 2, 1, 2), z(1, 2, 1, 2), z(1, 2, 3), z(1, 2, 255), z(1, 2, 1)

    names = ["posterior_logits", "prior_logits", "reco_observation", "reward_logits", "cont_logit"]
    v3 = DreamerV3ModelLoss(TensorDictModule(Fixed(), [("next", "observation")],
                                             [("next", k) for k in names]))
    full = TensorDict({("next", "observation"): torch.ones(1, 2, 3),
                       ("next", "reward"): torch.zeros(1, 2, 1),
                       ("next", "terminated"): torch.zeros(1, 2, 1, dtype=torch.bool)}, [1, 2])
    v3(full)  # complete: fine
    for key in (("next", "reward"), ("next", "terminated")):
        with pytest.raises(KeyError) as info:
            v3(full.exclude(key))
        message = info.value.args[0]
        assert "DreamerV3ModelLoss" in message and str(key) in message
        assert "('next', 'observation')" in message  # the keys present


def test_a_training_schedule_with_an_impossible_value_names_it():
    from reverie.training import Schedule

    with pytest.raises(ValueError, match=r"Schedule\.frames_per_batch must be >= 1, got 0"):
        Schedule(total_steps=10, frames_per_batch=0, random_steps=0, max_episode_steps=5)
    with pytest.raises(ValueError, match=r"Schedule\.random_steps must be >= 0, got -1"):
        Schedule(total_steps=10, frames_per_batch=2, random_steps=-1, max_episode_steps=5)


# ------------------------------------------------------------------ planners
def test_planner_arguments_are_checked_at_construction():
    from torchrl.data import Bounded

    from reverie.planners import CEMPlanner, ICEMPlanner, MPPIPlanner

    with pytest.raises(ValueError, match="horizon must be >= 1, got 0"):
        CEMPlanner([-1.0], [1.0], horizon=0)
    with pytest.raises(ValueError, match=r"low <= high.*low=\[1\.0\], high=\[-1\.0\]"):
        MPPIPlanner([1.0], [-1.0], horizon=3)
    with pytest.raises(ValueError, match=r"both have shape \(A,\)"):
        CEMPlanner([-1.0, -1.0], [1.0], horizon=3)
    for cls in (CEMPlanner, ICEMPlanner):
        with pytest.raises(ValueError, match="num_elites=9, num_candidates=8"):
            cls([-1.0], [1.0], 3, num_candidates=8, num_elites=9)
    with pytest.raises(ValueError, match="temperature > 0"):
        MPPIPlanner([-1.0], [1.0], 3, temperature=0.0)
    with pytest.raises(ValueError, match="init_std must be >= 0"):
        CEMPlanner([-1.0], [1.0], 3, init_std=-1.0)
    mixed = Bounded(torch.tensor([[-1.0], [-2.0]]), torch.tensor([[1.0], [2.0]]), (2, 1))
    with pytest.raises(ValueError, match="different bounds across its batch dims"):
        CEMPlanner(action_spec=mixed, horizon=3)
    with pytest.raises(TypeError, match="not both"):
        CEMPlanner([-1.0], [1.0], 3, action_spec=Bounded(-1.0, 1.0, (1,)))


# ------------------------------------------------------------------ fitting: GP
def _gp_data(n: int) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 2, generator=g, dtype=DT)
    act = torch.randn(n, 1, generator=g, dtype=DT)
    data = TensorDict({"observation": obs, "action": act,
                       ("next", "observation"): obs + 0.1 * torch.sin(obs)}, [n])
    return data


HYPER = {"lengthscales": torch.ones(2, 3, dtype=DT), "signal_var": torch.ones(2, dtype=DT),
         "noise_var": torch.full((2,), 0.01, dtype=DT)}


def test_gp_needs_two_transitions_and_finite_data():
    pytest.importorskip("gpytorch")
    pytest.importorskip("botorch")
    from reverie.modules.gp_world_model import GPWorldModel

    model = GPWorldModel(2, 1)
    for method in (lambda d: model.fit(d), lambda d: model.set_data(d, **HYPER)):
        for n in (0, 1):
            with pytest.raises(ValueError, match=f"need at least 2 transitions, got {n}"):
                method(_gp_data(n))
        for key, value in (("observation", "nan"), ("action", "inf"), (("next", "observation"), "-inf")):
            data = _gp_data(10)
            data.get(key)[3, 0] = float(value)
            with pytest.raises(ValueError, match=rf"{re.escape(repr(key))}.*1 non-finite value.*\(3, 0\)"):
                method(data)
    assert not model.is_fitted  # nothing was conditioned on the bad data


def test_gp_ill_conditioned_kernel_is_jittered_then_a_clear_error():
    from reverie.modules.gp_world_model import GPWorldModel

    # every point twice and no noise: a singular Gram matrix, fixed by the jitter retry
    data = torch.cat([_gp_data(10), _gp_data(10)])
    model = GPWorldModel(2, 1)
    model.set_data(data, lengthscales=HYPER["lengthscales"], signal_var=HYPER["signal_var"],
                   noise_var=torch.zeros(2, dtype=DT))
    mean, var = model.predict(data["observation"][:3], data["action"][:3])
    assert torch.isfinite(mean).all() and torch.isfinite(var).all()
    torch.testing.assert_close(mean, data["next", "observation"][:3], atol=1e-4, rtol=0)
    # a negative noise variance: no jitter helps; the error says what was tried
    broken = GPWorldModel(2, 1)
    with pytest.raises(torch.linalg.LinAlgError, match=r"not positive definite even with jitter"):
        broken.set_data(_gp_data(10), lengthscales=HYPER["lengthscales"],
                        signal_var=HYPER["signal_var"], noise_var=torch.full((2,), -5.0, dtype=DT))
    assert not broken.is_fitted


# ------------------------------------------------------------------ fitting: ensembles
def _ensemble(n: int):
    """``n`` transitions of a 1-d system and a 3-member ensemble (2 elites) to fit to them."""
    from reverie.modules.ensemble import EnsembleDynamics
    from reverie.objectives.ensemble_loss import EnsembleNLLLoss

    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    data = TensorDict({"observation": x, "action": torch.zeros(n, 1),
                       "next": {"observation": x + 0.1}}, [n])
    dyn = EnsembleDynamics(1, 1, num_members=3, num_elites=2, hidden=8, depth=1)
    return data, dyn, EnsembleNLLLoss(dyn), torch.optim.Adam(dyn.parameters())


@pytest.mark.parametrize(("n", "kwargs", "match"), [
    (0, {}, r"0 transitions leave none for training \(holdout=0\.2\)"),
    (1, {}, r"1 transitions leave none for training \(holdout=0\.2\)"),
    (10, {"holdout": 1.0}, r"holdout must be in \[0, 1\), got 1\.0"),
    (10, {"batch_size": 0}, r"must be >= 1, got 0, 1, 5"),
], ids=["empty", "one-transition", "all-held-out", "batch-size-0"])
def test_fit_ensemble_refuses_empty_and_too_small_datasets(n, kwargs, match):
    from reverie.objectives.ensemble_fit import fit_ensemble

    data, dyn, loss, opt = _ensemble(n)
    before = {k: v.clone() for k, v in dyn.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fit_ensemble(dyn, loss, opt, data, max_epochs=1, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in dyn.state_dict().items())  # untouched


def test_fit_ensemble_on_one_transition_without_holdout_fits_all_members():
    from reverie.objectives.ensemble_fit import fit_ensemble

    data, dyn, loss, opt = _ensemble(1)
    metrics = fit_ensemble(dyn, loss, opt, data, max_epochs=1, holdout=0.0)
    assert metrics["steps"] == 1 and len(metrics["holdout_mse"]) == 3
    assert len(metrics["elite_idx"]) == 2


# ------------------------------------------------------------------ data: episode boundaries
def test_dreamer_replay_slices_never_cross_an_episode_boundary():
    """Dreamer v1 samples ``batch_length`` steps of one episode (``SliceSampler`` on the
    episode ids, ``strict_length``): episodes shorter than a slice are never sampled."""
    from reverie.algorithms import dreamer
    from reverie.runs import resolve_config

    config = resolve_config(dreamer.Config, ["debug"], ["batch_length=8", "batch_size=16"])
    agent = dreamer.make_agent(config, dreamer.make_env(config), torch.device("cpu"))
    lengths = [5, 12, 9, 3, 20, 8]  # 5 and 3 are shorter than a slice
    episode = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    step = torch.cat([torch.arange(n) for n in lengths])
    n = episode.numel()
    end = torch.cat([torch.arange(k) == k - 1 for k in lengths])[:, None]
    batch = TensorDict({
        "observation": torch.randn(n, 3), "action": torch.zeros(n, 1), "is_init": (step == 0)[:, None],
        "episode": episode, ("next", "observation"): torch.randn(n, 3),
        ("next", "reward"): torch.ones(n, 1), ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        ("next", "truncated"): end, ("next", "done"): end}, [n])
    buffer = agent.make_buffer()
    buffer.extend(agent.store(batch))
    for _ in range(20):
        sample = buffer.sample().reshape(config.batch_size, config.batch_length)
        ids = sample["episode"]
        assert (ids == ids[:, :1]).all()  # one episode per slice
        assert not sample["is_init"][:, 1:].any()  # no episode start inside a slice
        assert not set(ids[:, 0].tolist()) & {0, 3}  # too-short episodes are not sampled


# ------------------------------------------------------------------ CLI
def test_cli_usage_errors_exit_2(toy, tmp_path, capsys):
    assert main(["train"]) == 2
    assert "missing ALGO (or --resume RUN_DIR)" in capsys.readouterr().err
    assert main(["train", "toy", "pets"]) == 2
    assert "expected one algorithm name, got ['toy', 'pets']" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    assert main(["train", "toy", "--seed", "abc"]) == 2
    assert "invalid int value: 'abc'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_eval_refuses_bad_arguments_with_exit_2(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, "total_steps=8", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "0"]) == 2
    assert "episodes must be >= 1, got 0" in capsys.readouterr().err
    missing = "cuda:99" if torch.cuda.is_available() else "cuda:7"
    assert main(["eval", str(run), "--device", missing]) == 2
    assert f"device='{missing}' is not available" in capsys.readouterr().err
    assert main(["eval", str(run), "nosuch=1"]) == 2
    assert "Unknown field 'nosuch'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "is not a reverie run folder" in capsys.readouterr().err
    assert not (run / "eval").exists()  # nothing was evaluated


def test_plot_with_keys_that_match_nothing_exits_2(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, "total_steps=8", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["plot", str(run), "--keys", "nomatch/*", "--out", str(tmp_path / "c.png")]) == 2
    assert "No metrics matching ['nomatch/*']" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_a_trained_agent_refuses_an_observation_of_another_shape(toy, tmp_path):
    from reverie import load_agent

    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, "total_steps=8", f"run_dir={run}"]) == 0
    agent = load_agent(run)
    assert agent.predict([0.0, 0.0, 0.0]).shape == (1,)
    with pytest.raises(ValueError, match=r"observation of shape \(4,\), the agent was trained on \(3,\)"):
        agent.predict([0.0, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------ runs, resume, checkpoints
def test_resume_under_another_algorithm_or_with_env_or_seed_is_refused(toy, tmp_path, capsys):
    run = _interrupted_toy_run(tmp_path, capsys)
    before = _files(run)
    assert main(["train", "pets", "--resume", str(run)]) == 2
    assert f"{run} is a 'toy' run, not 'pets'" in capsys.readouterr().err
    for flag, value in (("--env", "Other-v0"), ("--seed", "3")):
        assert main(["train", "--resume", str(run), flag, value]) == 2
        assert "cannot be combined with --resume" in capsys.readouterr().err
    assert _files(run) == before


def test_resume_from_the_checkpoint_of_another_model_changes_nothing(toy, tmp_path, capsys):
    """A checkpoint.pt whose agent state is another recipe's (other modules and optimisers):
    refused with a message before anything in the run folder changes."""
    run = _interrupted_toy_run(tmp_path, capsys)
    state = load_checkpoint(run / "checkpoint.pt")
    foreign = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    state["agent"] = {**foreign.state_dict(), "_extra_state": {"optimizers": {"adam": {}}}}
    save_checkpoint(run / "checkpoint.pt", state)
    before = _files(run)
    assert main(["train", "--resume", str(run), "stop_after=none"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "nothing in the run folder was changed" in err
    assert _files(run) == before


def test_resume_on_another_env_whose_shapes_differ_changes_nothing(tmp_path, capsys):
    """A worldmodel run on Pendulum-v1 resumed with env=MountainCarContinuous-v0: another
    task is another run, refused before the run folder changes."""
    run = tmp_path / "run"
    tiny = ["iterations=1", "random_episodes=1", "max_episode_steps=40", "fit_steps=20",
            "diagnostics_horizon=10", "plan_candidates=16", "progress=false"]
    assert main(["train", "worldmodel", "--env", "Pendulum-v1", *DEBUG, *tiny, f"run_dir={run}"]) == 0
    before = _files(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "env=MountainCarContinuous-v0"]) == 2
    err = capsys.readouterr().err
    assert "cannot be resumed with env='MountainCarContinuous-v0'" in err
    assert _files(run) == before


def test_resume_with_an_unreadable_checkpoint_and_no_previous_one_names_the_file(toy, tmp_path, capsys):
    run = _interrupted_toy_run(tmp_path, capsys)
    (run / "checkpoint.prev.pt").unlink(missing_ok=True)
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    before = _files(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"The checkpoint {path} (200 bytes)" in err and "truncated or corrupt" in err
    assert _files(run) == before  # config.json and metrics.csv as they were


def test_both_checkpoints_unreadable_is_an_error_naming_the_latest(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(100)})
    save_checkpoint(path, {"step": 2, "w": torch.ones(100)})
    path.write_bytes(b"")
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is empty \(0 bytes\)"):
        load_checkpoint(path)


class _NotAllowed:
    """Not a tensor, state dict or plain value: the safe loader refuses it."""


def test_a_checkpoint_holding_arbitrary_objects_is_refused_by_the_safe_loader(tmp_path):
    import pickle

    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "thing": _NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "weights_only=False" in message
    assert load_checkpoint(path, weights_only=False)["step"] == 1  # a file you trust


def test_a_full_disk_during_training_keeps_the_last_checkpoint_and_the_run_resumes(
        toy, tmp_path, capsys, monkeypatch):
    """The second checkpoint (step 160) hits a full disk: exit 2 with the reason, the step-80
    checkpoint is intact, no temporary file is left, and the run resumes to the end."""
    import errno

    run = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "toy", *DEBUG, f"run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "previous checkpoint is intact" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 80
    assert not list(run.glob(".checkpoint-*.tmp"))
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 240


def test_a_killed_process_releases_the_run_folder(toy, tmp_path, capsys):
    """The lock is held by a live process and dies with it (SIGKILL included)."""
    run = _interrupted_toy_run(tmp_path, capsys)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fh = open({str(run / '.lock')!r}, "a+")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.truncate(0); fh.write(f"pid {{os.getpid()}}\\n"); fh.flush()
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--resume", str(run), "stop_after=none"]) == 2
        assert f"is in use by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(run), "stop_after=none"]) == 0


# ------------------------------------------------------------------ imagination outputs and actions
def _diverging_world_model(at_step: int):
    """The helpers' linear world model whose dynamics return NaN from the ``at_step``-th call on."""
    wm = make_world_model()
    linear, calls = wm.dynamics.module, [0]

    class Diverging(torch.nn.Module):
        def forward(self, latent, action):
            calls[0] += 1
            out = linear(torch.cat([latent, action], -1))
            return out * float("nan") if calls[0] > at_step else out

    wm.dynamics.module = Diverging()
    return wm, calls


class _Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, latent):
        return torch.full((*latent.shape[:-1], 1), self.value)


@pytest.mark.parametrize("fast", [True, False])
def test_a_nan_from_the_world_model_during_imagination_names_the_key_and_step(fast):
    from reverie.envs import WorldModelEnv
    from reverie.validation import NonFiniteError

    wm, _ = _diverging_world_model(at_step=3)
    env = WorldModelEnv(wm, SpecOnlyEnv())
    env.fast_rollout = fast
    with pytest.raises(NonFiniteError, match=r"\('next', 'latent'\) is not finite at imagined step 3 "
                                             r"\(batch index \(0,\).*the world model produced it"):
        env.rollout(6, tensordict=start_td(wm))
    wm, _ = _diverging_world_model(at_step=3)
    env = WorldModelEnv(wm, SpecOnlyEnv(), check=False)  # opting out passes the NaN on
    assert env.rollout(6, tensordict=start_td(wm))["next", "latent"][:, 3:].isnan().all()


def test_a_nan_start_latent_and_a_single_step_are_checked_too():
    from reverie.envs import WorldModelEnv
    from reverie.validation import NonFiniteError

    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    start = start_td(wm)
    start["latent"][2, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"'latent' is not finite at imagined step 0 \(batch index "
                                             r"\(2,\).*the start of the rollout holds it"):
        env.rollout(4, tensordict=start)
    wm.reward_head.module = _Constant(float("nan"))  # one step, through env.step
    td = env.reset(start_td(wm)).set("action", torch.zeros(5, 1))
    with pytest.raises(NonFiniteError, match=r"\('next', 'reward'\) is not finite at imagined step 0"):
        env.step(td)


@pytest.mark.parametrize("fast", [True, False])
def test_an_out_of_bounds_action_given_to_an_imagination_env_is_refused(fast):
    from reverie.envs import ActionBoundsError, WorldModelEnv

    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())  # Bounded(-1, 1) actions
    env.fast_rollout = fast
    policy = TensorDictModule(lambda latent: latent[..., :1] * 0 + torch.tensor([0.5, 100.0, 0.5, 0.5, 0.5])[:, None],
                              ["latent"], ["action"])
    with pytest.raises(ActionBoundsError, match=r"'action' at imagined step 0 \(batch index \(1,\), element "
                                                r"\(0,\)\) is 100.0, outside the action spec's bounds \[-1.0, 1.0\]"):
        env.rollout(3, policy, tensordict=start_td(wm))
    td = env.reset(start_td(wm)).set("action", torch.full((5, 1), -1.5))
    with pytest.raises(ActionBoundsError, match="is -1.5, outside"):
        env.step(td)
    inside = env.rollout(3, policy=None, tensordict=start_td(wm))  # random actions stay inside
    assert inside["action"].abs().max() <= 1


def test_planners_still_rank_nan_candidates_last_through_an_imagination_env():
    from reverie.envs import WorldModelEnv
    from reverie.planners import CEMPlanner, rollout_objective

    wm = make_world_model()
    wm.reward_head.module = _Constant(float("nan"))
    env = WorldModelEnv(wm, SpecOnlyEnv(), batch_size=[])
    objective = rollout_objective(env, start_td(wm, batch=(2,)))
    values = objective(torch.zeros(2, 4, 3, 1))  # the env's own checks are off for planners
    assert values.shape == (2, 4) and values.isnan().all()
    with pytest.raises(ValueError, match="finite"):
        CEMPlanner(action_spec=SpecOnlyEnv().action_spec, horizon=3, num_candidates=8, num_elites=2,
                   iterations=1).plan(objective, batch_shape=torch.Size([2]))


@pytest.mark.parametrize("constant", [0.7, -3.0, 0.0])
def test_a_gp_fitted_on_constant_targets_predicts_the_constant(constant):
    pytest.importorskip("gpytorch")
    from reverie.modules import GPWorldModel

    data = _gp_data(30)
    obs = data["observation"]
    nxt = data["next", "observation"].clone()
    nxt[:, 0] = obs[:, 0] + constant  # the change of output 0 is the same everywhere
    data["next", "observation"] = nxt
    gp = GPWorldModel(2, 1).double()
    gp.fit(data)
    test = torch.randn(7, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    mean, var = gp.predict(test, torch.zeros(7, 1, dtype=DT))
    assert torch.allclose(mean[:, 0] - test[:, 0], torch.full((7,), constant, dtype=DT), atol=1e-4)
    assert (var[:, 0] < 1e-4 * max(1.0, constant**2)).all()  # the constant is known, not noise
    other = GPWorldModel(2, 1).double()  # output 1 fits as without the constant output
    other.fit(_gp_data(30))
    assert torch.equal(gp.signal_var[1], other.signal_var[1])


def test_finite_values_whose_sum_overflows_pass_the_rollout_check():
    from reverie.envs import check_rollout

    td = TensorDict({"latent": torch.full((2, 3, 4), 3e38), "next": {"reward": torch.zeros(2, 3, 1)}}, [2, 3])
    check_rollout(td, where="test", batch_dims=1)  # the float32 sum is inf, every value is finite
    td["latent"][1, 2, 0] = float("-inf")
    with pytest.raises(Exception, match=r"'latent' is not finite at imagined step 1 \(batch index \(1,\)"):
        check_rollout(td, where="test", batch_dims=1)
