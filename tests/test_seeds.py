"""`reverie seeds`: parallel seed processes, resume, provenance, and refusing mixed settings."""

import json
import re
import shutil

import pytest

from reverie.cli import main
from reverie.runs.seeds import PROVENANCE_FILE, code_commit

COMMIT = re.compile(r"^([0-9a-f]{40}(-dirty)?|unknown)$")
TINY = ["iterations=1", "random_episodes=1", "max_episode_steps=40", "fit_steps=20",
        "diagnostics_horizon=10", "plan_candidates=16"]


def _argv(out, root, *overrides):
    return ["seeds", "worldmodel", "--env", "Pendulum-v1", "--seeds", "0", "1", "--jobs", "2",
            "--preset", "debug", "--threshold", "-2000", "--out", str(out),
            "--runs-root", str(root), *overrides]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One `reverie seeds` call with two tiny seeds: (argv, out folder, runs root)."""
    tmp = tmp_path_factory.mktemp("seeds")
    out, root = tmp / "result", tmp / "runs"
    argv = _argv(out, root, *TINY)
    assert main(argv) == 0
    return argv, out, root


def test_seeds_runs_processes_and_writes_the_result_folder(finished):
    argv, out, root = finished
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert summary["env_steps"] == [80, 80]
    assert summary["threshold"] == -2000 and len(summary["eval_return"]) == 2
    assert summary["passed"] == [r >= -2000 for r in summary["eval_return"]]
    assert all(w > 0 for w in summary["wall_clock_s"])
    assert summary["command"] == "reverie " + " ".join(argv)
    # where the numbers come from: one `reverie train` per seed, at one commit
    assert COMMIT.match(summary["commit"])
    assert summary["seed_commits"] == [[summary["commit"]], [summary["commit"]]]
    for seed, cmds in zip([0, 1], summary["seed_commands"], strict=True):
        assert cmds == [
            "reverie train worldmodel --env Pendulum-v1 --seed "
            f"{seed} --preset debug {' '.join(TINY)} run_dir={root / f'seed_{seed}'} "
            "progress=false"
        ]
    for name in ["seed_0.csv", "seed_1.csv", "learning_curve.png"]:
        assert (out / name).stat().st_size > 0
    # seeds differ (they are seeded), and a second call does not train again
    assert (out / "seed_0.csv").read_text() != (out / "seed_1.csv").read_text()
    before = (root / "seed_0" / "summary.json").stat().st_mtime
    assert main(argv) == 0
    assert (root / "seed_0" / "summary.json").stat().st_mtime == before
    assert json.loads((out / "summary.json").read_text())["seed_commands"] == (
        summary["seed_commands"]
    )


def test_seeds_records_provenance_in_each_run_folder(finished):
    argv, out, root = finished
    summary = json.loads((out / "summary.json").read_text())
    for i, seed in enumerate([0, 1]):
        entries = json.loads((root / f"seed_{seed}" / PROVENANCE_FILE).read_text())
        assert len(entries) == 1  # reusing a finished seed launches nothing
        (entry,) = entries
        assert set(entry) >= {"command", "commit", "started"}
        assert entry["command"] == summary["seed_commands"][i][0]
        assert entry["commit"] == summary["seed_commits"][i][0]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", entry["started"])


def test_code_commit_names_the_checkout():
    assert COMMIT.match(code_commit())


def test_seeds_refuses_a_folder_made_with_other_settings(finished, capsys):
    argv, out, root = finished
    watched = [root / "seed_0" / "summary.json", root / "seed_0" / PROVENANCE_FILE,
               root / "seed_0.log", out / "summary.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    other = [t.replace("fit_steps=20", "fit_steps=30") for t in TINY]
    capsys.readouterr()
    assert main(_argv(out, root, *other)) == 2
    err = capsys.readouterr().err
    assert err.startswith("reverie seeds: error: ")
    for seed in [0, 1]:
        assert f"seed {seed}: {root / f'seed_{seed}'}" in err
    assert "fit_steps: folder has 20, this command gives 30" in err
    assert "--runs-root" in err and "delete" in err
    assert [p.stat().st_mtime_ns for p in watched] == before
    # a preset is a setting too; fields that do not change results are not compared
    assert main(["seeds", "worldmodel", "--env", "Pendulum-v1", "--seeds", "0", "--out",
                 str(out), "--runs-root", str(root), *TINY]) == 2
    assert "seed 0:" in capsys.readouterr().err
    assert main(_argv(out, root, *TINY, "checkpoint_every=7",
                      "progress=true")) == 0
    assert (root / "seed_0" / "summary.json").stat().st_mtime_ns == before[0]


def test_seeds_rejects_a_bad_override_before_running(tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(_argv(tmp_path / "out", root, "no_such_field=1")) == 2
    assert "no_such_field" in capsys.readouterr().err
    assert not root.exists()


def test_seeds_resumes_an_unfinished_seed_and_records_the_continuation(finished, tmp_path):
    argv, out, root = finished
    copy = tmp_path / "runs"
    shutil.copytree(root / "seed_1", copy / "seed_1")  # its config.json names the old run_dir
    (copy / "seed_1" / "summary.json").unlink()  # as if stopped after its last checkpoint
    new_out = tmp_path / "result"
    argv = ["seeds", "worldmodel", "--env", "Pendulum-v1", "--seeds", "1", "--preset", "debug",
            "--out", str(new_out), "--runs-root", str(copy), *TINY]
    assert main(argv) == 0
    summary = json.loads((new_out / "summary.json").read_text())
    first, resumed = summary["seed_commands"][0]
    assert first.startswith("reverie train worldmodel ")
    assert resumed == f"reverie train --resume {copy / 'seed_1'}"
    assert len(summary["seed_commits"][0]) == 2
    assert len(json.loads((copy / "seed_1" / PROVENANCE_FILE).read_text())) == 2


def test_seeds_rejects_unknown_algorithm(tmp_path, capsys):
    assert main(["seeds", "nope", "--env", "X", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "unknown algorithm" in capsys.readouterr().err


def test_the_commit_is_that_of_the_code_the_seed_processes_import(tmp_path, monkeypatch):
    """`python -m reverie.cli` imports the package of the folder it starts in (a checkout or
    worktree), which need not be the one the `reverie` console script imported."""
    from reverie.runs.seeds import _package_seen_by_children

    (tmp_path / "reverie").mkdir()
    (tmp_path / "reverie" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert _package_seen_by_children() == (tmp_path / "reverie").resolve()
    assert code_commit() == "unknown"  # that package is not in a git checkout


def test_seeds_refuses_zero_jobs(tmp_path, capsys):
    argv = _argv(tmp_path / "out", tmp_path / "runs")
    argv[argv.index("--jobs") + 1] = "0"
    assert main(argv) == 2
    assert "jobs >= 1" in capsys.readouterr().err


def _children_training_in(root):
    """PIDs of processes whose command line names a seed folder under ``root``."""
    import os

    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"run_dir={root}" in cmdline and " train " in cmdline:
            pids.append(int(pid))
    return pids


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux /proc")
def test_killing_seeds_stops_its_training_processes(tmp_path):
    """SIGKILL of `reverie seeds` (no chance to clean up): its children get SIGINT from the
    kernel, stop at their last checkpoint, and a rerun resumes them."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "runs"
    argv = _argv(tmp_path / "out", root, "iterations=200", "max_episode_steps=40", "fit_steps=20",
                 "diagnostics_horizon=10", "plan_candidates=16")
    parent = subprocess.Popen([sys.executable, "-m", "reverie.cli", *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_children_training_in(root)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    children = _children_training_in(root)
    assert len(children) == 2, "the two seed processes did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while _children_training_in(root) and time.time() < deadline:
        time.sleep(0.5)
    assert _children_training_in(root) == []
