"""Recipe ``pilco``: probabilistic inference for learning control (Deisenroth & Rasmussen, 2011).

https://www.doc.ic.ac.uk/~mpd37/publications/pilco_icml2011.pdf. Reads top to bottom:
config -> task -> env -> model -> cost -> loop.

1. Run ``random_trials`` trials with uniform random actions.
2. Every trial: fit the :class:`~reverie.modules.GPWorldModel` (one GP per state dimension,
   marginal likelihood, needs ``reverie[gp]``) on the (most recent ``max_gp_points``)
   transitions; optimise the :class:`~reverie.modules.RBFController` by gradients of the
   expected saturating cost (:class:`~reverie.objectives.ExponentialQuadraticCost`) summed
   over a ``horizon``-step Gaussian-belief rollout in an :class:`~reverie.envs.ImaginedEnv`
   (moment matching, no sampling); run the controller on the real env for one trial through
   :class:`~reverie.envs.MeanActionSelector`; add the data.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.envs import Compose, DTypeCastTransform, GymEnv, GymWrapper, TransformedEnv

from reverie.envs import ImaginedEnv, MeanActionSelector
from reverie.envs.cartpole_swingup import swingup_cost_matrix
from reverie.modules import GPWorldModel, RBFController
from reverie.objectives import ExponentialQuadraticCost
from reverie.runs import Run, RunConfig, cfg, load_checkpoint

NAME = "pilco"


# ----------------------------------------------------------------------------- config
@dataclass
class Config(RunConfig):
    """PILCO: GP dynamics, moment-matching policy evaluation, analytic policy gradients."""

    env: str = cfg("reverie/CartPoleSwingUp-v0", f"Task, one of: {', '.join(['reverie/CartPoleSwingUp-v0', 'Pendulum-v1', 'InvertedPendulum-v5'])}.")
    trials: int = cfg(15, "Controller trials on the real env (after the random ones).")
    random_trials: int = cfg(1, "Trials with uniform random actions collected first.")
    trial_steps: int = cfg(0, "Real steps per trial (0: the task's default).")
    horizon: int = cfg(0, "Imagined steps per policy evaluation (0: trial_steps).")
    n_basis: int = cfg(0, "RBF controller basis functions (0: the task's default).")
    max_gp_points: int = cfg(300, "Most recent transitions the GP conditions on (cost O(n^2) per step).")
    gp_max_iter: int = cfg(300, "L-BFGS-B iterations of the GP hyper-parameter fit.")
    policy_lengthscale: float = cfg(0.0, "Initial length-scale of the RBF basis functions (0: the task's, PILCO's 1 and 0.7 on sines/cosines).")
    optimizer: Literal["lbfgs", "adam"] = cfg("lbfgs", "Policy optimiser.")
    policy_iters: int = cfg(150, "Imagined-cost evaluations per trial (L-BFGS evaluations or Adam steps).")
    lr: float = cfg(0.01, "Adam learning rate (optimizer=adam).")
    stop_when_solved: bool = cfg(True, "End training at the first solved trial.")
    eval_episodes: int = cfg(3, "Evaluation episodes (fresh start states) at the end.")
    checkpoint_every: int = cfg(1, "Checkpoint every this many env steps (after each trial).")

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {"trials": 2, "trial_steps": 10, "n_basis": 5, "max_gp_points": 40,
                  "gp_max_iter": 20, "policy_iters": 3, "eval_episodes": 1},
    }


# ----------------------------------------------------------------------------- tasks
def _pole_cos_at(index: int):
    def upright(obs: torch.Tensor) -> torch.Tensor:  # cos(angle from upright) > cos(0.2)
        return obs[..., index] > float(np.cos(0.2))
    return upright


def _pole_angle_at(index: int):
    def upright(obs: torch.Tensor) -> torch.Tensor:
        return obs[..., index].abs() < 0.2
    return upright


def _point_mass_at_target(obs: torch.Tensor) -> torch.Tensor:
    return (obs[..., 0] - 1.0).abs() < 0.1


@dataclass(frozen=True)
class Task:
    """What PILCO needs to know about a task: cost, horizon, and what success looks like."""

    target: tuple[float, ...]
    weights: np.ndarray  # (D, D) cost precision W (width included)
    trial_steps: int
    n_basis: int
    success: Callable[[torch.Tensor], torch.Tensor]  # (*B, D) observations -> (*B,) bool
    dt: float = 0.1  # seconds per env step
    frame_skip: int = 1
    start_down: bool = False  # Pendulum-v1: start hanging down (swing-up)
    eval_steps: int = 0  # 0: trial_steps
    angle_dims: dict[int, tuple[int, int]] | None = None  # GPWorldModel(angle_dims=...)
    policy_dims: tuple[int, ...] | None = None  # observations the controller reads (None: all)
    policy_lengthscales: tuple[float, ...] | None = None  # initial, per policy input (None: 1)


TASKS: dict[str, Task] = {
    # pole upright: |angle| < 0.2 rad. Swing-ups as PILCO's MATLAB settings: the GP predicts
    # the change of the unwrapped angle and reads its sine and cosine; so does the controller.
    "reverie/CartPoleSwingUp-v0": Task(
        (0, 0, 1, 0, 0, 0), swingup_cost_matrix(), 40, 10, _pole_cos_at(2),
        angle_dims={5: (3, 2)}, policy_dims=(0, 1, 2, 3, 4), policy_lengthscales=(1, 1, 0.7, 0.7, 1)),
    "Pendulum-v1": Task(
        (1, 0, 0, 0), np.diag([1.0, 1.0, 0.0, 0.0]) / 0.5**2, 40, 30, _pole_cos_at(0),
        dt=0.05, frame_skip=2, start_down=True, eval_steps=100,
        angle_dims={3: (1, 0)}, policy_dims=(0, 1, 2), policy_lengthscales=(0.7, 0.7, 1)),
    "InvertedPendulum-v5": Task((0, 0, 0, 0), np.eye(4), 100, 10, _pole_angle_at(1), dt=0.04),
    # the CI learning test's toy task: reach x = 1 (within 0.1)
    "reverie/PointMass1D-v0": Task((1, 0), np.diag([1.0, 0.1]) / 0.3**2, 30, 10, _point_mass_at_target),
}


class _StartDown(gym.ObservationWrapper):
    """Pendulum-v1 from hanging down (``theta ~ N(pi, 0.1^2)``, ``theta_dot ~ N(0, 0.1^2)``),
    observing ``(cos theta, sin theta, theta_dot, theta)`` with the unwrapped angle."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        rng = self.env.unwrapped.np_random
        self.env.unwrapped.state = np.array([np.pi, 0.0]) + 0.1 * rng.standard_normal(2)
        return self.observation(None), info

    def observation(self, observation):
        th, thdot = self.env.unwrapped.state
        return np.array([np.cos(th), np.sin(th), thdot, th], dtype=np.float64)


