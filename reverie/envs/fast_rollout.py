"""A tensor-level rollout loop for imagination envs that reproduces ``EnvBase.rollout`` exactly.

``EnvBase.rollout`` builds, copies and validates TensorDicts at every step, which costs
about a millisecond per step on a CPU core, far more than the matmuls of a small world
model. When the policy and the world model are plain :class:`TensorDictModule` chains
(or the policy is ``None``: random actions from the action spec), this loop calls their
inner ``nn.Module`` on a flat ``{key: tensor}`` dict instead and stacks each key's steps
once at the end. The returned TensorDict is the one ``EnvBase.rollout`` returns: same
keys, values (random actions included: the same draws in the same order), shapes,
dtypes, batch size and dim names (tests check this).

Everything that does not change from call to call (which modules run, where each input
comes from, spec shapes, the action samplers) is resolved once into a cached
:class:`_Plan`; a call only reads the start's leaves, runs the modules and stacks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey, unravel_key
from torchrl.data import Bounded, Composite

from reverie.modules.components import ComponentError, concatenates_inputs
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
        and "_" not in module.out_keys
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
            tuple(unravel_key(k) for k in m.in_keys),
            tuple(unravel_key(k) for k in m.out_keys),
            concatenates_inputs(m),
        )
        for m in modules
    ]


def _run(calls: list[tuple], values: dict) -> None:
    """Run compiled module calls on ``values`` (a ``{key: tensor}`` dict), writing their outputs."""
    for fn, in_keys, out_keys, cat in calls:
        try:
            if cat:
                out = fn(torch.cat([values[k] for k in in_keys], dim=-1))
            elif len(in_keys) == 1:
                out = fn(values[in_keys[0]])
            else:
                out = fn(*[values[k] for k in in_keys])
        except RuntimeError as err:
            shapes = ", ".join(f"{k!r} {tuple(values[k].shape)}" for k in in_keys if k in values)
            raise ComponentError(
                f"the module {type(fn).__name__} reading {list(in_keys)} and writing "
                f"{list(out_keys)} failed on its inputs {shapes}: {err}. Check that these "
                "shapes are what it was built for (e.g. the latent or action width).") from err
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
    policy: TensorDictModuleBase | None,
    tensordict: TensorDictBase,
    *,
    auto_reset: bool,
    break_when_any_done: bool,
) -> TensorDictBase | None:
    """Roll ``env`` out with ``policy`` for ``max_steps`` steps on flat tensors.

    Returns ``None`` (the caller then uses ``EnvBase.rollout``) when the policy or the
    world model is not a chain of plain TensorDictModules, the action spec is nested, or
    the start needs what only the generic loop does (preset ``"next"`` values, partial
    resets, done flags that are already set or shaped unlike the done spec).

    Args:
        env: a :class:`~reverie.envs.WorldModelEnv`.
        max_steps: number of steps ``T``.
        policy: writes the action from the root keys; ``None`` samples the action spec
            (``env.rand_action``) at every step.
        tensordict: start data of batch size ``(*B,)`` holding the initial latent. It is
            not modified.
        auto_reset: start from ``env.reset(tensordict)`` (as ``EnvBase.rollout`` does).
            Otherwise start from ``tensordict`` as ``WorldModelEnv.maybe_reset`` completes
            it: missing done flags are all ``False``, given ones are kept.
        break_when_any_done: stop after the first step where any done flag is set.

    Returns:
        the rollout, batch size ``(*B, T')`` with ``T' <= T``, dims named ``(..., "time")``.
    """
    if max_steps < 1 or env.world_model_params is not None:
        return None
    batch_size = tensordict.batch_size
    if env.batch_size and batch_size != env.batch_size:
        return None
    keys = tensordict.keys()
    if "next" in keys or "_reset" in keys:
        return None
    values = _start_leaves(env, tensordict)
    if values is None:
        return None  # EnvBase.rollout raises reset's error or handles the rest
    plan = _plan(env, policy, frozenset(values))
    if plan is None:
        return None
    # done flags at t = 0: all False after a reset; kept from the start otherwise
    for key, shape, dtype in plan.done_plan:
        flag = None if auto_reset else values.get(key)
        if flag is None:
            if plan.needs_flags:
                values[key] = torch.zeros((*batch_size, *shape), dtype=dtype, device=env.device)
            else:
                values.pop(key, None)
        elif not isinstance(flag, torch.Tensor) or flag.dtype != dtype or flag.shape != (*batch_size, *shape):
            return None
        elif not plan.models_done and bool(flag.any()):
            return None  # the flags are written as constant False below
        elif not plan.needs_flags:
            del values[key]

    dim = len(batch_size)
    action_shape = batch_size if not env.batch_size else torch.Size([])
    if plan.lean:
        records = _lean_loop(env, plan, values, max_steps, batch_size, action_shape)
        nested = {}
        for key, model_key, nested_key in plan.next_columns:
            try:
                column = [r[model_key] for r in records]
            except KeyError:  # finalize_step raises the error that names the key
                env.finalize_step({k: records[-1].get(nk) for k, nk in plan.next_reads}, batch_size)
                raise
            nested[nested_key] = _stack_shaped(env, key, column, plan.reward_shapes.get(key), batch_size, dim)
    else:
        records, outputs = _loop(env, plan, values, max_steps, batch_size, action_shape, break_when_any_done)
        nested = {
            key: torch.stack([o[i] for o in outputs], dim) for i, key in enumerate(plan.next_record_nested)
        }
    length = len(records)
    root = {
        key: torch.stack([r[key] for r in records], dim)
        for key in records[0]
        if key not in plan.unrecorded
    }
    if not plan.models_done:
        for key, shape, dtype in plan.done_plan:
            flags = torch.zeros((*batch_size, length, *shape), dtype=dtype, device=env.device)
            root[key] = flags
            nested[key] = flags.clone()
    return _tensordict(root, nested, (*batch_size, length), tensordict.device)


def _act(plan: _Plan, values: dict, action_shape: torch.Size) -> None:
    if plan.samplers is None:
        _run(plan.policy_calls, values)
    else:
        for key, sample in plan.samplers:
            values[key] = sample(action_shape)


def _lean_loop(env, plan: _Plan, values: dict, max_steps: int, batch_size, action_shape) -> list[dict]:
    """The step loop without a done model: one dict per step, the root leaves at time t
    plus what the model wrote (``"next"`` keys; the model writes no root key here, and
    the policy reads no ``"next"`` key: :func:`_plan` checks both).

    No trajectory can end, so all ``max_steps`` steps are taken; rewards are shaped when
    stacked (:func:`_stack_shaped`).
    """
    policy_calls, samplers, step_calls = plan.policy_calls, plan.samplers, plan.step_calls
    obs_moves = plan.obs_moves_lean
    # random actions are drawn step by step, between the model's calls: a stochastic
    # model (an RSSM prior, an ensemble's sampling) draws from the same generator
    # one dict per step: the root at t (after step_mdp and the policy) plus the model's
    # "next" outputs; it starts as a copy of the previous step's dict, whose "next"
    # entries are all rewritten by the model before anything reads them
    calls = step_calls if samplers is not None else policy_calls + step_calls
    records: list[dict] = []
    work = values
    for t in range(max_steps):
        work = work.copy()
        if t:
            try:  # step_mdp: observations move to the root; everything else stays
                for key, model_key in obs_moves:
                    work[key] = work[model_key]
            except KeyError:  # finalize_step raises the error that names the key
                env.finalize_step({k: work.get(nk) for k, nk in plan.next_reads}, batch_size)
                raise
        if samplers is not None:
            for key, sample in samplers:
                work[key] = sample(action_shape)
        _run(calls, work)
        records.append(work)
    return records


def _stack_shaped(env, key, column: list, shape, batch_size: torch.Size, dim: int) -> torch.Tensor:
    """``torch.stack(column, dim)`` of one key's steps; rewards (``shape`` given) are first
    shaped to ``(*B, *shape)`` as ``finalize_step`` shapes them."""
    if shape is None:
        return torch.stack(column, dim)
    full = batch_size + shape
    if column[0].shape == full:
        try:
            return torch.stack(column, dim)
        except RuntimeError:  # steps of different shapes: shape each one
            pass
    return torch.stack([env._shaped(key, value, full) for value in column], dim)


def _loop(env, plan: _Plan, values: dict, max_steps: int, batch_size, action_shape, stop: bool):
    """The general step loop: ``(records, outputs)``, one entry per step taken.

    Used with a done model (flags are finalised and checked at every step) or a model
    that writes root keys. ``records[t]`` holds the root leaves at time t;
    ``outputs[t]`` lists the values of ``plan.next_record`` at t+1.
    """
    zeros: dict = {}
    records: list[dict] = []
    outputs: list[list] = []
    for t in range(max_steps):
        _act(plan, values, action_shape)
        work = values.copy()  # the model's writes must not reach the root record
        _run(plan.step_calls, work)
        nxt = env.finalize_step({k: work.get(nk) for k, nk in plan.next_reads}, batch_size, zeros)
        out = [nxt[k] for k in plan.next_record]
        records.append(values.copy() if plan.step_writes_root else work)
        outputs.append(out)
        if t == max_steps - 1:
            break
        # step_mdp: observations and done flags move to the root; everything else stays
        for key in plan.obs_keys:
            values[key] = nxt[key]
        if plan.models_done:
            for key in plan.done_keys:
                values[key] = nxt[key]
            if stop and any(bool(values[k].any()) for k in plan.done_keys):
                break
    return records, outputs


class _Plan:
    """What a fast rollout needs, resolved once per (policy, world model, start keys)."""

    def __init__(self, env, policy_modules, samplers, step_modules, available) -> None:
        self.policy_calls = _compile_calls(policy_modules)
        self.samplers = samplers
        self.step_calls = _compile_calls(step_modules)
        obs_keys, reward_plan, done_plan = env._step_plan()
        self.done_plan = done_plan
        self.done_keys = [k for k, _, _ in done_plan]
        # without a module writing a done flag, every flag is False at every step
        self.models_done = any(_next(k) in available for k in self.done_keys)
        read = {unravel_key(k) for m in policy_modules + step_modules for k in m.in_keys}
        # root flags are only materialised when a module reads them or a model writes them
        self.needs_flags = self.models_done or any(k in read for k in self.done_keys)
        # (env key, key the model writes) for every observation, reward and done flag
        self.next_reads = [(k, _next(k)) for k in env._step_keys()]
        # keys recorded under "next", in order: observations, rewards[, done flags]
        self.next_record = obs_keys + [k for k, _ in reward_plan]
        if self.models_done:
            self.next_record = self.next_record + self.done_keys
        self.next_model_keys = [_next(k) for k in self.next_record]
        self.next_record_nested = [k[1:] if len(k) > 2 else k[1] for k in self.next_model_keys]
        self.obs_keys = obs_keys
        self.obs_moves_lean = [(k, _next(k)) for k in obs_keys]
        self.reward_shapes = dict(reward_plan)
        self.next_columns = list(zip(self.next_record, self.next_model_keys, self.next_record_nested, strict=True))
        # a step module writing a root key (not under "next") would change the record
        step_out = {unravel_key(k) for m in step_modules for k in m.out_keys}
        self.step_writes_root = any(not (isinstance(k, tuple) and k[0] == "next") for k in step_out)
        # no done model and a model that writes under "next" only: the lean loop
        self.lean = not self.models_done and not self.step_writes_root
        # keys of a record that are not root leaves of the rollout
        constant = set() if self.models_done else set(self.done_keys)
        self.unrecorded = frozenset(constant | (set() if self.step_writes_root else step_out))


def _plan(env, policy, start_keys: frozenset) -> _Plan | None:
    """The cached :class:`_Plan`, or ``None`` when the modules are not plain or inputs are missing.

    Cached in ``env._cache`` (cleared when specs change) under the policy and world-model
    component objects themselves, so a reassigned head gets a new plan.
    """
    world_model = env.full_world_model
    components = tuple(getattr(world_model, name) for name in _STEP_ORDER) + (
        getattr(world_model, "decode_on_step", True),)
    key = ("reverie_fast_plan", policy, components, start_keys)
    plan = env._cache.get(key, False)
    if plan is not False:
        return plan
    plan = None
    step_modules = plain_modules(env.world_model)
    if policy is None:
        policy_modules, samplers = [], _action_samplers(env)
        ok = samplers is not None
        written = {k for k, _ in samplers} if ok else set()
    else:
        policy_modules, samplers = plain_modules(policy), None
        ok = policy_modules is not None
        written = set()
    if ok and step_modules is not None:
        # every module input must be a start leaf (done flags included) or an earlier
        # module's output; the policy writes root keys only
        done_keys = {k for k, _, _ in env._step_plan()[2]}
        available = set(start_keys) | done_keys | written
        for module in policy_modules:
            out_keys = [unravel_key(k) for k in module.out_keys]
            if any(unravel_key(k) not in available for k in module.in_keys) or any(
                isinstance(k, tuple) and k[0] == "next" for k in out_keys
            ):
                ok = False
                break
            available.update(out_keys)
        for module in step_modules if ok else ():
            if any(unravel_key(k) not in available for k in module.in_keys):
                ok = False
                break
            available.update(unravel_key(k) for k in module.out_keys)
        if ok:
            plan = _Plan(env, policy_modules or [], samplers, step_modules, available)
    env._cache[key] = plan
    return plan


def _action_samplers(env) -> list[tuple[NestedKey, Callable]] | None:
    """One ``(key, sample(shape))`` per action leaf, drawing what ``env.rand_action`` draws.

    ``rand_action`` calls ``full_action_spec.rand(shape)``, which samples each entry in
    order with ``spec.rand(shape)``. Continuous :class:`Bounded` entries get an
    equivalent sampler without the per-call spec overhead; other entries call their own
    ``rand``. ``None`` for nested action specs.
    """
    samplers = []
    for key, spec in env.full_action_spec.items():
        if spec is None:
            continue
        if isinstance(spec, Composite):
            return None
        samplers.append((unravel_key(key), _sampler(spec)))
    return samplers


def _sampler(spec) -> Callable[[torch.Size], torch.Tensor]:
    """``spec.rand``, or for a continuous :class:`Bounded` spec a :class:`_BoundedSampler`."""
    if (
        isinstance(spec, Bounded)
        and type(spec).rand is Bounded.rand
        and spec.dtype in (torch.float, torch.double, torch.half)
        and all(d >= 0 for d in spec.shape)
    ):
        return _BoundedSampler(spec)
    return spec.rand


class _BoundedSampler:
    """``Bounded.rand`` for a continuous spec, bit for bit, without its per-call overhead.

    ``Bounded.rand`` (TorchRL 0.14) computes ``zeros(shape).uniform_() * (high - low) +
    low`` and then moves values above ``high`` (or below ``low``) onto the bound. This
    sampler draws the same numbers (``torch.rand`` is ``zeros(...).uniform_()`` in one
    call) and applies the same multiply and add, so the values are bit-identical (a test
    checks it). ``high - low`` is computed once per value of the bounds (again when they
    are replaced or edited in place), and the clamp is skipped when even a draw of 1
    lands within ``high``: rounding is monotonic, so no draw in ``[0, 1)`` can then
    leave the box.
    """

    def __init__(self, spec) -> None:
        self.spec = spec
        self.dtype, self.device, self.shape = spec.dtype, spec.device, spec.shape
        self._state: tuple = ()

    def _bounds(self) -> tuple:
        space = self.spec.space
        low, high = space.low, space.high
        state = self._state
        if not state or state[0] is not low or state[1] is not high or state[2] != (
            low._version, high._version
        ):
            span = high - low
            # a draw of exactly 1 is the largest value: if it stays within high, all do
            clamp = bool(((span + low) > high).any()) or bool((low > high).any())
            self._state = state = (low, high, (low._version, high._version), span, clamp)
        return state[0], state[1], state[3], state[4]

    def __call__(self, shape: torch.Size) -> torch.Tensor:
        return self._draw((*shape, *self.shape))

    def _draw(self, size: tuple) -> torch.Tensor:
        low, high, span, clamp = self._bounds()
        out = torch.rand(size, dtype=self.dtype, device=self.device).mul_(span).add_(low)
        if clamp:
            out = torch.where(out > high, high.expand_as(out), out)
            out = torch.where(out < low, low.expand_as(out), out)
        return out


def _leaves(td: TensorDictBase) -> dict | None:
    """``{key: tensor}`` for every leaf of ``td`` (nested keys as tuples); ``None`` for non-tensor data."""
    values = dict(td.items())
    if all(isinstance(value, torch.Tensor) for value in values.values()):
        return values  # flat: the common case, no nested iteration
    values = {}
    for key, value in td.items(True, True):
        if not isinstance(value, torch.Tensor):
            return None
        values[unravel_key(key)] = value
    return values


def _start_leaves(env, tensordict: TensorDictBase) -> dict | None:
    """The start's leaves minus the real observations the model does not predict.

    These are the leaves of ``env.reset(tensordict)`` apart from the done flags (and the
    leaves of ``env.maybe_reset(tensordict)`` apart from the flags it fills in). ``None``
    when the start lacks an observation the env needs or holds non-tensor data
    (``EnvBase.rollout`` then raises ``reset``'s error or handles it).
    """
    values = _leaves(tensordict)
    if values is None:
        return None
    for dropped in env._unmodelled_keys:
        if dropped in values:
            del values[dropped]
        if isinstance(dropped, tuple) or any(isinstance(k, tuple) for k in values):
            prefix = dropped if isinstance(dropped, tuple) else (dropped,)
            for key in [k for k in values if isinstance(k, tuple) and k[: len(prefix)] == prefix]:
                del values[key]
    if any(k not in values for k in env._step_plan()[0]):
        return None
    return values


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
