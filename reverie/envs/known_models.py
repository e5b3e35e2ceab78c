"""Known reward and termination functions of standard tasks (the PETS convention).

Model-based methods may be given the parts of the MDP that are known in closed form, and
learn only the dynamics. Each function maps batched tensors to ``(*B, 1)``:

* rewards ``r(observation, action, next_observation)``;
* terminations ``done(next_observation)`` (bool).

:func:`known_reward` and :func:`known_termination` look them up by Gymnasium id; the
``reward_module``/``termination_module`` helpers wrap them as TensorDict modules reading the
latent keys of a :class:`~reverie.modules.WorldModel` whose latent is the observation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict.nn import TensorDictModule
from torch import nn

__all__ = [
    "KNOWN_REWARDS",
    "KNOWN_TERMINATIONS",
    "known_reward",
    "known_termination",
    "reward_module",
    "termination_module",
    "pendulum_reward",
    "inverted_pendulum_reward",
    "inverted_pendulum_termination",
    "point_mass_reward",
]

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TerminationFn = Callable[[torch.Tensor], torch.Tensor]


def _angle_normalize(theta: torch.Tensor) -> torch.Tensor:
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def pendulum_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1: ``r = -(theta^2 + 0.1 thetadot^2 + 0.001 u^2)`` at the state *before* the step.

    ``obs = (cos theta, sin theta, thetadot)`` of shape ``(*B, 3)``; ``action`` ``(*B, 1)``
    in [-2, 2] (clipped as the env does); returns ``(*B, 1)``.

    >>> obs = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 1.0]])
    >>> [round(r, 4) for r in pendulum_reward(obs, torch.tensor([[0.0], [2.0]]), obs).flatten().tolist()]
    [-0.0, -9.9736]
    """
    theta = torch.atan2(obs[..., 1:2], obs[..., 0:1])
    u = action.clamp(-2.0, 2.0)
    return -(_angle_normalize(theta).pow(2) + 0.1 * obs[..., 2:3].pow(2) + 0.001 * u.pow(2))


def inverted_pendulum_termination(next_obs: torch.Tensor) -> torch.Tensor:
    """InvertedPendulum-v5: terminated when ``|angle| > 0.2`` or the state is not finite.

    ``next_obs = (cart position, pole angle, cart velocity, pole angular velocity)``,
    ``(*B, 4)``; returns bool ``(*B, 1)``.

    >>> inverted_pendulum_termination(torch.tensor([[0.0, 0.1, 0, 0], [0.0, -0.3, 0, 0]]))
    tensor([[False],
            [ True]])
    """
    bad = next_obs[..., 1:2].abs() > 0.2
    return bad | ~torch.isfinite(next_obs).all(-1, keepdim=True)


def inverted_pendulum_reward(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """InvertedPendulum-v5: ``r = 1`` while the pole is up after the step, else 0; ``(*B, 1)``."""
    return (~inverted_pendulum_termination(next_obs)).to(next_obs.dtype)


def point_mass_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """PointMass1D: ``r = -(x' - 1)^2 - 0.01 a^2`` (reach x = 1); ``(*B, 1)``."""
    return -(next_obs[..., 0:1] - 1.0).pow(2) - 0.01 * action.clamp(-1, 1).pow(2)


KNOWN_REWARDS: dict[str, RewardFn] = {
    "Pendulum-v1": pendulum_reward,
    "InvertedPendulum-v5": inverted_pendulum_reward,
    "reverie/PointMass1D-v0": point_mass_reward,
}
KNOWN_TERMINATIONS: dict[str, TerminationFn] = {
    "InvertedPendulum-v5": inverted_pendulum_termination,
}


def known_reward(env_name: str) -> RewardFn:
    """The known reward function of ``env_name``.

    Raises:
        KeyError: listing the environments with a known reward (use a learned reward head).
    """
    if env_name not in KNOWN_REWARDS:
        raise KeyError(
            f"No known reward function for {env_name!r}; known: {sorted(KNOWN_REWARDS)}. "
            "Use a learned reward head instead (e.g. reward='learned' in the PETS recipe)."
        )
    return KNOWN_REWARDS[env_name]


def known_termination(env_name: str) -> TerminationFn | None:
    """The known termination function of ``env_name``, or ``None`` if it never terminates."""
    return KNOWN_TERMINATIONS.get(env_name)


class _Reward(nn.Module):
    def __init__(self, fn: RewardFn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, latent, action, next_latent):
        return self.fn(latent, action, next_latent)


class _Termination(nn.Module):
    def __init__(self, fn: TerminationFn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, next_latent):
        return self.fn(next_latent)


def reward_module(fn: RewardFn, latent_key: str = "latent") -> TensorDictModule:
    """A reward head computing ``fn(latent, action, next latent)`` into ``("next", "reward")``."""
    return TensorDictModule(
        _Reward(fn), [latent_key, "action", ("next", latent_key)], [("next", "reward")]
    )


def termination_module(fn: TerminationFn, latent_key: str = "latent") -> TensorDictModule:
    """A done head computing ``fn(next latent)`` into ``("next", "terminated")``."""
    return TensorDictModule(_Termination(fn), [("next", latent_key)], [("next", "terminated")])
