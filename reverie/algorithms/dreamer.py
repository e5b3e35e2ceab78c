"""Recipe ``dreamer``: Dreamer v1 (Hafner et al., 2019, https://arxiv.org/abs/1912.01603).

Reads top to bottom: config -> env -> world model -> losses -> loop.

1. Collect ``seed_episodes`` episodes with uniform random actions.
2. Loop: act for one episode with the actor (posterior filtering of the RSSM on the real
   observations, Gaussian exploration noise), add it to a replay buffer of trajectories,
   then do ``train_ratio * steps`` updates, each on ``batch_size`` slices of
   ``batch_length`` steps (TorchRL's ``SliceSampler``: slices never cross episodes):
   world model (:class:`~reverie.objectives.DreamerModelLoss`), then actor and value on
   trajectories imagined from every posterior latent (:class:`~reverie.objectives.DreamerActorLoss`,
   :class:`~reverie.objectives.DreamerValueLoss`).
3. Evaluate every ``eval_every`` env steps and at the end (mean action, no noise); draw
   imagined vs real observations (decoded frames for pixel runs).

Observations: ``pixels=False`` uses the state vector (MLP encoder/decoder); ``pixels=True``
renders 64x64 frames (the paper's conv encoder/decoder). ``env_steps`` counts real env
steps (with ``action_repeat``). Presets (the defaults are the paper's sizes):

- ``cpu``: 16 sequences, 100-unit networks, 0.5 updates per agent step (about 0.35 s per
  update on one idle core, vs 8 s at the paper's sizes), plus the settings of the result in
  ``docs/results/dreamer/Pendulum-v1``: rewards scaled by 0.1, actor learning rate 1e-4,
  value learning rate 2e-4, an entropy bonus of 0.3 and 1 free nat. In earlier runs without
  the bonus (or with 0.01), the tanh-Gaussian actor saturated into a bang-bang policy that
  spins the pendulum. With the paper's 3 free nats, the KL of this 3-dimensional
  observation stayed at about 2 nats, under the clamp, so the prior that imagination rolls
  out got almost no gradient, and seed 2 collapsed late in two runs after solving the task.
- ``pixels``: 64x64 frames, 16 sequences, 100-unit networks, 16-filter convolutions,
  4,000 env steps and one update per agent step (about 2 s per update on one core): a short
  run that shows the world model learning (``docs/results/dreamer/Pendulum-v1-pixels``, which
  resumed it to 10,000 env steps).
- ``debug``: a 30-second smoke run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import SliceSampler
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    FrameSkipTransform,
    GymEnv,
    ToTensorImage,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal

from reverie.diagnostics import imagine_open_loop, plot_imagined_vs_real
from reverie.envs import DreamerEnv
from reverie.envs.image import ResizeImage
from reverie.modules import (
    DreamerActor,
    DreamerPolicy,
    ObsDecoder,
    ObsEncoder,
    RSSMPosterior,
    RSSMPrior,
    RSSMRollout,
    mlp,
)
from reverie.objectives import DreamerActorLoss, DreamerModelLoss, DreamerValueLoss
from reverie.runs import Run, RunConfig, cfg, load_checkpoint

NAME = "dreamer"


@dataclass
class Config(RunConfig):
    """Dreamer v1: RSSM world model, actor and value learned in latent imagination."""

    env_steps: int = cfg(20_000, "Real environment steps in total (action repeats included).")
    pixels: bool = cfg(False, "Learn from 64x64 rendered frames instead of the state vector.")
    action_repeat: int = cfg(2, "Env steps per agent action (rewards summed).")
    max_episode_steps: int = cfg(200, "Env steps per episode.")
    seed_episodes: int = cfg(5, "Episodes of uniform random actions collected first.")
    train_ratio: float = cfg(0.2, "Gradient updates per agent step collected.")
    batch_size: int = cfg(50, "Sequences per update.")
    batch_length: int = cfg(50, "Steps per sequence.")
    state_dim: int = cfg(30, "Stochastic state size.")
    belief_dim: int = cfg(200, "Deterministic belief (GRU) size.")
    hidden: int = cfg(200, "Hidden units of the RSSM, MLP encoder/decoder and heads.")
    actor_hidden: int = cfg(400, "Hidden units of the actor and value MLPs.")
    cnn_channels: int = cfg(32, "Filters of the first pixel-encoder convolution (doubled per "
                            "layer; the decoder mirrors it).")
    imagination_horizon: int = cfg(15, "Imagined steps per actor/value update.")
    reward_scale: float = cfg(1.0, "Factor on stored rewards (the model, actor and value see "
                              "scaled rewards; logged returns stay in env units).")
    gamma: float = cfg(0.99, "Discount.")
    lmbda: float = cfg(0.95, "Lambda of the lambda-returns.")
    free_nats: float = cfg(3.0, "KL free nats.")
    entropy_weight: float = cfg(0.0, "Weight of the actor's entropy bonus (0: Dreamer v1); keeps "
                                "the tanh-Gaussian actor out of saturation.")
    model_lr: float = cfg(6e-4, "World-model Adam learning rate.")
    actor_lr: float = cfg(8e-5, "Actor Adam learning rate.")
    value_lr: float = cfg(8e-5, "Value Adam learning rate.")
    grad_clip: float = cfg(100.0, "Gradient-norm clip of every optimiser.")
    exploration_noise: float = cfg(0.3, "Std of Gaussian action noise while collecting (fraction of the action range).")
    eval_every: int = cfg(2000, "Evaluate every this many env steps.")
    eval_episodes: int = cfg(5, "Episodes per evaluation.")
    buffer_size: int = cfg(1_000_000, "Replay capacity (agent steps).")
    checkpoint_every: int = cfg(2000, "Checkpoint every this many env steps.")

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {"env_steps": 800, "seed_episodes": 2, "max_episode_steps": 100, "batch_size": 4,
                  "batch_length": 10, "hidden": 32, "actor_hidden": 32, "belief_dim": 32,
                  "state_dim": 8, "imagination_horizon": 5, "eval_every": 400,
                  "eval_episodes": 1, "train_ratio": 0.1},
        "cpu": {"batch_size": 16, "hidden": 100, "belief_dim": 100, "actor_hidden": 100,
                "train_ratio": 0.5, "reward_scale": 0.1, "actor_lr": 1e-4, "value_lr": 2e-4,
                "entropy_weight": 0.3, "free_nats": 1.0},
        "pixels": {"pixels": True, "env_steps": 4000, "eval_every": 2000, "eval_episodes": 2,
                   "batch_size": 16, "hidden": 100, "belief_dim": 100, "actor_hidden": 100,
                   "cnn_channels": 16, "train_ratio": 1.0, "buffer_size": 10_000},
    }


# ----------------------------------------------------------------------------- env
def make_env(config: Config):
    """The task with action repeat; float observations, and 64x64 frames if ``pixels``."""
    env = GymEnv(config.env, from_pixels=config.pixels, pixels_only=False)
    transforms = [FrameSkipTransform(config.action_repeat)]
    if any(s.dtype == torch.float64 for s in env.observation_spec.values(True, True)):
        transforms.append(DoubleToFloat())
    if config.pixels:
        transforms += [ToTensorImage(in_keys=["pixels"]), ResizeImage(64, 64)]
    return TransformedEnv(env, Compose(*transforms))


# ----------------------------------------------------------------------------- model
def make_models(config: Config, env) -> dict[str, TensorDictModuleBase]:
    """World model (encoder, RSSM, decoder, reward), imagination env, actor and value."""
    obs_key = "pixels" if config.pixels else "observation"
    S, R, H = config.state_dim, config.belief_dim, config.hidden
    action_spec = env.action_spec
    if config.pixels:
        encoder = ObsEncoder(config.cnn_channels, in_channels=3)
        embed = encoder.out_features
        decoder = ObsDecoder(config.cnn_channels, latent_dim=S + R)
    else:
        obs_dim = env.observation_spec["observation"].shape[-1]
        encoder, embed = mlp(obs_dim, H, H, depth=2, activation=nn.ELU), H
        decoder = _LatentMLP(mlp(S + R, obs_dim, H, depth=2, activation=nn.ELU))
    nxt = lambda *keys: [("next", k) for k in keys]  # noqa: E731
    prior = RSSMPrior(action_spec, hidden_dim=H, rnn_hidden_dim=R, state_dim=S)
    posterior = RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=R, obs_embed_dim=embed)
    reward = _LatentMLP(mlp(S + R, 1, H, depth=2, activation=nn.ELU))
    rssm = RSSMRollout(
        TensorDictModule(prior, ["state", "belief", "action"],
                         nxt("prior_mean", "prior_std", "_", "belief")),
        TensorDictModule(posterior, nxt("belief", "embedding"),
                         nxt("posterior_mean", "posterior_std", "state")))
    world_model = TensorDictSequential(
        TensorDictModule(encoder, nxt(obs_key), nxt("embedding")), rssm,
        TensorDictModule(decoder, nxt("state", "belief"), nxt("reco_" + obs_key)),
        TensorDictModule(reward, nxt("state", "belief"), nxt("reward")))
    imagination = DreamerEnv(
        TensorDictSequential(
            TensorDictModule(prior, ["state", "belief", "action"],
                             ["prior_mean", "prior_std", "state", "belief"]),
            TensorDictModule(reward, ["state", "belief"], ["reward"])),
        (S,), (R,), obs_decoder=TensorDictModule(decoder, ["state", "belief"], ["reco_" + obs_key]),
        action_spec=action_spec)
    actor = ProbabilisticActor(
        TensorDictModule(DreamerActor(action_spec.shape[-1], num_cells=config.actor_hidden,
                                      in_features=S + R), ["state", "belief"], ["loc", "scale"]),
        in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high,
                             "tanh_loc": True, "upscale": 5.0},
        spec=action_spec, default_interaction_type=ExplorationType.DETERMINISTIC,
        return_log_prob=config.entropy_weight > 0, log_prob_key="action_log_prob")
    value = TensorDictModule(_LatentMLP(mlp(S + R, 1, config.actor_hidden, depth=3, activation=nn.ELU)),
                             ["state", "belief"], ["state_value"])
    return {"world_model": world_model, "imagination": imagination, "actor": actor,
            "value": value, "encoder": encoder, "prior": prior, "posterior": posterior,
            "decoder": decoder}


class _LatentMLP(nn.Module):
    """An MLP on the concatenated latent ``[state, belief]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, belief], -1))


