"""Known reward/termination functions agree with the real environments; the toy env's dynamics."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from reverie.envs import known_reward, known_termination, reward_module
from reverie.envs.known_models import pendulum_reward, point_mass_reward


def _transitions(env_id, n=60, seed=0):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    rows = []
    for _ in range(n):
        action = env.action_space.sample() * 1.5  # also out-of-bounds actions
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, next_obs, reward, terminated))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    def stack(i):
        return torch.as_tensor(np.stack([np.asarray(r[i], dtype=np.float32).reshape(-1) for r in rows]))
    return stack(0), stack(1), stack(2), stack(3), stack(4).bool()


def test_pendulum_reward_equals_the_environment():
    obs, action, next_obs, reward, _ = _transitions("Pendulum-v1")
    torch.testing.assert_close(pendulum_reward(obs, action, next_obs), reward, atol=1e-4, rtol=1e-5)


def test_inverted_pendulum_reward_and_termination_equal_the_environment():
    pytest.importorskip("mujoco")
    obs, action, next_obs, reward, terminated = _transitions("InvertedPendulum-v5", n=200)
    assert terminated.any()
    torch.testing.assert_close(known_termination("InvertedPendulum-v5")(next_obs), terminated)
    torch.testing.assert_close(known_reward("InvertedPendulum-v5")(obs, action, next_obs), reward)


def test_point_mass_follows_its_published_dynamics_and_reward():
    env = gym.make("reverie/PointMass1D-v0")
    obs, _ = env.reset(seed=3)
    x, v = obs.astype(np.float64)
    for a in [1.0, 0.5, -2.0, 0.0]:
        next_obs, reward, terminated, truncated, _ = env.step(np.array([a], dtype=np.float32))
        a_c = max(-1.0, min(1.0, a))
        v = v + 0.1 * a_c
        x = x + 0.1 * v
        np.testing.assert_allclose(next_obs, [x, v], rtol=1e-6, atol=1e-6)
        assert reward == pytest.approx(-((x - 1) ** 2) - 0.01 * a_c**2, abs=1e-6)
        expected = point_mass_reward(
            torch.tensor([[0.0, 0.0]]), torch.tensor([[a]]), torch.tensor([[x, v]], dtype=torch.float32)
        )
        assert float(expected) == pytest.approx(reward, abs=1e-5)
        assert not terminated


def test_unknown_env_has_no_known_reward_and_modules_write_next_keys():
    with pytest.raises(KeyError, match="learned reward"):
        known_reward("Nope-v0")
    assert known_termination("Pendulum-v1") is None
    module = reward_module(pendulum_reward)
    assert module.out_keys == [("next", "reward")]
