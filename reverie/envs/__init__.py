"""Rollout: imagination environments built on TorchRL's ``EnvBase``, and task knowledge."""

from reverie.envs import cartpole_swingup, toy  # noqa: F401  (register reverie/* Gymnasium ids)
from reverie.envs.cartpole_swingup import CartPoleSwingUp
from reverie.envs.dreamer_env import DreamerDecoder, DreamerEnv
from reverie.envs.imagined import ImaginedEnv
from reverie.envs.known_models import (
    KNOWN_REWARDS,
    KNOWN_TERMINATIONS,
    known_reward,
    known_termination,
    reward_module,
    termination_module,
)
from reverie.envs.mean_action import MeanActionSelector
from reverie.envs.model_based import ModelBasedEnvBase
from reverie.envs.rollout_checks import ActionBoundsError, check_rollout
from reverie.envs.tasks import make_task_env
from reverie.envs.toy import PointMass1D
from reverie.envs.world_model_env import WorldModelEnv

__all__ = [
    "ActionBoundsError",
    "DreamerDecoder",
    "DreamerEnv",
    "CartPoleSwingUp",
    "ImaginedEnv",
    "KNOWN_REWARDS",
    "KNOWN_TERMINATIONS",
    "MeanActionSelector",
    "ModelBasedEnvBase",
    "PointMass1D",
    "WorldModelEnv",
    "check_rollout",
    "known_reward",
    "make_task_env",
    "known_termination",
    "reward_module",
    "termination_module",
]
