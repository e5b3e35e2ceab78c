"""The training spine shared by every recipe: :class:`Agent`, the loop, collection, evaluation.

- :class:`Agent`, :class:`Schedule` - what an algorithm provides (:mod:`.agent`).
- :func:`train` - collect -> store -> update -> evaluate -> checkpoint -> log (:mod:`.loop`).
- :func:`make_replay_buffer`, :func:`buffer_state_dict` - buffers on the CPU whose samples go
  to the training device; checkpoints of the filled part only (:mod:`.buffer`).
- :func:`make_collector`, :func:`wrap_env` - TorchRL collectors over batched envs (:mod:`.collect`).
- :func:`run_episodes` - seeded greedy evaluation (:mod:`.evaluate`).
- :func:`load_agent`, :func:`evaluate_run` - trained agents for users (:mod:`.load`).
- :func:`resolve_device`, :func:`derive_seed`.
"""

from .agent import Agent, CountsUpdates, Schedule
from .buffer import (
    budget_capacity,
    buffer_state_dict,
    load_buffer_state_dict,
    make_replay_buffer,
)
from .checks import TaskError, require_continuous_actions
from .collect import EPISODE_KEY, make_collector, wrap_env
from .device import DeviceError, available_devices, resolve_device
from .evaluate import episode_return, run_episodes
from .load import TrainedAgent, evaluate_run, load_agent
from .loop import LoopState, train
from .seeding import derive_seed

__all__ = [
    "Agent",
    "TaskError",
    "DeviceError",
    "require_continuous_actions",
    "CountsUpdates",
    "Schedule",
    "train",
    "LoopState",
    "make_replay_buffer",
    "buffer_state_dict",
    "budget_capacity",
    "load_buffer_state_dict",
    "make_collector",
    "wrap_env",
    "EPISODE_KEY",
    "run_episodes",
    "episode_return",
    "load_agent",
    "evaluate_run",
    "TrainedAgent",
    "resolve_device",
    "available_devices",
    "derive_seed",
]
