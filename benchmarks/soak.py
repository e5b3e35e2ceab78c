"""Soak run: one recipe trains for ``--minutes``, is SIGKILLed and resumed ``--kills``
times, and its resident memory is sampled throughout (issue 17, item 5).

What it checks:

* memory: the training process's resident set size (``VmRSS`` from ``/proc``) every
  ``--sample`` seconds, per process (each resume is a new process); the report gives the
  RSS over time and its growth after the replay buffer is full (target: flat);
* completeness after the kills: every ``(step, name)`` metric row appears once, the logged
  steps of ``train/episode_return`` are increasing, the checkpoint's loop step equals the
  last logged step, and the replay buffer holds ``min(env steps, capacity)`` transitions
  whose global episode ids never decrease and whose frames are each stored once (no step
  lost or duplicated: within an episode the step counters are consecutive).

Usage (Linux)::

    python benchmarks/soak.py                     # 30 minutes, 3 kills -> docs/results/soak.{md,json}
    python benchmarks/soak.py --minutes 3 --kills 1 --out /tmp/soak   # a short check

The default run: ``reverie train dreamer_v3 --env Pendulum-v1 --preset cpu`` with action
repeat 2 (batches of one 100-step episode), a 1,000-transition replay buffer (full after ten
episodes) and a checkpoint after every episode (about once a minute on a shared 2-core
machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPACITY, REPEAT = 1000, 2
DEFAULT_ARGS = ["dreamer_v3", "--env", "Pendulum-v1", "--preset", "cpu", f"buffer_size={CAPACITY}",
                f"action_repeat={REPEAT}", "checkpoint_every=200", "env_steps=1000000",
                "eval_every=0", "progress=false", "tensorboard=false"]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _run_segment(cmd: list[str], seconds: float, sample: float, t0: float, log) -> list[dict]:
    """Run ``cmd`` for ``seconds`` (then SIGKILL it); RSS samples ``{t, rss_mb, pid}``."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    samples, end = [], time.time() + seconds
    while time.time() < end and proc.poll() is None:
        rss = _rss_mb(proc.pid)
        if rss is not None:
            samples.append({"t": round(time.time() - t0, 1), "rss_mb": round(rss, 1),
                            "pid": proc.pid})
        time.sleep(sample)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return samples


def _check(run_dir: Path) -> dict:
    import torch

    from reverie.runs import load_checkpoint
    from reverie.training import EPISODE_KEY

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [(int(r["step"]), r["name"]) for r in csv.DictReader(f)]
    duplicates = len(rows) - len(set(rows))
    episode_steps = [s for s, n in rows if n == "train/episode_return"]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    storage = state["buffer"]["_storage"]["_storage"]
    episodes, is_init = storage[EPISODE_KEY].long(), storage["is_init"].reshape(-1).bool()
    stored = int(episodes.shape[0])
    loop = state["loop"]
    # a circular buffer: in collection order from the oldest frame (one env; a stored frame
    # is one agent step of REPEAT env steps)
    frames = int(loop["step"]) // REPEAT
    cursor = frames % CAPACITY if frames > CAPACITY else 0
    episodes, is_init = episodes.roll(-cursor), is_init.roll(-cursor)
    ids, counts = torch.unique_consecutive(episodes, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    # every episode stored whole (but the oldest, cut by the wrap) starts with is_init and
    # has no other is_init: no frame lost or stored twice
    whole = is_init[starts[1:]].all() and int(is_init.sum()) == len(ids) - int(not is_init[0])
    return {
        "metric_rows": len(rows), "duplicated_rows": duplicates,
        "episode_return_steps_increasing": episode_steps == sorted(set(episode_steps)),
        "checkpoint_step": int(state["step"]), "last_logged_step": max(s for s, _ in rows),
        "buffer_transitions": stored,
        "buffer_expected": min(frames, CAPACITY),
        "episode_ids_increase_in_collection_order": bool((ids[1:] > ids[:-1]).all()),
        "each_episode_starts_once": bool(whole),
        "loop": {k: int(v) for k, v in loop.items()},
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "results"))
    parser.add_argument("--run-dir", default=str(REPO_ROOT / "runs" / "soak"))
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: remove it or pass --run-dir.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "reverie.cli", "train"]
    segment = args.minutes * 60 / (args.kills + 1)
    t0, samples, segments = time.time(), [], []
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:
        for i in range(args.kills + 1):
            cmd = base + (DEFAULT_ARGS + [f"run_dir={run_dir}"] if i == 0
                          else ["--resume", str(run_dir)])
            start = time.time() - t0
            got = _run_segment(cmd, segment, args.sample, t0, log)
            samples += got
            segments.append({"start_s": round(start, 1), "cmd": " ".join(cmd[2:]),
                             "killed_at_s": round(time.time() - t0, 1),
                             "rss_mb_last": got[-1]["rss_mb"] if got else None})
            print(f"segment {i}: {len(got)} samples, last RSS "
                  f"{got[-1]['rss_mb'] if got else '-'} MB", flush=True)
    checks = _check(run_dir)
    # memory once the buffer is full: the samples of the last segment after its first minute
    last_pid = samples[-1]["pid"] if samples else None
    tail = [s for s in samples if s["pid"] == last_pid]
    tail = [s for s in tail if s["t"] >= tail[0]["t"] + 60] if tail else []
    growth = (tail[-1]["rss_mb"] - tail[0]["rss_mb"]) if len(tail) > 1 else None
    per_segment = []
    for pid in dict.fromkeys(s["pid"] for s in samples):
        seg = [s["rss_mb"] for s in samples if s["pid"] == pid]
        per_segment.append({"pid": pid, "first_mb": seg[0], "max_mb": max(seg), "last_mb": seg[-1]})
    result = {"command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
              "recipe_args": DEFAULT_ARGS, "minutes": args.minutes, "kills": args.kills,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                         f"load {os.getloadavg()}",
              "segments": segments, "rss_per_process": per_segment,
              "rss_growth_last_segment_mb": growth, "checks": checks, "samples": samples}
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    lines = ["# Soak run: SIGKILL and resume under memory sampling", "",
             f"Command: `{result['command']}` ({args.minutes:g} minutes, {args.kills} kills). "
             f"Recipe: `reverie train {' '.join(DEFAULT_ARGS)}`. Machine: {result['machine']}.",
             "", "| process | started (s) | killed (s) | RSS first (MB) | RSS max (MB) | "
             "RSS last (MB) |", "|---|---:|---:|---:|---:|---:|"]
    for seg, mem in zip(segments, per_segment, strict=False):
        lines.append(f"| `{seg['cmd'][:60]}` | {seg['start_s']} | {seg['killed_at_s']} | "
                     f"{mem['first_mb']} | {mem['max_mb']} | {mem['last_mb']} |")
    lines += ["", f"RSS change over the last process after its first minute: {growth} MB.", "",
              "Completeness after the kills (`checks` in soak.json):", ""]
    lines += [f"- {k}: {v}" for k, v in checks.items() if k != "torch"]
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    _plot(samples, segments, out / "soak.png")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


def _plot(samples: list[dict], segments: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    for pid in dict.fromkeys(s["pid"] for s in samples):
        seg = [s for s in samples if s["pid"] == pid]
        ax.plot([s["t"] / 60 for s in seg], [s["rss_mb"] for s in seg])
    for seg in segments[:-1]:
        ax.axvline(seg["killed_at_s"] / 60, color="red", lw=0.8, ls="--")
    ax.set_xlabel("minutes (red: SIGKILL, then resume)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title("Soak run: resident memory of the training process", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
