"""Calling TensorDict components by key: input concatenation and errors that name the key.

A component is a :class:`~tensordict.nn.TensorDictModule` (or any
:class:`~tensordict.nn.TensorDictModuleBase`). Reverie adds one convenience: when a
``TensorDictModule`` has several ``in_keys`` but its inner module takes a single tensor
(``nn.Linear``, ``nn.Sequential``, ...), the inputs are concatenated along the last
dimension, so ``TensorDictModule(nn.Linear(latent_dim + action_dim, latent_dim),
in_keys=["latent", "action"], ...)`` works as the spec's examples write it.
"""

from __future__ import annotations

import inspect

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import unravel_key

__all__ = ["ComponentError", "call_component", "concatenates_inputs"]

_CONCAT_ATTR = "_reverie_concat_inputs"


def _takes_one_tensor(module) -> bool:
    """Whether ``module`` (an ``nn.Module`` or a callable) takes one positional input, no ``*args``."""
    fn = module.forward if isinstance(module, torch.nn.Module) else module
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
    return len(positional) == 1 and not var_positional


def concatenates_inputs(component: TensorDictModuleBase) -> bool:
    """Whether ``component`` gets its ``in_keys`` concatenated along the last dim.

    True for a plain :class:`TensorDictModule` with several positional ``in_keys`` whose
    inner module takes one tensor. The answer is cached on the component.
    """
    cached = component.__dict__.get(_CONCAT_ATTR)
    if cached is not None and cached[0] is getattr(component, "module", None):
        return cached[1]
    result = (
        type(component) is TensorDictModule
        and not component._kwargs
        and len(component.in_keys) > 1
        and _takes_one_tensor(component.module)
    )
    component.__dict__[_CONCAT_ATTR] = (getattr(component, "module", None), result)
    return result


def _plain(component: TensorDictModuleBase) -> bool:
    """A ``TensorDictModule`` itself (no subclass) with positional in_keys: safe to call directly."""
    return type(component) is TensorDictModule and not component._kwargs


def _missing_keys(component: TensorDictModuleBase, td: TensorDictBase) -> list:
    keys = td.keys(True)
    return [key for key in component.in_keys if unravel_key(key) not in keys]


class ComponentError(RuntimeError):
    """A component failed on its inputs (e.g. a width that does not match its layers)."""


def _failed(name: str, component: TensorDictModuleBase, td: TensorDictBase,
            err: RuntimeError) -> ComponentError:
    shapes = []
    for key in component.in_keys:
        value = td.get(key, None)
        if isinstance(value, torch.Tensor):
            shapes.append(f"{unravel_key(key)!r} {tuple(value.shape)} {value.dtype}")
    return ComponentError(
        f"{name} failed on its inputs {', '.join(shapes) or '(none)'}: {err}. Check that "
        f"these shapes are what {name} was built for (feature sizes, e.g. the latent or "
        "action width, and batch dims).")


def call_component(name: str, component: TensorDictModuleBase, td: TensorDictBase) -> TensorDictBase:
    """Run ``component`` on ``td`` (in place, returns ``td``).

    Args:
        name: the component's role, used in error messages (e.g. ``"dynamics"``).
        component: the TensorDict module to run.
        td: input tensordict; outputs are written into it.

    Raises:
        KeyError: an input key is missing; the message names the component and the key.
        ComponentError: the component raised a ``RuntimeError`` (e.g. mismatched widths);
            the message names the component and the shape and dtype of every input.
    """
    missing = None
    if _plain(component):  # read, call, write: TensorDictModule's dispatch costs more than the call
        inputs = [td.get(key, None) for key in component.in_keys]
        if any(x is None for x in inputs):
            missing = _missing_keys(component, td)
        else:
            try:
                if concatenates_inputs(component):
                    out = component.module(torch.cat(inputs, dim=-1))
                else:
                    out = component.module(*inputs)
            except RuntimeError as err:
                raise _failed(name, component, td, err) from err
            if isinstance(out, torch.Tensor):
                out = (out,)
            for key, value in zip(component.out_keys, out, strict=True):
                td.set(key, value)
            return td
    else:
        try:
            return component(td)
        except KeyError:
            missing = _missing_keys(component, td)
            if not missing:
                raise
        except RuntimeError as err:
            raise _failed(name, component, td, err) from err
    raise KeyError(
        f"{name} needs the input key(s) {missing}, which are not in the tensordict "
        f"(it holds {sorted(map(str, td.keys(True, True)))}). Write them before the call, "
        f"or change `{name}.in_keys`."
    )
