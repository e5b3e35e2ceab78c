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
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_metrics", "plot_learning_curves"]

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


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct labels: the run folder name, with parent folders added if needed."""
    folders = [p.parent if p.name == METRICS_FILE else p.with_suffix("") for p in paths]
    for depth in range(1, 6):
        labels = ["/".join(f.resolve().parts[-depth:]) for f in folders]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]


def plot_learning_curves(
    metrics_csv_paths: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    keys: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot one subplot per metric name with one line per run, and save a PNG.

    Args:
        metrics_csv_paths: ``metrics.csv`` files or run folders containing one.
        out_png: output image path (parent folders are created).
        keys: metric names to plot; shell-style patterns work (``"train/loss_*"``).
            Default: every metric found, sorted (``eval/*`` first).
        labels: legend label per run; default: the run folder names.
        title: optional figure title.

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
    names = sorted({n for run in runs for n in run}, key=lambda n: (not n.startswith("eval/"), n))
    if keys is not None:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, k) for k in keys)]
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
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name.startswith("train/loss") and all(
            v > 0 for run in runs if name in run for v in run[name][1]
        ):
            ax.set_yscale("log")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if len(runs) > 1:
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
