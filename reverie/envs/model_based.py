"""Base class of every imagination environment: an ``EnvBase`` whose ``_step`` runs a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase

__all__ = ["ModelBasedEnvBase"]


def _as_params(world_model: torch.nn.Module, params, buffers) -> TensorDictBase | None:
    """Normalise ``params``/``buffers`` to one TensorDict laid out like ``world_model``.

    Accepts a TensorDict (as from ``TensorDict.from_module(world_model)``) or lists of
    tensors in the order of ``world_model.parameters()`` / ``world_model.buffers()``.
    """
    if params is None and buffers is None:
        return None
    if isinstance(params, TensorDictBase):
        if buffers is not None:
            raise TypeError(
                "ModelBasedEnvBase: pass buffers inside the params TensorDict "
                "(TensorDict.from_module(world_model) holds both), not as a separate argument."
            )
        return params
    flat = {}
    for kind, names, values in (
        ("params", [n for n, _ in world_model.named_parameters()], params),
        ("buffers", [n for n, _ in world_model.named_buffers()], buffers),
    ):
        if values is None:
            continue
        values = list(values)
        if len(values) != len(names):
            raise ValueError(
                f"ModelBasedEnvBase: got {len(values)} tensors in `{kind}` but the world model "
                f"has {len(names)} ({names}). Pass one tensor per entry, in the order of "
                f"world_model.named_{'parameters' if kind == 'params' else 'buffers'}(), or a "
                "TensorDict from TensorDict.from_module(world_model)."
            )
        for name, value in zip(names, values, strict=True):
            flat[tuple(name.split("."))] = value
    return TensorDict(flat, batch_size=[])


class ModelBasedEnvBase(EnvBase):
    """An environment whose transitions come from a model instead of a simulator.

    It is a regular TorchRL :class:`~torchrl.envs.EnvBase`: ``rollout``, collectors,
    ``check_env_specs``, GAE and TD(lambda) work unchanged. It is *not* batch-locked
    (``batch_locked`` is read-only and ``False``): an env built with ``batch_size=[]`` steps
    tensordicts of any batch size. Subclasses set the specs and implement ``_reset``;
    ``_step`` runs ``world_model`` on a shallow copy of the input and keeps the keys the
    specs declare (observations, rewards, dones), read at the root of the model's output.

    Args:
        world_model: the TensorDict module that produces a transition.
        params: optional parameters to run the model with instead of its own (e.g. a
            target copy or one ensemble member): a TensorDict shaped like
            ``TensorDict.from_module(world_model)`` (buffers included), or a list of tensors
            in the order of ``world_model.parameters()``. The model is run through
            ``params.to_module(world_model)``, so gradients flow to ``params``.
        buffers: with a list ``params``, the buffers in the order of ``world_model.buffers()``.
        device: device of the env's inputs and outputs.
        batch_size: the env's batch size (default ``[]``: any batch).
        run_type_checks: check outputs against the specs on every step (slow).
        allow_done_after_reset: allow done flags right after reset.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Composite, Unbounded
        >>> from reverie.envs import ModelBasedEnvBase
        >>> class LinearEnv(ModelBasedEnvBase):
        ...     def __init__(self, model):
        ...         super().__init__(model)
        ...         self.observation_spec = Composite(obs=Unbounded((3,)))
        ...         self.action_spec = Unbounded((3,))
        ...         self.reward_spec = Unbounded((1,))
        ...     def _reset(self, td=None):  # td is None for env.reset() and collectors
        ...         batch = self.batch_size if td is None else td.batch_size
        ...         return TensorDict({"obs": torch.zeros(*batch, 3)}, batch)
        >>> model = TensorDictModule(
        ...     lambda obs, a: (obs + a, (obs + a).sum(-1, keepdim=True)),
        ...     in_keys=["obs", "action"], out_keys=["obs", "reward"])
        >>> env = LinearEnv(model)
        >>> start = TensorDict(batch_size=[4])
        >>> env.rollout(5, tensordict=start)["next", "reward"].shape
        torch.Size([4, 5, 1])
        >>> env.rollout(5)["next", "reward"].shape
        torch.Size([5, 1])
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls, *args, _inplace_update=False, _batch_locked=False, **kwargs)

    def __init__(
        self,
        world_model: TensorDictModuleBase,
        params: TensorDictBase | Sequence[torch.Tensor] | None = None,
        buffers: Sequence[torch.Tensor] | None = None,
        device: torch.device | str | None = "cpu",
        batch_size: torch.Size | Sequence[int] | None = None,
        run_type_checks: bool = False,
        allow_done_after_reset: bool = False,
    ) -> None:
        super().__init__(
            device=device,
            batch_size=torch.Size([]) if batch_size is None else torch.Size(batch_size),
            run_type_checks=run_type_checks,
            allow_done_after_reset=allow_done_after_reset,
        )
        if self.device is not None:
            world_model = world_model.to(self.device)
        self.world_model = world_model
        self.world_model_params = _as_params(world_model, params, buffers)

    # ------------------------------------------------------------------ helpers
    def set_specs_from_env(self, env: EnvBase) -> None:
        """Copy every spec (inputs and outputs) of ``env`` onto this env, on this env's device."""
        output_spec = env.output_spec.clone()
        input_spec = env.input_spec.clone()
        if self.device is not None:
            output_spec = output_spec.to(self.device)
            input_spec = input_spec.to(self.device)
        self.__dict__["_output_spec"] = output_spec
        self.__dict__["_input_spec"] = input_spec
        self.empty_cache()

    def run_world_model(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Run ``world_model`` on ``tensordict`` (in place), with ``params`` if they were given."""
        if self.world_model_params is None:
            return self.world_model(tensordict)
        with self.world_model_params.to_module(self.world_model):
            return self.world_model(tensordict)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = self.run_world_model(tensordict.copy())
        keys = [
            *self.observation_spec.keys(True, True),
            *self.full_reward_spec.keys(True, True),
            *self.full_done_spec.keys(True, True),
        ]
        missing = [key for key in self.reward_keys if key not in out.keys(True, True)]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: the world model wrote no reward under {missing}; "
                f"it wrote {sorted(map(str, out.keys(True, True)))}. Give the model a reward "
                "head that writes the reward key."
            )
        return out.select(*keys, strict=False)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        raise NotImplementedError(f"{type(self).__name__} must implement _reset.")

    def _set_seed(self, seed: int | None) -> None:
        # imagination uses the global torch RNG; nothing env-specific to seed
        return None
