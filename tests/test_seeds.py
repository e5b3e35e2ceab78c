"""`reverie seeds`: parallel seed processes, resume, and the collected learning result."""

import json

from reverie.cli import main


def test_seeds_runs_processes_and_writes_the_result_folder(tmp_path):
    out, root = tmp_path / "result", tmp_path / "runs"
    argv = ["seeds", "worldmodel", "--env", "Pendulum-v1", "--seeds", "0", "1", "--jobs", "2",
            "--preset", "debug", "--threshold", "-2000", "--out", str(out),
            "--runs-root", str(root), "iterations=1", "random_episodes=1",
            "max_episode_steps=40", "fit_steps=20", "diagnostics_horizon=10", "plan_candidates=16"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert summary["env_steps"] == [80, 80]
    assert summary["threshold"] == -2000 and len(summary["eval_return"]) == 2
    assert summary["passed"] == [r >= -2000 for r in summary["eval_return"]]
    assert all(w > 0 for w in summary["wall_clock_s"])
    assert summary["command"] == "reverie " + " ".join(argv)
    for name in ["seed_0.csv", "seed_1.csv", "learning_curve.png"]:
        assert (out / name).stat().st_size > 0
    # seeds differ (they are seeded), and a second call does not train again
    assert (out / "seed_0.csv").read_text() != (out / "seed_1.csv").read_text()
    before = (root / "seed_0" / "summary.json").stat().st_mtime
    assert main(argv) == 0
    assert (root / "seed_0" / "summary.json").stat().st_mtime == before


def test_seeds_rejects_unknown_algorithm(tmp_path, capsys):
    assert main(["seeds", "nope", "--env", "X", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
