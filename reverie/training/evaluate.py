"""Evaluation episodes: greedy policy, seeded start states and seeded policy noise.

Episode ``i`` of a run seeded ``s`` starts from ``env.set_seed(derive_seed(s, "eval", i))``
and runs with torch's RNG seeded the same way inside ``torch.random.fork_rng``, so an
evaluation gives the same returns, bit for bit on the CPU, whenever it is repeated (during
training, at its end, or later with ``reverie eval``), and never moves the training RNG.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from .seeding import derive_seed

__all__ = ["run_episodes", "episode_return"]


def episode_return(episode: TensorDictBase) -> float:
    """Sum of ``("next", "reward")`` over one ``(T,)`` episode."""
    return episode.get(("next", "reward")).sum().item()


@torch.no_grad()
def run_episodes(agent, env, episodes: int, max_steps: int, seed: int) -> list[TensorDictBase]:
    """Run ``episodes`` greedy episodes of at most ``max_steps`` agent steps.

    Args:
        agent: a :class:`~reverie.training.Agent` (its ``policy(explore=False)`` acts).
        env: a wrapped env (see :func:`~reverie.training.collect.wrap_env`) on the CPU.
        episodes: how many.
        max_steps: agent steps per episode (an episode also ends when the env says done).
        seed: the run's seed; episode ``i`` uses ``derive_seed(seed, "eval", i)``.

    Returns:
        One ``(T_i,)`` rollout per episode.
    """
    policy = agent.policy(explore=False)
    device = agent.device
    devices = [device.index or 0] if device.type == "cuda" else []
    out = []
    for i in range(episodes):
        s = derive_seed(seed, "eval", i)
        env.set_seed(s)
        with torch.random.fork_rng(devices=devices), set_exploration_type(ExplorationType.DETERMINISTIC):
            torch.manual_seed(s)
            out.append(env.rollout(max_steps, policy, break_when_any_done=True,
                                   auto_cast_to_device=True))
    return out
