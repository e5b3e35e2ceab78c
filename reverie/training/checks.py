"""Checks that an env suits a recipe, made before any model is built."""

from __future__ import annotations

import torch
from torchrl.data import Bounded

__all__ = ["TaskError", "require_continuous_actions"]


class TaskError(ValueError):
    """The env does not suit the recipe (e.g. discrete actions for continuous control)."""


def require_continuous_actions(env, recipe: str, env_id: str, alternative: str = "") -> None:
    """Raise :class:`TaskError` unless ``env`` has bounded continuous actions (a Box).

    Args:
        env: the task env (its ``action_spec``).
        recipe: the recipe's name, for the message.
        env_id: the env's id, for the message.
        alternative: a hint appended to the message (e.g. a recipe that does handle it).

    Examples:
        >>> from torchrl.envs import GymEnv
        >>> require_continuous_actions(GymEnv("CartPole-v1"), "dreamer", "CartPole-v1")
        Traceback (most recent call last):
        ...
        reverie.training.checks.TaskError: dreamer needs bounded continuous actions (a Box action space); CartPole-v1 has OneHot actions of shape (2,).
    """
    spec = env.action_spec
    if isinstance(spec, Bounded) and spec.dtype.is_floating_point:
        low, high = spec.space.low, spec.space.high
        if bool(torch.isfinite(high - low).all()):
            return
        raise TaskError(
            f"{recipe} needs bounded continuous actions; {env_id}'s action bounds are "
            f"low={low.tolist()}, high={high.tolist()} (no finite range).{alternative}")
    raise TaskError(
        f"{recipe} needs bounded continuous actions (a Box action space); {env_id} has "
        f"{type(spec).__name__} actions of shape {tuple(spec.shape)}.{alternative}")
