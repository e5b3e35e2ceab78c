"""Recipe ``worldmodel``: learn a world model of a real environment and check its predictions.

Reads top to bottom: config -> env -> world model -> loss -> loop -> diagnostics.

1. Collect ``random_episodes`` episodes with uniform random actions.
2. Repeat ``iterations`` times: fit the :class:`~reverie.modules.WorldModel` on the replay
   buffer with :class:`~reverie.objectives.WorldModelLoss` (one-step latent prediction +
   reward), then collect one episode with a random-shooting MPC policy that plans in
   imagination (:class:`~reverie.envs.WorldModelEnv` rollouts of ``plan_candidates``
   action sequences of length ``plan_horizon``), and add it to the buffer.
3. Report open-loop prediction diagnostics on a held-out random trajectory
   (``diagnostics/open_loop.png``, ``prediction_error.{csv,md,png}``).

The model: the encoder normalises observations with statistics fitted from the data
(``latent = (obs - mean) / std``), the dynamics is a residual MLP on ``(latent, action)``,
the reward head an MLP on ``(latent, action)`` and the decoder un-normalises.

Logged metrics: ``train/loss_latent`` and ``train/loss_reward`` (mean over the last fit),
``eval/return`` (return of each MPC episode); in ``summary.json`` also ``wm/obs_rmse@k``,
``wm/reward_rmse@k`` and ``wm/baseline_rmse@k`` (open-loop error at horizon k, and the error
of predicting the start observation for every k).

Example (about a minute on 2 CPU cores)::

    reverie train worldmodel --env Pendulum-v1 --preset debug
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import GymEnv

from reverie.diagnostics import decoded_observation, run_diagnostics
from reverie.envs import WorldModelEnv
from reverie.modules import WorldModel, mlp
from reverie.objectives import WorldModelLoss
from reverie.runs import Run, RunConfig, cfg, load_checkpoint

NAME = "worldmodel"


# ----------------------------------------------------------------------------- config
@dataclass
class Config(RunConfig):
    """Fit a world model to real transitions, act with MPC in imagination, report diagnostics."""

    random_episodes: int = cfg(5, "Episodes of uniform random actions collected first.")
    iterations: int = cfg(5, "Fit-then-collect iterations with the MPC policy.")
    max_episode_steps: int = cfg(200, "Steps per real episode.")
    hidden: int = cfg(200, "Hidden units of the dynamics and reward MLPs.")
    fit_steps: int = cfg(600, "Gradient steps per fit.")
    batch_size: int = cfg(256, "Transitions per gradient step.")
    lr: float = cfg(1e-3, "Adam learning rate.")
    plan_candidates: int = cfg(256, "Action sequences scored per MPC decision.")
    plan_horizon: int = cfg(15, "Imagined steps per action sequence.")
    diagnostics_horizon: int = cfg(50, "Open-loop horizon H of the diagnostics (1..H).")
    buffer_size: int = cfg(100_000, "Replay buffer capacity (transitions).")
    checkpoint_every: int = cfg(200, "Checkpoint every this many env steps (once per episode).")

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {
            "random_episodes": 2, "iterations": 1, "max_episode_steps": 60, "fit_steps": 100,
            "plan_candidates": 64, "plan_horizon": 8, "diagnostics_horizon": 20, "hidden": 64,
            "checkpoint_every": 60,
        },
    }


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
class PlanPlayback(nn.Module):
    """Plays back planned action sequences ``(K, H, A)``, one step per call."""

    def __init__(self) -> None:
        super().__init__()
        self.plan, self.t = None, 0

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        action = self.plan[:, self.t]
        self.t += 1
        return action


class RandomShootingMPC:
    """Score K uniform random action sequences in imagination; act with the best one's first action."""

    def __init__(self, world_model: WorldModel, env: WorldModelEnv, candidates: int, horizon: int):
        self.world_model, self.env = world_model, env
        self.k, self.h = candidates, horizon
        self.playback = PlanPlayback()
        self.policy = TensorDictModule(self.playback, ["latent"], ["action"])
        self.low, self.high = env.action_spec.space.low, env.action_spec.space.high

    @torch.no_grad()
    def __call__(self, td: TensorDict) -> TensorDict:
        u = torch.rand(self.k, self.h, self.low.shape[-1])  # (K, H, A)
        self.playback.plan, self.playback.t = self.low + (self.high - self.low) * u, 0
        start = self.world_model.encode(td.select("observation").expand(self.k).clone())
        imagined = self.env.rollout(self.h, self.policy, tensordict=start)  # (K, H)
        best = imagined["next", "reward"].sum((1, 2)).argmax()
        return td.set("action", self.playback.plan[best, 0])


