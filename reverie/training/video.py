"""A video of one real evaluation episode, rendered by the env itself.

The recipe's ``make_env(config, render=True)`` creates the task with Gymnasium's
``render_mode="rgb_array"``; a transform keeps each frame the env renders,
outside the tensordict. The episode is evaluation episode 0 again (same seed, same greedy
policy): its return equals the one in the run's evaluation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchrl.envs.transforms import Transform

from reverie.diagnostics.video import video_suffix, write_video

from .collect import wrap_env
from .evaluate import episode_return, run_episodes

__all__ = ["renders", "record_episode"]


class _FrameGrabber(Transform):
    """Keeps ``parent.render()`` after every reset and step, outside the tensordict, so the
    episode stays the evaluation's. (With TorchRL's ``PixelRenderTransform`` appended instead,
    a seeded Pendulum episode started from another first observation: the replay would not
    be evaluation episode 0.)"""

    def __init__(self) -> None:
        super().__init__(in_keys=[], out_keys=[])
        self.frames: list[np.ndarray] = []

    def _grab(self) -> None:
        frame = self.parent.render()
        if frame is None:
            raise RuntimeError("the env rendered no frame (render_mode is not 'rgb_array')")
        self.frames.append(np.asarray(frame, dtype=np.uint8).copy())

    def _reset(self, tensordict, tensordict_reset):
        self.frames.clear()
        self._grab()
        return tensordict_reset

    def _step(self, tensordict, next_tensordict):
        self._grab()
        return next_tensordict


def renders(make_env: Callable) -> bool:
    """Whether ``make_env`` takes ``render=`` (the recipe can build a rendering env)."""
    try:
        return "render" in inspect.signature(make_env).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def record_episode(agent, make_env: Callable, config, max_steps: int, seed: int, path: Path,
                   fps: int = 20, max_side: int = 320) -> tuple[Path, float, int]:
    """Render evaluation episode 0 of ``agent`` into ``path`` (its suffix replaced by what
    this machine writes: ``.mp4`` or ``.gif``).

    Args:
        agent: the trained agent (its greedy policy acts).
        make_env: the recipe's ``make_env(config, render=True)``.
        config: the run's config.
        max_steps: agent steps of the episode (the run's evaluation length).
        seed: the run's seed (episode 0 of the ``eval`` stream, as in the evaluation).
        path: where to write (``diagnostics/eval_episode``).
        fps: frames per second of the video.
        max_side: frames are shrunk (by an integer stride) until both sides fit.

    Returns:
        ``(path written, the episode's return, frames)``: the reset frame and one per step.
    """
    grabber = _FrameGrabber()
    env = wrap_env(make_env(config, render=True), max_steps).append_transform(grabber)
    try:
        (episode,) = run_episodes(agent, env, 1, max_steps, seed)
    finally:
        env.close()
    frames = torch.as_tensor(np.stack(grabber.frames))  # (T+1, H, W, 3): the reset frame, then one per step
    stride = max(1, -(-max(frames.shape[1:3]) // max_side))
    frames = frames[:, ::stride, ::stride].permute(0, 3, 1, 2).contiguous()
    written = write_video(frames, Path(path).with_suffix(video_suffix()), fps=fps)
    return written, episode_return(episode), int(frames.shape[0])
