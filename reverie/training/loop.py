"""The one training loop every recipe runs: collect -> store -> update -> evaluate -> checkpoint -> log.

A recipe provides ``make_env(config) -> EnvBase`` (the task, on the CPU) and
``make_agent(config, env, device) -> Agent``; :func:`train` does the rest:

1. :class:`~reverie.runs.Run` opens the run folder (or reopens it with ``resume=``), seeds
   python/numpy/torch from ``config.seed`` and sets the thread count.
2. ``config.device`` is resolved (``auto``: CUDA when present; a missing device is an error
   at start); the agent is built there. Envs stay on the CPU.
3. Until ``agent.schedule.total_steps`` env steps or ``agent.finished()``: a TorchRL
   collector (random actions for the first ``schedule.random_steps``, then
   ``agent.policy(explore=True)``) gives a batch of ``frames_per_batch`` agent steps over
   ``num_envs`` envs and ``collector_workers`` processes; it is flattened env by env, given
   global episode ids and stored (``agent.store``); the agent updates from the buffer
   (policy weights are then synced to the workers); every ``schedule.eval_every`` env
   steps the greedy policy is evaluated; metrics are logged and a checkpoint is written
   every ``config.checkpoint_every`` env steps and at the end.
4. A final evaluation (``schedule.eval_episodes`` seeded episodes), the agent's
   diagnostics, ``summary.json`` and the learning curve.

Checkpoints hold the agent's ``state_dict`` (modules, optimisers, counters), the filled part
of the replay buffer, the loop's counters and the RNG states. A run killed at any point
resumes from its last checkpoint: the metric rows logged after it are dropped and the data
collected after it is collected again. Every batch starts fresh episodes in envs seeded
from the batch count, so with in-process collection the resumed run is bit-for-bit the
uninterrupted one (with ``collector_workers`` the workers' own random draws are not
checkpointed: the continuation is then statistically the same).

Seeds come from :func:`~reverie.training.derive_seed` streams: ``train`` (collector envs,
indexed by batch), ``eval`` (episode ``i`` of every
evaluation), ``diagnostics``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torchrl.envs import EnvBase

from reverie.runs import ResumeError, Run, RunConfig
from reverie.validation import check_finite

from .agent import Agent
from .buffer import buffer_state_dict, load_buffer_state_dict
from .collect import EnvFactory, finished_episode_returns, flatten_batch, make_collector
from .device import resolve_device
from .evaluate import episode_return, run_episodes
from .seeding import derive_seed
from .video import record_episode, renders

__all__ = ["train", "LoopState"]

MakeEnv = Callable[[Any], EnvBase]
MakeAgent = Callable[[Any, EnvBase, torch.device], Agent]


@dataclasses.dataclass
class LoopState:
    """The loop's counters, saved in every checkpoint under ``"loop"``.

    Attributes:
        step: env steps collected (action repeats included).
        batches: collector batches stored.
        next_episode: the next free global episode id.
        last_eval: ``step // eval_every`` at the last periodic evaluation.
        updates: calls of ``agent.update``.
    """

    step: int = 0
    batches: int = 0
    next_episode: int = 0
    last_eval: int = 0
    updates: int = 0


def _check_agent(agent: Agent, device: torch.device) -> None:
    if not isinstance(agent, Agent):
        raise TypeError(f"make_agent must return a reverie.training.Agent, got {type(agent).__name__}.")
    if not hasattr(agent, "schedule"):
        raise AttributeError(f"{type(agent).__name__} has no `schedule`; set self.schedule = Schedule(...).")
    for name, tensor in [*agent.named_parameters(), *agent.named_buffers()]:
        if tensor.device.type != device.type:
            raise RuntimeError(
                f"{type(agent).__name__}.{name} is on {tensor.device}, the run's device is {device}; "
                "build every module with the device given to make_agent (or call agent.to(device)).")


def train(name: str, config: RunConfig, make_env: MakeEnv, make_agent: MakeAgent) -> dict[str, Any]:
    """Train the agent of a recipe; returns the final summary (also in ``summary.json``).

    Args:
        name: the recipe's name (the run folder is ``runs/<name>/<env>/...``).
        config: the recipe's config (a :class:`~reverie.runs.RunConfig` subclass).
        make_env: ``make_env(config)`` -> the task env (CPU, unbatched).
        make_agent: ``make_agent(config, env, device)`` -> an :class:`~reverie.training.Agent`.
    """
    device = resolve_device(config.device)  # before anything is created: a bad device fails first
    run = Run(name, config)
    config = run.config
    try:
        try:
            env = make_env(config)
            agent = make_agent(config, env, device)
            _check_agent(agent, device)
        except Exception:  # e.g. an unknown env id: leave no empty run folder behind
            run.discard()
            raise
        return _train(run, config, device, make_env, agent)
    finally:
        run.close()


def _write_video(run: Run, agent: Agent, make_env: MakeEnv, config, schedule, out_dir) -> None:
    """Evaluation episode 0, rendered, into ``diagnostics/eval_episode.mp4`` (or ``.gif``); an
    env that cannot render (e.g. MuJoCo without an OpenGL backend) is reported, not fatal."""
    try:
        path, _, frames = record_episode(agent, make_env, config, schedule.eval_steps, config.seed,
                                         out_dir / "eval_episode")
    except Exception as err:  # rendering needs a display backend the machine may lack
        run.print(f"No evaluation video: {config.env} did not render ({type(err).__name__}: {err}); "
                  "video=false turns the attempt off.")
        return
    run.print(f"Evaluation video: {path} ({frames} frames)")


def _train(run: Run, config, device: torch.device, make_env: MakeEnv, agent: Agent) -> dict:
    schedule = agent.schedule
    factory = EnvFactory(make_env, config, schedule.max_episode_steps, config.num_envs,
                         config.vector_env)
    buffer = agent.make_buffer()
    loop = LoopState()
    state = run.read_checkpoint()
    if state is not None:
        try:
            agent.load_state_dict(state["agent"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ResumeError(
                f"Cannot resume {run.dir}: its checkpoint does not fit the model that this "
                f"config builds ({type(err).__name__}: {str(err).strip()[:500]}). Did a "
                "model-size setting change? Resume without it; nothing in the run folder "
                "was changed.") from err
        load_buffer_state_dict(buffer, state["buffer"])
        loop = LoopState(**state["loop"])
    run.begin(state)  # only now: RNG states, metrics truncated, config.json rewritten

    def save() -> None:
        run.save({"step": loop.step, "loop": dataclasses.asdict(loop),
                  "agent": agent.state_dict(), "buffer": buffer_state_dict(buffer)})

    eval_env = EnvFactory(make_env, config, schedule.eval_steps).single()

    evaluated: dict[int, tuple[list[float], list]] = {}  # step -> (returns, episodes)

    def evaluate() -> tuple[list[float], list]:
        if loop.step not in evaluated:  # the same seeded episodes: run them once per step
            episodes = run_episodes(agent, eval_env, schedule.eval_episodes, schedule.eval_steps,
                                    config.seed)
            evaluated.clear()
            evaluated[loop.step] = ([episode_return(ep) for ep in episodes], episodes)
        return evaluated[loop.step]

    collector = it = None
    random_phase = None
    bar = run.progress(schedule.total_steps, "env steps")
    try:
        while loop.step < schedule.total_steps and not agent.finished():
            random = loop.step < schedule.random_steps
            if collector is None or random != random_phase:
                if collector is not None:
                    collector.shutdown()
                collector = make_collector(
                    factory, None if random else agent.policy(explore=True),
                    schedule.frames_per_batch, workers=config.collector_workers,
                    policy_device=device)
                it, random_phase = iter(collector), random
            collector.set_seed(derive_seed(config.seed, "train", loop.batches))
            batch, loop.next_episode = flatten_batch(next(it), loop.next_episode)
            check_finite(f"the batch collected after env step {loop.step}", batch,
                         batch.keys(True, True), "The environment produced NaN/inf; nothing "
                         "of this batch was stored or trained on (fix the env or its wrapper).")
            buffer.extend(agent.store(batch))
            frames = batch.numel() * schedule.action_repeat
            loop.step += frames
            loop.batches += 1
            bar.update(frames)
            metrics: dict[str, float] = {}
            returns = finished_episode_returns(batch)
            if returns:
                metrics["train/episode_return"] = sum(returns) / len(returns)
            metrics.update(agent.batch_metrics(batch))
            last = loop.step >= schedule.total_steps or agent.finished()
            if loop.step >= schedule.random_steps and (agent.update_after_last_batch or not last):
                metrics.update(agent.update(buffer, batch))
                loop.updates += 1
                if not random:
                    collector.update_policy_weights_()
            if schedule.eval_every and loop.step // schedule.eval_every > loop.last_eval:
                loop.last_eval = loop.step // schedule.eval_every
                returns, _ = evaluate()
                metrics["eval/return"] = sum(returns) / len(returns)
            run.log(metrics, loop.step)
            run.progress_postfix(run.latest)
            if run.checkpoint_due(loop.step) or last:
                save()
    finally:
        if collector is not None:
            collector.shutdown()
    bar.close()

    # by the periodic evaluation, or before a kill of this finished run (a resume: no duplicates)
    logged = run.logged_names(loop.step)
    returns, episodes = evaluate() if schedule.eval_episodes else ([], [])
    final = {"eval/return": sum(returns) / len(returns)} if returns else {}
    final.update(agent.eval_metrics(episodes) if episodes else {})
    if set(final) - logged:
        run.log({k: v for k, v in final.items() if k not in logged}, loop.step)
    out_dir = run.dir / "diagnostics"
    out_dir.mkdir(exist_ok=True)
    title = f"{run.algo} on {config.env}, seed {config.seed}, {loop.step:,} env steps"
    diagnostics = agent.diagnose(factory.single(), out_dir, derive_seed(config.seed, "diagnostics"), title=title)
    if getattr(config, "video", False) and schedule.eval_episodes and renders(make_env):
        _write_video(run, agent, make_env, config, schedule, out_dir)
    return run.finish({"env_steps": loop.step, **final, "eval/returns": returns,
                       **agent.counters(), **diagnostics})