def make_policy(models: dict, config: Config, noise: float) -> DreamerPolicy:
    """The actor on the real env, with RSSM filtering of its observations."""
    return DreamerPolicy(models["encoder"], models["prior"], models["posterior"], models["actor"],
                         models["imagination"].action_spec,
                         "pixels" if config.pixels else "observation", noise)


# ----------------------------------------------------------------------------- recipe
def train(config: Config) -> dict:
    """Run Dreamer; returns the final metrics (also written to ``summary.json``)."""
    run = Run(NAME, config)
    config = run.config
    env = make_env(config)
    obs_key = "pixels" if config.pixels else "observation"
    models = make_models(config, env)
    world_model, imagination = models["world_model"], models["imagination"]
    actor, value = models["actor"], models["value"]
    model_loss = DreamerModelLoss(world_model, free_nats=config.free_nats)
    model_loss.set_keys(pixels=("next", obs_key), reco_pixels=("next", "reco_" + obs_key))
    actor_loss = DreamerActorLoss(actor, value, imagination, gamma=config.gamma, lmbda=config.lmbda,
                                  imagination_horizon=config.imagination_horizon,
                                  entropy_weight=config.entropy_weight)
    value_loss = DreamerValueLoss(value, gamma=config.gamma)
    optims = {"model": torch.optim.Adam(world_model.parameters(), lr=config.model_lr),
              "actor": torch.optim.Adam(actor.parameters(), lr=config.actor_lr),
              "value": torch.optim.Adam(value.parameters(), lr=config.value_lr)}
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(config.buffer_size),
        sampler=SliceSampler(slice_len=config.batch_length, traj_key="episode", strict_length=True),
        batch_size=config.batch_size * config.batch_length)
    steps_per_episode = config.max_episode_steps // config.action_repeat

    step, episode, updates = 0, 0, 0
    state = run.load()
    if state is not None:
        for name in ("world_model", "actor", "value"):
            models[name].load_state_dict(state[name])
        for name, optim in optims.items():
            optim.load_state_dict(state["optim_" + name])
        buffer.load_state_dict(state["buffer"])
        step, episode, updates = state["step"], state["episode"], state["updates"]

    def save() -> None:
        run.save({"step": step, "episode": episode, "updates": updates, "buffer": buffer.state_dict(),
                  **{n: models[n].state_dict() for n in ("world_model", "actor", "value")},
                  **{"optim_" + n: o.state_dict() for n, o in optims.items()}})

    def update() -> dict:
        batch = buffer.sample().reshape(config.batch_size, config.batch_length)
        metrics = {}
        losses, latent = model_loss(batch)
        step_optim("model", losses["loss_model_kl"] + losses["loss_model_reco"]
                   + losses["loss_model_reward"], world_model)
        losses_a, fake = actor_loss(latent.get("next"))
        step_optim("actor", losses_a["loss_actor"], actor)
        losses_v, _ = value_loss(fake)
        step_optim("value", losses_v["loss_value"], value)
        for td in (losses, losses_a, losses_v):
            metrics.update({f"train/{k}": v.item() for k, v in td.items()})
        return metrics

    def step_optim(name, loss, module) -> None:
        optims[name].zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        optims[name].step()

    policy = make_policy(models, config, config.exploration_noise)
    bar = run.progress(config.env_steps, "env steps")
    last_eval = step // config.eval_every
    while step < config.env_steps:
        env.set_seed(config.seed * 100_000 + episode)
        policy.reset()
        random = episode < config.seed_episodes
        with set_exploration_type(ExplorationType.RANDOM):
            data = env.rollout(steps_per_episode, None if random else policy,
                               break_when_any_done=False)
        data = data.exclude("loc", "scale", "action_log_prob")
        if episode == 0:
            check_buffer_memory(data[0], config.buffer_size)
        data.set("episode", torch.full(data.shape, episode))
        episode_return = data["next", "reward"].sum().item()
        data["next", "reward"] = data["next", "reward"] * config.reward_scale
        buffer.extend(data)
        episode += 1
        step += data.numel() * config.action_repeat
        bar.update(data.numel() * config.action_repeat)
        metrics = {"train/episode_return": episode_return}
        if episode >= config.seed_episodes:
            n_updates = max(1, round(config.train_ratio * data.numel()))
            for _ in range(n_updates):
                metrics.update(update())
            updates += n_updates
            metrics["train/updates"] = updates
        if step // config.eval_every > last_eval:
            last_eval = step // config.eval_every
            metrics["eval/return"] = sum(evaluate_policy(models, env, config)) / config.eval_episodes
        run.log(metrics, step)
        run.progress_postfix(run.latest)
        if run.checkpoint_due(step) or step >= config.env_steps:
            save()
    bar.close()

    returns = evaluate_policy(models, env, config, episodes=max(config.eval_episodes, 5))
    eval_return = sum(returns) / len(returns)
    run.log({"eval/final_return": eval_return}, step)
    plot_imagination(models, env, config, run.path("imagined_vs_real.png"))
    return run.finish({"env_steps": step, "eval/return": eval_return, "eval/returns": returns,
                       "updates": updates})


