"""PILCO recipe: a tiny learning test on a toy task, the debug run, eval and resume."""

import json

import torch

from reverie.algorithms import pilco
from reverie.cli import main


def test_pilco_learns_to_reach_the_point_mass_target(tmp_path):
    """Doing nothing scores about -30 over 30 steps; reaching x = 1 and holding it about -8."""
    config = pilco.Config(env="reverie/PointMass1D-v0", trials=2, n_basis=10, policy_iters=20,
                          eval_episodes=2, run_dir=str(tmp_path / "run"), progress=False, seed=0)
    summary = pilco.train(config)
    assert summary["eval/return"] > -15.0, summary
    assert summary["env_steps"] in (60, 90)  # 1 random trial + 1 or 2 (stops when solved)


def test_pilco_debug_run_eval_and_resume(tmp_path):
    run_dir = tmp_path / "cartpole"
    args = ["train", "pilco", "--preset", "debug", f"run_dir={run_dir}", "progress=false"]
    assert main([*args, "trials=1"]) == 0
    for name in ["config.json", "metrics.csv", "learning_curve.png", "checkpoint.pt",
                 "summary.json", "diagnostics/imagined_vs_real.png"]:
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"solved", "trials", "eval/return", "eval/solved_fraction"} <= set(summary)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["loop"]["batches"] == 2 and state["buffer"]["_storage"]["_storage"]["observation"].shape == (20, 6)
    assert main(["eval", str(run_dir)]) == 0  # reloads the controller
    (folder,) = (run_dir / "eval").iterdir()
    assert json.loads((folder / "summary.json").read_text())["eval/returns"] == summary["eval/returns"]

    # resume with a larger budget: the data and the GP carry over, one more trial runs
    assert main(["train", "--resume", str(run_dir), "trials=2"]) == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["loop"]["batches"] == 3 and state["buffer"]["_storage"]["_storage"]["observation"].shape == (30, 6)
    steps = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and max(steps) == 30


def test_task_success_criteria():
    cos = pilco.TASKS["reverie/CartPoleSwingUp-v0"].success
    assert cos(torch.tensor([0.0, 0.0, 0.99, 0.1, 0.0, 0.1])) and not cos(torch.tensor([0.0, 0.0, 0.9, 0.4, 0.0, 0.4]))
    angle = pilco.TASKS["InvertedPendulum-v5"].success
    assert angle(torch.tensor([0.0, 0.1, 0.0, 0.0])) and not angle(torch.tensor([0.0, -0.3, 0.0, 0.0]))


def test_pendulum_starts_down_and_observes_the_unwrapped_angle():
    task = pilco.TASKS["Pendulum-v1"]
    assert task.start_down
    env = pilco.make_env(pilco.Config(env="Pendulum-v1"))
    env.set_seed(0)
    td = env.reset()
    obs = td["observation"]
    assert obs.shape == (4,) and obs.dtype == torch.float64
    assert obs[0] < -0.9 and abs(obs[3] - torch.pi) < 0.5  # hanging down: cos = -1, theta ~ pi
    rollout = env.rollout(30, break_when_any_done=False)
    o = rollout["next", "observation"]
    torch.testing.assert_close(o[:, 0], torch.cos(o[:, 3]), rtol=0, atol=1e-6)
    torch.testing.assert_close(o[:, 1], torch.sin(o[:, 3]), rtol=0, atol=1e-6)
    # the angle is continuous: each decision (2 frames of 0.05 s) moves it by less than pi
    assert (o[1:, 3] - o[:-1, 3]).abs().max() < torch.pi
