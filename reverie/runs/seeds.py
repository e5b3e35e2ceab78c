"""Multi-seed learning results: run seeds as parallel processes, then collect the figures.

``reverie seeds ALGO --env ENV --seeds 0 1 2 --jobs 2 --threshold -200 --out DIR`` runs one
``reverie train`` process per seed (``num_threads=1`` each: on small machines seeds are
parallelised as processes, not threads) into ``<runs_root>/seed_<s>``, and writes into ``DIR``:

* ``seed_<s>.csv`` - each seed's ``metrics.csv`` (columns ``step,name,value``);
* ``learning_curve.png`` - the evaluation metric (and training return) of every seed;
* ``summary.json`` - ``{"command", "algo", "env", "seeds", "env_steps", "eval_return",
  "threshold", "passed", "wall_clock_s"}`` with one entry per seed, the per-seed values of
  any extra summary keys requested (e.g. ``solved``, ``trials``), and where the numbers
  come from: ``"seed_commands"`` (per seed, every ``reverie train ...`` command line that
  worked on it, in order: the first run and any ``reverie train --resume ...``
  continuations), ``"seed_commits"`` (per seed, the code commit of each of those
  processes) and ``"commit"`` (that commit when every process of every seed ran at one
  commit, else the list of the distinct commits).

Settings are never mixed. Before anything runs, every existing seed folder is checked:
the config saved in its ``config.json`` must equal the config this call would give that
seed (resolved exactly as ``reverie train`` does: the recipe's defaults, then
``--preset`` s, then ``env=``, ``seed=`` and the ``field=value`` overrides). Fields that do
not change results are not compared (:data:`IGNORED_FIELDS`: ``run_dir``, ``resume``,
``progress``, ``verbose``, ``logger``, ``logger_offline``, ``checkpoint_every``); any other difference, including a
larger budget, refuses the whole call with :class:`SeedSettingsError`, which names each
seed, its folder and every differing field with both values. Use another ``--runs-root``
(or delete the folder) to run other settings. Matching folders are reused: one holding
``summary.json`` is finished and not run again; otherwise the seed is continued with
``reverie train --resume`` (from its ``checkpoint.pt``, or from the start if it has none).

Each seed process appends ``{"command", "commit", "started", "cwd"}`` to
``<run_dir>/provenance.json`` before it starts. ``commit`` is ``git rev-parse HEAD`` of the
repository holding the ``reverie`` package, with ``-dirty`` appended when tracked files
differ from it, or ``"unknown"`` outside a git checkout (:func:`code_commit`). Run folders
(with checkpoints and logs ``seed_<s>.log``) stay under ``--runs-root`` (default
``runs/seeds/...``), which is not committed.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import config_to_dict, resolve_config
from .plots import plot_learning_curves
from .run import CONFIG_FILE, read_run_info

__all__ = [
    "run_seeds",
    "collect_results",
    "check_seed_folders",
    "code_commit",
    "read_provenance",
    "SeedSettingsError",
    "IGNORED_FIELDS",
    "PROVENANCE_FILE",
]

#: config fields that do not change a seed's results; they may differ from a seed folder's
IGNORED_FIELDS = frozenset({"run_dir", "resume", "progress", "verbose", "logger", "logger_offline",
                            "checkpoint_every"})

#: per-seed record of the processes launched for it, in the seed's run folder
PROVENANCE_FILE = "provenance.json"

_ABSENT = object()


class SeedSettingsError(ValueError):
    """The seeds' settings are unusable: a bad preset or override, or existing seed folders
    made with other settings than this call would use (the message says which and how)."""


def _train_command(algo: str, env: str, seed: int, run_dir: Path, presets, overrides) -> list[str]:
    cmd = [sys.executable, "-m", "reverie.cli", "train", algo, "--env", env, "--seed", str(seed)]
    for preset in presets:
        cmd += ["--preset", preset]
    return [*cmd, *overrides, f"run_dir={run_dir}", "progress=false"]


def _resume_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "reverie.cli", "train", "--resume", str(run_dir)]


def _shown_command(cmd: Sequence[str]) -> str:
    """``[python, -m, reverie.cli, train, ...]`` as the ``reverie train ...`` line it runs."""
    return shlex.join(["reverie", *cmd[3:]])


def _package_seen_by_children() -> Path:
    """The ``reverie`` package that ``python -m reverie.cli`` imports from this folder.

    It can differ from this process's own: the ``reverie`` console script does not put the
    current folder on ``sys.path``, while ``python -m`` does, so a seed process started in a
    checkout (or worktree) runs that checkout's code."""
    probe = subprocess.run(
        [sys.executable, "-c", "import os, reverie; print(os.path.dirname(reverie.__file__))"],
        capture_output=True, text=True, timeout=120,
    )
    if probe.returncode == 0 and probe.stdout.strip():
        return Path(probe.stdout.strip().splitlines()[-1]).resolve()
    return Path(__file__).resolve().parents[1]


