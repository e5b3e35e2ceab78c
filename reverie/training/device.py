"""Resolve ``config.device`` to a :class:`torch.device`, with a clear error for one that is absent."""

from __future__ import annotations

import torch

__all__ = ["DeviceError", "resolve_device", "available_devices"]


class DeviceError(ValueError):
    """A device that is not a torch device or that this machine does not have."""


def available_devices() -> list[str]:
    """Devices this process can use, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when present else ``cpu``; any other name is checked to exist.

    Raises:
        ValueError: an unknown device string, or a device this machine does not have; the
            message names it and lists the available ones.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    """
    if isinstance(name, str) and name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(
            f"device={name!r} is not a torch device ({err}). Available here: "
            f"{', '.join(available)} (or device=auto)."
        ) from None
    if device.type == "cpu":
        return device
    ok = False
    if device.type == "cuda":
        ok = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    elif device.type == "mps":
        ok = "mps" in available
    if not ok:
        raise DeviceError(
            f"device={name!r} is not available on this machine. Available: "
            f"{', '.join(available)}. Set device=cpu, device=auto, or one of those."
        )
    return device
