"""Trained agents for users: :func:`load_agent` and ``reverie eval``'s :func:`evaluate_run`.

Playing a trained run on a Gymnasium env (the README runs this example)::

    import gymnasium as gym
    import reverie

    agent = reverie.load_agent("runs/pets/Pendulum-v1/20260101-120000-s0")
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    agent.reset()                                   # a new episode
    done, total = False, 0.0
    while not done:
        obs, reward, terminated, truncated, _ = env.step(agent.predict(obs))
        total, done = total + reward, terminated or truncated
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from reverie.runs import config_from_dict, load_checkpoint, read_run_info, resolve_config
from reverie.runs.run import CHECKPOINT_FILE

from .agent import Agent
from .collect import EnvFactory
from .device import resolve_device
from .evaluate import episode_return, run_episodes

__all__ = ["TrainedAgent", "load_agent", "evaluate_run"]


class TrainedAgent:
    """A trained agent loaded from a run folder, ready to act.

    Attributes:
        agent: the recipe's :class:`~reverie.training.Agent` (modules on ``device``).
        config: the run's config (with any overrides given to :func:`load_agent`).
        algo: the recipe's name.
        env_steps: env steps the checkpoint was trained on.
    """

    def __init__(self, algo: str, config, agent: Agent, recipe, env_steps: int) -> None:
        self.algo, self.config, self.agent, self.env_steps = algo, config, agent, env_steps
        self._recipe = recipe
        self._policy = agent.policy(explore=False)
        self._first = True
        self._obs_spec = None

    @property
    def policy(self):
        """The greedy policy as a TorchRL module (``td (*E,) -> td with "action"``)."""
        return self._policy

    def make_env(self, max_steps: int | None = None):
        """The run's environment as TorchRL sees it (with ``StepCounter``/``InitTracker``)."""
        steps = max_steps or self.agent.schedule.eval_steps
        return EnvFactory(self._recipe.make_env, self.config, steps).single()

    def reset(self) -> None:
        """Start a new episode (the next :meth:`predict` resets the policy's memory)."""
        self._first = True

    @torch.no_grad()
    def predict(self, observation) -> np.ndarray:
        """Greedy action for one Gymnasium observation (a numpy array); returns a numpy array.

        Call :meth:`reset` at the start of every episode: recurrent (Dreamer) and planning
        (PETS) policies keep state between calls.
        """
        if self._obs_spec is None:
            self._obs_spec = self.make_env().observation_spec["observation"]
        obs = torch.as_tensor(np.asarray(observation), dtype=self._obs_spec.dtype)
        if obs.shape != self._obs_spec.shape:
            raise ValueError(
                f"{self.algo} run on {self.config.env}: observation of shape {tuple(obs.shape)}, "
                f"the agent was trained on {tuple(self._obs_spec.shape)}. Use the run's env "
                "(TrainedAgent.make_env()) or a Gymnasium env of the same task.")
        td = TensorDict({"observation": obs, "is_init": torch.tensor([self._first])}, [])
        self._first = False
        action = self.agent.act(td, explore=False).get("action")
        return action.detach().cpu().numpy()

    def play(self, episodes: int = 1, seed: int | None = None) -> list[float]:
        """Returns of ``episodes`` greedy episodes on the run's env (evaluation seeds)."""
        env = self.make_env()
        out = run_episodes(self.agent, env, episodes, self.agent.schedule.eval_steps,
                           self.config.seed if seed is None else seed)
        return [episode_return(ep) for ep in out]

    def __repr__(self) -> str:
        return f"TrainedAgent({self.algo} on {self.config.env}, {self.env_steps} env steps)"


