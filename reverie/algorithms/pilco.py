"""Recipe ``pilco``: probabilistic inference for learning control (Deisenroth & Rasmussen, 2011).

https://www.doc.ic.ac.uk/~mpd37/publications/pilco_icml2011.pdf. Reads top to bottom:
config -> task -> env -> agent (model, cost, policy search); :func:`reverie.training.train`
runs the loop (one collector batch per trial, evaluation, checkpoints, logging).

1. Run ``random_trials`` trials with uniform random actions.
2. Every trial: fit the :class:`~reverie.modules.GPWorldModel` (one GP per state dimension,
   marginal likelihood, needs ``reverie[gp]``) on the (most recent ``max_gp_points``)
   transitions; optimise the :class:`~reverie.modules.RBFController` by gradients of the
   expected saturating cost (:class:`~reverie.objectives.ExponentialQuadraticCost`) summed
   over a ``horizon``-step Gaussian-belief rollout in an :class:`~reverie.envs.ImaginedEnv`
   (moment matching, no sampling); run the controller on the real env for one trial (its
   mean action on the point belief of each real observation); add the data. The last
   trial is not followed by an update: the controller that ran it is the one evaluated.
3. A trial is *solved* when the pole stays upright (``|angle| < 0.2`` rad) through the final
   second; with ``stop_when_solved`` the loop ends there. Then ``eval_episodes`` evaluation
   episodes from fresh start states, and the imagined-vs-real plot.

Tasks (:data:`TASKS`): ``reverie/CartPoleSwingUp-v0`` (PILCO's cart-pole swing-up, 4 s
trials, the default), ``Pendulum-v1`` (swing-up from hanging down, action repeat 2, 4 s trials) and
``InvertedPendulum-v5`` (MuJoCo, the published recipe's default). Per-task defaults fill the
fields left at 0.

Logged metrics (``step`` = real env steps): ``train/trial_return``, ``train/trial_upright``
(1 if solved), ``train/imagined_cost`` (optimised expected cost), ``train/gp_mll``,
``train/gp_points``, ``train/fit_s``, ``train/policy_s``; ``eval/return`` and
``eval/solved_fraction``. ``summary.json`` adds ``solved`` and ``trials`` (controller
trials until the first solved one).

Presets: the defaults are PILCO's MATLAB settings (10 basis functions, 4 s horizon, L-BFGS policy search) sized for one
CPU core per seed; ``debug`` is a 30-second smoke run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torchrl.envs import DTypeCastTransform, GymWrapper, TransformedEnv

from reverie import training
from reverie.diagnostics import plot_belief_vs_real
from reverie.envs import ImaginedEnv
from reverie.envs.pilco_tasks import TASKS, Task, _StartDown
from reverie.envs.tasks import make_task_env, render_kwargs
from reverie.modules import GPWorldModel, PseudoTargetRBFController, RBFController
from reverie.objectives import ExponentialQuadraticCost
from reverie.runs import RunConfig, cfg
from reverie.training import EPISODE_KEY, Agent, Schedule, derive_seed, make_replay_buffer
from reverie.training.checks import require_continuous_actions

NAME = "pilco"


# ----------------------------------------------------------------------------- config
@dataclass
class Config(RunConfig):
    """PILCO: GP dynamics, moment-matching policy evaluation, analytic policy gradients."""

    env: str = cfg("reverie/CartPoleSwingUp-v0", f"Task, one of: {', '.join(['reverie/CartPoleSwingUp-v0', 'Pendulum-v1', 'InvertedPendulum-v5'])}.")
    trials: int = cfg(15, "Controller trials on the real env (after the random ones).", low=1)
    random_trials: int = cfg(1, "Trials with uniform random actions collected first (the GP is "
                             "first fitted on them).", low=1)
    trial_steps: int = cfg(0, "Real steps per trial (0: the task's default).", low=0)
    horizon: int = cfg(0, "Imagined steps per policy evaluation (0: trial_steps).", low=0)
    n_basis: int = cfg(0, "RBF controller basis functions (0: the task's default).", low=0)
    max_gp_points: int = cfg(300, "Most recent transitions the GP conditions on (cost O(n^2) per step).",
                             low=1)
    gp_max_iter: int = cfg(300, "L-BFGS-B iterations of the GP hyper-parameter fit.", low=1)
    policy_lengthscale: float = cfg(0.0, "Initial length-scale of the RBF basis functions (0: the task's, PILCO's 1 and 0.7 on sines/cosines).",
                                    low=0)
    optimizer: Literal["lbfgs", "adam"] = cfg("lbfgs", "Policy optimiser.")
    policy_iters: int = cfg(150, "Imagined-cost evaluations per trial (L-BFGS evaluations or Adam steps).",
                            low=1)
    lr: float = cfg(0.01, "Adam learning rate (optimizer=adam).", low=0, low_open=True)
    policy_parameters: Literal["task", "weights", "pseudo_targets"] = cfg(
        "task", "What the policy search moves: the RBF network's 'weights', or the 'pseudo_targets' of "
        "a GP mean through the centres as PILCO's MATLAB code (the same functions, another search "
        "geometry); 'task': the task's default (pseudo_targets on cart-pole, weights elsewhere).")
    policy_restarts: int = cfg(-1, "Extra policy searches per trial, each from a fresh random controller "
                               "with policy_iters evaluations; the policy of lowest imagined cost (these "
                               "or the warm-started one) runs (-1: the task's default, 0).",
                               low=-1)
    stop_when_solved: bool = cfg(True, "End training at the first solved trial.")
    eval_episodes: int = cfg(3, "Evaluation episodes (fresh start states) of each evaluation.", low=1)
    eval_every: int = cfg(-1, "Evaluate every this many env steps (-1: after every controller trial, an "
                          "evaluation curve at the cost of eval_episodes real episodes per trial; 0: only at "
                          "the end).", low=-1)
    checkpoint_every: int = cfg(1, "Checkpoint every this many env steps (after each trial; 0: only "
                                "at the end).", low=0)

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {"trials": 2, "trial_steps": 10, "n_basis": 5, "max_gp_points": 40,
                  "gp_max_iter": 20, "policy_iters": 3, "eval_episodes": 1},
    }


def make_env(config: Config, render: bool = False):
    """The real env with float64 observations (moment matching runs in float64); ``render``:
    frames for the evaluation video."""
    name = config.env
    task = TASKS.get(name)
    if task is None:
        raise ValueError(f"pilco: no task definition for {name!r}; known: {sorted(TASKS)}.")
    if task.start_down:
        env = GymWrapper(_StartDown(gym.make(name, **(task.env_kwargs or {}), **render_kwargs(render))),
                         frame_skip=task.frame_skip)
    else:
        env = make_task_env(name, render=render, frame_skip=task.frame_skip, **(task.env_kwargs or {}))
    if env.observation_spec["observation"].dtype != torch.float64:
        env = TransformedEnv(env, DTypeCastTransform(torch.float32, torch.float64, in_keys=["observation"]))
    return env


def make_controller(config: Config, task: Task, env) -> RBFController:
    """The RBF controller on the task's policy inputs, squashed to the action bounds."""
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    kind = task.policy_parameters if config.policy_parameters == "task" else config.policy_parameters
    cls = PseudoTargetRBFController if kind == "pseudo_targets" else RBFController
    return cls(obs_dim, action_dim, env.action_spec.space.high.to(torch.float64),
               n_basis=config.n_basis or task.n_basis, input_dims=task.policy_dims).double()


