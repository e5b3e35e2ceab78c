"""One "real vs imagined" figure for every recipe, and the names of observation features.

Every recipe's ``diagnostics/imagined_vs_real.png`` is drawn by :func:`plot_real_vs_imagined`:
one panel per observation feature (named from :data:`OBSERVATION_NAMES`), the real values in
black, the model's imagined values in orange (dashed, with a ±2σ band where the model has a
variance), and a title with the algorithm, the env, the seed and the env steps trained.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["OBSERVATION_NAMES", "observation_names", "plot_real_vs_imagined"]

#: env id -> names of its observation features, in order
OBSERVATION_NAMES: dict[str, tuple[str, ...]] = {
    "Pendulum-v1": ("cos θ", "sin θ", "θ̇"),
    "CartPole-v1": ("x", "ẋ", "θ", "θ̇"),
    "MountainCarContinuous-v0": ("x", "ẋ"),
    "InvertedPendulum-v5": ("x", "θ", "ẋ", "θ̇"),
    "reverie/CartPoleSwingUp-v0": ("x", "ẋ", "cos φ", "sin φ", "φ̇", "φ"),
    "reverie/PointMass1D-v0": ("x", "ẋ"),
}


def observation_names(env_id: str, dim: int, names: Sequence[str] | None = None) -> list[str]:
    """Names of ``dim`` observation features: ``names`` if given, else the table's for
    ``env_id``, else (or past their end) ``obs[i]``.

    >>> observation_names("Pendulum-v1", 3)
    ['cos θ', 'sin θ', 'θ̇']
    >>> observation_names("dmc/cartpole-swingup", 2)
    ['obs[0]', 'obs[1]']
    """
    known = list(names) if names is not None else list(OBSERVATION_NAMES.get(env_id, ()))
    return [known[i] if i < len(known) else f"obs[{i}]" for i in range(dim)]


def plot_real_vs_imagined(real: Tensor, imagined: Tensor, path: str | os.PathLike, *,
                          names: Sequence[str], title: str, std: Tensor | None = None,
                          real_start: int = 0, imagined_start: int = 0, xlabel: str = "step",
                          reward: tuple[Tensor, Tensor] | None = None, max_cols: int = 4) -> Path:
    """Real vs imagined observations, one panel per feature; writes a PNG and returns its path.

    Args:
        real: ``(T_r, D)`` real observations, at steps ``real_start, real_start + 1, ...``.
        imagined: ``(T_i, D)`` imagined ones (a mean when ``std`` is given), at steps
            ``imagined_start, ...``.
        path: the PNG.
        names: ``D`` feature names (:func:`observation_names`).
        title: the figure title (algorithm, env, seed, env steps).
        std: ``(T_i, D)`` standard deviations of the imagined values: a ±2σ band.
        real_start, imagined_start: the step of the first row of each.
        xlabel: the x axis label.
        reward: optional ``(real (T_r,), imagined (T_i,))`` rewards, one more panel.
        max_cols: panels per row.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    real, imagined = real.detach().double().cpu(), imagined.detach().double().cpu()
    dims = real.shape[-1]
    panels = dims + (reward is not None)
    ncols = min(max_cols, panels)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xr = torch.arange(real.shape[0]) + real_start
    xi = torch.arange(imagined.shape[0]) + imagined_start
    series = [(real[:, d], imagined[:, d], None if std is None else std.detach().double().cpu()[:, d], names[d])
              for d in range(dims)]
    if reward is not None:
        series.append((reward[0].detach().double().cpu().reshape(-1), reward[1].detach().double().cpu().reshape(-1),
                       None, "reward"))
    for ax, (r, m, s, name) in zip(axes, series, strict=False):
        if s is not None:
            ax.fill_between(xi, m - 2 * s, m + 2 * s, color="tab:orange", alpha=0.25, linewidth=0,
                            label="imagined ±2σ")
        ax.plot(xr[: r.shape[0]], r, color="black", marker=".", markersize=3, linewidth=1.0, label="real")
        ax.plot(xi[: m.shape[0]], m, color="tab:orange", linestyle="--", linewidth=1.5, label="imagined")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
