"""Input checks shared by fitting routines and losses: non-finite values are an error that
names the key, how many values are bad and where the first one is, before any work is done."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = ["NonFiniteError", "check_finite"]


class NonFiniteError(ValueError):
    """A NaN or infinite value where only finite numbers make sense."""


def check_finite(where: str, data: TensorDictBase, keys: Iterable[NestedKey], fix: str = "") -> None:
    """Raise :class:`NonFiniteError` if a floating-point entry of ``data`` under ``keys``
    holds NaN or +-inf.

    One reduction per key (a host sync on accelerators): call it once per batch or fit,
    not per element.

    Args:
        where: who checks, e.g. ``"fit_ensemble"`` (starts the message).
        data: the tensordict; missing keys and integer/bool entries are skipped.
        keys: the keys to check.
        fix: what the user should do, appended to the message.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"observation": torch.tensor([[0.0, 1.0], [float("nan"), 2.0]])}, [2])
        >>> check_finite("fit", td, ["observation"])
        Traceback (most recent call last):
        ...
        reverie.validation.NonFiniteError: fit: 'observation' (shape (2, 2)) holds 1 non-finite value (NaN or inf), the first at index (1, 0): nan.
    """
    for key in keys:
        value = data.get(key, None)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        bad = ~torch.isfinite(value)
        count = int(bad.sum())
        if count:
            first = tuple(bad.nonzero()[0].tolist())
            raise NonFiniteError(
                f"{where}: {key!r} (shape {tuple(value.shape)}) holds {count} non-finite "
                f"value{'s' if count > 1 else ''} (NaN or inf), the first at index {first}: "
                f"{value[first].item()}." + (f" {fix}" if fix else ""))