def initial_belief(env, n: int = 500) -> TensorDict:
    """Gaussian belief ``N(mean, var)`` over start observations, estimated from ``n`` resets."""
    obs = torch.stack([env.reset()["observation"] for _ in range(n)])  # (n, D)
    var = torch.cov(obs.T) + 1e-6 * torch.eye(obs.shape[-1], dtype=obs.dtype)
    return TensorDict({("observation", "mean"): obs.mean(0)[None], ("observation", "var"): var[None]}, [1])


def transitions(rollout: TensorDict) -> TensorDict:
    """Flat ``observation, action, (next, observation)`` (float64 actions) from real data."""
    return TensorDict({
        "observation": rollout.get("observation"),
        "action": rollout.get("action").to(torch.float64),
        ("next", "observation"): rollout.get(("next", "observation")),
    }, rollout.batch_size).reshape(-1)


# ----------------------------------------------------------------------------- agent
class PointBeliefController(TensorDictModuleBase):
    """Run a belief-space controller on real observations: ``observation`` (*E, D) is the point
    belief ``N(observation, 0)``, the controller's mean action is written to ``action``."""

    def __init__(self, controller: RBFController, action_dtype: torch.dtype) -> None:
        super().__init__()
        self.controller, self.action_dtype = controller, action_dtype
        self.in_keys, self.out_keys = ["observation"], ["action"]

    def forward(self, tensordict):
        obs = tensordict.get("observation").to(torch.float64)
        mean, _, _ = self.controller(obs, obs.new_zeros(*obs.shape, obs.shape[-1]))
        return tensordict.set("action", mean.detach().to(self.action_dtype))


