"""Recipe ``pets``: probabilistic ensembles with trajectory sampling (Chua et al., 2018).

https://arxiv.org/abs/1805.12114. Reads top to bottom: config -> env -> world model ->
planner -> agent (its update maths); :func:`reverie.training.train` runs the loop
(collection, buffer, evaluation, checkpoints, logging).

1. Collect ``random_episodes`` episodes with uniform random actions.
2. After every episode (one collector batch of ``max_episode_steps`` steps; the last one
   too; on a task whose episodes can end early, such as InvertedPendulum-v5, a new episode
   starts inside the batch, so every batch holds ``max_episode_steps`` steps): fit the :class:`~reverie.modules.EnsembleDynamics` (Gaussian NLL, bootstrapped
   members, holdout early stopping, elites) on all data. Episodes after the random ones
   act by model-predictive control: at every step a planner (CEM, MPPI or iCEM from
   :mod:`reverie.planners`) optimises an action sequence of length ``horizon`` against the
   imagined return of ``particles`` trajectory samples per candidate, rolled out in a
   :class:`~reverie.envs.WorldModelEnv` (TS-inf propagation: each particle keeps its
   ensemble member), and the first action is executed.
3. Evaluate with ``eval_episodes`` seeded planner episodes; write open-loop diagnostics.

Rewards: the task's known reward function where one exists (``reward="known"``, the PETS
convention, see :mod:`reverie.envs.known_models`), else a learned reward head ``r(s, a)``
(``reward="learned"``). Known termination functions end imagined trajectories.

Presets: the defaults are sized for 2 CPU cores (15 Pendulum episodes in a few minutes);
``paper`` sets the paper's sizes (5 x 200-unit, 4-layer ensemble, 20 particles, CEM with
500 candidates, 50 elites, 5 iterations, horizon 30); ``debug`` is a 30-second smoke run.

Logged metrics: ``train/episode_return`` (mean of the episodes that ended in a batch; the
random ones too),
``train/model_mse`` (mean holdout MSE of the elites, normalised targets), ``train/loss_nll``,
``train/fit_epochs``, ``eval/return`` (mean over ``eval_episodes``); ``summary.json`` adds
the open-loop errors ``wm/obs_rmse@k`` of the mean prediction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs import DoubleToFloat, TransformedEnv

from reverie import training
from reverie.diagnostics import run_diagnostics
from reverie.diagnostics.figures import observation_names
from reverie.envs import WorldModelEnv, known_termination, reward_module, termination_module
from reverie.envs.known_models import KNOWN_REWARDS
from reverie.envs.tasks import make_task_env
from reverie.modules import EnsembleDynamics, WorldModel, mlp
from reverie.objectives import EnsembleNLLLoss, WorldModelLoss, fit_ensemble
from reverie.planners import CEMPlanner, ICEMPlanner, MPPIPlanner, PlannerPolicy, rollout_objective
from reverie.runs import RunConfig, cfg
from reverie.training import Agent, Schedule, make_replay_buffer
from reverie.training.checks import TaskError, require_continuous_actions

NAME = "pets"


# ----------------------------------------------------------------------------- config
@dataclass
class Config(RunConfig):
    """PETS: probabilistic ensemble + trajectory sampling + MPC (CEM / MPPI / iCEM)."""

    episodes: int = cfg(15, "Collection batches of max_episode_steps steps in total (one episode each; "
                           "episodes that end early are followed by new ones in the batch), random ones "
                           "included (more than random_episodes).", low=1)
    random_episodes: int = cfg(1, "Batches of uniform random actions collected first (the ensemble "
                               "is first fitted on them).", low=1)
    max_episode_steps: int = cfg(200, "Steps per real episode (at most).", low=1)
    eval_episodes: int = cfg(5, "Planner episodes of each evaluation.", low=1)
    eval_every: int = cfg(0, "Also evaluate every this many env steps during training, for an evaluation "
                          "curve (0: only at the end; each evaluation plans eval_episodes episodes).", low=0)
    # model
    num_members: int = cfg(5, "Ensemble members.", low=1)
    num_elites: int = cfg(5, "Members used for planning (best holdout MSE; at most num_members).",
                          low=1)
    hidden: int = cfg(128, "Hidden units per layer of every member.", low=1)
    depth: int = cfg(3, "Hidden layers per member.", low=1)
    propagation: Literal["fixed", "random", "mean"] = cfg(
        "fixed", "Member choice per particle: fixed (TS-inf), random every step (TS-1), mean."
    )
    reward: Literal["known", "learned"] = cfg(
        "known", "Known reward function of the task (PETS convention) or a learned r(s, a)."
    )
    # fitting
    lr: float = cfg(1e-3, "Adam learning rate of the ensemble (and reward head).", low=0, low_open=True)
    weight_decay: float = cfg(5e-5, "Adam weight decay.", low=0)
    batch_size: int = cfg(256, "Transitions per member per gradient step.", low=1)
    max_epochs: int = cfg(50, "Most epochs per fit (early stopping on holdout MSE).", low=1)
    patience: int = cfg(5, "Epochs without holdout improvement before stopping.", low=1)
    holdout: float = cfg(0.1, "Fraction of the data held out to stop early and rank elites, below 1 "
                         "(0: no early stopping, elites ranked by training MSE).", low=0, high=1)
    # planning
    planner: Literal["cem", "mppi", "icem"] = cfg("cem", "Trajectory optimiser.")
    horizon: int = cfg(15, "Planning horizon (imagined steps).", low=1)
    particles: int = cfg(5, "Trajectory samples per candidate (with propagation=fixed, a multiple of "
                         "num_elites).", low=1)
    candidates: int = cfg(200, "Action sequences per planner iteration.", low=1)
    elites: int = cfg(20, "CEM/iCEM elite sequences (at most candidates).", low=1)
    iterations: int = cfg(4, "Planner iterations per decision.", low=1)
    mppi_temperature: float = cfg(1.0, "MPPI temperature (in units of imagined return).", low=0,
                                  low_open=True)
    diagnostics_horizon: int = cfg(50, "Open-loop horizon of the diagnostics.", low=1)
    buffer_size: int = cfg(1_000_000, "Replay buffer capacity (transitions).", low=1)
    checkpoint_every: int = cfg(1, "Checkpoint every this many env steps (after each episode; 0: only "
                                "at the end).", low=0)

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {
            "episodes": 3, "max_episode_steps": 40, "eval_episodes": 1, "hidden": 32,
            "max_epochs": 5, "candidates": 32, "elites": 4, "iterations": 2, "horizon": 8,
            "diagnostics_horizon": 10,
        },
        "paper": {
            "hidden": 200, "depth": 4, "particles": 20, "candidates": 500, "elites": 50,
            "iterations": 5, "horizon": 30,
        },
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.episodes <= self.random_episodes:
            raise ValueError(
                f"pets: episodes={self.episodes} must be more than random_episodes="
                f"{self.random_episodes} (episodes counts the random ones; at least one must be "
                "a planner episode).")
        if self.num_elites > self.num_members:
            raise ValueError(f"pets: num_elites={self.num_elites} must be <= num_members="
                             f"{self.num_members}.")
        if self.planner in ("cem", "icem") and self.elites > self.candidates:
            raise ValueError(f"pets: elites={self.elites} must be <= candidates={self.candidates} "
                             f"(planner={self.planner}).")
        if self.propagation == "fixed" and self.particles % self.num_elites:
            raise ValueError(
                f"pets: particles={self.particles} must be a multiple of num_elites="
                f"{self.num_elites} with propagation=fixed (each candidate's particles cover "
                "every elite equally).")
        if self.holdout >= 1:
            raise ValueError(f"pets: holdout={self.holdout} must be in [0, 1) (a fraction of the "
                             "data; the rest trains the ensemble).")


# ----------------------------------------------------------------------------- model

def make_world_model(config: Config, obs_dim: int, action_dim: int):
    """Identity encoder (the latent is the observation), ensemble dynamics, reward, done."""
    dynamics = EnsembleDynamics(
        obs_dim, action_dim, num_members=config.num_members, num_elites=config.num_elites,
        hidden=config.hidden, depth=config.depth, propagation=config.propagation,
    )
    if config.reward == "known":
        if config.env not in KNOWN_REWARDS:
            raise TaskError(
                f"pets: no known reward for {config.env!r} (known: {sorted(KNOWN_REWARDS)}); "
                "set reward=learned."
            )
        reward_head = reward_module(KNOWN_REWARDS[config.env])
    else:
        reward_head = TensorDictModule(
            mlp(obs_dim + action_dim, 1, config.hidden), ["latent", "action"], [("next", "reward")]
        )
    termination = known_termination(config.env)
    world_model = WorldModel(
        TensorDictModule(nn.Identity(), ["observation"], ["latent"]),
        TensorDictModule(dynamics, ["latent", "action"], [("next", "latent")]),
        reward_head,
        done_head=termination_module(termination) if termination is not None else None,
    )
    return world_model, dynamics


def make_env(config: Config, render: bool = False):
    """The Gymnasium task; float64 observations (MuJoCo) are cast to float32; ``render``: frames
    for the evaluation video."""
    env = make_task_env(config.env, render=render)
    if any(spec.dtype == torch.float64 for spec in env.observation_spec.values(True, True)):
        env = TransformedEnv(env, DoubleToFloat())
    return env


def make_planner(config: Config, action_spec):
    common = {"action_spec": action_spec, "horizon": config.horizon}
    if config.planner == "cem":
        return CEMPlanner(**common, num_candidates=config.candidates, num_elites=config.elites,
                          iterations=config.iterations)
    if config.planner == "icem":
        return ICEMPlanner(**common, num_candidates=config.candidates, num_elites=config.elites,
                           iterations=config.iterations)
    return MPPIPlanner(**common, num_candidates=config.candidates, iterations=config.iterations,
                       temperature=config.mppi_temperature)


# ----------------------------------------------------------------------------- agent
class PlanInImagination(nn.Module):
    """``td (*E,) -> objective``: encode each real observation, score action sequences by
    their imagined return over ``particles`` trajectory samples in ``imagination``."""

    def __init__(self, world_model: WorldModel, imagination: WorldModelEnv, particles: int) -> None:
        super().__init__()
        self.world_model, self.imagination, self.particles = world_model, imagination, particles

    def forward(self, td):
        start = self.world_model.encode(td.select("observation").to(self.imagination.device))
        return rollout_objective(self.imagination, start, particles=self.particles)


class PETSAgent(Agent):
    """The ensemble, its optimiser (and a reward head's), and the MPC policy that plans with it."""

    def __init__(self, config: Config, env, device: torch.device) -> None:
        super().__init__(device)
        self.config = config
        steps = config.max_episode_steps
        self.schedule = Schedule(total_steps=config.episodes * steps, frames_per_batch=steps,
                                 random_steps=config.random_episodes * steps, max_episode_steps=steps,
                                 eval_episodes=config.eval_episodes, eval_every=config.eval_every)
        obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
        self.world_model, self.dynamics = make_world_model(config, obs_dim, action_dim)
        self.world_model.to(device)
        # losses and the MPC policy share the model's parameters: kept out of the state_dict
        self.parts = {"nll": EnsembleNLLLoss(self.dynamics), "reward_loss": None}
        self.optimizers["model"] = torch.optim.Adam(self.dynamics.parameters(), lr=config.lr,
                                                    weight_decay=config.weight_decay)
        if config.reward == "learned":
            self.parts["reward_loss"] = WorldModelLoss(self.world_model, losses=["reward"])
            self.optimizers["reward"] = torch.optim.Adam(
                self.world_model.reward_head.parameters(), lr=config.lr)
        imagination = WorldModelEnv(self.world_model, env, device=device)
        planner = make_planner(config, imagination.action_spec).to(device)
        self.parts["mpc"] = PlannerPolicy(
            planner, PlanInImagination(self.world_model, imagination, config.particles))

    def policy(self, explore: bool) -> PlannerPolicy:
        return self.parts["mpc"]  # CEM's sampling is PETS's only exploration

    def make_buffer(self):
        return make_replay_buffer(self.config.buffer_size, self.config.batch_size, self.device)

    def update(self, buffer, batch) -> dict:
        """Refit the ensemble on all data (early stopping on a holdout; elites by holdout MSE)."""
        c = self.config
        stats = fit_ensemble(self.dynamics, self.parts["nll"], self.optimizers["model"],
                             buffer[:].to(self.device), batch_size=c.batch_size,
                             max_epochs=c.max_epochs, holdout=c.holdout, patience=c.patience)
        metrics = {"train/model_mse": torch.tensor(stats["holdout_mse"])[stats["elite_idx"]].mean().item(),
                   "train/loss_nll": float(stats["train_nll"][-1]), "train/fit_epochs": stats["epochs"]}
        reward_loss = self.parts["reward_loss"]
        if reward_loss is not None:
            optim = self.optimizers["reward"]
            for _ in range(200):
                loss = reward_loss(buffer.sample())["loss_reward"]
                optim.zero_grad()
                loss.backward()
                optim.step()
            metrics["train/loss_reward"] = loss.item()
        return metrics

    def diagnose(self, env, out_dir, seed: int, title: str = "") -> dict:
        """Open-loop errors ``wm/obs_rmse@k`` of the ensemble's mean on a held-out random episode."""
        errors = diagnose(self.world_model, self.dynamics, env, self.config, out_dir, seed, title)
        h = len(errors["obs_rmse"])
        return {f"wm/obs_rmse@{k}": errors["obs_rmse"][k - 1] for k in sorted({1, min(10, h), h})}


def make_agent(config: Config, env, device: torch.device) -> PETSAgent:
    """The agent, once the env is known to have bounded continuous actions."""
    require_continuous_actions(env, NAME, config.env)
    return PETSAgent(config, env, device)


def train(config: Config) -> dict:
    """Run PETS with the shared loop; returns the final metrics (also in ``summary.json``)."""
    return training.train(NAME, config, make_env, make_agent)


@torch.no_grad()
def diagnose(world_model, dynamics, env, config: Config, out_dir, seed: int, title: str = "") -> dict:
    """Open-loop diagnostics of the ensemble's mean prediction on a held-out random episode
    (on a CPU copy of the model)."""
    env.set_seed(seed)
    held_out = env.rollout(max(config.max_episode_steps, config.diagnostics_horizon + 1),
                           break_when_any_done=False)
    # random actions end early on tasks that terminate: shorten H to the longest episode
    ends = held_out["next", "done"].reshape(-1).nonzero().flatten().tolist()
    bounds = [-1, *ends, held_out.shape[0] - 1]
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    model = copy.deepcopy(world_model).cpu()
    ensemble = model.dynamics.module
    ensemble.sample, ensemble.propagation = False, "mean"
    return run_diagnostics(
        model, held_out, out_dir,
        horizon=max(1, min(config.diagnostics_horizon, held_out.shape[0], longest)),
        predicted_observation=("next", "latent"),
        obs_labels=observation_names(config.env, held_out["observation"].shape[-1]), title=title,
    )
