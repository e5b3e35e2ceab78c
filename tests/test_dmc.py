"""DeepMind Control Suite tasks by name (issue 18, item 4): ``--env dmc/<domain>-<task>``."""

from __future__ import annotations

import json

import pytest

from reverie.cli import main
from reverie.envs.tasks import dmc_task, make_task_env


def test_dmc_names_parse_and_a_malformed_one_is_named():
    assert dmc_task("dmc/cartpole-swingup") == ("cartpole", "swingup")
    assert dmc_task("dmc/ball_in_cup-catch") == ("ball_in_cup", "catch")
    assert dmc_task("Pendulum-v1") is None
    with pytest.raises(ValueError, match=r"env='dmc/cartpole': DeepMind Control tasks are named dmc/<domain>-<task>"):
        dmc_task("dmc/cartpole")


def test_a_dmc_task_is_one_float32_observation_with_bounded_float32_actions():
    pytest.importorskip("dm_control")
    import torch

    env = make_task_env("dmc/cartpole-swingup")
    obs = env.observation_spec["observation"]
    assert obs.shape == (5,) and obs.dtype == torch.float32  # position (3) + velocity (2), sorted keys
    assert env.action_spec.dtype == torch.float32 and float(env.action_spec.space.high) == 1.0
    td = env.rollout(3)
    assert td["next", "reward"].dtype == torch.float32 and td["next", "observation"].shape == (3, 5)
    assert tuple(env.render().shape) == (240, 320, 3)


def test_a_debug_run_on_a_dmc_task_with_its_video(tmp_path, capsys):
    pytest.importorskip("dm_control")
    run = tmp_path / "run"
    assert main(["train", "dreamer_v3", "--env", "dmc/cartpole-swingup", "--preset", "debug",
                 f"run_dir={run}", "progress=false"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == 400 and 0.0 <= summary["eval/return"] <= 100.0  # rewards in [0, 1]
    assert "Evaluation video:" in capsys.readouterr().out and list((run / "diagnostics").glob("eval_episode.*"))


def test_pets_without_a_known_dmc_reward_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("dm_control")
    assert main(["train", "pets", "--env", "dmc/cartpole-swingup", "--preset", "debug",
                 f"run_dir={tmp_path / 'run'}"]) == 2
    assert "no known reward for 'dmc/cartpole-swingup'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
