"""Rollout: imagination environments built on TorchRL's ``EnvBase``."""

from reverie.envs.imagined import ImaginedEnv
from reverie.envs.model_based import ModelBasedEnvBase
from reverie.envs.world_model_env import WorldModelEnv

__all__ = ["ImaginedEnv", "ModelBasedEnvBase", "WorldModelEnv"]
