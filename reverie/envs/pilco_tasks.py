"""The tasks of the ``pilco`` recipe: cost, trial length, policy inputs and what success is.

Each :class:`Task` holds what PILCO needs to know about an environment: the cost's target
and precision ``W`` (``1 - exp(-1/2 (x - target)^T W (x - target))``, widths included), the
trial length, the RBF controller's size and inputs, the angle dimensions the GP unwraps,
and the success test of a trial (``success(obs (*B, D)) -> (*B,) bool`` on its final second).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from reverie.envs.cartpole_swingup import swingup_cost_matrix

__all__ = ["Task", "TASKS"]


def _pole_cos_at(index: int):
    def upright(obs: torch.Tensor) -> torch.Tensor:  # cos(angle from upright) > cos(0.2)
        return obs[..., index] > float(np.cos(0.2))
    return upright


def _pole_angle_at(index: int):
    def upright(obs: torch.Tensor) -> torch.Tensor:
        return obs[..., index].abs() < 0.2
    return upright


def _point_mass_at_target(obs: torch.Tensor) -> torch.Tensor:
    return (obs[..., 0] - 1.0).abs() < 0.1


@dataclass(frozen=True)
class Task:
    """What PILCO needs to know about a task: cost, horizon, and what success looks like."""

    target: tuple[float, ...]
    weights: np.ndarray  # (D, D) cost precision W (width included)
    trial_steps: int
    n_basis: int
    success: Callable[[torch.Tensor], torch.Tensor]  # (*B, D) observations -> (*B,) bool
    dt: float = 0.1  # seconds per env step
    frame_skip: int = 1
    start_down: bool = False  # Pendulum-v1: start hanging down (swing-up)
    eval_steps: int = 0  # 0: trial_steps
    angle_dims: dict[int, tuple[int, int]] | None = None  # GPWorldModel(angle_dims=...)
    policy_dims: tuple[int, ...] | None = None  # observations the controller reads (None: all)
    policy_lengthscales: tuple[float, ...] | None = None  # initial, per policy input (None: 1)
    env_kwargs: dict | None = None  # keyword arguments of gym.make (e.g. obs_noise)
    policy_restarts: int = 0  # extra policy searches per trial from a fresh random controller
    policy_parameters: str = "weights"  # RBF controller: "weights" or "pseudo_targets" (PILCO's congp)
    observation_names: tuple[str, ...] | None = None  # for figures (None: the env's, see reverie.diagnostics)


TASKS: dict[str, Task] = {
    # pole upright: |angle| < 0.2 rad. Swing-ups as PILCO's MATLAB settings: the GP predicts
    # the change of the unwrapped angle and reads its sine and cosine; so does the controller.
    "reverie/CartPoleSwingUp-v0": Task(
        (0, 0, 1, 0, 0, 0), swingup_cost_matrix(), 40, 10, _pole_cos_at(2),
        angle_dims={5: (3, 2)}, policy_dims=(0, 1, 2, 3, 4), policy_lengthscales=(1, 1, 0.7, 0.7, 1),
        policy_parameters="pseudo_targets", observation_names=("x", "ẋ", "cos φ", "sin φ", "φ̇", "φ")),
    "Pendulum-v1": Task(
        (1, 0, 0, 0), np.diag([1.0, 1.0, 0.0, 0.0]) / 0.5**2, 40, 30, _pole_cos_at(0),
        dt=0.05, frame_skip=2, start_down=True, eval_steps=100,
        angle_dims={3: (1, 0)}, policy_dims=(0, 1, 2), policy_lengthscales=(0.7, 0.7, 1),
        observation_names=("cos θ", "sin θ", "θ̇", "θ")),
    "InvertedPendulum-v5": Task((0, 0, 0, 0), np.eye(4), 100, 10, _pole_angle_at(1), dt=0.04),
    # the CI learning test's toy task: reach x = 1 (within 0.1)
    "reverie/PointMass1D-v0": Task((1, 0), np.diag([1.0, 0.1]) / 0.3**2, 30, 10, _point_mass_at_target),
}


class _StartDown(gym.ObservationWrapper):
    """Pendulum-v1 from hanging down (``theta ~ N(pi, 0.1^2)``, ``theta_dot ~ N(0, 0.1^2)``),
    observing ``(cos theta, sin theta, theta_dot, theta)`` with the unwrapped angle."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        rng = self.env.unwrapped.np_random
        self.env.unwrapped.state = np.array([np.pi, 0.0]) + 0.1 * rng.standard_normal(2)
        return self.observation(None), info

    def observation(self, observation):
        th, thdot = self.env.unwrapped.state
        return np.array([np.cos(th), np.sin(th), thdot, th], dtype=np.float64)
