"""Imagined Gaussian beliefs against a real trajectory (PILCO's diagnostic plot)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reverie.diagnostics.figures import observation_names, plot_real_vs_imagined

__all__ = ["plot_belief_vs_real"]


@torch.no_grad()
def plot_belief_vs_real(imagination, policy, start, real_episode, horizon: int, path, *,
                        names: Sequence[str] | None = None, title: str = "") -> None:
    """The imagined belief (mean ± 2 std per dimension) against one real trajectory, in the
    common figure style (:func:`~reverie.diagnostics.figures.plot_real_vs_imagined`).

    Args:
        imagination: an :class:`~reverie.envs.ImaginedEnv` (batch ``(1,)``).
        policy: the belief-space policy it rolls out.
        start: the initial belief (``("observation", "mean"/"var")``, batch ``(1,)``).
        real_episode: a ``(T,)`` real rollout with ``("next", "observation")`` ``(T, D)``.
        horizon: imagined steps.
        path: the PNG to write.
        names: feature names (default ``obs[i]``).
        title: the figure title.
    """
    rollout = imagination.rollout(horizon, policy, tensordict=imagination.reset(start.clone()))
    mean = rollout["next", "observation", "mean"][0].cpu()  # (H, D)
    std = rollout["next", "observation", "var"][0].diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().cpu()
    real = torch.cat([real_episode["observation"][:1], real_episode["next", "observation"]])  # (T+1, D)
    plot_real_vs_imagined(real, mean, path, names=observation_names("", mean.shape[-1], names),
                          title=title or "real vs imagined belief", std=std, real_start=0,
                          imagined_start=1, xlabel="step of the trial")
