"""SIGKILL at any moment, then `reverie train --resume`: the finished run equals an
uninterrupted one (issue 17, item 3).

Real processes, killed with SIGKILL (no handler runs): at a moment in the middle of
training, while a checkpoint is being written (the temporary file half written), and
during the final diagnostics (after the final evaluation rows were logged). The recipe is
the test suite's toy regression recipe (``tests/toy_recipe.py``), which runs through the
same loop, run folder, checkpoints and replay buffer as every recipe; the in-process
kill-and-resume tests of ``tests/test_training.py`` cover the recipes' own agent states.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reverie.runs import load_checkpoint

TESTS = Path(__file__).resolve().parent
SETTINGS = ["--preset", "debug", "total_steps=800", "checkpoint_every=80"]

LAUNCH = f"""
import os, signal, sys
sys.path.insert(0, {str(TESTS)!r})
from reverie.algorithms import register_algorithm
register_algorithm("toy", "toy_recipe")
mode = os.environ.get("KILL_MODE", "")
if mode == "checkpoint":  # die inside the KILL_AT-th torch.save, its temp file half written
    import torch
    real_save, calls = torch.save, [0]
    def dying_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT"]):
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = dying_save
elif mode == "diagnostics":  # die after the final evaluation, in the diagnostics
    import toy_recipe
    def dying_diagnose(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    toy_recipe.ToyAgent.diagnose = dying_diagnose
from reverie.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(args, mode="", kill_at=0):
    env = {**os.environ, "KILL_MODE": mode, "KILL_AT": str(kill_at)}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rows(run_dir: Path) -> list[tuple[str, str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [tuple(r) for r in csv.reader(f)][1:]


def _finished(run_dir: Path) -> dict:
    return {"summary": json.loads((run_dir / "summary.json").read_text()),
            "rows": _rows(run_dir), "checkpoint": load_checkpoint(run_dir / "checkpoint.pt")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = _start(["train", "toy", *SETTINGS, f"run_dir={run_dir}"])
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return _finished(run_dir)


def _killed(proc) -> None:
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read())


def _same_as_straight(run_dir: Path, straight: dict) -> None:
    proc = _start(["train", "--resume", str(run_dir)])
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    got = _finished(run_dir)
    assert got["summary"] == straight["summary"]  # the same final weights and returns
    assert got["rows"] == straight["rows"]  # every metric row once, none lost, same values
    a, b = got["checkpoint"], straight["checkpoint"]
    assert a["step"] == b["step"] and a["loop"] == b["loop"]
    ba, bb = a["buffer"]["_storage"]["_storage"], b["buffer"]["_storage"]["_storage"]
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)  # same data
    assert not list(run_dir.glob(".checkpoint-*.tmp"))  # no orphan temporary file left


@pytest.mark.parametrize("rows", [3, 70, 230])
def test_sigkill_during_training(tmp_path, straight, rows):
    run_dir = tmp_path / "run"
    proc = _start(["train", "toy", *SETTINGS, f"run_dir={run_dir}"])
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = run_dir / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) > rows:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _killed(proc)
    assert not (run_dir / "summary.json").exists()
    _same_as_straight(run_dir, straight)


@pytest.mark.parametrize("kill_at", [1, 4])
def test_sigkill_while_a_checkpoint_is_written(tmp_path, straight, kill_at):
    run_dir = tmp_path / "run"
    _killed(_start(["train", "toy", *SETTINGS, f"run_dir={run_dir}"], "checkpoint", kill_at))
    assert list(run_dir.glob(".checkpoint-*.tmp"))  # the half-written temporary file
    if kill_at > 1:  # the previous checkpoint is intact
        assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 80 * (kill_at - 1)
    _same_as_straight(run_dir, straight)


def test_sigkill_during_the_final_diagnostics(tmp_path, straight):
    run_dir = tmp_path / "run"
    _killed(_start(["train", "toy", *SETTINGS, f"run_dir={run_dir}"], "diagnostics"))
    assert not (run_dir / "summary.json").exists()
    assert _rows(run_dir)[-1][1] == "eval/return"  # the final evaluation was logged
    _same_as_straight(run_dir, straight)
