"""SIGKILL a real ``reverie train`` of every recipe at a random moment after its first
checkpoint, resume it with ``reverie train --resume``, and compare with an uninterrupted
run (issue 17, item 3).

The moment is drawn at random (logged in the test's output on failure): anywhere from the
first checkpoint to the end of training, the final evaluation and diagnostics included.
No handler runs on SIGKILL, so whatever the process was doing (stepping the env, updating,
writing a checkpoint or a metric row) is cut off. The resumed run must end with the same
summary, the same metric rows (each once), the same agent state and the same replay data
as the uninterrupted run. ``tests/test_sigkill.py`` pins the moments that matter most
(inside a checkpoint write, during the final diagnostics) on the toy recipe.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reverie.runs import load_checkpoint

RECIPES = [  # (recipe, overrides: a few checkpoints inside a short debug run)
    ("pets", ["checkpoint_every=40"]),
    ("pilco", ["checkpoint_every=10", "trials=2", "stop_when_solved=false"]),
    ("dreamer_v3", ["checkpoint_every=100", "env_steps=400"]),
    ("dreamer", ["checkpoint_every=400"]),
    ("worldmodel", ["checkpoint_every=40", "iterations=2"]),
]


def _train(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reverie.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"})


def _first_checkpoint(proc: subprocess.Popen, run_dir: Path) -> float:
    """Wait until the run's first checkpoint exists; return the time it was seen."""
    deadline = time.monotonic() + 600
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.005)
    return time.monotonic()


def _rows(run_dir: Path) -> list[str]:
    """Metric rows, without wall-clock timings (``*_s``)."""
    return [r for r in (run_dir / "metrics.csv").read_text().splitlines() if "_s," not in r]


@pytest.mark.parametrize(("recipe", "overrides"), RECIPES, ids=[r for r, _ in RECIPES])
def test_sigkill_at_a_random_moment_then_resume_gives_the_uninterrupted_run(tmp_path, recipe, overrides):
    common = ["--preset", "debug", "progress=false", *overrides]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _train([recipe, *common, f"run_dir={straight}"])
    first = _first_checkpoint(proc, straight)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    remaining = time.monotonic() - first  # from the first checkpoint to the end

    for delay in (random.Random().uniform(0.0, 0.8 * remaining), 0.0):  # the second if the first missed
        shutil.rmtree(killed, ignore_errors=True)
        proc = _train([recipe, *common, f"run_dir={killed}"])
        _first_checkpoint(proc, killed)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        print(f"{recipe}: SIGKILL {delay:.2f} s after the first checkpoint (the run goes on for "
              f"{remaining:.1f} s after it): exit {proc.returncode}")
        if proc.returncode != 0:
            break
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()  # (summary.json may exist: killed at exit)

    resumed = _train(["--resume", str(killed)])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    a.pop("wall_clock_s", None), b.pop("wall_clock_s", None)
    assert a == b  # the same returns and model errors, bit for bit
    assert _rows(straight) == _rows(killed)  # every metric row once, the same values
    sa, sb = (load_checkpoint(d / "checkpoint.pt") for d in (straight, killed))
    assert sa["step"] == sb["step"]
    assert all(torch.equal(sa["agent"][k], sb["agent"][k]) for k in sa["agent"]
               if isinstance(sa["agent"][k], torch.Tensor))
    ra, rb = sa["buffer"]["_storage"]["_storage"], sb["buffer"]["_storage"]["_storage"]
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)  # no transition lost or doubled
    assert not list(killed.glob(".checkpoint-*.tmp"))
