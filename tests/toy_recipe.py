"""A miniature recipe for the run-infrastructure tests, shaped like a real recipe.

The task is a contextual bandit with known answers: each step shows ``x ~ N(0, I)`` and a
noisy target ``y = x @ w_true + noise``; the action is a prediction of ``y`` and the reward
``-(action - y)^2``. The agent fits a linear model to the stored ``(x, y)`` pairs with SGD
(momentum, so optimiser state must survive a resume). It has everything a real recipe
has: a typed ``Config`` with presets, ``make_env``, an :class:`~reverie.training.Agent`
with its update maths and ``train(config)`` through the shared loop (collectors, replay
buffer, checkpoints, exact resume, evaluation, ``reverie eval``).

``stop_after`` raises ``KeyboardInterrupt`` in the first update after that many env steps,
like a killed run. The ``env`` field only names the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase

from reverie import training
from reverie.runs import RunConfig, cfg
from reverie.training import Agent, Schedule, make_replay_buffer

NAME = "toy"


@dataclass
class Config(RunConfig):
    """Toy regression recipe used by the tests."""

    total_steps: int = cfg(300, "Env steps in total.")
    collect_per_step: int = cfg(4, "Env steps per collector batch (one episode).")
    batch_size: int = cfg(16, "Minibatch size sampled from the replay buffer.")
    buffer_size: int = cfg(10_000, "Replay buffer capacity.")
    obs_dim: int = cfg(3, "Input dimension of the linear model.")
    lr: float = cfg(0.05, "SGD learning rate.")
    momentum: float = cfg(0.9, "SGD momentum (optimizer state that must survive a resume).")
    noise: float = cfg(0.1, "Standard deviation of the target noise.")
    eval_every: int = cfg(40, "Evaluate every this many env steps.")
    eval_episodes: int = cfg(2, "Episodes per evaluation.")
    checkpoint_every: int = cfg(100, "Save checkpoint.pt every this many env steps.")
    stop_after: int | None = cfg(
        None, "Testing aid: raise KeyboardInterrupt after this many env steps, like a killed run."
    )

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {"total_steps": 240, "eval_every": 40, "checkpoint_every": 80, "progress": False},
        "small_batch": {"batch_size": 4},
    }


def true_weights(config: Config) -> torch.Tensor:
    """Target weights, from a private generator so the global RNG is untouched."""
    g = torch.Generator().manual_seed(1000 + config.seed)
    return torch.randn(config.obs_dim, 1, generator=g)


class ToyEnv(EnvBase):
    """Contextual regression bandit: observation ``x`` (D,), ``target`` ``y`` (1,), action
    ``y_hat`` (1,), reward ``-(y_hat - y)^2``; episodes never end by themselves."""

    def __init__(self, config: Config) -> None:
        super().__init__(batch_size=[])
        d = config.obs_dim
        self.w, self.noise = true_weights(config), config.noise
        self.observation_spec = Composite(observation=Unbounded((d,)), target=Unbounded((1,)))
        self.action_spec = Unbounded((1,))
        self.reward_spec = Unbounded((1,))
        self.rng = torch.Generator()

    def _sample(self) -> TensorDict:
        x = torch.randn(self.w.shape[0], generator=self.rng)
        y = x @ self.w + self.noise * torch.randn(1, generator=self.rng)
        return TensorDict({"observation": x, "target": y}, [])

    def _reset(self, tensordict=None, **kwargs):
        td = self._sample()
        td.set("done", torch.zeros(1, dtype=torch.bool))
        td.set("terminated", torch.zeros(1, dtype=torch.bool))
        return td

    def _step(self, tensordict):
        error = tensordict["action"] - tensordict["target"]
        td = self._sample()
        td.set("reward", -error.pow(2))
        td.set("done", torch.zeros(1, dtype=torch.bool))
        td.set("terminated", torch.zeros(1, dtype=torch.bool))
        return td

    def _set_seed(self, seed):
        self.rng.manual_seed(int(seed))


def make_env(config: Config) -> ToyEnv:
    return ToyEnv(config)


class ToyAgent(Agent):
    """A linear model ``x -> y`` fitted by SGD on stored pairs; it acts with its prediction."""

    def __init__(self, config: Config, env, device) -> None:
        super().__init__(device)
        self.config = config
        self.schedule = Schedule(total_steps=config.total_steps, frames_per_batch=config.collect_per_step,
                                 random_steps=0, max_episode_steps=config.collect_per_step,
                                 eval_every=config.eval_every, eval_episodes=config.eval_episodes)
        self.model = nn.Linear(config.obs_dim, 1).to(device)
        self.optimizers["sgd"] = torch.optim.SGD(self.model.parameters(), lr=config.lr,
                                                 momentum=config.momentum)
        self.seen = 0
        self.parts = {"policy": TensorDictModule(self.model, ["observation"], ["action"])}

    def policy(self, explore: bool):
        return self.parts["policy"]

    def make_buffer(self):
        return make_replay_buffer(self.config.buffer_size, self.config.batch_size, self.device)

    def update(self, buffer, batch: TensorDictBase) -> dict:
        self.seen += batch.numel()
        if self.config.stop_after is not None and self.seen > self.config.stop_after:
            raise KeyboardInterrupt
        sample = buffer.sample()
        loss = nn.functional.mse_loss(self.model(sample["observation"]), sample["target"])
        self.optimizers["sgd"].zero_grad()
        loss.backward()
        self.optimizers["sgd"].step()
        return {"train/loss": loss.item()}

    def counters(self) -> dict:
        return {"weight": self.model.weight.detach().flatten().tolist()}

    def extra_state(self) -> dict:
        return {"seen": self.seen}

    def load_extra_state(self, state: dict) -> None:
        self.seen = int(state["seen"])


def make_agent(config: Config, env, device) -> ToyAgent:
    return ToyAgent(config, env, device)


def train(config: Config) -> dict:
    return training.train(NAME, config, make_env, make_agent)
