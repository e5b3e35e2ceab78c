"""A tensor-level rollout loop for imagination envs that reproduces ``EnvBase.rollout`` exactly.

``EnvBase.rollout`` builds, copies and validates TensorDicts at every step, which costs
about a millisecond per step on a CPU core, far more than the matmuls of a small world
model. When the policy and the world model are plain :class:`TensorDictModule` chains,
this loop calls their inner ``nn.Module`` on a flat ``{key: tensor}`` dict instead and
stacks the steps once at the end. The returned TensorDict is the one ``EnvBase.rollout``
returns: same keys, values, shapes, dtypes, batch size and dim names (a test checks this).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey, unravel_key

from reverie.modules.components import concatenates_inputs
from reverie.modules.world_model import WorldModelStep

__all__ = ["plain_modules", "fast_rollout"]


def _is_plain(module) -> bool:
    return (
        type(module) is TensorDictModule
        and not module._kwargs
        and module.inplace is True
        and module.method is None
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def plain_modules(module) -> list[TensorDictModule] | None:
    """Flatten ``module`` into plain TensorDictModules, or ``None`` if it is not that simple.

    Accepts a :class:`TensorDictModule`, a :class:`TensorDictSequential` of them (nested)
    and a :class:`~reverie.modules.WorldModelStep`.
    """
    if _is_plain(module):
        return [module]
    if isinstance(module, WorldModelStep):
        parts = [c for _, c in module.components()]
    elif type(module) is TensorDictSequential and not module._forward_hooks:
        if getattr(module, "partial_tolerant", False) or getattr(module, "_select_before_return", False):
            return None
        parts = list(module.module)
    else:
        return None
    flat: list[TensorDictModule] = []
    for part in parts:
        sub = plain_modules(part)
        if sub is None:
            return None
        flat.extend(sub)
    return flat


def _compile_calls(modules: list[TensorDictModule]) -> list[tuple]:
    """``(inner module, in keys, out keys, concatenate?)`` for each module, resolved once."""
    return [
        (
            m.module,
            [unravel_key(k) for k in m.in_keys],
            [unravel_key(k) for k in m.out_keys],
            concatenates_inputs(m),
        )
        for m in modules
    ]


def _run(calls: list[tuple], values: dict) -> None:
    for fn, in_keys, out_keys, cat in calls:
        inputs = [values[k] for k in in_keys]
        out = fn(torch.cat(inputs, dim=-1)) if cat else fn(*inputs)
        if isinstance(out, torch.Tensor):
            values[out_keys[0]] = out
        else:
            for key, value in zip(out_keys, out, strict=True):
                values[key] = value


def _next(key: NestedKey) -> tuple:
    return ("next", *key) if isinstance(key, tuple) else ("next", key)


def fast_rollout(
    env,
    max_steps: int,
    policy: TensorDictModuleBase,
    tensordict: TensorDictBase,
    *,
    auto_reset: bool,
    break_when_any_done: bool,
) -> TensorDictBase | None:
    """Roll ``env`` out with ``policy`` for ``max_steps`` steps on flat tensors.

    Returns ``None`` (the caller then uses ``EnvBase.rollout``) when the policy or the
    world model is not a chain of plain TensorDictModules, or when the start tensordict
    needs what only the generic loop does (partial resets, preset ``"next"`` values).

    Args:
        env: a :class:`~reverie.envs.WorldModelEnv`.
        max_steps: number of steps ``T``.
        policy: writes the action from the root keys.
        tensordict: start data of batch size ``(*B,)`` holding the initial latent.
        auto_reset: call ``env.reset(tensordict)`` first (as ``EnvBase.rollout`` does).
        break_when_any_done: stop after the first step where any done flag is set.

    Returns:
        the rollout, batch size ``(*B, T')`` with ``T' <= T``, dims named ``(..., "time")``.
    """
    policy_modules = plain_modules(policy)
    step_modules = plain_modules(env.world_model)
    if policy_modules is None or step_modules is None or env.world_model_params is not None:
        return None
    if "next" in tensordict.keys() or "_reset" in tensordict.keys():
        return None
    obs_keys = list(env.observation_spec.keys(True, True))
    done_keys = list(env.full_done_spec.keys(True, True))
    step_keys = env._step_keys()
    if auto_reset:
        tensordict = env.reset(tensordict)
    elif any(tensordict.get(k, None) is None for k in done_keys) or any(
        tensordict.get(k).any() for k in done_keys
    ):
        return None  # EnvBase.maybe_reset would have work to do
    values = {unravel_key(k): v for k, v in tensordict.items(True, True)}

    # every module input must be a leaf we have or an earlier module's output
    available = set(values)
    for module in policy_modules:
        if any(unravel_key(k) not in available for k in module.in_keys):
            return None
        available.update(unravel_key(k) for k in module.out_keys)
    for module in step_modules:
        if any(unravel_key(k) not in available for k in module.in_keys):
            return None
        available.update(unravel_key(k) for k in module.out_keys)
    policy_calls = _compile_calls(policy_modules)
    step_calls = _compile_calls(step_modules)

    batch_size = tensordict.batch_size
    next_keys = [(k, _next(k)) for k in step_keys]
    zeros: dict = {}
    check_done = break_when_any_done and any(_next(k) in available for k in done_keys)
    steps: list[dict] = []
    for t in range(max_steps):
        _run(policy_calls, values)
        work = dict(values)
        _run(step_calls, work)
        nxt = env.finalize_step(
            {k: work.get(nk) for k, nk in next_keys}, batch_size, zeros
        )
        record = dict(values)
        record.update({_next(k): v for k, v in nxt.items()})
        steps.append(record)
        if t == max_steps - 1:
            break
        # step_mdp: observations and done flags move to the root; everything else stays
        for key in obs_keys:
            values[key] = nxt[key]
        for key in done_keys:
            values[key] = nxt[key]
        if check_done and any(bool(values[k].any()) for k in done_keys):
            break

    dim = len(batch_size)
    stacked = {key: torch.stack([s[key] for s in steps], dim) for key in steps[0]}
    out = TensorDict(
        stacked, batch_size=(*batch_size, len(steps)), device=tensordict.device
    )
    out.refine_names(..., "time")
    return out
