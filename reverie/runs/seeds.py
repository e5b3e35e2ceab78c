"""Multi-seed learning results: run seeds as parallel processes, then collect the figures.

``reverie seeds ALGO --env ENV --seeds 0 1 2 --jobs 2 --threshold -200 --out DIR`` runs one
``reverie train`` process per seed (``num_threads=1`` each: on small machines seeds are
parallelised as processes, not threads), resumes unfinished seeds from their checkpoints
when called again, and writes into ``DIR``:

* ``seed_<s>.csv`` - each seed's ``metrics.csv`` (columns ``step,name,value``);
* ``learning_curve.png`` - the evaluation metric (and training return) of every seed;
* ``summary.json`` - ``{"command", "algo", "env", "seeds", "env_steps", "eval_return",
  "threshold", "passed", "wall_clock_s"}`` with one entry per seed, plus the per-seed
  values of any extra summary keys requested (e.g. ``solved``, ``trials``).

Run folders (with checkpoints) stay under ``--runs-root`` (default ``runs/seeds/...``), which
is not committed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .plots import plot_learning_curves

__all__ = ["run_seeds", "collect_results"]


def _train_command(algo: str, env: str, seed: int, run_dir: Path, presets, overrides) -> list[str]:
    cmd = [sys.executable, "-m", "reverie.cli", "train", algo, "--env", env, "--seed", str(seed)]
    for preset in presets:
        cmd += ["--preset", preset]
    return [*cmd, *overrides, f"run_dir={run_dir}", "progress=false"]


def run_seeds(
    algo: str,
    env: str,
    seeds: Sequence[int],
    *,
    out_dir: str | Path,
    presets: Sequence[str] = (),
    overrides: Sequence[str] = (),
    jobs: int = 2,
    runs_root: str | Path | None = None,
    threshold: float | None = None,
    metric: str = "eval/return",
    extra_keys: Sequence[str] = (),
    command: str | None = None,
) -> dict:
    """Train ``algo`` on ``env`` for every seed (``jobs`` processes at a time) and collect.

    A seed whose run folder already holds ``summary.json`` is not run again; one with only a
    checkpoint is resumed. Each process's output goes to ``<runs_root>/seed_<s>.log``.

    Returns:
        the summary written to ``<out_dir>/summary.json``.

    Raises:
        RuntimeError: a seed's process failed (its log file is named).
    """
    runs_root = Path(runs_root or Path("runs") / "seeds" / algo / env.replace("/", "_"))
    runs_root.mkdir(parents=True, exist_ok=True)
    pending = list(seeds)
    running: dict[int, tuple[subprocess.Popen, float, object]] = {}
    wall: dict[int, float] = {}
    timing_file = runs_root / "wall_clock.json"
    if timing_file.exists():
        wall.update({int(k): v for k, v in json.loads(timing_file.read_text()).items()})
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            run_dir = runs_root / f"seed_{seed}"
            if (run_dir / "summary.json").exists():
                continue
            if (run_dir / "checkpoint.pt").exists():
                cmd = [sys.executable, "-m", "reverie.cli", "train", "--resume", str(run_dir)]
            else:
                cmd = _train_command(algo, env, seed, run_dir, presets, overrides)
            log = open(runs_root / f"seed_{seed}.log", "a")  # noqa: SIM115 (closed below)
            print(f"[seeds] seed {seed}: {' '.join(cmd[2:])}", flush=True)
            running[seed] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                time.perf_counter(),
                log,
            )
        time.sleep(0.5)
        for seed, (proc, start, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[seed]
            wall[seed] = wall.get(seed, 0.0) + time.perf_counter() - start
            timing_file.write_text(json.dumps(wall))
            if proc.returncode != 0:
                for p, _, lg in running.values():
                    p.terminate()
                    lg.close()
                raise RuntimeError(
                    f"seed {seed} failed with exit code {proc.returncode}; see "
                    f"{runs_root / f'seed_{seed}.log'}"
                )
            print(f"[seeds] seed {seed} done in {wall[seed]:.0f} s", flush=True)
    run_dirs = {s: runs_root / f"seed_{s}" for s in seeds}
    return collect_results(
        algo, env, run_dirs, out_dir, command=command or "", threshold=threshold,
        metric=metric, wall_clock=wall, extra_keys=extra_keys,
    )


def collect_results(
    algo: str,
    env: str,
    run_dirs: dict[int, Path],
    out_dir: str | Path,
    *,
    command: str,
    threshold: float | None,
    metric: str = "eval/return",
    wall_clock: dict[int, float] | None = None,
    extra_keys: Sequence[str] = (),
) -> dict:
    """Copy per-seed CSVs, draw the plot and write ``summary.json`` into ``out_dir``.

    ``eval_return`` is each seed's final ``metric`` from its ``summary.json``; ``passed`` says
    whether it reached ``threshold``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted(run_dirs)
    summaries = {}
    for seed in seeds:
        path = Path(run_dirs[seed]) / "summary.json"
        if not path.exists():
            raise FileNotFoundError(f"seed {seed} has no summary.json in {run_dirs[seed]}")
        summaries[seed] = json.loads(path.read_text())
        shutil.copyfile(Path(run_dirs[seed]) / "metrics.csv", out / f"seed_{seed}.csv")
    returns = [summaries[s].get(metric) for s in seeds]
    summary = {
        "command": command,
        "algo": algo,
        "env": env,
        "seeds": seeds,
        "env_steps": [summaries[s].get("env_steps") for s in seeds],
        "eval_return": returns,
        "threshold": threshold,
        "passed": None if threshold is None else [r is not None and r >= threshold for r in returns],
        "wall_clock_s": [round((wall_clock or {}).get(s, float("nan")), 1) for s in seeds],
    }
    for key in extra_keys:
        summary[key] = [summaries[s].get(key) for s in seeds]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_learning_curves(
        [out / f"seed_{s}.csv" for s in seeds],
        out / "learning_curve.png",
        keys=[metric, "train/episode_return"],
        labels=[f"seed {s}" for s in seeds],
        title=f"{algo} on {env}" + ("" if threshold is None else f" (threshold {threshold:g})"),
    )
    return summary
