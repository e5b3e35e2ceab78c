"""Learning curves from the ``metrics.csv`` files that :class:`~reverie.runs.Run` writes.

``metrics.csv`` is long ("tidy") format, one logged scalar per row::

    step,name,value
    200,train/loss_reward,0.512
    200,eval/return,-1203.4

:func:`plot_learning_curves` draws one subplot per metric name and one line per run.
It uses matplotlib's object API with the Agg canvas, so it never opens a window and
never changes the global pyplot backend.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_metrics", "plot_learning_curves", "plotted_metrics"]

METRICS_FILE = "metrics.csv"


def _csv_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """Read a ``metrics.csv`` (or a run folder holding one).

    Returns:
        metric name -> (steps, values), in file order.

    Raises:
        FileNotFoundError: if there is no metrics file.
    """
    path = _csv_path(path)
    if not path.exists():
        raise FileNotFoundError(f"No metrics file at {path}.")
    out: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            steps, values = out[row["name"]]
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    return dict(out)


def _run_label(folder: Path) -> str | None:
    """``"pets · Pendulum-v1 · seed 0"`` from a run folder's ``config.json``, else ``None``."""
    try:
        data = json.loads((folder / "config.json").read_text())
        config = data["config"]
        return f"{data['algo']} · {config['env']} · seed {config['seed']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct labels: algorithm, env and seed from each run's ``config.json`` when
    they tell the runs apart; else the run folder name, with parent folders added if needed."""
    folders = [p.parent if p.name == METRICS_FILE else p.with_suffix("") for p in paths]
    named = [_run_label(f) for f in folders]
    if all(named) and len(set(named)) == len(named):
        return named
    for depth in range(1, 6):
        labels = ["/".join(f.resolve().parts[-depth:]) for f in folders]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]


def _is_constant(runs, name: str) -> bool:
    values = [v for run in runs if name in run for v in run[name][1]]
    return len(values) > 1 and max(values) - min(values) <= 1e-9 * max(1.0, max(abs(v) for v in values))


def _mean_band(series: list[tuple[list[int], list[float]]]):
    """Mean and min-max band over runs at the steps every run logged (``None`` if fewer
    than two runs share two or more steps)."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in series)))
    if len(series) < 2 or len(common) < 2:
        return None
    per_run = [dict(zip(steps, values, strict=True)) for steps, values in series]
    table = [[run[t] for run in per_run] for t in common]
    return (common, [sum(r) / len(r) for r in table], [min(r) for r in table], [max(r) for r in table])


def plotted_metrics(runs: Sequence[dict], keys: Sequence[str] | None = None) -> list[str]:
    """The panels :func:`plot_learning_curves` draws for ``runs`` (what :func:`read_metrics`
    gives): ``keys`` (shell patterns) when given, else every metric that changes except
    timings (``*_s``); ``eval/*`` first.

    >>> plotted_metrics([{"eval/return": ([1, 2], [0.0, 1.0]), "train/kl": ([1, 2], [1.0, 1.0]),
    ...                   "train/fit_s": ([1, 2], [3.0, 4.0])}])
    ['eval/return']
    """
    names = sorted({n for run in runs for n in run}, key=lambda n: (not n.startswith("eval/"), n))
    if keys is not None:
        return [n for n in names if any(fnmatch.fnmatchcase(n, k) for k in keys)]
    return [n for n in names if not n.endswith("_s") and not _is_constant(runs, n)]


def plot_learning_curves(
    metrics_csv_paths: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    keys: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    threshold: float | None = None,
    threshold_metric: str = "eval/return",
) -> Path:
    """Plot one subplot per metric name with one line per run, and save a PNG.

    With several runs, each panel also draws their mean (black) and the min-max band over
    the steps all runs logged; ``threshold`` is a dashed line on ``threshold_metric``'s
    panel. Without ``keys``, panels whose values never change (e.g. a KL held at its free
    nats) and timings (``*_s``) are left out. Axes show plain numbers (no offsets).

    Args:
        metrics_csv_paths: ``metrics.csv`` files or run folders containing one.
        out_png: output image path (parent folders are created).
        keys: metric names to plot; shell-style patterns work (``"train/loss_*"``).
            Default: every metric found that changes, timings left out, sorted (``eval/*`` first).
        labels: legend label per run; default: algorithm, env and seed from the runs'
            ``config.json`` (else the run folder names).
        title: optional figure title.
        threshold: the return the runs must reach, drawn as a line.
        threshold_metric: the metric the threshold is for.

    Returns:
        The PNG path.

    Raises:
        ValueError: if no metric matches (or the files hold no rows).

    >>> plot_learning_curves(["runs/worldmodel/Pendulum-v1/20250101-120000-s0"],
    ...                      "curves.png", keys=["eval/*"])  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = [_csv_path(p) for p in metrics_csv_paths]
    runs = [read_metrics(p) for p in paths]
    labels = list(labels) if labels is not None else _labels(paths)
    names = plotted_metrics(runs, keys)
    if not names:
        wanted = f" matching {list(keys)}" if keys is not None else ""
        raise ValueError(f"No metrics{wanted} in {[str(p) for p in paths]}.")

    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.3 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            if name in run:
                steps, values = run[name]
                marker = "o" if len(steps) <= 20 else None
                ax.plot(
                    steps,
                    values,
                    color=f"C{i % 10}",
                    label=label,
                    marker=marker,
                    markersize=3,
                    linewidth=1.2,
                )
        band = _mean_band([run[name] for run in runs if name in run]) if len(runs) > 1 else None
        if band is not None:
            steps, mean, low, high = band
            ax.fill_between(steps, low, high, color="0.5", alpha=0.2, linewidth=0, label="min-max over runs")
            ax.plot(steps, mean, color="black", linewidth=2.0, label="mean over runs")
        if threshold is not None and name == threshold_metric:
            ax.axhline(threshold, color="C3", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("env step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
        if name.startswith("train/loss") and all(
            v > 0 for run in runs if name in run for v in run[name][1]
        ):
            ax.set_yscale("log")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if len(runs) > 1 or threshold is not None:
        by_label = {}
        for ax in axes[: len(names)]:
            for handle, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
                by_label.setdefault(lbl, handle)
        fig.legend(
            list(by_label.values()),
            list(by_label),
            loc="outside lower center",
            ncols=min(4, len(by_label)),
            fontsize=8,
        )
    if title:
        fig.suptitle(title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