def make_env(name: str, task: Task, belief: bool = False):
    """The real env with float64 observations (moment matching runs in float64); with
    ``belief``, observations are point beliefs and the policy's mean action is executed
    (:class:`~reverie.envs.MeanActionSelector`)."""
    if task.start_down:
        env = GymWrapper(_StartDown(gym.make(name)), frame_skip=task.frame_skip)
    else:
        env = GymEnv(name, frame_skip=task.frame_skip)
    transforms = []
    if env.observation_spec["observation"].dtype != torch.float64:
        transforms.append(DTypeCastTransform(torch.float32, torch.float64, in_keys=["observation"]))
    if belief:
        transforms.append(MeanActionSelector())
    return TransformedEnv(env, Compose(*transforms)) if transforms else env


def make_controller(config: Config, task: Task, env) -> RBFController:
    """The RBF controller on the task's policy inputs, squashed to the action bounds."""
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    return RBFController(obs_dim, action_dim, env.action_spec.space.high.to(torch.float64),
                         n_basis=config.n_basis or task.n_basis, input_dims=task.policy_dims).double()


def initial_belief(env, n: int = 500) -> TensorDict:
    """Gaussian belief ``N(mean, var)`` over start observations, estimated from ``n`` resets."""
    obs = torch.stack([env.reset()["observation"] for _ in range(n)])  # (n, D)
    var = torch.cov(obs.T) + 1e-6 * torch.eye(obs.shape[-1], dtype=obs.dtype)
    return TensorDict({("observation", "mean"): obs.mean(0)[None], ("observation", "var"): var[None]}, [1])


def transitions(rollout: TensorDict) -> TensorDict:
    """Flat ``observation, action, (next, observation)`` from a real rollout (beliefs or points)."""
    def point(key):
        value = rollout.get(key)
        return value.get("mean") if isinstance(value, TensorDict) else value
    return TensorDict({
        "observation": point("observation"),
        "action": point("action").to(torch.float64),
        ("next", "observation"): point(("next", "observation")),
    }, rollout.batch_size[-1:]).reshape(-1)


