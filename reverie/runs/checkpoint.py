"""Atomic checkpoints and random-number-generator state capture.

A checkpoint is one ``torch.save`` file holding a dict: module and optimizer
``state_dict()`` s, a TorchRL replay buffer's ``state_dict()``, counters and the RNG
state from :func:`capture_rng_state`. :func:`save_checkpoint` writes it atomically,
so a run killed mid-save keeps its previous checkpoint, and keeps the one before it as
``<name>.prev.pt``: :func:`load_checkpoint` falls back to it (with a warning) when the
latest is missing, truncated or corrupt.

>>> import tempfile, torch
>>> with tempfile.TemporaryDirectory() as folder:
...     path = folder + "/checkpoint.pt"
...     _ = save_checkpoint(path, {"step": 10, "w": torch.ones(2), "rng": capture_rng_state()})
...     state = load_checkpoint(path)
>>> state["step"], state["w"].tolist()
(10, [1.0, 1.0])
>>> restore_rng_state(state["rng"])
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "ResumeError",
    "previous_checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "seed_everything",
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (empty, truncated, corrupt) or written."""


class ResumeError(ValueError):
    """A run that cannot be resumed as asked (e.g. its checkpoint does not fit the model that
    the resumed config builds); raised before anything in the run folder is changed."""


def previous_checkpoint_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint before the latest:
    ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _temp_prefix(path: Path) -> tuple[str, str]:
    return f".{path.stem}-", f"{path.suffix}.tmp"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` with :func:`torch.save`.

    The dict is written to a temporary file in the same directory, flushed and
    fsynced; the current checkpoint (if any) is renamed to
    :func:`previous_checkpoint_path` and the temporary file renamed over ``path`` with
    :func:`os.replace` (atomic on POSIX and Windows). If anything fails (an exception, a
    full disk, a kill), ``path`` or its ``.prev`` file still holds the previous complete
    checkpoint, which :func:`load_checkpoint` finds; on an exception the temporary file
    is removed. Temporary files that a killed writer left behind are removed first.

    Args:
        path: destination file, e.g. ``<run>/checkpoint.pt``. Parent folders are created.
        state: a dict of tensors, state dicts, numbers, strings, lists/tuples/dicts of
            those. Keeping to these types lets :func:`load_checkpoint` use
            ``weights_only=True``.

    Returns:
        The checkpoint path.

    Raises:
        CheckpointError: the file could not be written (e.g. the disk is full), naming the
            path; the previous checkpoint is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temp_prefix(path)
    for orphan in path.parent.glob(f"{prefix}*{suffix}"):  # left by a killed writer
        orphan.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, previous_checkpoint_path(path))
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise CheckpointError(
                f"Could not write the checkpoint {path}: {err}. The previous checkpoint is "
                "intact; free disk space (or fix the folder's permissions) and resume.") from err
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); silently skipped where directories can't be opened."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device | None = "cpu",
    weights_only: bool = True,
) -> dict[str, Any] | None:
    """Load a checkpoint written by :func:`save_checkpoint`.

    When ``path`` is missing (a writer killed between its two renames) or unreadable
    (empty, truncated, corrupt) and the previous checkpoint
    (:func:`previous_checkpoint_path`) is readable, that one is loaded instead, with a
    warning naming both files.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded (default CPU; move modules afterwards
            with ``load_state_dict`` on the target device).
        weights_only: use torch's safe unpickler (tensors, containers, numbers,
            strings). Pass False only for checkpoints you trust that hold other objects.

    Returns:
        The saved dict, or None if neither ``path`` nor its previous checkpoint exists.

    Raises:
        CheckpointError: ``path`` is unreadable and there is no readable previous
            checkpoint; the message names the file and what is wrong with it.
        pickle.UnpicklingError: a readable checkpoint holds objects that the safe loader
            refuses (``weights_only=True``).
    """
    path = Path(path)
    previous = previous_checkpoint_path(path)
    if not path.exists():
        if not previous.exists():
            return None
        warnings.warn(f"{path} is missing (a save was interrupted); loading the previous "
                      f"checkpoint {previous}.", RuntimeWarning, stacklevel=2)
        return _load(previous, map_location, weights_only)
    try:
        return _load(path, map_location, weights_only)
    except CheckpointError as err:
        if not previous.exists():
            raise
        try:
            state = _load(previous, map_location, weights_only)
        except CheckpointError:
            raise err from None
        warnings.warn(f"{err} Loading the previous checkpoint {previous} instead.",
                      RuntimeWarning, stacklevel=2)
        return state


def _load(path: Path, map_location, weights_only: bool) -> dict[str, Any]:
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"The checkpoint {path} is empty (0 bytes): it was never "
                              "written completely. Delete it to start the run over.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"The checkpoint {path} ({size} bytes) is not a torch.save file: it is truncated "
            "or corrupt. Delete it to start the run over, or restore it from a backup.")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if not weights_only or "Weights only load failed" not in str(err):
            raise CheckpointError(f"The checkpoint {path} is corrupt: {err}") from err
        raise pickle.UnpicklingError(
            f"{path} holds objects that the safe loader refuses. Keep checkpoints to "
            "tensors, state dicts and plain Python values, or, for a file you trust, call "
            f"load_checkpoint(path, weights_only=False).\n{err}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"The checkpoint {path} ({size} bytes) cannot be read ({type(err).__name__}: "
            f"{err}): it is truncated or corrupt. Delete it to start the run over, or restore "
            "it from a backup.") from err


def capture_rng_state() -> dict[str, Any]:
    """Snapshot python ``random``, numpy's global RNG, torch's CPU RNG and (if present) CUDA RNGs.

    The result only holds tensors, ints, floats, strings and tuples, so it can be saved
    in a checkpoint and loaded with ``weights_only=True``.

    >>> state = capture_rng_state()
    >>> a = torch.rand(3)
    >>> restore_rng_state(state)
    >>> torch.equal(a, torch.rand(3))
    True
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by :func:`capture_rng_state`.

    After this call the next draws from ``random``, ``numpy.random`` and ``torch``
    equal the draws that followed the capture. CUDA states are restored when present
    in ``state`` and CUDA is available (for as many devices as both have).
    """
    py = state["python"]
    # weights_only loading may turn the inner tuple into a list; random wants tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])[: torch.cuda.device_count()]
        for i, s in enumerate(cuda_states):
            torch.cuda.set_rng_state(s.cpu(), device=i)


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
