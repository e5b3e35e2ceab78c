"""A toy task with known dynamics for tiny learning tests: a 1-D point mass.

Importing this module registers ``reverie/PointMass1D-v0`` with Gymnasium, so
``torchrl.envs.GymEnv("reverie/PointMass1D-v0")`` works.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

__all__ = ["PointMass1D"]


class PointMass1D(gym.Env):
    """A unit point mass on a line, pushed by a bounded force, that must reach ``x = 1``.

    Dynamics (Euler, ``dt = 0.1``): ``v' = v + dt a``, ``x' = x + dt v'`` with
    ``a in [-1, 1]``. Observation ``(x, v)``, start ``(0, 0)`` plus uniform noise in
    ``[-0.05, 0.05]``. Reward ``-(x' - 1)^2 - 0.01 a^2``; episodes last ``max_steps`` (50)
    steps and never terminate early. Doing nothing scores about -50 per episode; reaching
    and holding the target scores above -10.

    >>> env = PointMass1D()
    >>> obs, _ = env.reset(seed=0)
    >>> obs.shape
    (2,)
    """

    metadata = {"render_modes": []}

    def __init__(self, max_steps: int = 50, dt: float = 0.1) -> None:
        self.dt, self.max_steps = dt, max_steps
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.state = np.zeros(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-0.05, 0.05, size=2)
        self.t = 0
        return self.state.astype(np.float32), {}

    def step(self, action):
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        x, v = self.state
        v = v + self.dt * a
        x = x + self.dt * v
        self.state = np.array([x, v])
        self.t += 1
        reward = -((x - 1.0) ** 2) - 0.01 * a**2
        truncated = self.t >= self.max_steps
        return self.state.astype(np.float32), float(reward), False, truncated, {}


if "reverie/PointMass1D-v0" not in gym.registry:
    gym.register(id="reverie/PointMass1D-v0", entry_point=PointMass1D, max_episode_steps=50)
