"""Rollout: imagination environments built on TorchRL's ``EnvBase``, and task knowledge."""

from reverie.envs import toy  # noqa: F401  (registers reverie/PointMass1D-v0)
from reverie.envs.imagined import ImaginedEnv
from reverie.envs.known_models import (
    KNOWN_REWARDS,
    KNOWN_TERMINATIONS,
    known_reward,
    known_termination,
    reward_module,
    termination_module,
)
from reverie.envs.model_based import ModelBasedEnvBase
from reverie.envs.toy import PointMass1D
from reverie.envs.world_model_env import WorldModelEnv

__all__ = [
    "ImaginedEnv",
    "KNOWN_REWARDS",
    "KNOWN_TERMINATIONS",
    "ModelBasedEnvBase",
    "PointMass1D",
    "WorldModelEnv",
    "known_reward",
    "known_termination",
    "reward_module",
    "termination_module",
]
