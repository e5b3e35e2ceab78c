"""Smoke run of the ``worldmodel`` recipe (debug preset) through the CLI, and its resume."""

import json

import pytest

from reverie.cli import main


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wm") / "run"
    code = main(["train", "worldmodel", "--env", "Pendulum-v1", "--preset", "debug",
                 f"run_dir={run_dir}", "progress=false"])
    assert code == 0
    return run_dir


def test_debug_run_writes_the_run_folder(debug_run):
    for name in ["config.json", "metrics.csv", "learning_curve.png", "checkpoint.pt",
                 "summary.json", "diagnostics/imagined_vs_real.png", "diagnostics/prediction_error.png",
                 "diagnostics/prediction_error.csv", "diagnostics/prediction_error.md"]:
        assert (debug_run / name).stat().st_size > 0, name
    summary = json.loads((debug_run / "summary.json").read_text())
    assert summary["env_steps"] == 180  # (2 random + 1 MPC) episodes of 60 steps
    # even the debug model beats predicting "nothing changes" one step ahead
    assert summary["wm/obs_rmse@1"] < 0.5 * summary["wm/baseline_rmse@1"]
    assert summary["eval/return"] is not None


def test_resume_continues_from_the_checkpoint(debug_run):
    code = main(["train", "--resume", str(debug_run), "iterations=2"])
    assert code == 0
    summary = json.loads((debug_run / "summary.json").read_text())
    assert summary["env_steps"] == 240  # one more MPC episode, none collected twice
    rows = (debug_run / "metrics.csv").read_text().splitlines()[1:]
    returns = [r for r in rows if ",eval/return," in r]
    assert [r.split(",")[0] for r in returns] == ["180", "240"]
