"""Recipe ``pets``: probabilistic ensembles with trajectory sampling (Chua et al., 2018).

https://arxiv.org/abs/1805.12114. Reads top to bottom: config -> env -> world model ->
loss -> planner -> loop.

1. Collect ``random_episodes`` episodes with uniform random actions.
2. Every episode: fit the :class:`~reverie.modules.EnsembleDynamics` (Gaussian NLL,
   bootstrapped members, holdout early stopping, elites) on all data; then act for one
   episode with model-predictive control: at every step a planner (CEM, MPPI or iCEM from
   :mod:`reverie.planners`) optimises an action sequence of length ``horizon`` against the
   imagined return of ``particles`` trajectory samples per candidate, rolled out in a
   :class:`~reverie.envs.WorldModelEnv` (TS-inf propagation: each particle keeps its
   ensemble member), and the first action is executed.
3. Evaluate with ``eval_episodes`` planner episodes; write open-loop diagnostics.

Rewards: the task's known reward function where one exists (``reward="known"``, the PETS
convention, see :mod:`reverie.envs.known_models`), else a learned reward head ``r(s, a)``
(``reward="learned"``). Known termination functions end imagined trajectories.

Presets: the defaults are sized for 2 CPU cores (15 Pendulum episodes in a few minutes);
``paper`` sets the paper's sizes (5 x 200-unit, 4-layer ensemble, 20 particles, CEM with
500 candidates, 50 elites, 5 iterations, horizon 30); ``debug`` is a 30-second smoke run.

Logged metrics: ``train/episode_return`` (each planner episode; the random ones too),
``train/model_mse`` (mean holdout MSE of the elites, normalised targets), ``train/loss_nll``,
``train/fit_epochs``, ``eval/return`` (mean over ``eval_episodes``); ``summary.json`` adds
the open-loop errors ``wm/obs_rmse@k`` of the mean prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv

from reverie.diagnostics import run_diagnostics
from reverie.envs import WorldModelEnv, known_termination, reward_module, termination_module
from reverie.envs.known_models import KNOWN_REWARDS
from reverie.modules import EnsembleDynamics, WorldModel, mlp
from reverie.objectives import EnsembleNLLLoss, WorldModelLoss, fit_ensemble
from reverie.planners import CEMPlanner, ICEMPlanner, MPPIPlanner, PlannerPolicy, rollout_objective
from reverie.runs import Run, RunConfig, cfg, load_checkpoint

NAME = "pets"


# ----------------------------------------------------------------------------- config
@dataclass
class Config(RunConfig):
    """PETS: probabilistic ensemble + trajectory sampling + MPC (CEM / MPPI / iCEM)."""

    episodes: int = cfg(15, "Real episodes in total, random ones included.")
    random_episodes: int = cfg(1, "Episodes of uniform random actions collected first.")
    max_episode_steps: int = cfg(200, "Steps per real episode (at most).")
    eval_episodes: int = cfg(5, "Planner episodes of the final evaluation.")
    # model
    num_members: int = cfg(5, "Ensemble members.")
    num_elites: int = cfg(5, "Members used for planning (best holdout MSE).")
    hidden: int = cfg(128, "Hidden units per layer of every member.")
    depth: int = cfg(3, "Hidden layers per member.")
    propagation: Literal["fixed", "random", "mean"] = cfg(
        "fixed", "Member choice per particle: fixed (TS-inf), random every step (TS-1), mean."
    )
    reward: Literal["known", "learned"] = cfg(
        "known", "Known reward function of the task (PETS convention) or a learned r(s, a)."
    )
    # fitting
    lr: float = cfg(1e-3, "Adam learning rate of the ensemble (and reward head).")
    weight_decay: float = cfg(5e-5, "Adam weight decay.")
    batch_size: int = cfg(256, "Transitions per member per gradient step.")
    max_epochs: int = cfg(50, "Most epochs per fit (early stopping on holdout MSE).")
    patience: int = cfg(5, "Epochs without holdout improvement before stopping.")
    holdout: float = cfg(0.1, "Fraction of the data held out to stop early and rank elites.")
    # planning
    planner: Literal["cem", "mppi", "icem"] = cfg("cem", "Trajectory optimiser.")
    horizon: int = cfg(15, "Planning horizon (imagined steps).")
    particles: int = cfg(5, "Trajectory samples per candidate (a multiple of num_elites).")
    candidates: int = cfg(200, "Action sequences per planner iteration.")
    elites: int = cfg(20, "CEM/iCEM elite sequences.")
    iterations: int = cfg(4, "Planner iterations per decision.")
    mppi_temperature: float = cfg(1.0, "MPPI temperature (in units of imagined return).")
    diagnostics_horizon: int = cfg(50, "Open-loop horizon of the diagnostics.")
    buffer_size: int = cfg(1_000_000, "Replay buffer capacity (transitions).")
    checkpoint_every: int = cfg(1, "Checkpoint every this many env steps (after each episode).")

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


# ----------------------------------------------------------------------------- model

def make_world_model(config: Config, obs_dim: int, action_dim: int):
    """Identity encoder (the latent is the observation), ensemble dynamics, reward, done."""
    dynamics = EnsembleDynamics(
        obs_dim, action_dim, num_members=config.num_members, num_elites=config.num_elites,
        hidden=config.hidden, depth=config.depth, propagation=config.propagation,
    )
    if config.reward == "known":
        if config.env not in KNOWN_REWARDS:
            raise ValueError(
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


def make_env(name: str):
    """The Gymnasium task; float64 observations (MuJoCo) are cast to float32."""
    env = GymEnv(name)
    if any(spec.dtype == torch.float64 for spec in env.observation_spec.values(True, True)):
        env = TransformedEnv(env, DoubleToFloat())
    return env


def make_policy(config: Config, world_model: WorldModel, env) -> PlannerPolicy:
    """MPC: plan in a WorldModelEnv from each real observation, act with the first action."""
    imagination = WorldModelEnv(world_model, env)
    planner = make_planner(config, imagination.action_spec)

    def objective_factory(td):  # real observation (*E,) -> objective over (*E, N, H, A)
        start = world_model.encode(td.select("observation"))
        return rollout_objective(imagination, start, particles=config.particles)

    return PlannerPolicy(planner, objective_factory)


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


# ----------------------------------------------------------------------------- recipe
def train(config: Config) -> dict:
    """Run PETS; returns the final metrics (also written to ``summary.json``)."""
    run = Run(NAME, config)
    config = run.config
    env = make_env(config.env)
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_dim = env.action_spec.shape[-1]

    world_model, dynamics = make_world_model(config, obs_dim, action_dim)
    nll_loss = EnsembleNLLLoss(dynamics)
    model_optim = torch.optim.Adam(dynamics.parameters(), lr=config.lr,
                                   weight_decay=config.weight_decay)
    reward_loss = reward_optim = None
    if config.reward == "learned":
        reward_loss = WorldModelLoss(world_model, losses=["reward"])
        reward_optim = torch.optim.Adam(world_model.reward_head.parameters(), lr=config.lr)

    policy = make_policy(config, world_model, env)
    buffer = ReplayBuffer(storage=LazyTensorStorage(config.buffer_size), batch_size=256)

    step, episode, final_fit, state = 0, 0, False, run.load()
    if state is not None:
        world_model.load_state_dict(state["model"])
        model_optim.load_state_dict(state["model_optim"])
        if reward_optim is not None:
            reward_optim.load_state_dict(state["reward_optim"])
        buffer.load_state_dict(state["buffer"])
        step, episode, final_fit = state["step"], state["episode"], state["final_fit"]

    def fit() -> dict:
        data = buffer[:]
        stats = fit_ensemble(
            dynamics, nll_loss, model_optim, data, batch_size=config.batch_size,
            max_epochs=config.max_epochs, holdout=config.holdout, patience=config.patience,
        )
        elite_mse = torch.tensor(stats["holdout_mse"])[stats["elite_idx"]].mean().item()
        metrics = {"train/model_mse": elite_mse, "train/loss_nll": float(stats["train_nll"][-1]),
                   "train/fit_epochs": stats["epochs"]}
        if reward_loss is not None:
            for _ in range(200):
                loss = reward_loss(buffer.sample())["loss_reward"]
                reward_optim.zero_grad()
                loss.backward()
                reward_optim.step()
            metrics["train/loss_reward"] = loss.item()
        return metrics

    def save() -> None:
        state = {"step": step, "episode": episode, "final_fit": final_fit,
                 "model": world_model.state_dict(), "model_optim": model_optim.state_dict(),
                 "buffer": buffer.state_dict()}
        if reward_optim is not None:
            state["reward_optim"] = reward_optim.state_dict()
        run.save(state)

    @torch.no_grad()
    def episode_with(policy_or_none, seed: int):
        env.set_seed(seed)
        if policy_or_none is not None:
            policy_or_none.reset()
        return env.rollout(config.max_episode_steps, policy_or_none)

    bar = run.progress(config.episodes * config.max_episode_steps, "env steps")  # from `step`
    while episode < config.episodes:
        metrics = {}
        random = episode < config.random_episodes
        if not random:
            metrics.update(fit())
        data = episode_with(None if random else policy, config.seed * 1000 + episode)
        buffer.extend(data)
        episode += 1
        step += data.numel()
        bar.update(data.numel())
        metrics["train/episode_return"] = data["next", "reward"].sum().item()
        run.log(metrics, step)
        run.progress_postfix(run.latest)
        if run.checkpoint_due(step) or episode == config.episodes:
            save()
    bar.close()

    # ------------------------------------------------------------------ evaluation
    if not final_fit and config.episodes > config.random_episodes:
        fit()  # the last episode's data was collected after the last fit
        final_fit = True
        save()
    returns = evaluate_policy(policy, env, config)
    eval_return = sum(returns) / len(returns)
    run.log({"eval/return": eval_return}, step)
    errors = diagnose(world_model, dynamics, env, config, run.path("diagnostics"))
    h = len(errors["obs_rmse"])
    summary = {
        "env_steps": step, "eval/return": eval_return, "eval/returns": returns,
        **{f"wm/obs_rmse@{k}": errors["obs_rmse"][k - 1] for k in sorted({1, min(10, h), h})},
    }
    return run.finish(summary)


@torch.no_grad()
def evaluate_policy(policy: PlannerPolicy, env, config: Config) -> list[float]:
    """Returns of ``eval_episodes`` planner episodes from fixed, seed-dependent start states."""
    returns = []
    for i in range(config.eval_episodes):
        env.set_seed(10_000 + 1000 * config.seed + i)
        policy.reset()
        returns.append(env.rollout(config.max_episode_steps, policy)["next", "reward"].sum().item())
    return returns


def evaluate(config: Config) -> dict:
    """Evaluate the checkpoint in ``config.run_dir`` (used by ``reverie eval``)."""
    state = load_checkpoint(f"{config.run_dir}/checkpoint.pt")
    if state is None:
        raise FileNotFoundError(f"No checkpoint.pt in {config.run_dir}.")
    env = make_env(config.env)
    world_model, _ = make_world_model(
        config, env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    )
    world_model.load_state_dict(state["model"])
    returns = evaluate_policy(make_policy(config, world_model, env), env, config)
    return {"eval/return": sum(returns) / len(returns), "eval/returns": returns,
            "env_steps": state["step"]}


def diagnose(world_model, dynamics, env, config: Config, out_dir) -> dict:
    """Open-loop diagnostics of the ensemble's mean prediction on a held-out random episode."""
    env.set_seed(50_000 + config.seed)
    with torch.no_grad():
        held_out = env.rollout(max(config.max_episode_steps, config.diagnostics_horizon + 1),
                               break_when_any_done=False)
    # random actions end early on tasks that terminate: shorten H to the longest episode
    ends = held_out["next", "done"].reshape(-1).nonzero().flatten().tolist()
    bounds = [-1, *ends, held_out.shape[0] - 1]
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    sample, propagation = dynamics.sample, dynamics.propagation
    dynamics.sample, dynamics.propagation = False, "mean"
    try:
        return run_diagnostics(
            world_model, held_out, out_dir,
            horizon=max(1, min(config.diagnostics_horizon, held_out.shape[0], longest)),
            predicted_observation=("next", "latent"),
        )
    finally:
        dynamics.sample, dynamics.propagation = sample, propagation
