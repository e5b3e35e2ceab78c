"""Videos of frame sequences (real and imagined rollouts) as animated GIFs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["write_video"]


def write_video(frames: Tensor, path: str | os.PathLike, fps: int = 10) -> Path:
    """Write frames ``(T, C, H, W)`` (float in ``[0, 1]`` or ``uint8``; ``C`` = 1 or 3) as an
    animated GIF that loops forever; returns the path.

    Examples:
        >>> import tempfile, torch
        >>> from PIL import Image
        >>> path = write_video(torch.rand(4, 3, 8, 16), tempfile.mkdtemp() + "/clip.gif")
        >>> Image.open(path).n_frames, Image.open(path).size
        (4, (16, 8))
    """
    from PIL import Image

    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"write_video: frames must be (T, C, H, W) with C = 1 or 3; got shape "
                         f"{tuple(frames.shape)}.")
    if frames.shape[0] == 0:
        raise ValueError("write_video: no frames to write (T = 0).")
    if fps < 1:
        raise ValueError(f"write_video: fps={fps}; need at least 1.")
    if frames.dtype != torch.uint8:
        frames = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = frames.cpu().permute(0, 2, 3, 1).numpy()  # (T, H, W, C)
    mode = "L" if array.shape[-1] == 1 else "RGB"
    images = [Image.fromarray(a.squeeze(-1) if mode == "L" else a, mode) for a in array]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)
    return path
