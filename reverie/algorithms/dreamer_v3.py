"""Recipe ``dreamer_v3``: DreamerV3 (Hafner et al., 2023, https://arxiv.org/abs/2301.04104).

Reads top to bottom: config -> env -> models -> agent (its update maths);
:func:`reverie.training.train` runs the loop (collection, buffer, evaluation, checkpoints).

1. Collect ``random_steps`` env steps with uniform random actions.
2. Loop: collect one episode's worth of steps per env with the actor (posterior filtering
   of the RSSM on the real observations, actions sampled from the actor), add them to a
   replay buffer of episodes, then do ``train_ratio * steps / (batch_size * batch_length)``
   updates (``train_ratio`` = replayed steps per agent step, the paper's replay ratio),
   each on ``batch_size`` slices of ``batch_length`` consecutive steps (which may cross
   episodes, as the authors replay: ``is_init`` resets the RSSM there):

   * world model: :class:`~reverie.objectives.DreamerV3ModelLoss` (KL balancing with free
     bits, symlog reconstruction, two-hot reward, continue);
   * actor: :class:`~reverie.objectives.DreamerV3ActorLoss` on ``horizon``-step
     trajectories imagined from every posterior latent (percentile return normalisation,
     REINFORCE for discrete and reparameterised gradients for continuous actions, entropy
     ``3e-4``);
   * critic: :class:`~reverie.objectives.DreamerV3ValueLoss` (two-hot λ-return targets, slow
     critic regulariser) plus :class:`~reverie.objectives.DreamerV3ReplayValueLoss`; the slow
     critic follows with ``tau = 0.02``.

   Each of the three has a :class:`~reverie.optim.LaProp` optimiser (lr ``4e-5``, eps
   ``1e-20``, linear warm-up over ``warmup`` updates) with adaptive gradient clipping at
   ``0.3`` (the paper's settings; per-parameter state, so three optimisers equal the authors'
   single one).
3. Evaluate every ``eval_every`` env steps and at the end with the actor's mode; draw the
   world model's open-loop imagination against real observations
   (``diagnostics/imagined_vs_real.png``; for pixels also ``imagined_vs_real.mp4``, ``.gif``
   without an MP4 encoder).

Observations: ``pixels=False`` uses the state vector (symlog inputs, MLP encoder/decoder);
``pixels=True`` renders 64x64 frames (the authors' conv encoder/decoder). Continuous actions
are rescaled to ``[-1, 1]`` (:class:`~torchrl.envs.ActionScaling`); discrete action spaces
use one-hot actions (e.g. ``CartPole-v1``).

Sizes (``--preset``): ``XS``, ``S``, ``M`` are the paper's (GRU units, hidden units, CNN
depth, MLP layers: 256/256/24/1, 512/512/32/2, 1024/640/48/3) with 32 x 32 latents and
8 GRU blocks; the defaults are ``S``. ``cpu`` is sized for one CPU core and a budget of
20,000 env steps: ``XS`` with 16 x 16 latents, imagination from the last 16 steps of each
sequence (a quarter of the starts), bfloat16 autocast (about 1.8x faster on CPUs with AMX or
AVX-512 BF16), and a learning rate of 3e-4 with 100 warm-up updates (the paper's 4e-5 with
1,000 barely moves a small model in the few thousand updates such a budget allows: a
CartPole run's actor had not started to learn after 1,000 updates). With it, CartPole-v1
reached an evaluation return of 500 after 2,500 env steps (375 updates; 3 seeds are not run yet).
``debug`` is a 30-second smoke run.

Defaults that differ from the paper: the replay ratio (paper: 512 for proprioceptive DMC;
here 256, halving the update cost per env step) and the random prefill (the authors have
none; here 1,000 env steps so the first updates see more than one episode).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import gymnasium as gym
import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import OneHot
from torchrl.data.replay_buffers import SliceSampler
from torchrl.envs import (
    ActionScaling,
    Compose,
    DoubleToFloat,
    FrameSkipTransform,
    ToTensorImage,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType
from torchrl.modules import OneHotCategorical, ProbabilisticActor

from reverie import training
from reverie.diagnostics import write_latent_diagnostics
from reverie.diagnostics.figures import observation_names
from reverie.envs import WorldModelEnv
from reverie.envs.image import ResizeImage
from reverie.envs.tasks import make_task_env
from reverie.modules import (
    ClippedNormal,
    DreamerPolicy,
    DreamerV3ContinuousActor,
    DreamerV3DiscreteActor,
    DreamerV3ImageDecoder,
    DreamerV3ImageEncoder,
    DreamerV3MLP,
    RSSMPosteriorV3,
    RSSMPriorV3,
    RSSMRolloutV3,
    RSSMWorldModel,
    SymExpTwoHot,
)
from reverie.objectives import (
    DreamerV3ActorLoss,
    DreamerV3ModelLoss,
    DreamerV3ReplayValueLoss,
    DreamerV3ValueLoss,
    ReturnNormalizer,
    ema_update_,
    symexp,
    symlog,
    two_hot_mean,
)
from reverie.optim import LaProp, adaptive_clip_grad_
from reverie.runs import RunConfig, cfg
from reverie.training import (
    Agent,
    CountsUpdates,
    Schedule,
    budget_capacity,
    make_replay_buffer,
)

NAME = "dreamer_v3"
STREAM_KEY = "stream"  # one replay stream: slices may cross episodes

_SIZES = {  # deter (GRU), hidden, cnn depth, MLP layers
    "XS": {"deter": 256, "hidden": 256, "cnn_depth": 24, "mlp_layers": 1},
    "S": {"deter": 512, "hidden": 512, "cnn_depth": 32, "mlp_layers": 2},
    "M": {"deter": 1024, "hidden": 640, "cnn_depth": 48, "mlp_layers": 3},
}


@dataclass
class Config(RunConfig):
    """DreamerV3: discrete-latent RSSM, symlog/two-hot predictions, actor-critic in imagination."""

    env: str = cfg("Pendulum-v1", "Gymnasium task (continuous or discrete actions).")
    env_steps: int = cfg(20_000, "Real environment steps in total (action repeats included).", low=1)
    pixels: bool = cfg(False, "Learn from 64x64 rendered frames instead of the state vector.")
    action_repeat: int = cfg(1, "Env steps per agent action (rewards summed).", low=1)
    max_episode_steps: int = cfg(0, "Env steps per episode (0: the task's own time limit; else at "
                                 "least action_repeat).", low=0)
    random_steps: int = cfg(1000, "Env steps of uniform random actions collected first (0: none).",
                            low=0)
    train_ratio: float = cfg(256.0, "Replayed steps per agent step (batch_size * batch_length per update).",
                             low=0, low_open=True)
    batch_size: int = cfg(16, "Sequences per update.", low=1)
    batch_length: int = cfg(64, "Steps per sequence (at most buffer_size).", low=2)
    deter: int = cfg(512, "GRU units (the deterministic belief).", low=1)
    hidden: int = cfg(512, "Hidden units of the RSSM and of every MLP.", low=1)
    stoch: int = cfg(32, "Categorical latents.", low=1)
    classes: int = cfg(32, "Classes per categorical latent.", low=2)
    blocks: int = cfg(8, "Blocks of the block-diagonal GRU (divides deter).", low=1)
    mlp_layers: int = cfg(2, "Hidden layers of the encoder, decoder, heads, actor and critic.", low=1)
    cnn_depth: int = cfg(32, "Filters of the first convolution (pixels).", low=1)
    unimix: float = cfg(0.01, "Uniform mix of the latent and action categoricals, below 1.", low=0,
                        high=1)
    horizon: int = cfg(15, "Imagined steps per actor/critic update.", low=1)
    imagine_last: int = cfg(0, "Imagine from the posterior latents of the last this many steps of each "
                            "sequence (0: all batch_length; the authors' imag_last).", low=0)
    gamma: float = cfg(1 - 1 / 333, "Discount (paper: 1 - 1/333).", low=0, high=1, low_open=True)
    lmbda: float = cfg(0.95, "Lambda of the lambda-returns.", low=0, high=1)
    entropy_weight: float = cfg(3e-4, "Actor entropy regulariser.", low=0)
    free_nats: float = cfg(1.0, "Free bits of the summed KL, per step.", low=0)
    dyn_weight: float = cfg(1.0, "Weight of the dynamics KL (trains the prior).", low=0)
    rep_weight: float = cfg(0.1, "Weight of the representation KL (trains the posterior).", low=0)
    replay_value_weight: float = cfg(0.3, "Weight of the critic loss on replayed sequences.", low=0)
    slow_critic_rate: float = cfg(0.02, "EMA rate of the slow critic per update.", low=0, high=1)
    slow_critic_weight: float = cfg(1.0, "Weight of the slow-critic regulariser.", low=0)
    actor_gradient: Literal["auto", "reinforce", "dynamics"] = cfg(
        "auto", "Actor gradient: auto = dynamics (reparameterised) for continuous, reinforce for discrete actions.")
    precision: Literal["float32", "bfloat16"] = cfg(
        "float32", "Compute dtype of the update's matrix products (bfloat16: torch.autocast, as the "
        "authors compute; parameters and optimiser state stay float32).")
    lr: float = cfg(4e-5, "LaProp learning rate of the world model, actor and critic.", low=0,
                    low_open=True)
    eps: float = cfg(1e-20, "LaProp epsilon.", low=0, low_open=True)
    agc: float = cfg(0.3, "Adaptive gradient clipping threshold (per parameter tensor).", low=0,
                     low_open=True)
    warmup: int = cfg(1000, "Updates of linear learning-rate warm-up (0: none).", low=0)
    eval_every: int = cfg(5000, "Evaluate every this many env steps (0: only at the end).", low=0)
    eval_episodes: int = cfg(5, "Episodes per evaluation.", low=1)
    buffer_size: int = cfg(1_000_000, "Replay capacity (agent steps), at most what fits in buffer_gb.", low=1)
    buffer_gb: float = cfg(4.0, "Replay memory budget in GB: the buffer holds buffer_size transitions or as "
                           "many as fit in it, whichever is fewer (a 64x64 RGB frame takes 49 kB: about "
                           "81,000 in 4 GB; a state transition ~50 bytes).", low=0, low_open=True)
    checkpoint_every: int = cfg(2000, "Checkpoint every this many env steps (0: only at the end).",
                                low=0)

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        **_SIZES,
        "cpu": {**_SIZES["XS"], "stoch": 16, "classes": 16, "imagine_last": 16,
                "precision": "bfloat16", "lr": 3e-4, "warmup": 100},
        "debug": {"env_steps": 400, "random_steps": 200, "max_episode_steps": 100, "batch_size": 2,
                  "batch_length": 8, "deter": 32, "hidden": 16, "stoch": 4, "classes": 4,
                  "blocks": 4, "mlp_layers": 1, "cnn_depth": 4, "horizon": 4, "train_ratio": 8.0,
                  "eval_every": 200, "eval_episodes": 1, "warmup": 10, "buffer_size": 10_000,
                  "checkpoint_every": 100},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deter % self.blocks:
            raise ValueError(f"dreamer_v3: deter={self.deter} must be a multiple of blocks={self.blocks}.")
        if self.imagine_last == 1 or self.imagine_last > self.batch_length:
            raise ValueError(f"dreamer_v3: imagine_last={self.imagine_last}; use 0 (all steps) or 2.."
                             f"batch_length={self.batch_length} (the replay critic needs 2 steps).")
        if self.batch_length > self.buffer_size:
            raise ValueError(f"dreamer_v3: batch_length={self.batch_length} must be <= buffer_size="
                             f"{self.buffer_size} (a replayed sequence must fit in the buffer).")
        if 0 < self.max_episode_steps < self.action_repeat:
            raise ValueError(
                f"dreamer_v3: max_episode_steps={self.max_episode_steps} must be 0 (the task's "
                f"limit) or >= action_repeat={self.action_repeat} (an episode needs at least one "
                "agent step).")
        if self.unimix >= 1:
            raise ValueError(f"dreamer_v3: unimix={self.unimix} must be in [0, 1) (a weight of 1 "
                             "leaves only the uniform distribution).")


# ----------------------------------------------------------------------------- env
def make_env(config: Config, render: bool = False):
    """The task with action repeat, float observations, actions in ``[-1, 1]`` (continuous)
    and 64x64 frames if ``pixels`` (``render``: full-size frames for the evaluation video)."""
    env = make_task_env(config.env, from_pixels=config.pixels, render=render)
    transforms = [FrameSkipTransform(config.action_repeat)] if config.action_repeat > 1 else []
    if any(s.dtype == torch.float64 for s in env.observation_spec.values(True, True)):
        transforms.append(DoubleToFloat())
    if not isinstance(env.action_spec, OneHot):
        transforms.append(ActionScaling())
    if config.pixels:
        transforms += [ToTensorImage(in_keys=["pixels"]), ResizeImage(64, 64)]
    return TransformedEnv(env, Compose(*transforms)) if transforms else env


def episode_steps(config: Config) -> int:
    """Agent steps per episode: ``max_episode_steps`` (or the task's time limit) over the
    action repeat."""
    limit = config.max_episode_steps or gym.spec(config.env).max_episode_steps or 1000
    return max(1, limit // config.action_repeat)


# ----------------------------------------------------------------------------- models
class _Latent(nn.Module):
    """A network on the latent ``[state, belief]`` (``(*B, S*C + D)``): passed as the two
    tensors to networks whose first layer takes them apart (no concatenated copy), or
    concatenated (``concat=True``)."""

    def __init__(self, net: nn.Module, concat: bool = False) -> None:
        super().__init__()
        self.net, self.concat = net, concat

    def forward(self, state: torch.Tensor, belief: torch.Tensor):
        return self.net(torch.cat([state, belief], -1)) if self.concat else self.net(state, belief)


class _SymlogInput(nn.Module):
    """``net(symlog(x))``: the authors' vector encoder squashes its inputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(symlog(x))


class _Then(nn.Module):
    """``fn(head(state, belief))``: a head on the latent followed by a pure function, e.g. the
    decoded value ``two_hot_mean`` of a two-hot reward head, ``(*B, 1)``, or ``symexp`` of a
    symlog decoder's prediction (observation units)."""

    def __init__(self, head: nn.Module, fn) -> None:
        super().__init__()
        self.head, self.fn = head, fn

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        return self.fn(self.head(state, belief))


def make_models(config: Config, env, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """World model (encoder, RSSM, decoder, reward and continue heads), imagination env,
    actor, critic and slow critic."""
    obs_key = "pixels" if config.pixels else "observation"
    S, D, H, L = config.stoch * config.classes, config.deter, config.hidden, config.mlp_layers
    action_spec = env.action_spec
    A = action_spec.shape[-1]
    if config.pixels:
        encoder = DreamerV3ImageEncoder(config.cnn_depth, in_channels=3)
        decoder = _Latent(DreamerV3ImageDecoder(S + D, config.cnn_depth, belief_dim=D,
                                                blocks=config.blocks, hidden=H), concat=True)
    else:
        obs_dim = env.observation_spec["observation"].shape[-1]
        encoder = _SymlogInput(DreamerV3MLP(obs_dim, None, H, L))
        decoder = _Latent(DreamerV3MLP(S + D, obs_dim, H, L))
    embed = encoder.out_features if config.pixels else encoder.net.out_features
    nxt = lambda *keys: [("next", k) for k in keys]  # noqa: E731
    kw = {"stoch": config.stoch, "classes": config.classes, "unimix": config.unimix}
    prior = RSSMPriorV3(A, D, H, blocks=config.blocks, **kw)
    posterior = RSSMPosteriorV3(D, embed, H, **kw)
    reward = _Latent(SymExpTwoHot(S + D, H, L))
    cont = _Latent(DreamerV3MLP(S + D, 1, H, L))
    rssm = RSSMRolloutV3(
        TensorDictModule(prior, ["state", "belief", "action"], nxt("prior_logits", "state", "belief")),
        TensorDictModule(posterior, nxt("belief", "embedding"), nxt("posterior_logits", "state")))
    world_model = TensorDictSequential(
        TensorDictModule(encoder, nxt(obs_key), nxt("embedding")), rssm,
        TensorDictModule(decoder, nxt("state", "belief"), nxt("reco_" + obs_key)),
        TensorDictModule(reward, nxt("state", "belief"), nxt("reward_logits")),
        TensorDictModule(cont, nxt("state", "belief"), nxt("cont_logit")))
    latent_model = RSSMWorldModel(
        encoder, prior, posterior, _Then(reward, two_hot_mean),
        decoder=decoder if config.pixels else _Then(decoder, symexp),  # observation units
        obs_key=obs_key)
    imagination = WorldModelEnv(latent_model, action_spec=action_spec, device=device)
    if isinstance(action_spec, OneHot):
        head = TensorDictModule(_Latent(DreamerV3DiscreteActor(S + D, A, H, L, unimix=config.unimix)),
                                ["state", "belief"], ["logits"])
        actor = ProbabilisticActor(head, in_keys=["logits"], out_keys=["action"],
                                   distribution_class=OneHotCategorical, spec=action_spec,
                                   default_interaction_type=ExplorationType.DETERMINISTIC)
    else:
        head = TensorDictModule(_Latent(DreamerV3ContinuousActor(S + D, A, H, L)),
                                ["state", "belief"], ["loc", "scale"])
        actor = ProbabilisticActor(head, in_keys=["loc", "scale"], out_keys=["action"],
                                   distribution_class=ClippedNormal, spec=action_spec,
                                   default_interaction_type=ExplorationType.DETERMINISTIC)
    critic = TensorDictModule(_Latent(SymExpTwoHot(S + D, H, L)), ["state", "belief"], ["value_logits"])
    slow_critic = copy.deepcopy(critic).requires_grad_(False)
    cont_model = TensorDictModule(cont, ["state", "belief"], ["cont_logit"])
    for module in (world_model, actor, critic, slow_critic):
        module.to(device)
    return {"world_model": world_model, "latent_model": latent_model,
            "imagination": imagination, "actor": actor,
            "critic": critic, "slow_critic": slow_critic, "cont": cont_model, "encoder": encoder,
            "prior": prior, "posterior": posterior, "decoder": decoder}


# ----------------------------------------------------------------------------- agent
class DreamerV3Agent(CountsUpdates, Agent):
    """World model, actor, critic and slow critic with their optimisers; the update is one
    DreamerV3 step per ``batch_size * batch_length`` replayed steps."""

    def __init__(self, config: Config, env, device: torch.device) -> None:
        super().__init__(device)
        self.config = config
        steps = episode_steps(config)
        envs = config.num_envs * max(config.collector_workers, 1)
        self.schedule = Schedule(
            total_steps=config.env_steps, frames_per_batch=steps * envs,
            random_steps=config.random_steps, max_episode_steps=steps,
            action_repeat=config.action_repeat, eval_every=config.eval_every,
            eval_episodes=config.eval_episodes)
        self.obs_key = "pixels" if config.pixels else "observation"
        self.models = make_models(config, env, device)  # a plain dict: modules are shared
        self.capacity = budget_capacity(config.buffer_size, config.buffer_gb, self.store(env.fake_tensordict()),
                                        NAME, at_least=config.batch_length)
        self.world_model, self.actor, self.critic, self.slow_critic = (
            self.models[k] for k in ("world_model", "actor", "critic", "slow_critic"))
        self.return_normalizer = ReturnNormalizer().to(device)
        imagination = self.models["imagination"]
        keys = {"image_keys": (self.obs_key,) if config.pixels else (),
                "vector_keys": () if config.pixels else (self.obs_key,)}
        # losses and policies share the modules' parameters: kept out of the state_dict
        self.losses = {
            "model": DreamerV3ModelLoss(self.world_model, dyn_weight=config.dyn_weight,
                                        rep_weight=config.rep_weight, free_nats=config.free_nats, **keys),
            "actor": DreamerV3ActorLoss(self.actor, self.critic, self.models["cont"], imagination,
                                        self.return_normalizer, horizon=config.horizon, gamma=config.gamma,
                                        lmbda=config.lmbda, entropy_weight=config.entropy_weight,
                                        actor_gradient=config.actor_gradient),
            "value": DreamerV3ValueLoss(self.critic, self.slow_critic,
                                        slow_weight=config.slow_critic_weight),
            "replay_value": DreamerV3ReplayValueLoss(self.critic, self.slow_critic, gamma=config.gamma,
                                                     lmbda=config.lmbda, weight=config.replay_value_weight,
                                                     slow_weight=config.slow_critic_weight)}
        self.optimizers = {name: LaProp(module.parameters(), lr=config.lr, eps=config.eps)
                           for name, module in (("model", self.world_model), ("actor", self.actor),
                                                ("critic", self.critic))}
        self.updates = 0
        self._policies = {explore: DreamerPolicy(self.models["encoder"], self.models["prior"],
                                                 self.models["posterior"], self.actor,
                                                 imagination.action_spec, self.obs_key)
                          for explore in (True, False)}

    def policy(self, explore: bool) -> DreamerPolicy:
        """The actor on real observations (the loop samples when exploring, takes the mode
        when evaluating)."""
        return self._policies[explore]

    def make_buffer(self):
        """Slices of ``batch_length`` consecutive stored steps that may cross episodes, as the
        authors replay (``is_init`` resets the RSSM where an episode starts; the losses cut
        returns at episode ends): short episodes, and their terminations, are replayed too,
        where slices kept inside one episode could never hold an episode shorter than
        ``batch_length``."""
        c = self.config
        sampler = SliceSampler(slice_len=c.batch_length, traj_key=STREAM_KEY, strict_length=True)
        return make_replay_buffer(self.capacity, c.batch_size * c.batch_length, self.device, sampler)

    def store(self, batch):
        """Transitions without the actor's outputs, in one replay stream (``stream`` = 0);
        pixel runs store each frame once (the model reads ``("next", pixels)``)."""
        data = batch.exclude("loc", "scale", "logits", "step_count", ("next", "step_count"))
        if self.config.pixels:
            data = data.exclude("pixels")
        data.set(STREAM_KEY, torch.zeros(data.shape, dtype=torch.int8))
        return data

    def update(self, buffer, batch) -> dict:
        """``train_ratio`` replayed steps per agent step collected, ``batch_size *
        batch_length`` per update: world model, actor, then critic and slow critic."""
        c = self.config
        n = max(1, round(c.train_ratio * batch.numel() / (c.batch_size * c.batch_length)))
        metrics: dict[str, torch.Tensor] = {}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                  enabled=c.precision == "bfloat16")
        for _ in range(n):
            sample = buffer.sample().reshape(c.batch_size, c.batch_length)
            with autocast:
                model, data = self.losses["model"](sample)
            self._step("model", model, self.world_model)
            last = data[:, -(c.imagine_last or c.batch_length):]  # (B, K) starts
            with autocast:
                actor, imagined = self.losses["actor"](last.get("next"))
            self._step("actor", actor, self.actor)
            with autocast:
                value, _ = self.losses["value"](imagined)
                bootstrap = imagined["lambda_target"][:, 0].reshape(*last.shape, 1)
                replay, _ = self.losses["replay_value"](last, bootstrap)
            self._step("critic", value.update(replay), self.critic)
            ema_update_(self.slow_critic.parameters(), self.critic.parameters(), c.slow_critic_rate)
            self.updates += 1
            for td in (model, actor, value):
                metrics.update({f"train/{k}": v.detach() for k, v in td.items()})
        return {**{k: v.item() for k, v in metrics.items()}, "train/updates": self.updates}

    def _step(self, name: str, losses, module: nn.Module) -> None:
        """One LaProp step on the sum of the ``loss_*`` terms, after warm-up scaling of the
        learning rate and adaptive gradient clipping."""
        optim = self.optimizers[name]
        for group in optim.param_groups:
            group["lr"] = self.config.lr * min(1.0, (self.updates + 1) / max(1, self.config.warmup))
        optim.zero_grad(set_to_none=True)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        adaptive_clip_grad_(module.parameters(), self.config.agc)
        optim.step()

    def diagnose(self, env, out_dir, seed: int, title: str = "") -> dict:
        """Real vs imagined observations on a fresh episode (5 filtered steps, then 30 imagined
        open loop with the real actions): curves, or frames and a GIF for pixels."""
        write_latent_diagnostics(
            env, self.policy(explore=True), self.models["latent_model"], self.obs_key, out_dir,
            seed, device=self.device,
            title=f"{title or NAME}: real vs imagined, open loop",
            names=None if self.config.pixels else observation_names(self.config.env, env.observation_spec[
                "observation"].shape[-1]),
            video=self.config.pixels and self.config.video)
        return {}


def make_agent(config: Config, env, device: torch.device) -> DreamerV3Agent:
    return DreamerV3Agent(config, env, device)


def train(config: Config) -> dict:
    """Run DreamerV3 with the shared loop; returns the final metrics (also in ``summary.json``)."""
    return training.train(NAME, config, make_env, make_agent)
