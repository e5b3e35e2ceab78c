"""``ImaginedEnv``: Gaussian-belief imagination (PILCO-style) as a TorchRL environment."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase

from reverie.envs.model_based import ModelBasedEnvBase

__all__ = ["ImaginedEnv"]


class ImaginedEnv(ModelBasedEnvBase):
    """Imagination with Gaussian beliefs over the state, for moment-matching models.

    Observations are a belief ``N(mean, var)``: ``("observation", "mean")`` of shape
    ``(*B, D)`` and ``("observation", "var")`` of shape ``(*B, D, D)``. At each step the
    world model reads the current belief and the action and writes the next belief under
    ``next_observation_key`` (``(..., "mean")`` and ``(..., "var")``). The env never
    terminates: rollout length is ``max_steps``.

    Rewards (in the belief's dtype) come from ``reward_module``, called after the world model on the step's
    tensordict; it must write ``("next", "reward")`` of shape ``(*B, 1)`` (e.g. minus the
    expected saturating cost of the next belief). Without a reward module the reward is
    ``NaN`` - a visible "not computed", never a silent zero.

    Reset: a tensordict holding ``("observation", "mean")`` and ``("observation", "var")``
    starts from that belief; one holding a plain ``"observation"`` tensor starts from that
    point (zero variance); otherwise a point is drawn from ``base_env``'s observation spec.

    Args:
        world_model_module: reads ``"action"`` and ``"observation"`` (the belief), writes
            ``next_observation_key + ("mean",)`` and ``next_observation_key + ("var",)``.
        base_env: the real env; its action, reward and done specs are used (never stepped).
        batch_size: env batch size. Default ``base_env.batch_size``, or ``[1]`` for an
            unbatched base env. The env is not batch-locked.
        next_observation_key: where the model writes the next belief.
        reward_module: optional module writing ``("next", "reward")``.
        observation_key: the base env's observation key (default ``"observation"``).

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.envs import GymEnv
        >>> from reverie.envs import ImaginedEnv
        >>> class Identity(torch.nn.Module):
        ...     def forward(self, action, observation):
        ...         return observation["mean"], observation["var"]
        >>> wm = TensorDictModule(Identity(), in_keys=["action", "observation"],
        ...     out_keys=[("next", "observation", "mean"), ("next", "observation", "var")])
        >>> env = ImaginedEnv(wm, GymEnv("Pendulum-v1"))
        >>> env.rollout(5)["next", "observation", "var"].shape
        torch.Size([1, 5, 3, 3])
    """

    def __init__(
        self,
        world_model_module: TensorDictModuleBase,
        base_env: EnvBase,
        batch_size: int | Sequence[int] | torch.Size | None = None,
        next_observation_key: NestedKey = ("next", "observation"),
        *,
        reward_module: TensorDictModuleBase | None = None,
        observation_key: NestedKey = "observation",
        **kwargs,
    ) -> None:
        if batch_size is None:
            batch_size = base_env.batch_size if len(base_env.batch_size) else torch.Size([1])
        elif isinstance(batch_size, int):
            batch_size = (batch_size,)
        batch_size = torch.Size(batch_size)
        super().__init__(
            world_model_module,
            device=kwargs.pop("device", None) or base_env.device,
            batch_size=batch_size,
            allow_done_after_reset=True,
            **kwargs,
        )
        self.reward_module = reward_module
        self.next_observation_key = unravel_key(next_observation_key)
        nb = len(base_env.batch_size)
        base_obs = base_env.observation_spec[observation_key]
        base_obs = base_obs[(0,) * nb] if nb else base_obs
        self._point_spec = base_obs.clone()
        dim = base_obs.shape[-1]
        belief = Composite(
            observation=Composite(
                mean=Unbounded((dim,), dtype=base_obs.dtype, device=self.device),
                var=Unbounded((dim, dim), dtype=base_obs.dtype, device=self.device),
            )
        )
        idx = (0,) * nb

        def element(spec):
            return spec[idx].clone() if nb else spec.clone()

        self.observation_spec = belief.expand(batch_size).clone()
        self.action_spec = element(base_env.action_spec).expand(
            *batch_size, *element(base_env.action_spec).shape
        ).clone()
        # rewards are computed from the belief (e.g. an expected cost): the belief's dtype
        reward_spec = element(base_env.full_reward_spec)
        if base_obs.dtype.is_floating_point:
            reward_spec = reward_spec.to(base_obs.dtype)
        self.reward_spec = reward_spec.expand(batch_size).clone()
        done_spec = element(base_env.full_done_spec)
        self.done_spec = done_spec.expand(batch_size).clone()

    def any_done(self, tensordict) -> bool:
        """Always ``False``: imagination never terminates (and no host sync is made)."""
        return False

    def maybe_reset(self, tensordict):
        """No-op: imagined trajectories never need partial resets."""
        return tensordict

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = self.run_world_model(tensordict.copy())
        if self.reward_module is not None:
            out = self.reward_module(out)
        lead = tensordict.batch_size
        mean_key = (*self.next_observation_key, "mean")
        var_key = (*self.next_observation_key, "var")
        mean, var = out.get(mean_key, None), out.get(var_key, None)
        if mean is None or var is None:
            raise KeyError(
                f"ImaginedEnv: the world model must write {mean_key} and {var_key}; it wrote "
                f"{sorted(map(str, out.keys(True, True)))}."
            )
        result = TensorDict(
            {("observation", "mean"): mean, ("observation", "var"): var},
            batch_size=lead,
            device=self.device,
        )
        nb = len(self.batch_size)
        for key, spec in self.full_reward_spec.items(True, True):
            reward = out.get(("next", *((key,) if isinstance(key, str) else key)), None)
            if reward is None:
                reward = torch.full(
                    (*lead[: len(lead) - nb], *spec.shape), float("nan"),
                    dtype=spec.dtype, device=self.device,
                )
            result.set(key, reward)
        for key, spec in self.full_done_spec.items(True, True):
            result.set(key, spec.zero(lead[: len(lead) - nb]))
        return result

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        if tensordict is None:
            tensordict = TensorDict(batch_size=self.batch_size, device=self.device)
        lead = tensordict.batch_size
        observation = tensordict.get("observation", None)
        mean = var = None
        if isinstance(observation, TensorDictBase):
            mean, var = observation.get("mean", None), observation.get("var", None)
        if mean is None or var is None:
            # a plain point (a belief with only one of mean/var is not a point)
            point = observation if isinstance(observation, torch.Tensor) else None
            if point is None:
                point = self._point_spec.rand(lead)
            point = point.to(self.device)
            mean = point.expand(*lead, point.shape[-1])
            var = torch.zeros(*mean.shape, mean.shape[-1], dtype=mean.dtype, device=self.device)
        out = TensorDict(
            {("observation", "mean"): mean, ("observation", "var"): var},
            batch_size=lead,
            device=self.device,
        )
        nb = len(self.batch_size)
        for key, spec in self.full_done_spec.items(True, True):
            out.set(key, spec.zero(lead[: len(lead) - nb]))
        return out
