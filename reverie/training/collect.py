"""Real-data collection through TorchRL: wrapped envs, batched envs and collectors.

Every env the loop runs is the recipe's env wrapped as
``TransformedEnv(env, Compose(StepCounter(max_steps), InitTracker(), RewardSum()))``:
episodes are truncated at ``max_steps`` agent steps, ``is_init`` marks each episode's
first step (stateful policies reset on it) and ``("next", "episode_reward")`` carries the
running return (read when an episode ends, so returns spanning two batches are whole).

Each batch starts new episodes in every env (envs reset and reseeded from the batch count;
the batch's last frame is marked truncated): recipes collect whole episodes or trials per
batch, and a resumed run collects exactly what the uninterrupted one would have.

``num_envs=N`` runs N envs as one batched env (``SerialEnv`` or ``ParallelEnv``);
``collector_workers=W`` runs W collector processes (``MultiSyncCollector``) whose policy
weights are synced after every update. The collected batch is flattened env by env (each
env's steps stay contiguous in the buffer) and every frame gets a global ``episode`` id
(consecutive and unique over the whole run, resumes included), which sequence samplers use
as ``traj_key``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector, MultiSyncCollector, RandomPolicy
from torchrl.envs import (
    Compose,
    EnvBase,
    InitTracker,
    ParallelEnv,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)

__all__ = ["wrap_env", "make_collector", "flatten_batch", "finished_episode_returns", "EPISODE_KEY"]

#: the key of the global episode id written into every stored frame
EPISODE_KEY = "episode"


def wrap_env(env: EnvBase, max_steps: int) -> TransformedEnv:
    """``env`` with a ``StepCounter(max_steps)``, an ``InitTracker`` and a ``RewardSum``
    (appended to the transforms of a ``TransformedEnv``: one flat transform stack)."""
    return TransformedEnv(env, Compose(StepCounter(max_steps), InitTracker(), RewardSum()), auto_unwrap=True)


class EnvFactory:
    """Picklable ``() -> env``: the recipe's ``make_env(config)``, wrapped, maybe batched."""

    def __init__(self, make_env: Callable, config, max_steps: int, num_envs: int = 1,
                 vector_env: Literal["serial", "parallel"] = "serial") -> None:
        self.make_env, self.config, self.max_steps = make_env, config, max_steps
        self.num_envs, self.vector_env = num_envs, vector_env

    def single(self) -> TransformedEnv:
        return wrap_env(self.make_env(self.config), self.max_steps)

    def __call__(self) -> EnvBase:
        if self.num_envs == 1:
            return self.single()
        cls = ParallelEnv if self.vector_env == "parallel" else SerialEnv
        return cls(self.num_envs, self.single)


def make_collector(
    env_factory: EnvFactory,
    policy,
    frames_per_batch: int,
    *,
    workers: int = 0,
    policy_device: torch.device | None = None,
):
    """A TorchRL collector whose every batch is a fresh set of episodes.

    Envs are reset at the start of each batch (``reset_at_each_iter``) and the last frame of
    a batch is marked ``truncated``; call ``collector.set_seed(s)`` before each batch. A
    batch is then a function of the seed, the policy and torch's RNG only, which is what
    makes a resumed run continue exactly (the collector is built inside
    ``torch.random.fork_rng`` so building it does not move the RNG).

    Args:
        env_factory: builds the (batched) env; sent to worker processes when ``workers > 0``.
        policy: the acting module, or ``None`` for uniform random actions.
        frames_per_batch: agent steps per batch; must divide evenly among envs and workers.
        workers: 0 runs the collector in this process; ``W >= 1`` runs ``W`` processes.
        policy_device: where the policy runs (envs stay on the CPU).
    """
    envs = env_factory.num_envs * max(workers, 1)
    if frames_per_batch % envs:
        raise ValueError(
            f"frames_per_batch={frames_per_batch} agent steps cannot be split evenly over "
            f"{env_factory.num_envs} env(s) x {max(workers, 1)} worker(s); choose num_envs and "
            "collector_workers that divide it.")
    with torch.random.fork_rng():
        if policy is None:
            env = env_factory()
            policy = RandomPolicy(env.full_action_spec.clone())
            if not env.is_closed:  # a batched env that never started is closed already
                env.close()
        common = {"frames_per_batch": frames_per_batch, "total_frames": -1,
                  "env_device": "cpu", "storing_device": "cpu", "policy_device": policy_device,
                  "reset_at_each_iter": True, "set_truncated": True}
        if workers:
            return MultiSyncCollector([env_factory] * workers, policy, **common)
        return Collector(env_factory, policy, **common)


def flatten_batch(batch: TensorDictBase, next_episode: int) -> tuple[TensorDictBase, int]:
    """Flatten a collector batch ``(*W, *E, T)`` to ``(N,)`` env by env, with global episode ids.

    Each env's steps stay contiguous and in time order. Every batch starts new episodes
    (see :func:`make_collector`), so the batch's trajectories (``("collector", "traj_ids")``)
    are numbered ``next_episode, next_episode + 1, ...`` under ``"episode"``.

    Returns:
        ``(flat batch, next free episode id)``.
    """
    flat = batch.reshape(-1)
    # ids in storage order (a trajectory's frames are contiguous: one env, one batch)
    _, local = torch.unique_consecutive(flat.get(("collector", "traj_ids")), return_inverse=True)
    flat = flat.exclude("collector")
    flat.set(EPISODE_KEY, local.to(torch.int64) + next_episode)
    return flat, next_episode + int(local.max().item()) + 1


def finished_episode_returns(flat: TensorDictBase) -> list[float]:
    """Returns of the episodes that ended in this batch (``RewardSum``'s running total)."""
    done = flat.get(("next", "done")).reshape(-1)
    totals = flat.get(("next", "episode_reward")).reshape(done.shape[0], -1).sum(-1)
    return totals[done].tolist()
