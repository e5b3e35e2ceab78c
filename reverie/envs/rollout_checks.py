"""Checks on a finished imagined rollout: non-finite values and actions outside their spec.

An imagination env hands its rollout to losses and planners; a NaN latent or reward from a
diverged model, or an action outside the bounds the model was trained on, would otherwise
be trained on or planned with in silence. :func:`check_rollout` looks at a whole rollout
with one host sync (one ``bool`` read back), and only on failure looks for where and what.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import TensorSpec

from reverie.validation import NonFiniteError

__all__ = ["ActionBoundsError", "action_bounds", "check_rollout"]


class ActionBoundsError(ValueError):
    """An action outside the bounds of the env's action spec."""


def action_bounds(spec: TensorSpec | None, batch_dims: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(low, high)`` of one element of a ``Bounded`` spec whose first ``batch_dims`` dims
    are batch dims (an env's ``action_spec``), or ``None`` when the spec has no bounds
    (unbounded, discrete, one-hot)."""
    space = getattr(spec, "space", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if not isinstance(low, torch.Tensor) or not isinstance(high, torch.Tensor):
        return None
    index = (0,) * min(batch_dims, low.ndim)
    return low[index], high[index]


def check_rollout(rollout: TensorDictBase, *, where: str, batch_dims: int,
                  action_key: NestedKey | None = None,
                  action_bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Raise if a floating-point entry of ``rollout`` is NaN/inf, or an action leaves its bounds.

    ``rollout`` has batch ``(*B, T)`` with ``len(B) == batch_dims``: root entries at time
    ``t`` are the step's inputs, ``("next", ...)`` entries its outputs. The error names the
    key, the first imagined step ``t`` and batch index where the value is bad, and what to
    do. ``action_bounds`` are ``(low, high)`` of one action (shape ``(*action,)``, see
    :func:`action_bounds`), inclusive; ``None`` compares nothing.

    Cost: one sum per entry and one host sync for the whole rollout.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"latent": torch.zeros(2, 3, 4),
        ...                  "next": {"reward": torch.tensor([[[0.0], [1.0], [float("nan")]]] * 2)}},
        ...                 [2, 3])
        >>> check_rollout(td, where="WorldModelEnv", batch_dims=1)
        Traceback (most recent call last):
        ...
        reverie.validation.NonFiniteError: WorldModelEnv: ('next', 'reward') is not finite at imagined step 2 (batch index (0,), value nan; 2 bad values under this key in the rollout): ...
    """
    floats = [(k, v) for k, v in rollout.items(True, True)
              if isinstance(v, torch.Tensor) and v.is_floating_point()]
    bounds = action_bounds if action_key is not None else None
    action = rollout.get(action_key, None) if bounds is not None else None
    # one pass per entry: a sum is NaN/inf when an element is (or, rarely, when finite
    # values overflow: the exact search below then finds nothing and the rollout passes)
    oks = [torch.isfinite(v.sum(dtype=torch.float32 if v.element_size() < 4 else v.dtype)) for _, v in floats]
    if action is not None:
        low, high = (b.to(action.device, action.dtype) for b in bounds)
        oks.append(((action >= low) & (action <= high)).all())
    if not oks or bool(torch.stack(oks).all()):
        return
    time_dim = batch_dims
    found = []  # (imagined step where it arose, key, first index, value, count)
    for key, value in floats:
        bad = ~torch.isfinite(value)
        if bad.any():
            first = tuple(bad.nonzero()[0].tolist())
            step = first[time_dim] if value.ndim > time_dim else 0
            # a root entry at t > 0 is the ("next", ...) entry of step t - 1
            arose = step if isinstance(key, tuple) and key[0] == "next" else step - 1
            found.append((arose, key, first, value[first].item(), int(bad.sum())))
    if found:
        # the earliest; at a tie the ("next", ...) entry, where the model wrote it
        arose, key, first, value, count = min(
            found, key=lambda f: (f[0], not (isinstance(f[1], tuple) and f[1][0] == "next")))
        origin = ("the start of the rollout holds it (encode a finite observation)" if arose < 0 else
                  "the world model produced it (it has diverged: check its training losses, lower "
                  "the learning rate, or look for NaN in the training data)")
        raise NonFiniteError(
            f"{where}: {key!r} is not finite at imagined step {max(arose, 0)} (batch index "
            f"{first[:time_dim]}, value {value}; {count} bad value{'s' if count > 1 else ''} "
            f"under this key in the rollout): {origin}. Pass check=False to rollout() to receive "
            "such rollouts unchecked.")
    if action is None:
        return  # the sums overflowed; every value is finite
    low, high = (b.to(action.device, action.dtype).expand_as(action) for b in bounds)
    out = (action < low) | (action > high)
    if not out.any():
        return
    first = tuple(out.nonzero()[0].tolist())
    raise ActionBoundsError(
        f"{where}: the action {action_key!r} at imagined step {first[time_dim]} (batch index "
        f"{first[:time_dim]}, element {first[time_dim + 1:]}) is {action[first].item()}, outside "
        f"the action spec's bounds [{low[first].item()}, {high[first].item()}] ({int(out.sum())} "
        "out-of-bounds values in the rollout). The model was never trained on such actions: "
        "bound the policy (e.g. a TanhNormal actor, or clamp to action_spec.space.low/high), "
        "or pass check=False to rollout() to imagine with them anyway.")