def check_buffer_memory(transition, capacity: int) -> None:
    """Fail early when ``capacity`` transitions like this one would not fit in memory."""
    import os

    need = capacity * sum(v.numel() * v.element_size() for v in transition.values(True, True))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.5 * total:
        raise ValueError(
            f"dreamer: buffer_size={capacity} transitions of {need / capacity / 1e3:.0f} kB need "
            f"{need / 1e9:.1f} GB, more than half of this machine's {total / 1e9:.0f} GB; lower "
            "buffer_size (the `pixels` preset uses 10000).")


@torch.no_grad()
def evaluate_policy(models, env, config: Config, episodes: int | None = None) -> list[float]:
    """Returns of evaluation episodes (the actor's mode, no noise), fixed start states."""
    policy = make_policy(models, config, 0.0)
    returns = []
    for i in range(episodes or config.eval_episodes):
        env.set_seed(10_000 + 1000 * config.seed + i)
        policy.reset()
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(config.max_episode_steps // config.action_repeat, policy)
        returns.append(rollout["next", "reward"].sum().item())
    return returns


def evaluate(config: Config) -> dict:
    """Evaluate the checkpoint in ``config.run_dir`` (used by ``reverie eval``)."""
    state = load_checkpoint(f"{config.run_dir}/checkpoint.pt")
    if state is None:
        raise FileNotFoundError(f"No checkpoint.pt in {config.run_dir}.")
    env = make_env(config)
    models = make_models(config, env)
    for name in ("world_model", "actor", "value"):
        models[name].load_state_dict(state[name])
    returns = evaluate_policy(models, env, config)
    return {"eval/return": sum(returns) / len(returns), "eval/returns": returns,
            "env_steps": state["step"]}


@torch.no_grad()
def plot_imagination(models, env, config: Config, path, context: int = 5, horizon: int = 30) -> None:
    """Real vs imagined observations on a fresh episode: filter ``context`` steps, then
    imagine ``horizon`` steps open loop with the real actions and decode them."""
    obs_key = "pixels" if config.pixels else "observation"
    env.set_seed(77_000 + config.seed)
    policy = make_policy(models, config, config.exploration_noise)
    with set_exploration_type(ExplorationType.RANDOM):
        real = env.rollout(context + horizon, policy, break_when_any_done=False)
    truth, imagined = imagine_open_loop(models["world_model"], models["prior"], models["decoder"],
                                        real, context, obs_key)
    plot_imagined_vs_real(truth, imagined, path, context=context,
                          title=f"Dreamer {config.env}: real vs imagined, seed {config.seed}")
