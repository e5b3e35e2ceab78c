"""Recipe ``dreamer``: Dreamer v1 (Hafner et al., 2019, https://arxiv.org/abs/1912.01603).

Reads top to bottom: config -> env -> world model -> agent (its update maths);
:func:`reverie.training.train` runs the loop (collection, buffer, evaluation, checkpoints).

1. Collect ``seed_episodes`` episodes with uniform random actions.
2. Loop: collect one episode per env with the actor (posterior filtering of the RSSM on the
   real observations, Gaussian exploration noise; a TorchRL collector over ``num_envs``
   envs and ``collector_workers`` processes), add them to a replay buffer of episodes,
   then do ``train_ratio * steps`` updates, each on ``batch_size`` slices of
   ``batch_length`` steps (TorchRL's ``SliceSampler`` on the episode ids: slices never
   cross episodes): world model (:class:`~reverie.objectives.DreamerModelLoss`), then
   actor and value on trajectories imagined from every posterior latent
   (:class:`~reverie.objectives.DreamerActorLoss`, :class:`~reverie.objectives.DreamerValueLoss`).
3. Evaluate every ``eval_every`` env steps and at the end (mean action, no noise); draw
   imagined vs real observations (``diagnostics/imagined_vs_real.png``; decoded frames
   for pixel runs).

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
from torchrl.data.replay_buffers import SliceSampler
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    FrameSkipTransform,
    ToTensorImage,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType
from torchrl.modules import ProbabilisticActor, TanhNormal

from reverie import training
from reverie.diagnostics import write_latent_diagnostics
from reverie.diagnostics.figures import observation_names
from reverie.envs import WorldModelEnv
from reverie.envs.image import ResizeImage
from reverie.envs.tasks import make_task_env
from reverie.modules import (
    DreamerActor,
    DreamerPolicy,
    ObsDecoder,
    ObsEncoder,
    RSSMPosterior,
    RSSMPrior,
    RSSMRollout,
    RSSMWorldModel,
    mlp,
)
from reverie.objectives import DreamerActorLoss, DreamerModelLoss, DreamerValueLoss
from reverie.runs import RunConfig, cfg
from reverie.training import (
    EPISODE_KEY,
    Agent,
    CountsUpdates,
    Schedule,
    budget_capacity,
    make_replay_buffer,
)
from reverie.training.checks import require_continuous_actions

NAME = "dreamer"


@dataclass
class Config(RunConfig):
    """Dreamer v1: RSSM world model, actor and value learned in latent imagination."""

    env_steps: int = cfg(20_000, "Real environment steps in total (action repeats included).", low=1)
    pixels: bool = cfg(False, "Learn from 64x64 rendered frames instead of the state vector.")
    action_repeat: int = cfg(2, "Env steps per agent action (rewards summed).", low=1)
    max_episode_steps: int = cfg(200, "Env steps per episode (at least action_repeat).", low=1)
    seed_episodes: int = cfg(5, "Episodes of uniform random actions collected first.", low=1)
    train_ratio: float = cfg(0.2, "Gradient updates per agent step collected (at least one update "
                             "per batch).", low=0, low_open=True)
    batch_size: int = cfg(50, "Sequences per update.", low=1)
    batch_length: int = cfg(50, "Steps per sequence (at most buffer_size).", low=1)
    state_dim: int = cfg(30, "Stochastic state size.", low=1)
    belief_dim: int = cfg(200, "Deterministic belief (GRU) size.", low=1)
    hidden: int = cfg(200, "Hidden units of the RSSM, MLP encoder/decoder and heads.", low=1)
    actor_hidden: int = cfg(400, "Hidden units of the actor and value MLPs.", low=1)
    cnn_channels: int = cfg(32, "Filters of the first pixel-encoder convolution (doubled per "
                            "layer; the decoder mirrors it).", low=1)
    imagination_horizon: int = cfg(15, "Imagined steps per actor/value update.", low=1)
    reward_scale: float = cfg(1.0, "Factor on stored rewards (the model, actor and value see "
                              "scaled rewards; logged returns stay in env units).", low=0,
                              low_open=True)
    gamma: float = cfg(0.99, "Discount.", low=0, high=1, low_open=True)
    lmbda: float = cfg(0.95, "Lambda of the lambda-returns.", low=0, high=1)
    free_nats: float = cfg(3.0, "KL free nats.", low=0)
    entropy_weight: float = cfg(0.0, "Weight of the actor's entropy bonus (0: Dreamer v1); keeps "
                                "the tanh-Gaussian actor out of saturation.", low=0)
    model_lr: float = cfg(6e-4, "World-model Adam learning rate.", low=0, low_open=True)
    actor_lr: float = cfg(8e-5, "Actor Adam learning rate.", low=0, low_open=True)
    value_lr: float = cfg(8e-5, "Value Adam learning rate.", low=0, low_open=True)
    grad_clip: float = cfg(100.0, "Gradient-norm clip of every optimiser.", low=0, low_open=True)
    exploration_noise: float = cfg(0.3, "Std of Gaussian action noise while collecting (fraction of "
                                   "the action range; 0: none).", low=0)
    eval_every: int = cfg(2000, "Evaluate every this many env steps (0: only at the end).", low=0)
    eval_episodes: int = cfg(5, "Episodes per evaluation.", low=1)
    buffer_size: int = cfg(1_000_000, "Replay capacity (agent steps), at most what fits in buffer_gb.", low=1)
    buffer_gb: float = cfg(4.0, "Replay memory budget in GB: the buffer holds buffer_size transitions or as "
                           "many as fit in it, whichever is fewer (a 64x64 RGB frame takes 49 kB: about "
                           "81,000 in 4 GB; a state transition ~50 bytes).", low=0, low_open=True)
    checkpoint_every: int = cfg(2000, "Checkpoint every this many env steps (0: only at the end).",
                                low=0)

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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_episode_steps < self.action_repeat:
            raise ValueError(
                f"dreamer: max_episode_steps={self.max_episode_steps} must be >= action_repeat="
                f"{self.action_repeat} (an episode needs at least one agent step).")
        if self.batch_length > self.buffer_size:
            raise ValueError(f"dreamer: batch_length={self.batch_length} must be <= buffer_size="
                             f"{self.buffer_size} (a replayed sequence must fit in the buffer).")


# ----------------------------------------------------------------------------- env
def make_env(config: Config, render: bool = False):
    """The task with action repeat; float observations, and 64x64 frames if ``pixels``
    (``render``: full-size frames for the evaluation video)."""
    env = make_task_env(config.env, from_pixels=config.pixels, render=render)
    transforms = [FrameSkipTransform(config.action_repeat)]
    if any(s.dtype == torch.float64 for s in env.observation_spec.values(True, True)):
        transforms.append(DoubleToFloat())
    if config.pixels:
        transforms += [ToTensorImage(in_keys=["pixels"]), ResizeImage(64, 64)]
    return TransformedEnv(env, Compose(*transforms))


# ----------------------------------------------------------------------------- model
def make_models(config: Config, env, device: torch.device | str = "cpu") -> dict[str, TensorDictModuleBase]:
    """World model (encoder, RSSM, decoder, reward) as the training sequence model and as
    an :class:`~reverie.modules.RSSMWorldModel` (``latent_model``, the same modules) that
    the imagination env (:class:`~reverie.envs.WorldModelEnv`) and the diagnostics use;
    actor and value."""
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
    latent_model = RSSMWorldModel(encoder, prior, posterior, reward, decoder=decoder,
                                  obs_key=obs_key)
    imagination = WorldModelEnv(latent_model, action_spec=action_spec, device=device)
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
    for module in (world_model, actor, value):
        module.to(device)
    return {"world_model": world_model, "latent_model": latent_model,
            "imagination": imagination, "actor": actor,
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


# ----------------------------------------------------------------------------- agent
class DreamerAgent(CountsUpdates, Agent):
    """World model, actor and value with their optimisers; the update is one Dreamer step."""

    def __init__(self, config: Config, env, device: torch.device) -> None:
        super().__init__(device)
        self.config = config
        steps = config.max_episode_steps // config.action_repeat  # agent steps per episode
        envs = config.num_envs * max(config.collector_workers, 1)
        self.schedule = Schedule(
            total_steps=config.env_steps, frames_per_batch=steps * envs,
            random_steps=config.seed_episodes * config.max_episode_steps,
            max_episode_steps=steps, action_repeat=config.action_repeat,
            eval_every=config.eval_every, eval_episodes=config.eval_episodes)
        self.obs_key = "pixels" if config.pixels else "observation"
        self.models = make_models(config, env, device)  # a plain dict: modules are shared
        self.world_model, self.actor, self.value = (self.models[k] for k in ("world_model", "actor", "value"))
        self.capacity = budget_capacity(config.buffer_size, config.buffer_gb, self.store(env.fake_tensordict()),
                                        NAME, at_least=config.batch_length)
        model_loss = DreamerModelLoss(self.world_model, free_nats=config.free_nats)
        model_loss.set_keys(observation=("next", self.obs_key),
                            reconstruction=("next", "reco_" + self.obs_key))
        # losses and policies share the modules' parameters: kept out of the state_dict
        self.losses = {"model": model_loss, "value": DreamerValueLoss(self.value, gamma=config.gamma),
                       "actor": DreamerActorLoss(
                           self.actor, self.value, self.models["imagination"], gamma=config.gamma,
                           lmbda=config.lmbda, imagination_horizon=config.imagination_horizon,
                           entropy_weight=config.entropy_weight)}
        self.optimizers = {
            "model": torch.optim.Adam(self.world_model.parameters(), lr=config.model_lr),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr),
            "value": torch.optim.Adam(self.value.parameters(), lr=config.value_lr)}
        self.updates = 0
        self._policies = {explore: make_policy(self.models, config, config.exploration_noise if explore else 0.0)
                          for explore in (True, False)}

    def policy(self, explore: bool) -> DreamerPolicy:
        return self._policies[explore]

    def make_buffer(self):
        c = self.config
        sampler = SliceSampler(slice_len=c.batch_length, traj_key=EPISODE_KEY, strict_length=True)
        return make_replay_buffer(self.capacity, c.batch_size * c.batch_length, self.device, sampler)

    def store(self, batch):
        """Scaled rewards; neither the actor's distribution nor the root frames (the model
        reads ``("next", obs)``, so pixel runs store each frame once)."""
        data = batch.exclude("loc", "scale", "action_log_prob", "step_count", ("next", "step_count"))
        if self.config.pixels:
            data = data.exclude("pixels")
        data.set(("next", "reward"), data.get(("next", "reward")) * self.config.reward_scale)
        return data

    def update(self, buffer, batch) -> dict:
        """``train_ratio`` updates per agent step collected: world model, then actor and value
        on trajectories imagined from every posterior latent."""
        c = self.config
        metrics = {}
        for _ in range(max(1, round(c.train_ratio * batch.numel()))):
            sample = buffer.sample().reshape(c.batch_size, c.batch_length)
            losses, latent = self.losses["model"](sample)
            self._step("model", sum(losses.values()), self.world_model)
            losses_a, imagined = self.losses["actor"](latent.get("next"))
            self._step("actor", losses_a["loss_actor"], self.actor)
            losses_v, _ = self.losses["value"](imagined)
            self._step("value", losses_v["loss_value"], self.value)
            self.updates += 1
            for td in (losses, losses_a, losses_v):
                metrics.update({f"train/{k}": v.item() for k, v in td.items()})
        return {**metrics, "train/updates": self.updates}

    def _step(self, name: str, loss: torch.Tensor, module: nn.Module) -> None:
        optim = self.optimizers[name]
        optim.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
        optim.step()

    def diagnose(self, env, out_dir, seed: int, title: str = "") -> dict:
        """Real vs imagined observations on a fresh episode (5 filtered steps, then 30 imagined
        open loop with the real actions and decoded)."""
        write_latent_diagnostics(
            env, self.policy(explore=True), self.models["latent_model"], self.obs_key, out_dir,
            seed, device=self.device,
            title=f"{title or NAME}: real vs imagined, open loop",
            names=None if self.config.pixels else observation_names(self.config.env, env.observation_spec[
                "observation"].shape[-1]),
            video=self.config.pixels and self.config.video)
        return {}


def make_agent(config: Config, env, device: torch.device) -> DreamerAgent:
    """The agent, once the env is known to have bounded continuous actions."""
    require_continuous_actions(env, NAME, config.env, ' Use dreamer_v3 for discrete actions.')
    return DreamerAgent(config, env, device)


def train(config: Config) -> dict:
    """Run Dreamer with the shared loop; returns the final metrics (also in ``summary.json``)."""
    return training.train(NAME, config, make_env, make_agent)

