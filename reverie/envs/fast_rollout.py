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
from reverie.modules.world_model import _STEP_ORDER, WorldModelStep

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
    if env.world_model_params is not None or "next" in tensordict.keys() or (
        "_reset" in tensordict.keys()
    ):
        return None
    if auto_reset and not env.batch_size:
        values = _reset_values(env, tensordict)
        if values is None:
            tensordict = env.reset(tensordict)  # raises the reset error, or handles the rest
    else:
        values = None
        if auto_reset:
            tensordict = env.reset(tensordict)
    if values is None:
        if not auto_reset and _needs_reset(env, tensordict):
            return None  # EnvBase.maybe_reset would have work to do
        values = _leaves(tensordict)
        if values is None:
            return None
    plan = _plan(env, policy, frozenset(values))
    if plan is None:
        return None

    batch_size = tensordict.batch_size
    dim = len(batch_size)
    zeros: dict = {}
    steps: list[dict] = []
    for t in range(max_steps):
        _run(plan.policy_calls, values)
        work = dict(values)
        _run(plan.step_calls, work)
        if plan.models_done:
            nxt = env.finalize_step({k: work.get(nk) for k, nk in plan.next_keys}, batch_size, zeros)
        else:  # observations and rewards only; done flags are all False, built at the end
            nxt = {k: work.get(nk) for k, nk in plan.next_obs_reward}
            if any(v is None for v in nxt.values()):
                env.finalize_step({k: work.get(nk) for k, nk in plan.next_keys}, batch_size)
            for key, shape in plan.reward_shapes:
                nxt[key] = env._shaped(key, nxt[key], batch_size + shape)
        record = dict(values)
        for key, value in nxt.items():
            record[_next(key)] = value
        steps.append(record)
        if t == max_steps - 1:
            break
        # step_mdp: observations and done flags move to the root; everything else stays
        for key in plan.obs_keys:
            values[key] = nxt[key]
        if plan.models_done:
            for key in plan.done_keys:
                values[key] = nxt[key]
            if break_when_any_done and any(bool(values[k].any()) for k in plan.done_keys):
                break

    length = len(steps)
    root: dict = {}
    nested: dict = {}
    constant = () if plan.models_done else plan.done_keys  # all-False flags, built below
    for key in steps[0]:
        if key in constant:
            continue
        value = torch.stack([s[key] for s in steps], dim)
        if isinstance(key, tuple) and key[0] == "next":
            nested[key[1:] if len(key) > 2 else key[1]] = value
        else:
            root[key] = value
    if not plan.models_done:
        for key, shape, dtype in plan.done_plan:
            flags = torch.zeros((*batch_size, length, *shape), dtype=dtype, device=env.device)
            root[key] = flags
            nested[key] = flags.clone()
    return _tensordict(root, nested, (*batch_size, length), tensordict.device)


class _Plan:
    """What a fast rollout needs, resolved once per (policy, world model, start keys)."""

    def __init__(self, env, policy_modules, step_modules, available) -> None:
        self.policy_calls = _compile_calls(policy_modules)
        self.step_calls = _compile_calls(step_modules)
        obs_keys, reward_plan, done_plan = env._step_plan()
        self.obs_keys = obs_keys
        self.done_plan = done_plan
        self.done_keys = [k for k, _, _ in done_plan]
        self.reward_shapes = reward_plan
        self.next_keys = [(k, _next(k)) for k in env._step_keys()]
        self.next_obs_reward = [(k, _next(k)) for k in obs_keys] + [
            (k, _next(k)) for k, _ in reward_plan
        ]
        # without a module writing a done flag, every flag is False at every step
        self.models_done = any(_next(k) in available for k in self.done_keys)


def _plan(env, policy, start_keys: frozenset) -> _Plan | None:
    """The cached :class:`_Plan`, or ``None`` when the modules are not plain or inputs are missing.

    Cached in ``env._cache`` (cleared when specs change) under the policy and world-model
    component objects themselves, so a reassigned head gets a new plan.
    """
    components = tuple(m for _, m in env.full_world_model.components(_STEP_ORDER))
    key = ("reverie_fast_plan", policy, components, start_keys)
    if key in env._cache:
        return env._cache[key]
    plan = None
    policy_modules = plain_modules(policy)
    step_modules = plain_modules(env.world_model)
    if policy_modules is not None and step_modules is not None:
        # every module input must be a start leaf or an earlier module's output
        available = set(start_keys)
        ok = True
        for module in policy_modules + step_modules:
            if any(unravel_key(k) not in available for k in module.in_keys):
                ok = False
                break
            available.update(unravel_key(k) for k in module.out_keys)
        if ok:
            plan = _Plan(env, policy_modules, step_modules, available)
    env._cache[key] = plan
    return plan


def _leaves(td: TensorDictBase) -> dict | None:
    values = {}
    for key, value in td.items(True, True):
        if not isinstance(value, torch.Tensor):
            return None
        values[unravel_key(key)] = value
    return values


def _reset_values(env, tensordict: TensorDictBase) -> dict | None:
    """``env.reset(tensordict)`` as a flat dict, without building TensorDicts.

    Equals the leaves of ``env.reset(tensordict)``: the start's leaves minus the real
    observations the model does not predict, plus all-False done flags. ``None`` when
    the start lacks a key the reset needs (``env.reset`` then raises its error).
    """
    values = _leaves(tensordict)
    if values is None:
        return None
    for dropped in env._unmodelled_keys:
        prefix = dropped if isinstance(dropped, tuple) else (dropped,)
        for key in [k for k in values if (k if isinstance(k, tuple) else (k,))[: len(prefix)] == prefix]:
            del values[key]
    obs_keys, _, done_plan = env._step_plan()
    if any(k not in values for k in obs_keys):
        return None
    lead = tensordict.batch_size
    for key, shape, dtype in done_plan:
        values[key] = torch.zeros((*lead, *shape), dtype=dtype, device=env.device)
    return values


def _needs_reset(env, tensordict: TensorDictBase) -> bool:
    """Whether ``EnvBase.maybe_reset`` would act (missing or set done flags)."""
    done_keys = [k for k, _, _ in env._step_plan()[2]]
    if any(tensordict.get(k, None) is None for k in done_keys):
        return True
    return any(bool(tensordict.get(k).any()) for k in done_keys)


def _tensordict(root: dict, nested: dict, batch_size: tuple, device) -> TensorDictBase:
    """The rollout TensorDict, dims named ``(..., "time")``, built without re-validation."""
    names = [None] * (len(batch_size) - 1) + ["time"]
    batch_size = torch.Size(batch_size)
    flat = all(isinstance(k, str) for k in (*root, *nested))
    if flat and hasattr(TensorDict, "_new_unsafe"):
        nxt = TensorDict._new_unsafe(nested, batch_size=batch_size, device=device, names=names)
        root["next"] = nxt
        return TensorDict._new_unsafe(root, batch_size=batch_size, device=device, names=names)
    root["next"] = TensorDict(nested, batch_size=batch_size, device=device)
    out = TensorDict(root, batch_size=batch_size, device=device)
    out.refine_names(..., "time")
    return out