# ----------------------------------------------------------------------------- recipe
def train(config: Config) -> dict:
    """Run PILCO; returns the final metrics (also written to ``summary.json``)."""
    run = Run(NAME, config)
    config = run.config
    task = TASKS.get(config.env)
    if task is None:
        raise ValueError(f"pilco: no task definition for {config.env!r}; known: {sorted(TASKS)}.")
    trial_steps = config.trial_steps or task.trial_steps
    horizon = config.horizon or trial_steps
    env = make_env(config.env, task)
    real = make_env(config.env, task, belief=True)  # runs the controller
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    belief_env = make_env(config.env, task)
    belief_env.set_seed(10_000 + config.seed)
    start = initial_belief(belief_env)

    gp = GPWorldModel(obs_dim, action_dim, angle_dims=task.angle_dims)
    controller = make_controller(config, task, env)
    start_states = start["observation", "mean"] + torch.randn(500, obs_dim, dtype=torch.float64) @ \
        torch.linalg.cholesky(start["observation", "var"][0]).T
    controller.initialize(start_states, lengthscale=config.policy_lengthscale or
                          torch.tensor(task.policy_lengthscales or 1.0, dtype=torch.float64))
    policy = TensorDictModule(controller, in_keys=[("observation", "mean"), ("observation", "var")],
                              out_keys=[("action", "mean"), ("action", "var"), ("action", "cross_covariance")])
    cost = ExponentialQuadraticCost(torch.tensor(task.target, dtype=torch.float64),
                                    torch.as_tensor(task.weights, dtype=torch.float64))
    imagination = ImaginedEnv(gp, env, batch_size=[1], reward_module=cost.as_reward())

    data, trial, step, trials_to_solve = None, 0, 0, None
    state = run.load()
    if state is not None:
        data = TensorDict(state["data"], [state["data"]["observation"].shape[0]]) if state["data"] else None
        gp.load_state_dict(state["gp"])
        controller.load_state_dict(state["controller"])
        trial, step, trials_to_solve = state["trial"], state["step"], state["trials_to_solve"]

    def save() -> None:
        run.save({"step": step, "trial": trial, "trials_to_solve": trials_to_solve,
                  "data": {} if data is None else data.to_dict(), "gp": gp.state_dict(),
                  "controller": controller.state_dict()})

    def expected_cost() -> torch.Tensor:
        rollout = imagination.rollout(horizon, policy, tensordict=imagination.reset(start.clone()))
        return -rollout["next", "reward"].sum()  # sum over the horizon of E[cost]

    def improve_policy() -> float:
        """``policy_iters`` evaluations of the imagined expected cost; keeps the best policy."""
        params = list(controller.parameters())
        best = (float("inf"), [p.detach().clone() for p in params])
        evals = 0
        if config.optimizer == "lbfgs":
            optim = torch.optim.LBFGS(params, lr=1.0, max_iter=config.policy_iters,
                                      max_eval=config.policy_iters, history_size=50,
                                      tolerance_grad=1e-9, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")
        else:
            optim = torch.optim.Adam(params, lr=config.lr)

        def closure():
            nonlocal best, evals
            evals += 1
            optim.zero_grad()
            try:
                loss = expected_cost()
            except torch.linalg.LinAlgError:  # a line search probed a degenerate policy
                return torch.tensor(1e6, dtype=torch.float64)
            if torch.isfinite(loss) and loss.item() < best[0]:
                best = (loss.item(), [p.detach().clone() for p in params])
            loss.backward()
            return loss

        stalls = 0
        while evals < config.policy_iters and stalls < 3:
            before = (evals, best[0])
            optim.step(closure)  # L-BFGS: until converged or out of evaluations; Adam: one step
            if config.optimizer == "lbfgs":  # restart L-BFGS (fresh curvature) if it stopped early
                stalls = stalls + 1 if best[0] >= before[1] - 1e-9 or evals == before[0] else 0
                optim.state.clear()
        with torch.no_grad():  # keep the best policy seen (line searches can overshoot)
            for p, b in zip(params, best[1], strict=True):
                p.copy_(b)
        return best[0]

    def real_trial(seed: int, steps: int, random: bool = False) -> TensorDict:
        (env if random else real).set_seed(seed)
        with torch.no_grad():
            if random:  # exactly `steps` transitions (episodes that end are restarted)
                return env.rollout(steps, break_when_any_done=False)
            return real.rollout(steps, policy, break_when_any_done=True)

    def final_second_upright(rollout: TensorDict) -> bool:
        obs = rollout["next", "observation"]
        obs = obs["mean"] if isinstance(obs, TensorDict) else obs
        last = max(1, round(1.0 / (task.dt * task.frame_skip)))  # decisions in one second
        done = bool(rollout["next", "terminated"].any())
        return not done and obs.shape[0] >= last and bool(task.success(obs[-last:]).all())

    total = (config.random_trials + config.trials) * trial_steps * task.frame_skip
    bar = run.progress(total, "env steps")
    while trial < config.random_trials + config.trials:
        random = trial < config.random_trials
        metrics = {}
        if not random:
            recent = data[-config.max_gp_points:]
            t0 = time.perf_counter()
            fit = gp.fit(recent, max_iter=config.gp_max_iter)
            t1 = time.perf_counter()
            metrics.update({"train/gp_mll": fit["mll"], "train/gp_points": fit["n"], "train/fit_s": t1 - t0,
                            "train/imagined_cost": improve_policy(),
                            "train/policy_s": time.perf_counter() - t1})
        rollout = real_trial(config.seed * 1000 + trial, trial_steps, random)
        new = transitions(rollout)
        data = new if data is None else torch.cat([data, new], 0)
        trial += 1
        step += rollout.numel() * task.frame_skip
        bar.update(rollout.numel() * task.frame_skip)
        upright = not random and final_second_upright(rollout)
        if upright and trials_to_solve is None:
            trials_to_solve = trial - config.random_trials
        metrics.update({"train/trial_return": rollout["next", "reward"].sum().item(),
                        "train/trial_upright": float(upright)})
        run.log(metrics, step)
        run.progress_postfix(run.latest)
        save()
        if trials_to_solve is not None and config.stop_when_solved:
            break
    bar.close()

    # ------------------------------------------------------------------ evaluation
    eval_steps = task.eval_steps or trial_steps
    episodes = [real_trial(20_000 + 1000 * config.seed + i, eval_steps) for i in range(config.eval_episodes)]
    returns = [ep["next", "reward"].sum().item() for ep in episodes]
    solved_fraction = float(np.mean([final_second_upright(ep) for ep in episodes]))
    run.log({"eval/return": float(np.mean(returns)), "eval/solved_fraction": solved_fraction}, step)
    plot_imagined_vs_real(imagination, policy, start, episodes[0], horizon, run.path("diagnostics") / "imagined_vs_real.png")
    return run.finish({
        "env_steps": step, "eval/return": float(np.mean(returns)), "eval/returns": returns,
        "eval/solved_fraction": solved_fraction, "solved": trials_to_solve is not None,
        "trials": trials_to_solve, "gp_points": int(gp.train_inputs.shape[0]),
    })


@torch.no_grad()
def plot_imagined_vs_real(imagination, policy, start, real_episode, horizon, path) -> None:
    """The imagined belief (mean +- 2 std per dimension) against one real trajectory."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rollout = imagination.rollout(horizon, policy, tensordict=imagination.reset(start.clone()))
    mean = rollout["next", "observation", "mean"][0]  # (H, D)
    std = rollout["next", "observation", "var"][0].diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    obs = real_episode["next", "observation", "mean"]
    dims = mean.shape[-1]
    fig, axes = plt.subplots(1, dims, figsize=(3 * dims, 2.8))
    for d, ax in enumerate(np.atleast_1d(axes)):
        t = np.arange(1, mean.shape[0] + 1)
        ax.fill_between(t, mean[:, d] - 2 * std[:, d], mean[:, d] + 2 * std[:, d], alpha=0.3, label="imagined ±2σ")
        ax.plot(t, mean[:, d], label="imagined mean")
        ax.plot(np.arange(1, obs.shape[0] + 1), obs[:, d], "k.", ms=3, label="real")
        ax.set_title(f"observation[{d}]")
        ax.set_xlabel("step")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(config: Config) -> dict:
    """Evaluate the controller in ``config.run_dir``'s checkpoint (used by ``reverie eval``)."""
    state = load_checkpoint(f"{config.run_dir}/checkpoint.pt")
    if state is None:
        raise FileNotFoundError(f"No checkpoint.pt in {config.run_dir}.")
    task = TASKS[config.env]
    env = make_env(config.env, task)
    controller = make_controller(config, task, env)
    controller.load_state_dict(state["controller"])
    policy = TensorDictModule(controller, in_keys=[("observation", "mean"), ("observation", "var")],
                              out_keys=[("action", "mean"), ("action", "var"), ("action", "cross_covariance")])
    real = make_env(config.env, task, belief=True)
    returns = []
    for i in range(config.eval_episodes):
        real.set_seed(20_000 + 1000 * config.seed + i)
        with torch.no_grad():
            rollout = real.rollout(task.eval_steps or config.trial_steps or task.trial_steps, policy)
        returns.append(rollout["next", "reward"].sum().item())
    return {"eval/return": float(np.mean(returns)), "eval/returns": returns, "env_steps": state["step"]}
