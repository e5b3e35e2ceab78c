"""Videos of frame sequences (real and imagined rollouts): MP4 when an encoder is installed,
else animated GIF.

MP4 goes through imageio's FFmpeg plugin (``imageio-ffmpeg``) or PyAV (``av``), whichever is
installed (the ``video`` extra installs ``imageio-ffmpeg``); without either, the same
frames are written as a GIF with Pillow. :func:`video_suffix` says which one this machine
writes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["video_suffix", "write_video"]


def video_suffix() -> str:
    """``".mp4"`` when an MP4 encoder (imageio-ffmpeg or PyAV) is installed, else ``".gif"``."""
    has_imageio = importlib.util.find_spec("imageio") is not None
    encoders = ("imageio_ffmpeg", "av")
    return ".mp4" if has_imageio and any(importlib.util.find_spec(e) for e in encoders) else ".gif"


def write_video(frames: Tensor, path: str | os.PathLike, fps: int = 10) -> Path:
    """Write frames ``(T, C, H, W)`` (float in ``[0, 1]`` or ``uint8``; ``C`` = 1 or 3) as a
    video; returns the path written.

    The suffix of ``path`` chooses the format: ``.mp4`` (H.264, sides rounded up to even
    sizes with black edges; written as ``.gif`` instead when no encoder is installed) or
    ``.gif`` (loops forever). Use :func:`video_suffix` to pick what this machine writes.

    Examples:
        >>> import tempfile, torch
        >>> from PIL import Image
        >>> path = write_video(torch.rand(4, 3, 8, 16), tempfile.mkdtemp() + "/clip.gif")
        >>> Image.open(path).n_frames, Image.open(path).size
        (4, (16, 8))
    """
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        if video_suffix() == ".mp4":
            return _write_mp4(array, path, fps)
        path = path.with_suffix(".gif")
    return _write_gif(array, path, fps)


def _write_mp4(array, path: Path, fps: int) -> Path:
    import imageio.v3 as iio
    import numpy as np

    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    t, h, w, c = array.shape
    if h % 2 or w % 2:  # H.264 with yuv420p needs even sides
        padded = np.zeros((t, h + h % 2, w + w % 2, c), dtype=array.dtype)
        padded[:, :h, :w] = array
        array = padded
    plugin = "FFMPEG" if importlib.util.find_spec("imageio_ffmpeg") else "pyav"
    if plugin == "FFMPEG":
        iio.imwrite(path, array, plugin=plugin, fps=fps, codec="libx264", macro_block_size=1)
    else:
        iio.imwrite(path, array, plugin=plugin, fps=fps, codec="libx264")
    return path


def _write_gif(array, path: Path, fps: int) -> Path:
    from PIL import Image

    mode = "L" if array.shape[-1] == 1 else "RGB"
    images = [Image.fromarray(a.squeeze(-1) if mode == "L" else a, mode) for a in array]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path
