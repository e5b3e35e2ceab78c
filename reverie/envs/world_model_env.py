"""``WorldModelEnv``: imagined rollouts of a :class:`~reverie.modules.WorldModel` in latent space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.data import Composite, TensorSpec, Unbounded
from torchrl.envs import EnvBase

from reverie.envs.fast_rollout import fast_rollout
from reverie.envs.model_based import ModelBasedEnvBase
from reverie.envs.rollout_checks import action_bounds, check_rollout

__all__ = ["WorldModelEnv"]


def _element_spec(spec: TensorSpec, batch_dims: int) -> TensorSpec:
    """Strip ``batch_dims`` leading batch dimensions from a spec (index 0 along each)."""
    if batch_dims == 0:
        return spec.clone()
    return spec[(0,) * batch_dims].clone()


def _batched(spec: TensorSpec | None, batch_size: torch.Size, what: str) -> TensorSpec | None:
    """Expand a per-environment spec to ``batch_size``.

    Leaf specs always describe one environment. A :class:`Composite` describes one
    environment when its shape is ``()``; one whose shape already equals ``batch_size``
    is used as it is.
    """
    if spec is None:
        return None
    if isinstance(spec, Composite) and spec.shape == batch_size:
        return spec.clone()
    if isinstance(spec, Composite) and spec.ndim:
        raise ValueError(
            f"WorldModelEnv: {what} is a Composite of shape {tuple(spec.shape)}, but the env's "
            f"batch_size is {tuple(batch_size)}. Pass a per-environment spec (shape ()) or one "
            "whose shape equals batch_size."
        )
    return spec.expand(*batch_size, *spec.shape).clone()


class WorldModelEnv(ModelBasedEnvBase):
    """Imagination environment that steps a :class:`~reverie.modules.WorldModel` in latent space.

    The env drives ``world_model.step_module`` (dynamics + heads, never the encoder). Its
    state is the latent under ``latent_key`` (one key, or a list of keys for a latent made
    of several entries, e.g. an RSSM's ``["state", "belief"]``): it is always part of the
    observation spec, so the latent advances at every step whatever other observation
    keys are declared. Policies read the latent (or decoded observations, when the model
    writes them). Any model family with the :class:`~reverie.modules.WorldModel`
    interface imagines here: ``WorldModelEnv(RSSMWorldModel(...), latent_key=["state",
    "belief"], action_spec=...)`` is Dreamer's imagination env.

    Specs come from a reference ``base_env`` (read, never stepped) or are given
    explicitly (``observation_spec``, ``action_spec``, ``reward_spec``, ``done_spec``).
    Explicit leaf specs describe one environment and are expanded to ``batch_size``.
    Rewards and done flags keep the spec's shape: a ``(1,)`` reward spec gives rewards of
    shape ``(*B, 1)`` per step and ``(*B, T, 1)`` per rollout, so TorchRL's GAE and
    TD(lambda) estimators run on imagined rollouts unchanged.

    Observation keys other than the latent are exposed when the world model writes them
    under ``"next"`` (e.g. a decoder writing ``("next", "observation")``); with
    ``base_env`` the base observation keys the model does not write are left out, with an
    explicit ``observation_spec`` they are an error.

    Done handling: without a done head imagined trajectories never end (all done flags
    ``False``). A done head may write ``done`` and/or ``terminated`` as bool, probability
    (``done_logits=False``: done when ``p > 0.5``) or logit (``done_logits=True``: done when
    ``logit > 0``). When only one of ``done``/``terminated`` is written, the other takes
    its value (an imagined end is a termination); ``truncated`` is ``False``. Done flags
    stop ``rollout(break_when_any_done=True)`` (the default) after the step that ended;
    with ``break_when_any_done=False`` ended trajectories are imagined on (never reset).

    Args:
        world_model: the :class:`~reverie.modules.WorldModel` to imagine with.
        base_env: a reference env whose action/reward/done (and observation) specs are
            used. It is never stepped.

    Keyword Args:
        observation_spec: observations exposed by the env (a :class:`Composite`); the
            latent is added under ``latent_key`` when absent.
        action_spec, reward_spec, done_spec: explicit specs, required without
            ``base_env``. ``reward_spec`` defaults to ``Unbounded((1,))`` and ``done_spec``
            to bool ``done``/``terminated`` flags of shape ``(1,)``.
        latent_spec: spec of the latent (a :class:`Composite` of every latent key when
            there are several); by default the world model's ``latent_spec`` when it has
            one (:class:`~reverie.modules.RSSMWorldModel`), else inferred by encoding a
            zero observation (``world_model.encode(observation_spec.zero())``).
        batch_size: env batch size. Default: ``base_env.batch_size`` or ``[]``; the env is
            not batch-locked, so an unbatched env accepts any batch of latents.
        device: device of the env. Default: ``base_env.device`` or the model's device.
        latent_key: key of the latent state, or a list of keys (``["state", "belief"]``).
            Default: ``world_model.latent_keys`` (the encoder's outputs that the dynamics
            read), ``"latent"`` when the model does not say.
        done_logits: read float done outputs as logits instead of probabilities.
        check: check every rollout (once, at its end: one host sync) and every single
            ``step`` for NaN/inf values and for actions outside a bounded action spec; a
            failure raises with the key, the imagined step and the batch index. ``False``
            (or ``rollout(..., check=False)``) passes such rollouts on unchecked, as the
            planners' :func:`~reverie.planners.rollout_objective` does (it ranks non-finite
            candidates last itself).

    Raises:
        RuntimeError: ``reset`` without an initial latent under ``latent_key``.
        KeyError: the world model did not write the reward (or a declared observation).
        reverie.validation.NonFiniteError: a rollout or step holds NaN/inf (``check``).
        reverie.envs.ActionBoundsError: an action outside the action spec's bounds (``check``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.envs import GymEnv
        >>> from reverie.envs import WorldModelEnv
        >>> from reverie.modules import WorldModel
        >>> base_env = GymEnv("Pendulum-v1")
        >>> encoder = TensorDictModule(torch.nn.Linear(3, 4), ["observation"], ["latent"])
        >>> dynamics = TensorDictModule(
        ...     torch.nn.Linear(4 + 1, 4), ["latent", "action"], [("next", "latent")])
        >>> reward_head = TensorDictModule(
        ...     torch.nn.Linear(4, 1), [("next", "latent")], [("next", "reward")])
        >>> world_model = WorldModel(encoder, dynamics, reward_head)
        >>> env = WorldModelEnv(world_model, base_env)
        >>> start = world_model.encode(TensorDict({"observation": torch.randn(8, 3)}, [8]))
        >>> rollout = env.rollout(15, tensordict=start)
        >>> rollout["next", "reward"].shape
        torch.Size([8, 15, 1])
    """

    def __init__(
        self,
        world_model,
        base_env: EnvBase | None = None,
        *,
        observation_spec: Composite | None = None,
        action_spec: TensorSpec | None = None,
        reward_spec: TensorSpec | None = None,
        done_spec: TensorSpec | None = None,
        latent_spec: TensorSpec | None = None,
        batch_size: int | Sequence[int] | torch.Size | None = None,
        device: torch.device | str | None = None,
        latent_key: NestedKey | list[NestedKey] | None = None,
        done_logits: bool = False,
        check: bool = True,
    ) -> None:
        if base_env is None and action_spec is None:
            raise TypeError(
                "WorldModelEnv needs specs: pass base_env=<a reference env> or the explicit "
                "specs (at least action_spec=..., usually observation_spec and reward_spec too)."
            )
        base_dims = 0 if base_env is None else len(base_env.batch_size)
        if batch_size is None:
            batch_size = base_env.batch_size if base_env is not None else torch.Size([])
        elif isinstance(batch_size, int):
            batch_size = (batch_size,)
        batch_size = torch.Size(batch_size)
        if device is None:
            if base_env is not None:
                device = base_env.device
            else:
                param = next(iter(world_model.parameters()), None)
                device = param.device if param is not None else torch.device("cpu")
        super().__init__(
            world_model.step_module,
            device=device,
            batch_size=batch_size,
            allow_done_after_reset=True,
        )
        object.__setattr__(self, "_full_world_model", world_model)
        if latent_key is None:
            latent_key = list(getattr(world_model, "latent_keys", None) or ["latent"])
        keys = latent_key if isinstance(latent_key, list) else [latent_key]
        if not keys:
            raise ValueError("WorldModelEnv: latent_key=[] names no latent; give at least one key.")
        #: every key of the latent state; :attr:`latent_key` is the first
        self.latent_keys = [unravel_key(k) for k in keys]
        self.latent_key = self.latent_keys[0]
        self.done_logits = bool(done_logits)
        self.fast_rollout = True
        #: check rollouts (once, at their end) and single steps for non-finite values and
        #: out-of-bounds actions (:func:`reverie.envs.rollout_checks.check_rollout`)
        self.check = bool(check)
        self._in_rollout = False

        # ---- per-environment specs, from base_env or given
        if base_env is not None:
            action_spec = action_spec or _element_spec(base_env.full_action_spec, base_dims)
            reward_spec = reward_spec or _element_spec(base_env.full_reward_spec, base_dims)
            done_spec = done_spec or _element_spec(base_env.full_done_spec, base_dims)
            user_obs = observation_spec is not None
            if observation_spec is None:
                observation_spec = _element_spec(base_env.observation_spec, base_dims)
        else:
            user_obs = observation_spec is not None
            reward_spec = reward_spec if reward_spec is not None else Unbounded((1,))
            if done_spec is None:
                done_spec = Composite(
                    done=Unbounded((1,), dtype=torch.bool),
                    terminated=Unbounded((1,), dtype=torch.bool),
                )
            observation_spec = observation_spec if observation_spec is not None else Composite()
        observation_spec = observation_spec.clone()
        if observation_spec.shape == batch_size and batch_size:
            observation_spec = observation_spec[(0,) * len(batch_size)]

        # ---- the latent is always observed: it is the env's state
        present = set(observation_spec.keys(True, True))
        missing = [k for k in self.latent_keys if k not in present]
        if missing:
            if latent_spec is None:
                latent_spec = getattr(world_model, "latent_spec", None)
            if latent_spec is None:
                latent_spec = self._infer_latent_spec(world_model, observation_spec,
                                                      self.latent_keys)
            elif len(self.latent_keys) == 1 and not isinstance(latent_spec, Composite):
                latent_spec = Composite({self.latent_keys[0]: latent_spec})
            for key in missing:
                if key not in latent_spec.keys(True, True):
                    raise ValueError(
                        f"WorldModelEnv: latent_spec has no entry for the latent key {key!r}; "
                        f"it holds {sorted(map(str, latent_spec.keys(True, True)))}. Give a "
                        "Composite with every latent key.")
                observation_spec[key] = latent_spec[key].clone()

        # ---- keep only observations the model writes (error for explicit ones)
        written = {unravel_key(k)[1:] for k in world_model.step_module.out_keys
                   if isinstance(unravel_key(k), tuple) and unravel_key(k)[0] == "next"}
        written = {k[0] if len(k) == 1 else k for k in written}
        self._unmodelled_keys: list[NestedKey] = []
        for key in list(observation_spec.keys(True, True)):
            if key in self.latent_keys or key in written:
                continue
            if user_obs:
                raise ValueError(
                    f"WorldModelEnv: observation_spec declares {key!r} but the world model's "
                    f"step components write {sorted(map(str, written))} under 'next'. Remove "
                    f"{key!r} from observation_spec or add a module writing ('next', {key!r})."
                )
            del observation_spec[key]
            self._unmodelled_keys.append(key)

        # real observations the start latent was encoded from are not imagined state
        obs_keys = set(observation_spec.keys(True, True))
        for key in world_model.encoder.in_keys:
            key = unravel_key(key)
            if key not in obs_keys and key not in self._unmodelled_keys:
                self._unmodelled_keys.append(key)

        def to_spec(spec):
            return spec.to(self.device) if self.device is not None else spec

        self.observation_spec = to_spec(_batched(observation_spec, batch_size, "observation_spec"))
        self.action_spec = to_spec(_batched(action_spec, batch_size, "action_spec"))
        self.reward_spec = to_spec(_batched(reward_spec, batch_size, "reward_spec"))
        self.done_spec = to_spec(_batched(done_spec, batch_size, "done_spec"))

    @staticmethod
    def _infer_latent_spec(world_model, observation_spec: Composite,
                           latent_keys: list[NestedKey]) -> Composite:
        encoder_keys = [unravel_key(k) for k in world_model.encoder.in_keys]
        obs_keys = set(observation_spec.keys(True, True))
        if not encoder_keys or any(k not in obs_keys for k in encoder_keys):
            raise ValueError(
                "WorldModelEnv cannot infer the latent's shape: the encoder reads "
                f"{encoder_keys} but the observation spec holds {sorted(map(str, obs_keys))}. "
                "Pass latent_spec=Unbounded((latent_dim,)) or an observation_spec with the latent."
            )
        with torch.no_grad():
            probe = world_model.encode(observation_spec.zero())
        specs = Composite()
        for key in latent_keys:
            value = probe.get(key, None)
            if value is None:
                raise ValueError(
                    f"WorldModelEnv: the encoder wrote no latent {key!r} (it wrote "
                    f"{sorted(map(str, probe.keys(True, True)))}). Name the latent with "
                    "latent_key=... or pass latent_spec.")
            specs[key] = Unbounded(value.shape, dtype=value.dtype, device=value.device)
        return specs

    @property
    def full_world_model(self):
        """The :class:`~reverie.modules.WorldModel` this env imagines with (encoder included)."""
        return self._full_world_model

    # ------------------------------------------------------------------ rollout
    def rollout(
        self,
        max_steps: int,
        policy=None,
        callback=None,
        *,
        auto_reset: bool = True,
        break_when_any_done: bool | None = None,
        break_when_all_done: bool | None = None,
        return_contiguous: bool | None = True,
        tensordict: TensorDictBase | None = None,
        check: bool | None = None,
        **kwargs,
    ) -> TensorDictBase:
        """``EnvBase.rollout`` with a fast path for imagined rollouts.

        When the world model and the policy are chains of plain ``TensorDictModule``s
        (or the policy is ``None``: random actions from the action spec) and no option
        needs the generic loop (``callback``, ``break_when_all_done``,
        ``return_contiguous=False`` and the other keyword options of ``EnvBase.rollout``),
        the rollout runs on flat tensors (:func:`reverie.envs.fast_rollout.fast_rollout`)
        and returns exactly what ``EnvBase.rollout`` returns (the same random draws
        included), several times faster. Set ``env.fast_rollout = False`` to always use
        the generic loop.

        With ``auto_reset=False`` the start is taken as the current state: done flags it
        lacks are filled in as ``reset`` fills them (all ``False``, shaped by the done
        spec), flags it carries are kept, and the real observations the model does not
        predict are dropped. A start from ``world_model.encode(...)`` therefore gives the
        same rollout with ``auto_reset=False`` as with ``auto_reset=True``. The caller's
        ``tensordict`` is never modified.

        Args:
            max_steps: rollout length ``T``.
            policy: a TensorDict module writing the action (random actions when ``None``).
            callback, kwargs: as in :meth:`torchrl.envs.EnvBase.rollout`.
            auto_reset: reset from ``tensordict`` first (it must hold the initial latent);
                with ``False`` the rollout starts from ``tensordict`` as it is (see above).
            break_when_any_done: stop after the first step where any done flag is set
                (default ``True`` unless ``break_when_all_done``).
            break_when_all_done: stop when every trajectory is done.
            return_contiguous: stack steps into one contiguous TensorDict.
            tensordict: start data of batch ``(*B,)``, with the latent under ``latent_key``.
            check: check the finished rollout for NaN/inf and out-of-bounds actions
                (default: the env's ``check``).

        Returns:
            a TensorDict of batch size ``(*B, T)``: root keys at time t (latent, action,
            done flags), ``("next", ...)`` keys at t+1 (latent, reward ``(*B, T, 1)``, flags).
        """
        stop_any = break_when_any_done
        if stop_any is None:
            stop_any = not break_when_all_done
        fast = (
            self.fast_rollout
            and callback is None
            and not break_when_all_done
            and return_contiguous in (True, None)
            and tensordict is not None
            and not any(v not in (None, False) for v in kwargs.values())
        )
        out = None
        if fast:
            out = fast_rollout(
                self, max_steps, policy, tensordict,
                auto_reset=auto_reset, break_when_any_done=stop_any,
            )
        if out is None:
            if not auto_reset and tensordict is not None:
                tensordict = self._complete_start(tensordict)
            self._in_rollout = True
            try:
                out = super().rollout(
                    max_steps, policy, callback, auto_reset=auto_reset,
                    break_when_any_done=break_when_any_done, break_when_all_done=break_when_all_done,
                    return_contiguous=return_contiguous, tensordict=tensordict, **kwargs,
                )
            finally:
                self._in_rollout = False
        if (self.check if check is None else check) and isinstance(out, TensorDictBase):
            check_rollout(out, where="WorldModelEnv.rollout", batch_dims=out.ndim - 1,
                          action_key=self.action_key, action_bounds=self._action_bounds())
        return out

    # ------------------------------------------------------------------ reset / step
    def reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        """Reset from the initial latent in ``tensordict`` (see the class docstring).

        Real observations that the model does not predict (the encoder's inputs and the
        base env's other observation keys, e.g. ``"observation"`` next to the encoded
        latent) are dropped, so a rollout does not carry a stale copy of them through
        every imagined step. Dim names of the start's batch dims are dropped (a start
        sliced from a real rollout has a ``"time"`` dim; the rollout adds its own).
        """
        if tensordict is not None:
            tensordict = self._prepare_start(tensordict)
        return super().reset(tensordict, **kwargs)

    def _prepare_start(self, tensordict: TensorDictBase) -> TensorDictBase:
        """A shallow copy of a start without real observations the model does not predict.

        The caller's tensordict is left as it was. Starts taken from a real rollout carry
        a ``"time"`` dim name; imagination adds its own ``"time"`` dim, so the start's
        batch dims are left unnamed.
        """
        tensordict = tensordict.exclude(*self._unmodelled_keys).copy()
        if any(name is not None for name in tensordict.names):
            tensordict.names = None
        return tensordict

    def _zero_done_flags(self, batch_size: torch.Size) -> dict[NestedKey, torch.Tensor]:
        """All-``False`` done flags for a start of batch ``batch_size``, as ``reset`` writes them."""
        lead = batch_size[: len(batch_size) - len(self.batch_size)]
        return {key: spec.zero(lead) for key, spec in self.full_done_spec.items(True, True)}

    def _start_is_complete(self, tensordict: TensorDictBase) -> bool:
        """Whether ``tensordict`` has every done flag and no observation the model cannot predict."""
        if any(tensordict.get(key, None) is None for key in self.done_keys):
            return False
        return all(tensordict.get(key, None) is None for key in self._unmodelled_keys)

    def _complete_start(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The state ``tensordict`` describes, ready to step (``rollout(auto_reset=False)``).

        A shallow copy (see :meth:`_prepare_start`) with the done flags it lacks filled in
        as ``reset`` fills them (all ``False``); flags it carries are kept as they are.
        """
        tensordict = self._prepare_start(tensordict)
        for key, flag in self._zero_done_flags(tensordict.batch_size).items():
            if tensordict.get(key, None) is None:
                tensordict.set(key, flag)
        return tensordict

    def maybe_reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        """No partial resets: there is no fresh latent to restart an ended trajectory from.

        With ``break_when_any_done=False`` an ended trajectory keeps being imagined past
        its end; its done flags mark the end for value estimators (GAE, TD(lambda)).
        ``EnvBase.rollout(auto_reset=False)`` starts here: a start that lacks done flags
        (e.g. straight from ``world_model.encode``) or still holds the real observations
        it was encoded from is completed as ``rollout(auto_reset=False)`` describes.
        """
        if self._start_is_complete(tensordict):
            return tensordict
        return self._complete_start(tensordict)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        absent = [k for k in self.latent_keys
                  if tensordict is None or tensordict.get(k, None) is None]
        if absent:
            raise RuntimeError(
                f"WorldModelEnv.reset needs the initial latent under {absent[0]!r} in the "
                "tensordict. Typical usage: `start = world_model.encode(obs_td)` on real "
                "observations, then `env.reset(start)` or `env.rollout(H, policy, tensordict=start)`."
            )
        out = TensorDict(batch_size=tensordict.batch_size, device=self.device)
        for key in self.observation_spec.keys(True, True):
            value = tensordict.get(key, None)
            if value is None:
                raise RuntimeError(
                    f"WorldModelEnv.reset needs {key!r} in the tensordict (it is in the "
                    "observation spec); add it, or leave it out of observation_spec."
                )
            out.set(key, value)
        for key, flag in self._zero_done_flags(tensordict.batch_size).items():
            out.set(key, flag)
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = self.run_world_model(tensordict.copy())
        next_td = out.get("next", None)
        if next_td is None:
            raise KeyError(
                "WorldModelEnv: the world model wrote nothing under 'next'; its dynamics must "
                f"write {[('next', *((k,) if isinstance(k, str) else k)) for k in self.latent_keys]}."
            )
        values = {key: next_td.get(key, None) for key in self._step_keys()}
        result = TensorDict(
            self.finalize_step(values, tensordict.batch_size),
            batch_size=tensordict.batch_size,
            device=self.device,
        )
        if self.check and not self._in_rollout:  # a single step: check it (rollouts check at their end)
            step = tensordict.select(self.action_key, *self.latent_keys, strict=False).update(
                {"next": result}).unsqueeze(-1)
            check_rollout(step, where="WorldModelEnv.step", batch_dims=step.ndim - 1,
                          action_key=self.action_key, action_bounds=self._action_bounds())
        return result

    def _action_bounds(self):
        """Cached ``(low, high)`` of one action, or ``None`` for an unbounded/discrete spec."""
        if "reverie_action_bounds" not in self._cache:
            self._cache["reverie_action_bounds"] = action_bounds(self.action_spec, len(self.batch_size))
        return self._cache["reverie_action_bounds"]

    def _step_keys(self) -> list[NestedKey]:
        keys = self._cache.get("reverie_step_keys")
        if keys is None:
            keys = [
                *self.observation_spec.keys(True, True),
                *self.full_reward_spec.keys(True, True),
                *self.full_done_spec.keys(True, True),
            ]
            self._cache["reverie_step_keys"] = keys
        return keys

    def _step_plan(self) -> tuple[list, list, list]:
        """Cached ``(observation keys, [(reward key, shape)], [(done key, shape, dtype)])``.

        Shapes are per environment (without the env's batch dims).
        """
        plan = self._cache.get("reverie_step_plan")
        if plan is None:
            nb = len(self.batch_size)
            plan = (
                list(self.observation_spec.keys(True, True)),
                [(k, s.shape[nb:]) for k, s in self.full_reward_spec.items(True, True)],
                [(k, s.shape[nb:], s.dtype) for k, s in self.full_done_spec.items(True, True)],
            )
            self._cache["reverie_step_plan"] = plan
        return plan

    def finalize_step(
        self,
        values: dict[NestedKey, torch.Tensor | None],
        batch_size: torch.Size,
        zeros: dict | None = None,
    ) -> dict[NestedKey, torch.Tensor]:
        """Turn the world model's ``"next"`` outputs into the env's step outputs.

        Args:
            values: for every observation, reward and done key, what the model wrote
                under ``"next"`` (``None`` when it wrote nothing).
            batch_size: batch size of the step, ``(*B,)``.
            zeros: optional cache of all-False flags reused across calls.

        Returns:
            observations as written; rewards of shape ``(*B, *reward_spec)``; bool done flags
            of shape ``(*B, *done_spec)``, completed as the class docstring describes.
        """
        obs_keys, reward_plan, done_plan = self._step_plan()
        result: dict[NestedKey, torch.Tensor] = {}
        for key in obs_keys:
            value = values[key]
            if value is None:
                raise KeyError(
                    f"WorldModelEnv: the world model did not write ('next', {key!r}), which the "
                    "observation spec declares (it wrote "
                    f"{sorted(str(k) for k, v in values.items() if v is not None)} of the spec's "
                    "keys). Check the dynamics/decoder out_keys."
                )
            result[key] = value
        for key, shape in reward_plan:
            value = values[key]
            if value is None:
                raise KeyError(
                    f"WorldModelEnv: the world model wrote no reward under ('next', {key!r}) "
                    f"(of the spec's keys it wrote "
                    f"{sorted(str(k) for k, v in values.items() if v is not None)}). Give it a "
                    f"reward_head with out_keys=[('next', {key!r})]; rewards are never filled "
                    "in with zeros."
                )
            result[key] = self._shaped(key, value, batch_size + shape)
        flags = {}
        for key, shape, _ in done_plan:
            value = values[key]
            if value is not None:
                if value.dtype != torch.bool:
                    value = value > 0 if self.done_logits else value > 0.5
                flags[key] = self._shaped(key, value, batch_size + shape)
        done, terminated = flags.get("done"), flags.get("terminated")
        if done is None and terminated is not None:
            truncated = flags.get("truncated")
            flags["done"] = terminated if truncated is None else terminated | truncated
        elif terminated is None and done is not None:
            flags["terminated"] = done
        for key, shape, dtype in done_plan:
            flag = flags.get(key)
            if flag is None:
                full = batch_size + shape
                flag = zeros.get((key, full)) if zeros is not None else None
                if flag is None:
                    flag = torch.zeros(full, dtype=dtype, device=self.device)
                    if zeros is not None:
                        zeros[(key, full)] = flag
            result[key] = flag
        return result

    @staticmethod
    def _shaped(key: NestedKey, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if value.shape == shape:
            return value
        if value.numel() == shape.numel():
            return value.reshape(shape)
        raise ValueError(
            f"WorldModelEnv: ('next', {key!r}) has shape {tuple(value.shape)} but the spec "
            f"requires {tuple(shape)} (batch + spec shape). Make the head output match the spec."
        )
