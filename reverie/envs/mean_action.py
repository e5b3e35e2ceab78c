"""``MeanActionSelector``: run a belief-space (PILCO) policy on a real environment."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs.transforms import Transform

__all__ = ["MeanActionSelector"]


class MeanActionSelector(Transform):
    """Present real observations as point beliefs and execute the policy's mean action.

    * observations: ``"observation"`` ``(*B, D)`` becomes ``("observation", "mean")`` (the
      same tensor) and ``("observation", "var")`` ``(*B, D, D)`` of zeros, so a policy written
      for :class:`~reverie.envs.ImaginedEnv` (e.g. an
      :class:`~reverie.modules.RBFController`) reads the real state.
    * actions: the policy's ``("action", "mean")`` is executed as the base env's
      ``"action"`` (cast to its dtype). The rollout keeps ``("action", "mean"/"var"/...)``.

    Args:
        observation_key: the base env's observation. action_key: the base env's action.

    Example:
        >>> from torchrl.envs import GymEnv, TransformedEnv
        >>> env = TransformedEnv(GymEnv("Pendulum-v1"), MeanActionSelector())
        >>> env.reset()["observation", "var"].shape
        torch.Size([3, 3])
    """

    def __init__(self, observation_key: str = "observation", action_key: str = "action") -> None:
        super().__init__(
            in_keys=[observation_key],
            out_keys=[(observation_key, "mean"), (observation_key, "var")],
            in_keys_inv=[action_key],
            out_keys_inv=[(action_key, "mean")],
        )
        self._obs_key, self._action_key = observation_key, action_key

    def _call(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self._obs_key, None)
        if not isinstance(obs, torch.Tensor):
            return tensordict
        tensordict = tensordict.exclude(self._obs_key)
        d = obs.shape[-1]
        tensordict.set((self._obs_key, "mean"), obs)
        tensordict.set((self._obs_key, "var"), obs.new_zeros(*obs.shape, d))
        return tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(self._action_key, None)
        if isinstance(action, torch.Tensor):
            return tensordict
        mean = tensordict.get((self._action_key, "mean"), None)
        if mean is None:
            raise KeyError(
                f"MeanActionSelector: the policy must write ({self._action_key!r}, 'mean') or a "
                f"plain {self._action_key!r}; the tensordict has "
                f"{sorted(map(str, tensordict.keys(True, True)))}."
            )
        spec = self.parent.base_env.full_action_spec[self._action_key] if self.parent else None
        dtype = spec.dtype if spec is not None else mean.dtype
        tensordict = tensordict.exclude(self._action_key)
        tensordict.set(self._action_key, mean.detach().to(dtype))
        return tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        spec = observation_spec[self._obs_key]
        d = spec.shape[-1]
        observation_spec[self._obs_key] = Composite(
            mean=spec.clone(),
            var=Unbounded((*spec.shape, d), dtype=spec.dtype, device=spec.device),
            shape=spec.shape[:-1],
            device=spec.device,
        )
        return observation_spec
