"""Cart-pole swing-up, the PILCO paper's benchmark (Deisenroth & Rasmussen, 2011, sec. 4).

Importing this module registers ``reverie/CartPoleSwingUp-v0`` with Gymnasium, so
``torchrl.envs.GymEnv("reverie/CartPoleSwingUp-v0")`` works.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

__all__ = ["CartPoleSwingUp", "cartpole_derivatives", "swingup_cost_matrix"]

#: PILCO's parameters: cart mass M, pole mass m, pole length l, cart friction b, gravity g.
PARAMS = {"M": 0.5, "m": 0.5, "length": 0.5, "b": 0.1, "g": 9.82}


def cartpole_derivatives(state: np.ndarray, force: float, M=0.5, m=0.5, length=0.5, b=0.1, g=9.82):
    """Time derivative of ``(x, x_dot, theta_dot, theta)`` of PILCO's cart-pole.

    A cart of mass ``M`` on a track with friction ``b x_dot``, pushed by ``force``, carrying
    a uniform pole of mass ``m`` and length ``l`` (``length``) (inertia ``m l^2 / 3`` about the pivot);
    ``theta = 0`` hangs down. From the Lagrangian
    ``L = (M+m) x_dot^2/2 + m l/2 x_dot theta_dot cos(theta) + m l^2/6 theta_dot^2
    + m g l/2 cos(theta)``:

    ``x_ddot = (2 m l theta_dot^2 sin + 3 m g sin cos + 4 (u - b x_dot)) / (4 (M+m) - 3 m cos^2)``

    ``theta_ddot = -(3 m l theta_dot^2 sin cos + 6 (M+m) g sin + 6 (u - b x_dot) cos)
    / (l (4 (M+m) - 3 m cos^2))``

    >>> bool(np.all(cartpole_derivatives(np.zeros(4), 0.0) == 0))  # hanging at rest: equilibrium
    True
    """
    x, v, w, th = state
    ell = length
    s, c = np.sin(th), np.cos(th)
    f = force - b * v
    den = 4 * (M + m) - 3 * m * c**2
    acc = (2 * m * ell * w**2 * s + 3 * m * g * s * c + 4 * f) / den
    ang = -(3 * m * ell * w**2 * s * c + 6 * (M + m) * g * s + 6 * f * c) / (ell * den)
    return np.array([v, acc, ang, w])


def swingup_cost_matrix(length: float = 0.5, width: float = 0.25) -> np.ndarray:
    """``W (6, 6)`` with ``(o - t)^T W (o - t) = d^2 / width^2`` on observations.

    ``d`` is the distance of the pole tip ``(x - l sin(phi), l cos(phi))`` to the target
    ``(0, l)``; observations are ``o = (x, x_dot, cos(phi), sin(phi), phi_dot, phi)`` with
    ``phi`` the angle from upright and target ``t = (0, 0, 1, 0, 0, 0)``:
    ``d^2 = (x - l sin(phi))^2 + l^2 (cos(phi) - 1)^2 = |A (o - t)|^2`` (the unwrapped angle
    itself does not enter).
    """
    a = np.zeros((2, 6))
    a[0, 0], a[0, 3] = 1.0, -length
    a[1, 2] = length
    return a.T @ a / width**2


class CartPoleSwingUp(gym.Env):
    """Swing the pole up from hanging down and balance it above the cart's start.

    PILCO's simulated task: parameters :data:`PARAMS`, a force ``u in [-10, 10]`` N held
    for ``dt = 0.1`` s (zero-order hold, integrated with RK4 in 10 sub-steps), start state
    ``(x, x_dot, theta_dot, theta) ~ N(0, 0.1^2 I)`` around hanging down (``theta = 0``),
    episodes of ``max_steps = 40`` (4 s, PILCO's horizon), never terminated early. With
    ``obs_noise > 0`` the observed ``(x, x_dot, theta_dot, theta)`` carry Gaussian measurement
    noise of that standard deviation (PILCO's MATLAB scenario: 0.01); the reward and
    ``info["upright"]`` use the true state.

    Observation ``(x, x_dot, cos(phi), sin(phi), phi_dot, phi)`` (float64) with
    ``phi = theta - pi`` the pole's angle from upright, unwrapped (a full turn adds
    ``2 pi``): models predict its change, which is smooth, and read its sine and cosine. Reward ``-(1 - exp(-d^2 / (2 * 0.25^2)))`` with
    ``d`` the tip's distance to the upright target (PILCO's saturating cost, see
    :func:`swingup_cost_matrix`); ``info["upright"]`` is ``|phi| < 0.2`` rad.

    >>> env = CartPoleSwingUp()
    >>> obs, _ = env.reset(seed=0)
    >>> obs.shape, round(float(obs[2]), 1)  # cos(phi) = -1: hanging down
    ((6,), -1.0)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    upright_tolerance = 0.2

    def __init__(self, max_steps: int = 40, dt: float = 0.1, substeps: int = 10,
                 obs_noise: float = 0.0, render_mode: str | None = None) -> None:
        if not obs_noise >= 0.0:
            raise ValueError(f"CartPoleSwingUp: obs_noise={obs_noise}; it must be >= 0.")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"CartPoleSwingUp: render_mode={render_mode!r}; it renders 'rgb_array' only.")
        self.render_mode = render_mode
        self.dt, self.max_steps, self.substeps = dt, max_steps, substeps
        self.obs_noise = obs_noise
        self.max_force = 10.0
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (6,), np.float64)
        self.action_space = gym.spaces.Box(-self.max_force, self.max_force, (1,), np.float32)
        self.state = np.zeros(4)
        self.t = 0

    def _obs(self, noisy: bool = False) -> np.ndarray:
        x, v, w, th = self.state
        if noisy and self.obs_noise > 0:
            x, v, w, th = self.state + self.obs_noise * self.np_random.standard_normal(4)
        phi = th - np.pi
        return np.array([x, v, np.cos(phi), np.sin(phi), w, phi])

    def angle_from_upright(self) -> float:
        return float(np.angle(np.exp(1j * (self.state[3] - np.pi))))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = 0.1 * self.np_random.standard_normal(4)  # around hanging down (theta = 0)
        self.t = 0
        return self._obs(noisy=True), {"upright": False}

    def step(self, action):
        u = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -self.max_force, self.max_force))
        h = self.dt / self.substeps
        z = self.state
        for _ in range(self.substeps):  # RK4 with the force held constant
            k1 = cartpole_derivatives(z, u, **PARAMS)
            k2 = cartpole_derivatives(z + 0.5 * h * k1, u, **PARAMS)
            k3 = cartpole_derivatives(z + 0.5 * h * k2, u, **PARAMS)
            k4 = cartpole_derivatives(z + h * k3, u, **PARAMS)
            z = z + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        self.state = z
        self.t += 1
        target = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
        diff = self._obs() - target
        reward = -(1.0 - np.exp(-0.5 * diff @ swingup_cost_matrix() @ diff))
        upright = abs(self.angle_from_upright()) < self.upright_tolerance
        return self._obs(noisy=True), float(reward), False, self.t >= self.max_steps, {"upright": upright}


    def render(self) -> np.ndarray | None:
        """``(160, 320, 3)`` uint8: the track (+-2.5 m), the cart, the pole (red) and the
        upright target of its tip (a green dot) -- with ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        h, w, scale = 160, 320, 64.0  # pixels per metre
        img = np.full((h, w, 3), 255, dtype=np.uint8)
        rows, cols = np.mgrid[0:h, 0:w]
        track = int(h * 0.6)
        img[track, :] = (120, 120, 120)
        x, _, _, th = self.state
        px = lambda mx: w / 2 + mx * scale  # noqa: E731
        cx, cy = px(x), track
        img[(abs(cols - cx) <= 0.2 * scale) & (abs(rows - cy) <= 0.08 * scale)] = (60, 60, 60)
        ell = PARAMS["length"]
        tip = (cx + ell * np.sin(th) * scale, cy + ell * np.cos(th) * scale)  # theta = 0 hangs down
        t = np.clip(((cols - cx) * (tip[0] - cx) + (rows - cy) * (tip[1] - cy)) / (ell * scale) ** 2, 0, 1)
        dist = np.hypot(cols - (cx + t * (tip[0] - cx)), rows - (cy + t * (tip[1] - cy)))
        img[dist <= 2.5] = (200, 60, 60)
        img[np.hypot(cols - px(0.0), rows - (track - ell * scale)) <= 3] = (40, 160, 40)
        return img


if "reverie/CartPoleSwingUp-v0" not in gym.registry:
    gym.register(id="reverie/CartPoleSwingUp-v0", entry_point=CartPoleSwingUp, max_episode_steps=40)
