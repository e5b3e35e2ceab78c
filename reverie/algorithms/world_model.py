"""Recipe ``worldmodel``: learn a world model of a real environment and check its predictions.

Reads top to bottom: config -> world model -> MPC policy -> agent (its update maths);
:func:`reverie.training.train` runs the loop (collection, buffer, evaluation, checkpoints).

1. Collect ``random_episodes`` episodes with uniform random actions.
2. Repeat ``iterations`` times: fit the :class:`~reverie.modules.WorldModel` on the replay
   buffer with :class:`~reverie.objectives.WorldModelLoss` (one-step latent prediction +
   reward), then collect one episode with a random-shooting MPC policy that plans in
   imagination (:class:`~reverie.envs.WorldModelEnv` rollouts of ``plan_candidates``
   action sequences of length ``plan_horizon``), and add it to the buffer.
3. Report open-loop prediction diagnostics on a held-out random trajectory
   (``diagnostics/imagined_vs_real.png``, ``prediction_error.{csv,md,png}``).

The model: the encoder normalises observations with statistics fitted from the data
(``latent = (obs - mean) / std``), the dynamics is a residual MLP on ``(latent, action)``,
the reward head an MLP on ``(latent, action)`` and the decoder un-normalises.

Logged metrics: ``train/loss_latent`` and ``train/loss_reward`` (mean over the last fit),
``train/episode_return`` (random and MPC episodes), ``eval/return`` (``eval_episodes``
seeded MPC episodes at the end); in ``summary.json`` also ``wm/obs_rmse@k``,
``wm/reward_rmse@k`` and ``wm/baseline_rmse@k`` (open-loop error at horizon k, and the error
of predicting the start observation for every k).

Example (about a minute on 2 CPU cores)::

    reverie train worldmodel --env Pendulum-v1 --preset debug
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import nn

from reverie import training
from reverie.diagnostics import decoded_observation, run_diagnostics
from reverie.diagnostics.figures import observation_names
from reverie.envs import WorldModelEnv
from reverie.envs.tasks import make_task_env
from reverie.modules import WorldModel, mlp
from reverie.objectives import WorldModelLoss
from reverie.planners import rollout_objective
from reverie.runs import RunConfig, cfg
from reverie.training import Agent, Schedule, make_replay_buffer
from reverie.training.checks import require_continuous_actions

NAME = "worldmodel"


# ----------------------------------------------------------------------------- config
@dataclass
class Config(RunConfig):
    """Fit a world model to real transitions, act with MPC in imagination, report diagnostics."""

    random_episodes: int = cfg(5, "Episodes of uniform random actions collected first (the "
                               "model is first fitted on them).", low=1)
    iterations: int = cfg(5, "Fit-then-collect iterations with the MPC policy.", low=1)
    max_episode_steps: int = cfg(200, "Steps per real episode.", low=1)
    hidden: int = cfg(200, "Hidden units of the dynamics and reward MLPs.", low=1)
    fit_steps: int = cfg(600, "Gradient steps per fit.", low=1)
    batch_size: int = cfg(256, "Transitions per gradient step.", low=1)
    lr: float = cfg(1e-3, "Adam learning rate.", low=0, low_open=True)
    plan_candidates: int = cfg(256, "Action sequences scored per MPC decision.", low=1)
    plan_horizon: int = cfg(15, "Imagined steps per action sequence.", low=1)
    diagnostics_horizon: int = cfg(50, "Open-loop horizon H of the diagnostics (1..H).", low=1)
    eval_episodes: int = cfg(3, "MPC episodes of each evaluation.", low=1)
    eval_every: int = cfg(0, "Also evaluate every this many env steps during training (0: only at the end).",
                          low=0)
    buffer_size: int = cfg(100_000, "Replay buffer capacity (transitions; the normaliser needs 2).",
                           low=2)
    checkpoint_every: int = cfg(200, "Checkpoint every this many env steps (once per episode; 0: "
                                "only at the end).", low=0)

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {
            "random_episodes": 2, "iterations": 1, "max_episode_steps": 60, "fit_steps": 100,
            "plan_candidates": 64, "plan_horizon": 8, "diagnostics_horizon": 20, "hidden": 64,
            "checkpoint_every": 60, "eval_episodes": 1,
        },
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        first = self.random_episodes * self.max_episode_steps
        if first < 2:
            raise ValueError(
                f"worldmodel: random_episodes={self.random_episodes} x max_episode_steps="
                f"{self.max_episode_steps} = {first} transition; the first fit needs at least 2 "
                "(the normaliser's standard deviation).")


# ----------------------------------------------------------------------------- model
class Normalizer(nn.Module):
    """``x -> (x - mean) / std`` with statistics fitted from data (buffers, saved in state_dict)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:  # x: (N, dim)
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class ResidualDynamics(nn.Module):
    """``z' = z + MLP([z, a])``; shapes ``(*B, Z), (*B, A) -> (*B, Z)``."""

    def __init__(self, latent_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp(latent_dim + action_dim, latent_dim, hidden)

    def forward(self, latent: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return latent + self.net(torch.cat([latent, action], -1))


class Unnormalize(nn.Module):
    def __init__(self, normalizer: Normalizer) -> None:
        super().__init__()
        self.normalizer = normalizer

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.normalizer.inverse(latent)



def make_world_model(obs_dim: int, action_dim: int, hidden: int) -> tuple[WorldModel, Normalizer]:
    norm = Normalizer(obs_dim)
    encoder = TensorDictModule(norm, ["observation"], ["latent"])
    dynamics = TensorDictModule(
        ResidualDynamics(obs_dim, action_dim, hidden), ["latent", "action"], [("next", "latent")]
    )
    reward_head = TensorDictModule(
        mlp(obs_dim + action_dim, 1, hidden), ["latent", "action"], [("next", "reward")]
    )
    decoder = TensorDictModule(Unnormalize(norm), ["latent"], ["reconstructed_observation"])
    return WorldModel(encoder, dynamics, reward_head, decoder=decoder), norm


# ----------------------------------------------------------------------------- policy
class RandomShootingMPC(TensorDictModuleBase):
    """Score ``candidates`` uniform random action sequences by imagined return; act with the
    best one's first action. Reads ``observation`` (*E, D), writes ``action`` (*E, A)."""

    def __init__(self, world_model: WorldModel, imagination: WorldModelEnv, candidates: int,
                 horizon: int) -> None:
        super().__init__()
        self.world_model, self.imagination = world_model, imagination
        self.candidates, self.horizon = candidates, horizon
        self.in_keys, self.out_keys = ["observation"], ["action"]

    @torch.no_grad()
    def forward(self, td: TensorDictBase) -> TensorDictBase:
        space = self.imagination.action_spec.space
        low, high = space.low, space.high
        start = self.world_model.encode(td.select("observation").to(low.device))
        u = torch.rand(*td.batch_size, self.candidates, self.horizon, low.shape[-1], device=low.device)
        actions = low + (high - low) * u  # (*E, K, H, A)
        values = rollout_objective(self.imagination, start)(actions)  # (*E, K)
        best = values.argmax(-1)[..., None, None, None].expand(*td.batch_size, 1, 1, low.shape[-1])
        return td.set("action", actions.gather(-3, best)[..., 0, 0, :].to(td.get("observation").device))


# ----------------------------------------------------------------------------- agent
class WorldModelAgent(Agent):
    """The world model, its optimiser, and random-shooting MPC in its imagination."""

    update_after_last_batch = False  # as before: fit, then act with the fitted model

    def __init__(self, config: Config, env, device: torch.device) -> None:
        super().__init__(device)
        self.config = config
        steps = config.max_episode_steps
        self.schedule = Schedule(
            total_steps=(config.random_episodes + config.iterations) * steps, frames_per_batch=steps,
            random_steps=config.random_episodes * steps, max_episode_steps=steps,
            eval_episodes=config.eval_episodes, eval_every=config.eval_every)
        obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
        self.world_model, self.norm = make_world_model(obs_dim, action_dim, config.hidden)
        self.world_model.to(device)
        loss = WorldModelLoss(self.world_model, losses=["latent", "reward"])
        loss.set_keys(predicted_latent=("next", "latent"), target_latent=("next", "target_latent"))
        self.optimizers["model"] = torch.optim.Adam(self.world_model.parameters(), lr=config.lr)
        # modules sharing the model's parameters stay out of the state_dict
        self.parts = {
            "loss": loss,
            "target": TensorDictModule(self.norm, [("next", "observation")], [("next", "target_latent")]),
            "mpc": RandomShootingMPC(self.world_model, WorldModelEnv(self.world_model, env, device=device),
                                     config.plan_candidates, config.plan_horizon)}

    def policy(self, explore: bool) -> RandomShootingMPC:
        return self.parts["mpc"]

    def make_buffer(self):
        return make_replay_buffer(self.config.buffer_size, self.config.batch_size, self.device)

    def update(self, buffer, batch) -> dict:
        """Refit the normaliser, then ``fit_steps`` gradient steps on latent + reward losses."""
        c = self.config
        self.norm.fit(buffer[:]["observation"].to(self.device))
        totals = {}
        for _ in range(c.fit_steps):
            losses = self.parts["loss"](self.parts["target"](buffer.sample()))
            self.optimizers["model"].zero_grad()
            sum(losses.values()).backward()
            self.optimizers["model"].step()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.item() / c.fit_steps
        return {f"train/{k}": v for k, v in totals.items()}

    def diagnose(self, env, out_dir, seed: int, title: str = "") -> dict:
        """Open-loop prediction errors on a held-out random-action trajectory."""
        return diagnostic_metrics(diagnose(self.world_model, env, self.config, out_dir, seed, title))


def make_agent(config: Config, env, device: torch.device) -> WorldModelAgent:
    """The agent, once the env is known to have bounded continuous actions."""
    require_continuous_actions(env, NAME, config.env)
    return WorldModelAgent(config, env, device)


def make_env(config: Config, render: bool = False):
    """The Gymnasium task (``render``: with frames for the evaluation video)."""
    return make_task_env(config.env, render=render)


def train(config: Config) -> dict:
    """Run the recipe with the shared loop; returns the final metrics (also in ``summary.json``)."""
    return training.train(NAME, config, make_env, make_agent)


@torch.no_grad()
def diagnose(world_model: WorldModel, env, config: Config, out_dir, seed: int, title: str = "") -> dict:
    """Open-loop prediction diagnostics on a held-out random-action trajectory (CPU copy)."""
    env.set_seed(seed)
    held_out = env.rollout(max(config.max_episode_steps, config.diagnostics_horizon + 1),
                           break_when_any_done=False)
    labels = observation_names(config.env, held_out["observation"].shape[-1])
    model = copy.deepcopy(world_model).cpu()
    return run_diagnostics(
        model, held_out, out_dir, horizon=config.diagnostics_horizon,
        predicted_observation=decoded_observation(model), obs_labels=labels, title=title,
    )


def diagnostic_metrics(errors: dict) -> dict:
    h = len(errors["obs_rmse"])
    out = {}
    for k in sorted({1, min(10, h), h}):
        out[f"wm/obs_rmse@{k}"] = errors["obs_rmse"][k - 1]
        out[f"wm/baseline_rmse@{k}"] = errors["baseline_obs_rmse"][k - 1]
        out[f"wm/reward_rmse@{k}"] = errors["reward_rmse"][k - 1]
    return out