def code_commit() -> str:
    """The commit of the code the seed processes run: ``git rev-parse HEAD`` of the
    repository holding the ``reverie`` package they import, plus ``-dirty`` if the package's
    tracked files differ from it (results written into the checkout do not count);
    ``"unknown"`` if the package is not tracked in a git checkout (e.g. installed from a
    wheel) or git is not available."""
    package = _package_seen_by_children()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=60
        )

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return "unknown"
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".")  # the package
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return head.stdout.strip() + ("-dirty" if dirty else "")


def read_provenance(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``provenance.json`` entries of a seed folder (``[]`` if it has none)."""
    path = Path(run_dir) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.exists() else []


def _record_provenance(run_dir: Path, cmd: Sequence[str], commit: str) -> None:
    entries = read_provenance(run_dir)
    entries.append({
        "command": _shown_command(cmd),
        "commit": commit,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
    })
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{PROVENANCE_FILE}.tmp"
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, run_dir / PROVENANCE_FILE)


def _expected_config(algo: str, env: str, seed: int, presets, overrides) -> dict[str, Any]:
    """The config ``reverie train`` builds for this seed, as ``config.json`` stores it."""
    from reverie.algorithms import load_algorithm  # the recipes import reverie.runs

    module = load_algorithm(algo)
    try:
        config = resolve_config(module.Config, presets, [f"env={env}", f"seed={seed}", *overrides])
    except ValueError as err:
        raise SeedSettingsError(str(err)) from None
    return json.loads(json.dumps(config_to_dict(config)))


def _differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, expected value)`` for every compared field that differs."""
    out = []
    for name in sorted(set(saved) | set(expected)):
        if name in IGNORED_FIELDS:
            continue
        old, new = saved.get(name, _ABSENT), expected.get(name, _ABSENT)
        if old != new or (type(old) is not type(new) and not _same_number(old, new)):
            out.append((name, old, new))
    return out


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers) and isinstance(b, numbers)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


def _shown(value: Any) -> str:
    return "(not set: no such field)" if value is _ABSENT else json.dumps(value)