# ----------------------------------------------------------------------------- recipe
def train(config: Config) -> dict:
    """Run the recipe; returns the final metrics (also in ``summary.json``)."""
    run = Run(NAME, config)
    config = run.config
    env = GymEnv(config.env)
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_dim = env.action_spec.shape[-1]

    world_model, norm = make_world_model(obs_dim, action_dim, config.hidden)
    target_encoder = TensorDictModule(norm, [("next", "observation")], [("next", "target_latent")])
    loss_module = WorldModelLoss(world_model, losses=["latent", "reward"])
    loss_module.set_keys(predicted_latent=("next", "latent"), target_latent=("next", "target_latent"))
    optim = torch.optim.Adam(world_model.parameters(), lr=config.lr)
    imagination = WorldModelEnv(world_model, env)
    mpc = RandomShootingMPC(world_model, imagination, config.plan_candidates, config.plan_horizon)
    buffer = ReplayBuffer(storage=LazyTensorStorage(config.buffer_size), batch_size=config.batch_size)

    step, episode, last_return, state = 0, 0, None, run.load()
    if state is not None:
        world_model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        buffer.load_state_dict(state["buffer"])
        step, episode, last_return = state["step"], state["episode"], state["last_return"]

    def fit() -> dict:
        norm.fit(buffer[:]["observation"])
        totals = {}
        for _ in range(config.fit_steps):
            batch = target_encoder(buffer.sample())
            losses = loss_module(batch)
            optim.zero_grad()
            sum(losses.values()).backward()
            optim.step()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.item() / config.fit_steps
        return {f"train/{k}": v for k, v in totals.items()}

    total_episodes = config.random_episodes + config.iterations
    bar = run.progress(total_episodes * config.max_episode_steps, "env steps")
    while episode < total_episodes:
        metrics = {}
        if episode >= config.random_episodes:
            metrics.update(fit())
        env.set_seed(config.seed * 1000 + episode)
        policy = None if episode < config.random_episodes else mpc
        with torch.no_grad():
            data = env.rollout(config.max_episode_steps, policy, break_when_any_done=False)
        buffer.extend(data)
        episode += 1
        step += data.numel()
        bar.update(data.numel())
        episode_return = data["next", "reward"].sum().item()
        if policy is None:
            metrics["train/episode_return"] = episode_return
        else:
            metrics["eval/return"] = last_return = episode_return
        run.log(metrics, step)
        run.progress_postfix(run.latest)
        if run.checkpoint_due(step) or episode == total_episodes:
            run.save({
                "step": step, "episode": episode, "last_return": last_return,
                "model": world_model.state_dict(),
                "optim": optim.state_dict(), "buffer": buffer.state_dict(),
            })
    bar.close()

    errors = diagnose(world_model, env, config, run.path("diagnostics"))
    summary = {"env_steps": step, "eval/return": last_return, **diagnostic_metrics(errors)}
    return run.finish(summary)


def diagnose(world_model: WorldModel, env: GymEnv, config: Config, out_dir) -> dict:
    """Open-loop prediction diagnostics on a held-out random-action trajectory."""
    env.set_seed(10_000 + config.seed)
    with torch.no_grad():
        held_out = env.rollout(
            max(config.max_episode_steps, config.diagnostics_horizon + 1), break_when_any_done=False
        )
    labels = ["cos θ", "sin θ", "θ̇"] if config.env.startswith("Pendulum") else None
    return run_diagnostics(
        world_model, held_out, out_dir, horizon=config.diagnostics_horizon,
        predicted_observation=decoded_observation(world_model), obs_labels=labels,
    )


def diagnostic_metrics(errors: dict) -> dict:
    h = len(errors["obs_rmse"])
    out = {}
    for k in sorted({1, min(10, h), h}):
        out[f"wm/obs_rmse@{k}"] = errors["obs_rmse"][k - 1]
        out[f"wm/baseline_rmse@{k}"] = errors["baseline_obs_rmse"][k - 1]
        out[f"wm/reward_rmse@{k}"] = errors["reward_rmse"][k - 1]
    return out


def evaluate(config: Config) -> dict:
    """Re-run the diagnostics and one MPC episode from the checkpoint in ``config.run_dir``."""
    state = load_checkpoint(f"{config.run_dir}/checkpoint.pt")
    if state is None:
        raise FileNotFoundError(f"No checkpoint.pt in {config.run_dir}.")
    env = GymEnv(config.env)
    world_model, _ = make_world_model(
        env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1], config.hidden
    )
    world_model.load_state_dict(state["model"])
    mpc = RandomShootingMPC(
        world_model, WorldModelEnv(world_model, env), config.plan_candidates, config.plan_horizon
    )
    env.set_seed(20_000 + config.seed)
    with torch.no_grad():
        data = env.rollout(config.max_episode_steps, mpc, break_when_any_done=False)
    errors = diagnose(world_model, env, config, f"{config.run_dir}/diagnostics")
    return {"eval/return": data["next", "reward"].sum().item(), **diagnostic_metrics(errors)}
