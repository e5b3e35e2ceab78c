"""Replay buffers whose sampled batches land on the training device, and lean checkpoints.

A TorchRL ``LazyTensorStorage`` pre-allocates its whole capacity at the first write, and its
``state_dict()`` holds all of it: a checkpoint of a run with 1,000 transitions in a buffer of
1,000,000 would store the 999,000 empty rows too. :func:`buffer_state_dict` keeps only the
filled rows; :func:`load_buffer_state_dict` puts them back into a buffer of the full capacity,
so sampling, writing and the cursor continue exactly where they were.

>>> import torch
>>> from tensordict import TensorDict
>>> rb = make_replay_buffer(1000, batch_size=4)
>>> _ = rb.extend(TensorDict(obs=torch.arange(10.0)[:, None], batch_size=[10]))
>>> state = buffer_state_dict(rb)
>>> state["_storage"]["_storage"]["obs"].shape
torch.Size([10, 1])
>>> restored = make_replay_buffer(1000, batch_size=4)
>>> load_buffer_state_dict(restored, state)
>>> len(restored), bool((restored[:] == rb[:]).all())
(10, True)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import Sampler

__all__ = ["make_replay_buffer", "buffer_state_dict", "budget_capacity",
           "load_buffer_state_dict", "transition_bytes",
           "ToDevice"]


class ToDevice:
    """Replay-buffer transform: move each sampled batch to ``device`` (picklable)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        return td.to(self.device, non_blocking=self.device.type == "cuda")

    def __repr__(self) -> str:
        return f"ToDevice({self.device})"


def make_replay_buffer(
    capacity: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    sampler: Sampler | None = None,
) -> ReplayBuffer:
    """A replay buffer stored on the CPU whose samples are moved to ``device``.

    Args:
        capacity: most transitions kept (oldest overwritten first).
        batch_size: transitions per ``sample()``.
        device: where sampled batches go (the agent's training device).
        sampler: e.g. a ``SliceSampler`` for sequences (default: uniform).
    """
    device = torch.device(device)
    return ReplayBuffer(
        storage=LazyTensorStorage(capacity, device="cpu"),
        sampler=sampler,
        batch_size=batch_size,
        transform=None if device.type == "cpu" else ToDevice(device),
    )


def _map_tensors(tree: Any, fn) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, TensorDictBase):
        return _map_tensors(tree.to_dict(), fn)
    if isinstance(tree, Mapping):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    return tree


def buffer_state_dict(buffer: ReplayBuffer) -> dict[str, Any]:
    """``buffer.state_dict()`` with the storage cut to its filled rows (see the module doc)."""
    state = buffer.state_dict()
    storage = state.get("_storage", {})
    if "_storage" in storage and storage["_storage"] is not None:
        n = int(storage.get("_len", 0))
        storage["_storage"] = _map_tensors(storage["_storage"], lambda t: t[:n].clone())
    return state


def load_buffer_state_dict(buffer: ReplayBuffer, state: Mapping[str, Any]) -> None:
    """Load a :func:`buffer_state_dict` into an empty ``buffer`` of the saved capacity.

    The saved rows are written back in storage order with ``extend``, then the writer's
    cursor and the sampler's state are restored, so a full (wrapped) buffer continues to
    overwrite the same rows it would have.

    Raises:
        ValueError: ``buffer`` is not empty, or the saved data exceed its capacity.
    """
    if len(buffer):
        raise ValueError(f"load_buffer_state_dict needs an empty buffer; this one holds {len(buffer)}.")
    storage = state.get("_storage", {})
    n = int(storage.get("_len", 0))
    capacity = buffer.storage.max_size
    if n > capacity:
        raise ValueError(
            f"The checkpoint's replay buffer holds {n} transitions, more than this buffer's "
            f"capacity {capacity}; resume with the buffer size the run was saved with.")
    rows = storage.get("_storage")
    if n and rows is not None:
        flat = {k: v[:n] for k, v in rows.items()}
        buffer.extend(TensorDict(flat, [n]).unflatten_keys("."))
    if "_writer" in state:
        buffer.writer.load_state_dict(state["_writer"])
    if state.get("_sampler"):
        buffer.sampler.load_state_dict(state["_sampler"])


def transition_bytes(transition: TensorDictBase) -> int:
    """Bytes one stored transition takes (every leaf of ``transition``, batch size ``()``)."""
    return int(sum(v.numel() * v.element_size() for v in transition.values(True, True)))


def budget_capacity(buffer_size: int, buffer_gb: float, transition: TensorDictBase,
                    who: str = "replay", at_least: int = 1) -> int:
    """The replay capacity: ``buffer_size`` transitions like ``transition``, or as many as fit
    in ``buffer_gb`` GB, whichever is fewer; it must hold ``at_least`` transitions (e.g. one
    replayed sequence).

    A state transition of a few floats fits a million times in a few MB; a 64x64 RGB frame
    stored as float32 takes 49 kB, so a pixel run's million transitions would need 49 GB and
    the budget keeps it to what the machine holds. Storage grows as data arrive: the budget
    bounds the memory, it is not taken at the start.

    Raises:
        ValueError: fewer than ``at_least`` transitions fit in the budget, or the budget is more than half
            of this machine's memory (names ``buffer_gb``, the sizes and the fix).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> frame = TensorDict({"pixels": torch.zeros(3, 64, 64)}, [])  # 49,152 bytes
        >>> budget_capacity(1_000_000, 1.0, frame)
        20345
        >>> budget_capacity(10_000, 1.0, frame)
        10000
    """
    per = max(transition_bytes(transition), 1)
    fit = int(buffer_gb * 1e9 // per)
    if fit < at_least:
        held = "no transition" if fit == 0 else f"{fit} transitions"
        need = "" if at_least == 1 else f", fewer than the {at_least} needed"
        raise ValueError(f"{who}: buffer_gb={buffer_gb} holds {held} of {per / 1e3:.1f} kB{need}; raise buffer_gb.")
    capacity = min(int(buffer_size), fit)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if capacity * per > 0.5 * total:
        raise ValueError(
            f"{who}: {capacity} transitions of {per / 1e3:.1f} kB need {capacity * per / 1e9:.1f} GB, "
            f"more than half of this machine's {total / 1e9:.0f} GB; lower buffer_gb (or buffer_size).")
    return capacity