class PILCOAgent(Agent):
    """GP world model, RBF controller, and the update: fit the GP, then minimise the
    expected cost of a Gaussian-belief rollout in imagination."""

    update_after_last_batch = False  # evaluate the controller that ran the last trial

    def __init__(self, config: Config, env, device: torch.device) -> None:
        super().__init__(device)
        task = TASKS.get(config.env)
        if task is None:
            raise ValueError(f"pilco: no task definition for {config.env!r}; known: {sorted(TASKS)}.")
        self.config, self.task = config, task
        trial_steps = config.trial_steps or task.trial_steps
        self.horizon = config.horizon or trial_steps
        self.schedule = Schedule(
            total_steps=(config.random_trials + config.trials) * trial_steps * task.frame_skip,
            frames_per_batch=trial_steps, random_steps=config.random_trials * trial_steps * task.frame_skip,
            max_episode_steps=trial_steps, action_repeat=task.frame_skip,
            eval_every=trial_steps * task.frame_skip if config.eval_every < 0 else config.eval_every,
            eval_episodes=config.eval_episodes, eval_max_steps=task.eval_steps or trial_steps)
        obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
        env.set_seed(derive_seed(config.seed, "init"))
        self.start = initial_belief(env).to(device)
        self.gp = GPWorldModel(obs_dim, action_dim, angle_dims=task.angle_dims).to(device)
        self.controller = make_controller(config, task, env).to(device)
        self.restarts = task.policy_restarts if config.policy_restarts < 0 else config.policy_restarts
        self.initialize_controller()
        # modules that share the GP's and controller's parameters stay out of the state_dict
        self.parts = {"belief_policy": TensorDictModule(
            self.controller, in_keys=[("observation", "mean"), ("observation", "var")],
            out_keys=[("action", "mean"), ("action", "var"), ("action", "cross_covariance")])}
        cost = ExponentialQuadraticCost(torch.tensor(task.target, dtype=torch.float64),
                                        torch.as_tensor(task.weights, dtype=torch.float64)).to(device)
        self.parts["imagination"] = ImaginedEnv(self.gp, env, batch_size=[1],
                                                reward_module=cost.as_reward(), device=device)
        self.parts["acting"] = PointBeliefController(self.controller, env.action_spec.dtype)
        self.trials_to_solve: int | None = None
        self.trials_run = 0

    def policy(self, explore: bool) -> PointBeliefController:
        return self.parts["acting"]  # deterministic: PILCO explores through its model's uncertainty

    def make_buffer(self):
        steps = self.schedule.total_steps // self.task.frame_skip
        return make_replay_buffer(max(steps, 1), 1, self.device)

    def store(self, batch):
        return batch.select("observation", "action", ("next", "observation"), ("next", "reward"),
                            ("next", "terminated"), ("next", "done"), EPISODE_KEY)

    def batch_metrics(self, batch) -> dict:
        """The trial's return and whether it held the pole upright through its final second."""
        random = self.trials_run < self.config.random_trials
        self.trials_run += 1
        upright = not random and self.final_second_upright(batch)
        if upright and self.trials_to_solve is None:
            self.trials_to_solve = self.trials_run - self.config.random_trials
        return {"train/trial_return": batch["next", "reward"].sum().item(),
                "train/trial_upright": float(upright)}

    def update(self, buffer, batch) -> dict:
        n = len(buffer)
        recent = transitions(buffer[max(0, n - self.config.max_gp_points):n].to(self.device))
        t0 = time.perf_counter()
        fit = self.gp.fit(recent, max_iter=self.config.gp_max_iter)
        t1 = time.perf_counter()
        cost = self.improve_policy()
        return {"train/gp_mll": fit["mll"], "train/gp_points": fit["n"], "train/fit_s": t1 - t0,
                "train/imagined_cost": cost, "train/policy_s": time.perf_counter() - t1}

    def initialize_controller(self, generator: torch.Generator | None = None) -> None:
        """PILCO's start: basis centres at states drawn from the start belief, small random
        weights, the task's length-scales (draws from ``generator``, else torch's global one)."""
        cholesky = torch.linalg.cholesky(self.start["observation", "var"][0]).cpu()
        noise = torch.randn(500, cholesky.shape[0], dtype=torch.float64, generator=generator)
        start_states = self.start["observation", "mean"] + (noise @ cholesky.T).to(self.device)
        lengthscale = self.config.policy_lengthscale or torch.tensor(
            self.task.policy_lengthscales or 1.0, dtype=torch.float64, device=self.device)
        self.controller.initialize(start_states, lengthscale=lengthscale, generator=generator)

    def expected_cost(self) -> torch.Tensor:
        """Sum over the horizon of the expected cost of the imagined Gaussian belief."""
        env = self.parts["imagination"]
        rollout = env.rollout(self.horizon, self.parts["belief_policy"], tensordict=env.reset(self.start.clone()))
        return -rollout["next", "reward"].sum()

    def improve_policy(self) -> float:
        """Search from the current controller, then from ``restarts`` fresh random ones (seeded
        by the run's ``restart`` stream and the trial); keep the lowest imagined cost.

        Restarts guard against the policy search's local optima: on cart-pole swing-up a
        warm-started search can stay with a controller that spins the pole through upright
        trial after trial, while a search from a fresh controller on the same GP finds the
        swing-up and balance."""
        params = list(self.controller.parameters())
        best = (self.search(), [p.detach().clone() for p in params])
        for k in range(self.restarts):
            g = torch.Generator().manual_seed(
                derive_seed(self.config.seed, "restart", self.trials_run * 64 + k))
            self.initialize_controller(g)
            cost = self.search()
            if cost < best[0]:
                best = (cost, [p.detach().clone() for p in params])
        with torch.no_grad():
            for p, b in zip(params, best[1], strict=True):
                p.copy_(b)
        return best[0]

    def search(self) -> float:
        """``policy_iters`` evaluations of the imagined expected cost from the current
        controller; leaves the best policy seen in the controller and returns its cost."""
        c = self.config
        params = list(self.controller.parameters())
        best = (float("inf"), [p.detach().clone() for p in params])
        evals = 0
        if c.optimizer == "lbfgs":
            optim = torch.optim.LBFGS(params, lr=1.0, max_iter=c.policy_iters, max_eval=c.policy_iters,
                                      history_size=50, tolerance_grad=1e-9, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")
        else:
            optim = torch.optim.Adam(params, lr=c.lr)

        def closure():
            nonlocal best, evals
            evals += 1
            optim.zero_grad()
            try:
                loss = self.expected_cost()
            except torch.linalg.LinAlgError:  # a line search probed a degenerate policy
                return torch.tensor(1e6, dtype=torch.float64)
            if torch.isfinite(loss) and loss.item() < best[0]:
                best = (loss.item(), [p.detach().clone() for p in params])
            loss.backward()
            return loss

        stalls = 0
        while evals < c.policy_iters and stalls < 3:
            before = (evals, best[0])
            optim.step(closure)  # L-BFGS: until converged or out of evaluations; Adam: one step
            if c.optimizer == "lbfgs":  # restart L-BFGS (fresh curvature) if it stopped early
                stalls = stalls + 1 if best[0] >= before[1] - 1e-9 or evals == before[0] else 0
                optim.state.clear()
        with torch.no_grad():  # keep the best policy seen (line searches can overshoot)
            for p, b in zip(params, best[1], strict=True):
                p.copy_(b)
        return best[0]

    def final_second_upright(self, rollout) -> bool:
        obs = rollout["next", "observation"]
        last = max(1, round(1.0 / (self.task.dt * self.task.frame_skip)))  # decisions in one second
        done = bool(rollout["next", "terminated"].any())
        return not done and obs.shape[0] >= last and bool(self.task.success(obs[-last:]).all())

    def finished(self) -> bool:
        return self.config.stop_when_solved and self.trials_to_solve is not None

    def eval_metrics(self, episodes) -> dict:
        return {"eval/solved_fraction": float(np.mean([self.final_second_upright(ep) for ep in episodes]))}

    def counters(self) -> dict:
        return {"solved": self.trials_to_solve is not None, "trials": self.trials_to_solve,
                "gp_points": int(self.gp.train_inputs.shape[0])}

    def extra_state(self) -> dict:
        return {"trials_to_solve": -1 if self.trials_to_solve is None else self.trials_to_solve,
                "trials_run": self.trials_run}

    def load_extra_state(self, state: dict) -> None:
        self.trials_to_solve = None if state["trials_to_solve"] < 0 else int(state["trials_to_solve"])
        self.trials_run = int(state["trials_run"])

    def diagnose(self, env, out_dir, seed: int, title: str = "") -> dict:
        """The imagined belief against one greedy real episode (``imagined_vs_real.png``)."""
        (real,) = training.run_episodes(self, env, 1, self.schedule.eval_steps, seed)
        trial = f", controller of trial {self.trials_run - self.config.random_trials}" if title else ""
        plot_belief_vs_real(self.parts["imagination"], self.parts["belief_policy"], self.start, real, self.horizon,
                            out_dir / "imagined_vs_real.png", names=self.task.observation_names,
                            title=f"{title}{trial}: real vs imagined belief")
        return {}


def make_agent(config: Config, env, device: torch.device) -> PILCOAgent:
    """The agent, once the env is known to have bounded continuous actions."""
    require_continuous_actions(env, NAME, config.env)
    return PILCOAgent(config, env, device)


def train(config: Config) -> dict:
    """Run PILCO with the shared loop; returns the final metrics (also in ``summary.json``)."""
    return training.train(NAME, config, make_env, make_agent)