def check_seed_folders(
    algo: str,
    env: str,
    seeds: Sequence[int],
    runs_root: str | Path,
    *,
    presets: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> None:
    """Refuse seed folders made with other settings than this call would use.

    For every seed whose folder ``<runs_root>/seed_<s>`` exists, compare the ``config.json``
    saved there with the config ``reverie train`` would build from ``presets``, ``env=``,
    ``seed=`` and ``overrides`` (fields in :data:`IGNORED_FIELDS` are not compared). A folder
    with results or a checkpoint but no ``config.json`` cannot be checked and is refused too.

    Raises:
        SeedSettingsError: listing each mismatching seed, its folder, every differing field
            with the folder's value and this call's value, and the way out; also for an
            unknown preset or field or an unparsable override.
        KeyError: ``algo`` is not a registered recipe.
    """
    problems = []
    for seed in seeds:
        expected = _expected_config(algo, env, seed, presets, overrides)  # validates overrides
        run_dir = Path(runs_root) / f"seed_{seed}"
        if not (run_dir / CONFIG_FILE).exists():
            leftovers = [n for n in ("summary.json", "checkpoint.pt") if (run_dir / n).exists()]
            if leftovers:
                problems.append(
                    f"seed {seed}: {run_dir} holds {' and '.join(leftovers)} but no "
                    f"{CONFIG_FILE}, so the settings that produced it cannot be checked."
                )
            continue
        saved_algo, saved = read_run_info(run_dir)
        lines = []
        if saved_algo != algo:
            lines.append(f"    algorithm: folder has {saved_algo!r}, this command gives {algo!r}")
        lines += [
            f"    {name}: folder has {_shown(old)}, this command gives {_shown(new)}"
            for name, old, new in _differences(saved, expected)
        ]
        if lines:
            problems.append(
                f"seed {seed}: {run_dir} was made with other settings than this command "
                "would use:\n" + "\n".join(lines)
            )
    if problems:
        raise SeedSettingsError(
            "existing seed folders do not match this command; seeds are never mixed across "
            "settings, so nothing was run.\n" + "\n".join(problems) + "\n"
            f"To run these settings, pass a new --runs-root (now {runs_root}), or delete the "
            "folders listed above to rerun those seeds; to reuse the folders, call with the "
            "settings they were made with."
        )


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

    First every existing seed folder is checked against this call's settings
    (:func:`check_seed_folders`); on any mismatch nothing runs. A seed whose folder holds
    ``summary.json`` is not run again; one with a ``config.json`` (and usually a checkpoint)
    is continued with ``reverie train --resume``. Each process is recorded in the seed's
    ``provenance.json``; its output goes to ``<runs_root>/seed_<s>.log``.

    Returns:
        the summary written to ``<out_dir>/summary.json``.

    Raises:
        SeedSettingsError: a seed folder was made with other settings, or the presets or
            overrides are invalid (nothing was run or written).
        RuntimeError: a seed's process failed (its log file is named).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SeedSettingsError(f"jobs={jobs!r}: run at least one seed at a time (jobs >= 1).")
    runs_root = Path(runs_root or Path("runs") / "seeds" / algo / env.replace("/", "_"))
    check_seed_folders(algo, env, seeds, runs_root, presets=presets, overrides=overrides)
    runs_root.mkdir(parents=True, exist_ok=True)
    pending = list(dict.fromkeys(seeds))
    running: dict[int, tuple[subprocess.Popen, float, object]] = {}
    wall: dict[int, float] = {}
    timing_file = runs_root / "wall_clock.json"
    if timing_file.exists():
        wall.update({int(k): v for k, v in json.loads(timing_file.read_text()).items()})
    try:
        _run_pending(algo, env, pending, running, wall, jobs, runs_root, timing_file, presets,
                     overrides)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM) or a seed failed: stop the others
        _stop(running)
        raise
    run_dirs = {s: runs_root / f"seed_{s}" for s in seeds}
    return collect_results(
        algo, env, run_dirs, out_dir, command=command or "", threshold=threshold,
        metric=metric, wall_clock=wall, extra_keys=extra_keys,
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGINT (a clean KeyboardInterrupt) when ``reverie seeds`` dies,
    even by SIGKILL; its last checkpoint stays and a rerun resumes it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(running: dict) -> None:
    """Interrupt every running seed (SIGINT: each stops cleanly at its last checkpoint)."""
    for proc, _, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc, _, log in running.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    running.clear()


def _run_pending(algo, env, pending, running, wall, jobs, runs_root, timing_file, presets,
                 overrides) -> None:
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            run_dir = runs_root / f"seed_{seed}"
            if (run_dir / "summary.json").exists():
                continue
            if (run_dir / CONFIG_FILE).exists():  # checked above: same settings
                cmd = _resume_command(run_dir)
            else:
                cmd = _train_command(algo, env, seed, run_dir, presets, overrides)
            _record_provenance(run_dir, cmd, code_commit())
            log = open(runs_root / f"seed_{seed}.log", "a")  # noqa: SIM115 (closed below)
            print(f"[seeds] seed {seed}: {_shown_command(cmd)}", flush=True)
            running[seed] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 preexec_fn=_die_with_parent if sys.platform == "linux" else None),
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
                raise RuntimeError(
                    f"seed {seed} failed with exit code {proc.returncode}; see "
                    f"{runs_root / f'seed_{seed}.log'}"
                )
            print(f"[seeds] seed {seed} done in {wall[seed]:.0f} s", flush=True)


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
    whether it reached ``threshold``. ``seed_commands`` and ``seed_commits`` come from each
    folder's ``provenance.json`` (empty lists for a folder without one); ``commit`` is the
    one commit they share, else the list of distinct commits (``"unknown"`` standing for
    seeds without a record).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted(run_dirs)
    summaries, records = {}, {}
    for seed in seeds:
        path = Path(run_dirs[seed]) / "summary.json"
        if not path.exists():
            raise FileNotFoundError(f"seed {seed} has no summary.json in {run_dirs[seed]}")
        summaries[seed] = json.loads(path.read_text())
        records[seed] = read_provenance(run_dirs[seed])
        shutil.copyfile(Path(run_dirs[seed]) / "metrics.csv", out / f"seed_{seed}.csv")
    returns = [summaries[s].get(metric) for s in seeds]
    seed_commits = [[r["commit"] for r in records[s]] for s in seeds]
    distinct = list(dict.fromkeys(c for cs in seed_commits for c in (cs or ["unknown"])))
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
        "commit": distinct[0] if len(distinct) == 1 else distinct,
        "seed_commands": [[r["command"] for r in records[s]] for s in seeds],
        "seed_commits": seed_commits,
    }
    for key in extra_keys:
        summary[key] = [summaries[s].get(key) for s in seeds]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_learning_curves(
        [out / f"seed_{s}.csv" for s in seeds],
        out / "learning_curve.png",
        keys=[metric, "train/episode_return"],
        labels=[f"seed {s}" for s in seeds],
        title=f"{algo} on {env}: {len(seeds)} seeds",
        threshold=threshold, threshold_metric=metric,
    )
    return summary
