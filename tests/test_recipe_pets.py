"""PETS: a tiny learning test on a toy task with known dynamics, and the recipe's smoke run."""

import json

import pytest
import torch

from reverie.algorithms import pets
from reverie.cli import main


def test_pets_learns_to_reach_the_point_mass_target(tmp_path):
    """Doing nothing scores about -50; reaching x = 1 and holding it scores above -10."""
    config = pets.Config(
        env="reverie/PointMass1D-v0", episodes=3, random_episodes=1, max_episode_steps=50,
        eval_episodes=2, hidden=32, depth=2, horizon=12, candidates=64, elites=8,
        iterations=3, max_epochs=30, diagnostics_horizon=10, run_dir=str(tmp_path / "run"),
        progress=False, seed=0,
    )
    summary = pets.train(config)
    assert summary["env_steps"] == 150
    assert summary["eval/return"] > -12.0, summary


@pytest.mark.parametrize(("reward", "planner"), [("known", "mppi"), ("learned", "icem")])
def test_pets_debug_run_through_the_cli(tmp_path, reward, planner):
    run_dir = tmp_path / reward
    code = main(["train", "pets", "--env", "Pendulum-v1", "--preset", "debug",
                 f"reward={reward}", f"planner={planner}", f"run_dir={run_dir}", "progress=false"])
    assert code == 0
    for name in ["config.json", "metrics.csv", "learning_curve.png", "checkpoint.pt",
                 "summary.json", "diagnostics/imagined_vs_real.png"]:
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 120 and len(summary["eval/returns"]) == 1
    assert json.loads((run_dir / "config.json").read_text())["config"]["planner"] == planner
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["loop"]["batches"] == 3 and state["loop"]["updates"] == 3  # the last batch is fitted too
    assert main(["eval", str(run_dir)]) == 0  # reverie eval reloads the model
    (folder,) = (run_dir / "eval").iterdir()
    assert json.loads((folder / "summary.json").read_text())["eval/returns"] == summary["eval/returns"]
    optimizers = state["agent"]["_extra_state"]["optimizers"]
    assert set(optimizers) == ({"model", "reward"} if reward == "learned" else {"model"})


def test_make_planner_builds_each_planner():
    from torchrl.data import Bounded

    from reverie.planners import CEMPlanner, ICEMPlanner, MPPIPlanner

    spec = Bounded(-2.0, 2.0, (1,))
    for name, cls in [("cem", CEMPlanner), ("mppi", MPPIPlanner), ("icem", ICEMPlanner)]:
        planner = pets.make_planner(pets.Config(planner=name, horizon=7), spec)
        assert type(planner) is cls and planner.horizon == 7


def test_known_reward_required_for_reward_known(tmp_path):
    config = pets.Config(env="MountainCarContinuous-v0", run_dir=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="reward=learned"):
        pets.make_world_model(config, 2, 1)


def test_pets_on_a_terminating_mujoco_task(tmp_path):
    """InvertedPendulum-v5: float64 observations, a known termination, short random episodes."""
    pytest.importorskip("mujoco")
    config = pets.Config(env="InvertedPendulum-v5", episodes=2, max_episode_steps=30,
                         eval_episodes=1, hidden=16, max_epochs=3, candidates=16, elites=4,
                         iterations=1, horizon=5, run_dir=str(tmp_path / "ip"), progress=False)
    summary = pets.train(config)
    assert 0 < summary["env_steps"] <= 60
    assert summary["eval/return"] >= 1
