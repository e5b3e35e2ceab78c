"""The ``reverie`` console command.

Usage::

    reverie train ALGO [--env ENV] [--seed N] [--preset NAME ...] [field=value ...]
    reverie train ALGO --help                 # every config field, its default and presets
    reverie train --resume RUN_DIR [field=value ...]
    reverie eval RUN_DIR [--episodes N] [--seed S] [--device D] [field=value ...]
    reverie plot RUN_DIR [RUN_DIR ...] [--out FILE] [--keys PATTERN ...]
    reverie seeds ALGO --env ENV --seeds 0 1 2 [--jobs 2] [--threshold X] --out DIR [...]

Exit codes: 0 success, 2 usage error (unknown algorithm, preset or field, unparsable
value, a recipe module that cannot be imported, not a run folder), 130 interrupted
(the run can be resumed). Errors raised inside a recipe propagate with their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from gymnasium import error as gym_error

from reverie import __version__
from reverie.algorithms import ALGORITHMS, load_algorithm
from reverie.runs import (
    CheckpointError,
    ResumeError,
    Run,
    RunFolderError,
    RunLockedError,
    config_from_dict,
    format_help,
    plot_learning_curves,
    read_config_file,
    read_run_info,
    resolve_config,
)
from reverie.runs.seeds import run_seeds
from reverie.training import DeviceError, TaskError, evaluate_run

__all__ = ["main"]


class _UsageError(Exception):
    """A user mistake: printed as ``reverie <cmd>: error: ...`` with exit code 2."""


def _algorithms_text() -> str:
    if not ALGORITHMS:
        return "algorithms: (none registered)"
    width = max(len(name) for name in ALGORITHMS)
    lines = ["algorithms:"]
    for name, (_module, description) in sorted(ALGORITHMS.items()):
        lines.append(f"  {name.ljust(width)}  {description}".rstrip())
    return "\n".join(lines)


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="reverie",
        description="Model-based reinforcement learning recipes on PyTorch, TensorDict "
        "and TorchRL.",
        epilog=_algorithms_text()
        + "\n\nexamples:\n"
        + "  reverie train worldmodel --env Pendulum-v1\n"
        + "  reverie train worldmodel --preset debug seed=3 lr=3e-4\n"
        + "  reverie train worldmodel --help\n"
        + "  reverie train --resume runs/worldmodel/Pendulum-v1/20250101-120000-s0\n"
        + "  reverie plot runs/worldmodel/Pendulum-v1/* --out curves.png",
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"reverie {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train",
        help="train a recipe (or resume a run)",
        description="Train ALGO with its config: defaults, then --config FILE, then --preset(s) "
        "in order, then --env/--seed and field=value overrides. `reverie train ALGO --help` "
        "lists the fields and presets. A run's config.json is a valid --config FILE (its "
        "run_dir is not reused; ALGO may then be left out).",
        usage="reverie train ALGO [--config FILE] [--env ENV] [--seed N] [--preset NAME ...] "
        "[field=value ...]\n       reverie train --resume RUN_DIR [field=value ...]",
        epilog=_algorithms_text(),
        formatter_class=raw,
        add_help=False,
    )
    train.add_argument(
        "-h", "--help", action="store_true", help="show help (with ALGO: its config)"
    )
    train.add_argument("--env", help="environment id (sets the `env` field)")
    train.add_argument("--seed", type=int, help="random seed (sets the `seed` field)")
    train.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME",
        help="named preset from the recipe's PRESETS; repeatable, in any order (debug applies last)",
    )
    train.add_argument("--config", metavar="FILE",
                       help="JSON or YAML file of field: value (or a run's config.json)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("args", nargs="*", metavar="ALGO | field=value", help=argparse.SUPPRESS)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a trained run's checkpoint into RUN_DIR/eval/<time>/",
        description="Load the run's agent (its saved config plus field=value overrides) and "
        "run seeded greedy episodes. Writes returns.csv, summary.json and returns.png under "
        "RUN_DIR/eval/<YYYYmmdd-HHMMSS>/ and never touches the training outputs. The same seed "
        "gives the same returns (bit for bit on the CPU); with the run's seed and episode "
        "count they equal the final evaluation of training.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--episodes", type=int, help="episodes (default: the run's eval_episodes)")
    evaluate.add_argument("--seed", type=int, help="evaluation seed (default: the run's seed)")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    evaluate.add_argument("overrides", nargs="*", metavar="field=value")

    plot = sub.add_parser(
        "plot",
        help="overlay the learning curves of one or more runs",
        description="One subplot per metric, one line per run (legend: algorithm, env, seed), and "
        "for several runs their mean and min-max band, from each run's metrics.csv. Without "
        "--keys, metrics that never change and timings (*_s) are left out.",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or metrics.csv)")
    plot.add_argument("--out", default="learning_curves.png", help="output PNG file")
    plot.add_argument(
        "--keys", nargs="+", metavar="PATTERN", help="metrics to plot, e.g. 'eval/*' 'train/loss_*'"
    )
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--threshold", type=float, help="a return to reach, drawn as a dashed line on eval/return")

    seeds = sub.add_parser(
        "seeds",
        help="train several seeds as parallel processes and collect a learning result",
        description="Run `reverie train ALGO` once per seed (--jobs processes at a time, one "
        "torch thread each) into --runs-root/seed_<s>, resume unfinished seeds, then write "
        "seed_<s>.csv, learning_curve.png and summary.json (command, seeds, env_steps, "
        "eval_return, threshold, wall_clock_s, commit, seed_commands, seed_commits) into "
        "--out. Settings are never mixed: an existing seed folder made with other settings "
        "(any config field except run_dir, resume, progress, verbose, logger, logger_offline, checkpoint_every) "
        "is refused before anything runs; use a new --runs-root or delete the folder.",
    )
    seeds.add_argument("algo", metavar="ALGO")
    seeds.add_argument("--env", required=True, help="environment id")
    seeds.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds to run")
    seeds.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    seeds.add_argument("--preset", action="append", default=[], metavar="NAME")
    seeds.add_argument("--threshold", type=float, help="return a seed must reach")
    seeds.add_argument("--metric", default="eval/return", help="summary metric compared")
    seeds.add_argument("--extra", nargs="*", default=[], help="more per-seed summary keys")
    seeds.add_argument("--out", required=True, help="results folder, e.g. docs/results/A/ENV")
    seeds.add_argument("--runs-root", help="where run folders go (default runs/seeds/ALGO/ENV)")
    seeds.add_argument("overrides", nargs="*", metavar="field=value")
    return parser, {"train": train, "eval": evaluate, "plot": plot, "seeds": seeds}


def _read_run(run_dir: str) -> tuple[str, dict]:
    try:
        return read_run_info(run_dir)
    except (FileNotFoundError, RunFolderError) as err:
        raise _UsageError(str(err)) from None


def _load(algo: str) -> ModuleType:
    if algo not in ALGORITHMS:
        raise _UsageError(
            f"unknown algorithm {algo!r}. Known algorithms: {', '.join(sorted(ALGORITHMS))}."
        )
    try:
        return load_algorithm(algo)
    except ModuleNotFoundError as err:
        path = ALGORITHMS[algo][0]
        if err.name and (path == err.name or path.startswith(err.name + ".")):
            raise _UsageError(
                f"algorithm {algo!r} is registered as module {path!r}, which does not exist."
            ) from None
        raise _UsageError(
            f"the {algo!r} recipe needs the package {err.name!r}, which is not installed "
            "(see the optional dependencies in pyproject.toml)."
        ) from None


def _train(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    tokens = list(args.args) + list(extra)
    bad = [t for t in tokens if t.startswith("-")]
    if bad:
        raise _UsageError(f"unrecognized option(s): {' '.join(bad)}")
    positional = [t for t in tokens if "=" not in t]
    overrides = [t for t in tokens if "=" in t]
    if len(positional) > 1:
        raise _UsageError(
            f"expected one algorithm name, got {positional}; overrides are written field=value."
        )
    algo = positional[0] if positional else None

    file_values = None
    if args.config is not None:
        if args.resume:
            raise _UsageError("--config cannot be combined with --resume (a resumed run keeps "
                              "its config; change single fields with field=value).")
        try:
            named, file_values = read_config_file(args.config, algo)
        except ValueError as err:
            raise _UsageError(str(err)) from None
        algo = algo or named
    if args.resume:
        saved_algo, saved = _read_run(args.resume)
        if algo is not None and algo != saved_algo:
            raise _UsageError(f"{args.resume} is a {saved_algo!r} run, not {algo!r}.")
        algo = saved_algo
    if algo is None:
        if args.help:
            parser.print_help()
            return 0
        raise _UsageError("missing ALGO (or --resume RUN_DIR). " + _algorithms_text())

    module = _load(algo)
    if args.help:
        print(format_help(module.Config, prog=f"reverie train {algo}"), end="")
        return 0

    try:
        if args.resume:
            if args.preset or args.env is not None or args.seed is not None:
                raise _UsageError(
                    "--preset, --env and --seed cannot be combined with --resume "
                    "(a resumed run keeps its config; change single fields with field=value)."
                )
            base = config_from_dict(module.Config, saved)
            where = [f"resume={args.resume}", f"run_dir={args.resume}"]
            config = resolve_config(module.Config, [], overrides + where, base=base)
        else:
            first = []
            if args.env is not None:
                first.append(f"env={args.env}")
            if args.seed is not None:
                first.append(f"seed={args.seed}")
            config = resolve_config(module.Config, args.preset, first + overrides, file_values=file_values,
                                    file_source=f"config file {args.config!r}")
    except ValueError as err:
        raise _UsageError(str(err)) from None

    Run.last_dir = None
    try:
        module.train(config)
    except (ResumeError, CheckpointError, DeviceError, FileExistsError, RunFolderError,
            RunLockedError, TaskError, gym_error.Error) as err:
        print(f"error: {err}", file=sys.stderr)  # e.g. an unknown env id; no folder is left
        return 2
    except KeyboardInterrupt:
        where = Run.last_dir
        msg = "\nInterrupted."
        if where is not None:
            msg += f" Resume with:\n  reverie train --resume {where}"
        print(msg, file=sys.stderr)
        return 130
    return 0


def _eval(args: argparse.Namespace) -> int:
    algo, _ = _read_run(args.run_dir)
    _load(algo)  # a clear error for a recipe that cannot be imported
    try:
        summary, folder = evaluate_run(args.run_dir, episodes=args.episodes, seed=args.seed,
                                       device=args.device, overrides=args.overrides)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        raise _UsageError(str(err)) from None
    print(f"Evaluation of {args.run_dir} ({algo}):")
    for name, value in summary.items():
        shown = f"{value:.6g}" if isinstance(value, float) else json.dumps(value, default=str)
        print(f"  {name}: {shown}")
    print(f"Written to {folder}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    missing = [
        r for r in args.runs if not (Path(r).is_file() or (Path(r) / "metrics.csv").exists())
    ]
    if missing:
        raise _UsageError(f"no metrics.csv in: {', '.join(missing)}")
    try:
        out = plot_learning_curves(args.runs, args.out, keys=args.keys, title=args.title,
                                   threshold=args.threshold)
    except ValueError as err:
        raise _UsageError(str(err)) from None
    print(f"Learning curves: {out}")
    return 0


def _seeds(args: argparse.Namespace, argv: list[str]) -> int:
    from reverie.runs.seeds import SeedSettingsError

    _load(args.algo)  # fail early on an unknown algorithm
    try:
        summary = run_seeds(
            args.algo, args.env, args.seeds, out_dir=args.out, presets=args.preset,
            overrides=args.overrides, jobs=args.jobs, runs_root=args.runs_root,
            threshold=args.threshold, metric=args.metric, extra_keys=args.extra,
            command="reverie " + " ".join(argv),
        )
    except SeedSettingsError as err:  # other settings in a seed folder, or a bad override
        raise _UsageError(str(err)) from None
    print(json.dumps(summary, indent=2))
    print(f"Results: {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``reverie`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns:
        The exit code (also for ``--help`` and usage errors, which do not raise).

    >>> main(["train", "worldmodel", "--preset", "debug", "seed=1"])  # doctest: +SKIP
    0
    """
    parser, subparsers = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, --version or an argparse usage error
        return exc.code if isinstance(exc.code, int) else 0
    command = args.command
    try:
        if command == "train":
            return _train(args, extra, subparsers["train"])
        if command == "seeds":  # field=value tokens after options land in `extra`
            args.overrides += [t for t in extra if "=" in t and not t.startswith("-")]
            extra = [t for t in extra if t not in args.overrides]
        if extra:
            raise _UsageError(f"unrecognized arguments: {' '.join(extra)}")
        if command == "eval":
            return _eval(args)
        if command == "seeds":
            return _seeds(args, argv)
        return _plot(args)
    except _UsageError as err:
        print(f"reverie {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