def load_agent(run_dir: str | Path, *, device: str = "cpu", overrides: list[str] = ()) -> TrainedAgent:
    """Load the agent saved in ``<run_dir>/checkpoint.pt``.

    Args:
        run_dir: a run folder written by ``reverie train``.
        device: where to put the modules (``cpu``, ``cuda``, ``auto``).
        overrides: ``field=value`` config changes (e.g. ``["eval_episodes=10"]``).

    Raises:
        FileNotFoundError: not a run folder, or no checkpoint in it.
        ValueError: the checkpoint does not fit the model the (overridden) config builds.
    """
    from reverie.algorithms import load_algorithm

    algo, saved = read_run_info(run_dir)
    recipe = load_algorithm(algo)
    base = config_from_dict(recipe.Config, saved)
    config = resolve_config(recipe.Config, [], [*overrides, f"device={device}"], base=base)
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)
    if state is None:
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT_FILE}: nothing was saved yet.")
    dev = resolve_device(config.device)
    agent = recipe.make_agent(config, recipe.make_env(config), dev)
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError) as err:
        raise ValueError(
            f"{run_dir}: its checkpoint does not fit the model that the config builds "
            f"({type(err).__name__}: {str(err).strip()[:300]}). Did an override change a "
            f"model size ({', '.join(overrides) or 'no overrides given'})?") from err
    agent.eval()
    return TrainedAgent(algo, config, agent, recipe, int(state["step"]))


def evaluate_run(run_dir: str | Path, *, episodes: int | None = None, seed: int | None = None,
                 device: str = "cpu", overrides: list[str] = ()) -> tuple[dict[str, Any], Path]:
    """Evaluate a run's checkpoint into ``<run_dir>/eval/<YYYYmmdd-HHMMSS>/``.

    Writes ``returns.csv`` (one row per episode), ``summary.json`` and ``returns.png``;
    never touches the training outputs. With the same seed the returns are the same, bit
    for bit on the CPU, and equal the final evaluation of training when the episode count
    and seed are the run's.

    Returns:
        ``(summary, folder)``.
    """
    trained = load_agent(run_dir, device=device, overrides=list(overrides))
    agent, config = trained.agent, trained.config
    n = agent.schedule.eval_episodes if episodes is None else episodes
    s = config.seed if seed is None else seed
    if n < 1:
        raise ValueError(f"episodes must be >= 1, got {n}.")
    rollouts = run_episodes(agent, trained.make_env(), n, agent.schedule.eval_steps, s)
    returns = [episode_return(ep) for ep in rollouts]
    summary = {"run_dir": str(run_dir), "algo": trained.algo, "env": config.env,
               "env_steps": trained.env_steps, "seed": s, "episodes": n,
               "eval/return": sum(returns) / n, "eval/returns": returns,
               "episode_lengths": [int(ep.shape[0]) for ep in rollouts],
               **agent.eval_metrics(rollouts)}
    stem = time.strftime("%Y%m%d-%H%M%S")
    base = Path(run_dir) / "eval"
    out = base / stem
    i = 0
    while out.exists():
        i += 1
        out = base / f"{stem}-{i}"
    out.mkdir(parents=True)
    with open(out / "returns.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "return", "length"])
        for k, (r, ep) in enumerate(zip(returns, rollouts, strict=True)):
            writer.writerow([k, repr(r), ep.shape[0]])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot_episodes(rollouts, out / "returns.png", f"{trained.algo} on {config.env}: "
                   f"{trained.env_steps} env steps, seed {s}")
    return summary, out


def _plot_episodes(rollouts: list[TensorDictBase], path: Path, title: str) -> None:
    """Left: return per episode. Right: cumulative reward over each episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    returns = [episode_return(ep) for ep in rollouts]
    a.bar(range(len(returns)), returns)
    a.set_xlabel("episode")
    a.set_ylabel("return")
    for k, ep in enumerate(rollouts):
        b.plot(ep.get(("next", "reward")).reshape(-1).cumsum(0).numpy(), label=f"episode {k}")
    b.set_xlabel("agent step")
    b.set_ylabel("cumulative reward")
    if len(rollouts) <= 10:
        b.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
