"""The :class:`Agent` protocol: what an algorithm gives the shared training loop.

An agent owns its modules and optimisers and knows its update maths; the loop in
:mod:`reverie.training.loop` owns everything else (collection through TorchRL collectors,
the replay buffer, evaluation, checkpoints, logging, progress, seeding, resume).

One iteration of the loop, in env steps (action repeats included)::

    batch = next(collector)                      # (*E, T) frames from agent.policy(explore=True)
    buffer.extend(agent.store(batch))            # (random actions before schedule.random_steps)
    metrics = agent.batch_metrics(batch)
    metrics |= agent.update(buffer, batch)       # once random_steps were collected
    collector.update_policy_weights_()           # weight sync to collector workers
    ... evaluate every schedule.eval_every env steps, log, checkpoint ...
    stop at schedule.total_steps or when agent.finished()
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.data import ReplayBuffer

__all__ = ["Agent", "CountsUpdates", "Schedule"]


@dataclass(frozen=True)
class Schedule:
    """When the loop collects, updates and evaluates; every count is in real env steps.

    Args:
        total_steps: env steps to collect in total (action repeats included).
        frames_per_batch: agent steps per collector batch, over all envs together
            (e.g. one episode for trial-based recipes).
        random_steps: env steps collected first with uniform random actions; updates start
            after the batch that reaches it.
        max_episode_steps: agent steps after which an episode is truncated (``StepCounter``).
        action_repeat: env steps per agent step (the env's frame skip), to count env steps.
        eval_every: evaluate every this many env steps during training (0: only at the end).
        eval_episodes: episodes of each evaluation.
        eval_max_steps: agent steps per evaluation episode (0: ``max_episode_steps``).
    """

    total_steps: int
    frames_per_batch: int
    random_steps: int
    max_episode_steps: int
    action_repeat: int = 1
    eval_every: int = 0
    eval_episodes: int = 5
    eval_max_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("total_steps", "frames_per_batch", "max_episode_steps", "action_repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"Schedule.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("random_steps", "eval_every", "eval_episodes", "eval_max_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"Schedule.{name} must be >= 0, got {getattr(self, name)}.")

    @property
    def eval_steps(self) -> int:
        """Agent steps per evaluation episode."""
        return self.eval_max_steps or self.max_episode_steps


class Agent(nn.Module, abc.ABC):
    """Base class of the algorithms trained by :func:`reverie.training.train`.

    A subclass builds its modules (as ``nn.Module`` attributes, so ``state_dict``,
    ``load_state_dict`` and ``to`` cover them) and its optimisers (in :attr:`optimizers`,
    saved with the modules through ``get_extra_state``), and implements:

    * :meth:`policy` - the module that acts: ``td (*E,) with "observation" -> td with
      "action"``; ``explore=True`` while collecting, ``False`` (greedy) for evaluation. It
      must handle episode starts itself from ``is_init`` (the loop wraps every env in an
      ``InitTracker``), and be picklable when collector workers are used;
    * :meth:`update` - the update maths, from the replay buffer, returning metrics;
    * :meth:`make_buffer` - the replay buffer (see :func:`reverie.training.make_replay_buffer`).

    Optional hooks: :meth:`store` (what of a batch goes into the buffer), :meth:`batch_metrics`,
    :meth:`eval_metrics`, :meth:`finished`, :meth:`diagnose`, :meth:`counters`.

    Attributes:
        schedule: the :class:`Schedule` the loop follows (set by the subclass).
        device: where the modules live and sampled batches go.
        optimizers: name -> optimiser; their states are part of :meth:`state_dict`.
        update_after_last_batch: update once more after the last batch (True: the agent
            that is evaluated and saved has seen all data; PILCO sets False: it evaluates
            the controller that ran its last trial).

    Example (a complete agent; ``reverie.training.train`` runs it)::

        class LinearAgent(Agent):
            def __init__(self, env, device):
                super().__init__(device)
                self.schedule = Schedule(total_steps=400, frames_per_batch=100,
                                         random_steps=100, max_episode_steps=100)
                self.net = TensorDictModule(nn.Linear(3, 1), ["observation"], ["action"])
                self.optimizers = {"net": torch.optim.Adam(self.net.parameters())}
            def policy(self, explore):
                return self.net
            def make_buffer(self):
                return make_replay_buffer(10_000, 64, self.device)
            def update(self, buffer, batch):
                loss = ...(buffer.sample())
                ...
                return {"train/loss": loss.item()}
    """

    update_after_last_batch: ClassVar[bool] = True
    schedule: Schedule

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # ------------------------------------------------------------------ required
    @abc.abstractmethod
    def policy(self, explore: bool) -> TensorDictModuleBase:
        """The acting module: reads ``observation`` (*E, ...), writes ``action`` (*E, A)."""

    @abc.abstractmethod
    def make_buffer(self) -> ReplayBuffer:
        """A fresh, empty replay buffer for this agent's data."""

    @abc.abstractmethod
    def update(self, buffer: ReplayBuffer, batch: TensorDictBase) -> dict[str, float]:
        """Learn from ``buffer`` after ``batch`` (already stored) was collected; metrics out."""

    # ------------------------------------------------------------------ optional hooks
    def store(self, batch: TensorDictBase) -> TensorDictBase:
        """What of a collected batch goes into the replay buffer (default: all of it)."""
        return batch

    def batch_metrics(self, batch: TensorDictBase) -> dict[str, float]:
        """Metrics of a freshly collected batch (e.g. whether a trial was solved)."""
        return {}

    def eval_metrics(self, episodes: list[TensorDictBase]) -> dict[str, float]:
        """Extra metrics of the evaluation episodes (each a ``(T,)`` rollout)."""
        return {}

    def finished(self) -> bool:
        """True to end training before ``schedule.total_steps`` (e.g. PILCO once solved)."""
        return False

    def counters(self) -> dict[str, Any]:
        """Values added to the final summary (e.g. ``{"updates": 120}``)."""
        return {}

    def diagnose(self, env, out_dir, seed: int, title: str = "") -> dict[str, Any]:
        """World-model diagnostics at the end of training, written under ``out_dir``.

        ``env`` is a fresh real env (as built by the recipe's ``make_env``), ``seed`` the
        diagnostics seed, ``title`` the figures' title (algorithm, env, seed and env steps,
        from the loop). Returns summary entries (e.g. ``wm/obs_rmse@10``).
        """
        return {}

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        """Optimiser states (and subclass counters via :meth:`extra_state`)."""
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                **self.extra_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = state.pop("optimizers", {})
        missing = set(self.optimizers) ^ set(saved)
        if missing:
            raise KeyError(
                f"{type(self).__name__}: the checkpoint has optimisers {sorted(saved)}, this agent "
                f"{sorted(self.optimizers)}; was it saved by another configuration?")
        for name, optim in self.optimizers.items():
            optim.load_state_dict(saved[name])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Plain values (ints, floats, tensors) to checkpoint besides parameters and buffers."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, tensordict: TensorDictBase, explore: bool = False) -> TensorDictBase:
        """Write ``action`` into ``tensordict`` (batch (*E,)) with :meth:`policy`."""
        return self.policy(explore)(tensordict.to(self.device))


class CountsUpdates:
    """Mixin for agents that count their gradient updates in ``self.updates`` (set it to 0 in
    ``__init__``): the count goes into the summary and the checkpoint.

    Examples:
        >>> class Counting(CountsUpdates):
        ...     updates = 3
        >>> agent = Counting()
        >>> agent.counters(), agent.extra_state()
        ({'updates': 3}, {'updates': 3})
        >>> agent.load_extra_state({"updates": 7}); agent.updates
        7
    """

    updates: int

    def counters(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def extra_state(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
