"""Imagined Gaussian beliefs against a real trajectory (PILCO's diagnostic plot)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["plot_belief_vs_real"]


@torch.no_grad()
def plot_belief_vs_real(imagination, policy, start, real_episode, horizon: int, path) -> None:
    """The imagined belief (mean +- 2 std per dimension) against one real trajectory.

    Args:
        imagination: an :class:`~reverie.envs.ImaginedEnv` (batch ``(1,)``).
        policy: the belief-space policy it rolls out.
        start: the initial belief (``("observation", "mean"/"var")``, batch ``(1,)``).
        real_episode: a ``(T,)`` real rollout with ``("next", "observation")`` ``(T, D)``.
        horizon: imagined steps.
        path: the PNG to write (a ``pathlib.Path``).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rollout = imagination.rollout(horizon, policy, tensordict=imagination.reset(start.clone()))
    mean = rollout["next", "observation", "mean"][0].cpu()  # (H, D)
    std = rollout["next", "observation", "var"][0].diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().cpu()
    obs = real_episode["next", "observation"]
    dims = mean.shape[-1]
    fig, axes = plt.subplots(1, dims, figsize=(3 * dims, 2.8))
    for d, ax in enumerate(np.atleast_1d(axes)):
        t = np.arange(1, mean.shape[0] + 1)
        ax.fill_between(t, mean[:, d] - 2 * std[:, d], mean[:, d] + 2 * std[:, d], alpha=0.3, label="imagined ±2σ")
        ax.plot(t, mean[:, d], label="imagined mean")
        ax.plot(np.arange(1, obs.shape[0] + 1), obs[:, d], "k.", ms=3, label="real")
        ax.set_title(f"observation[{d}]")
        ax.set_xlabel("step")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
