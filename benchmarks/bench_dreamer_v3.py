"""DreamerV3 learner update speed: Reverie vs TorchRL's published DreamerV3 vs SheepRL 0.8.4.

One learner update, as each implementation's training loop runs it between two replay
samples: world-model loss, backward and optimiser step; imagination of ``horizon`` = 15
steps from every posterior latent of the batch, actor loss (reparameterised dynamics
gradients: Pendulum's actions are continuous), backward and step; critic losses (imagined
lambda-returns, slow critic, replayed sequences where the implementation has them),
backward and step; the slow / target critic's EMA. B = 16 sequences of T = 64 steps of
Pendulum-v1 *states* (3-d observations, 1-d action), the paper's XS model (GRU 256 in 8
blocks, hidden 256, 32 x 32 latents, one hidden layer per MLP), on the CPU with one torch
thread each. Replay sampling and environment steps are not timed: each update reads one
fixed batch of real Pendulum transitions (uniform random actions).

Implementations (rows):

* ``reverie``: ``reverie.algorithms.dreamer_v3`` (``make_agent`` with the ``XS`` preset),
  timing ``agent.update`` on a buffer stand-in that returns the fixed batch; float32.
* ``reverie-bf16``: the same agent with the recipe's ``precision="bfloat16"``: its update
  runs the loss computations inside ``torch.autocast("cpu", dtype=torch.bfloat16)``
  (matrix products in bfloat16; parameters, gradients and optimiser state float32). The authors' JAX
  code computes in bfloat16 by default (``compute_dtype: bfloat16``); TorchRL's recipe
  enables bfloat16 autocast on CUDA only; SheepRL's default precision is ``32-true``.
* ``torchrl``: TorchRL 0.14's published DreamerV3: ``torchrl.modules`` (``RSSMPriorV3``
  with ``recurrent_model="block_gru"``, ``RSSMPosteriorV3``, ``RSSMRolloutV3``,
  ``DreamerV3MLP``, ``SymExpTwoHot``, ``WorldModelWrapper``),
  ``torchrl.envs.model_based.dreamer.DreamerEnv``, ``torchrl.objectives``
  (``DreamerV3ModelLoss``, ``DreamerV3ActorLoss``, ``DreamerV3ValueLoss``,
  ``DreamerV3Loss``) and ``torchrl.trainers.algorithms`` (``DreamerV3Optimizer``,
  ``DreamerV3OptimizationStepper``, eager as on the CPU by default), wired as TorchRL's
  ``sota-implementations/dreamer_v3`` builders wire them (``build_world_model``,
  ``build_actor``, ``build_value``, ``build_mb_env``, ``_build_learner``; those scripts
  need Hydra and OmegaConf, which Reverie's environment does not have, so the same calls
  are made here), with the XS sizes and ``use_reinforce=False`` (dynamics gradients for
  continuous actions, like the other two; the recipe's Pendulum preset uses REINFORCE).
  Timing ``stepper.step(None, batch)`` (forward, backward, optimiser, slow-value update).
* ``sheeprl``, ``sheeprl-bf16``: SheepRL 0.8.4 in its own virtual environment (it pins its
  own packages), run by ``benchmarks/_sheeprl_dreamer_v3_update.py`` with SheepRL's Hydra
  configs ``exp=dreamer_v3 algo=dreamer_v3_XS env=gym env.id=Pendulum-v1`` (state vector
  only), ``fabric.precision=32-true`` / ``bf16-mixed``; one update is its training loop's
  target-critic update plus ``dreamer_v3.train``. The helper stays alive as a subprocess and
  runs one update per request, so its rounds interleave with the others. Without the venv
  the rows are skipped with the install command.

Each implementation is built, warmed up with ``--warmup`` updates, then the rounds run
interleaved (the order rotates every round); the table gives the median, the spread (min
and max) and each row's ratio to the fastest non-Reverie row in the same precision class.
Parameter counts are printed side by side per component.

Usage::

    python benchmarks/bench_dreamer_v3.py                 # full run, writes the results
    python benchmarks/bench_dreamer_v3.py --quick         # tiny sizes, no files
    python benchmarks/bench_dreamer_v3.py --impls reverie torchrl --rounds 3

Results: ``docs/results/benchmarks/dreamer_v3_update.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import tensordict
import torch
import torchrl
from tensordict import TensorDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "results" / "benchmarks" / "dreamer_v3_update.json"
SHEEPRL_HELPER = Path(__file__).resolve().with_name("_sheeprl_dreamer_v3_update.py")
SHEEPRL_PYTHON = Path(os.environ.get("REVERIE_SHEEPRL_PYTHON", "/work/sheeprl_venv/bin/python"))
SHEEPRL_INSTALL = ("python3 -m venv /work/sheeprl_venv && /work/sheeprl_venv/bin/pip install "
                   "torch==2.13.0 && /work/sheeprl_venv/bin/pip install sheeprl==0.8.4")
IMPLS = ("reverie", "reverie-bf16", "torchrl", "sheeprl", "sheeprl-bf16")
ENV_NAME = "Pendulum-v1"


def log(line: str) -> None:
    print(line, flush=True)


def _short_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def _count(*modules) -> int:
    seen, total = set(), 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


# ============================================================================ data
def real_transitions(config, steps: int = 2000, episode: int = 200, seed: int = 0) -> TensorDict:
    """``steps`` Pendulum transitions with uniform random actions in ``[-1, 1]`` (Reverie's
    env: actions rescaled to the task's bounds), episodes of ``episode`` steps, with
    ``is_init`` and the episode id the replay sampler needs."""
    from torchrl.envs import Compose, InitTracker, StepCounter, TransformedEnv

    from reverie.algorithms import dreamer_v3

    env = TransformedEnv(dreamer_v3.make_env(config), Compose(StepCounter(episode), InitTracker()))
    env.set_seed(seed)
    torch.manual_seed(seed)
    data = env.rollout(steps, break_when_any_done=False)
    data["episode"] = torch.arange(steps) // episode
    return data.exclude("step_count", ("next", "step_count"))


# ============================================================================ Reverie
def reverie_config(preset: str, batch_size: int, batch_length: int):
    from reverie.algorithms import dreamer_v3

    config = dreamer_v3.Config(env=ENV_NAME)
    for key, value in dreamer_v3.Config.PRESETS[preset].items():
        setattr(config, key, value)
    config.batch_size, config.batch_length = batch_size, batch_length
    config.train_ratio = float(batch_size * batch_length)  # one update per 1-step batch
    return config


class _FixedBatch:
    """A replay-buffer stand-in: ``sample()`` returns (a copy of) one fixed batch."""

    def __init__(self, batch: TensorDict) -> None:
        self.batch = batch

    def sample(self) -> TensorDict:
        return self.batch.clone()


def build_reverie(config, data: TensorDict, bf16: bool, seed: int = 0) -> dict:
    """The recipe's agent; ``bf16``: its ``precision="bfloat16"`` (autocast of the loss
    computations inside ``update``), or an autocast around the update for a recipe
    without that option."""
    from reverie.algorithms import dreamer_v3

    outer_autocast = False
    if bf16:
        config = copy.copy(config)
        if hasattr(config, "precision"):
            config.precision = "bfloat16"
        else:
            outer_autocast = True
    torch.manual_seed(seed)
    agent = dreamer_v3.make_agent(config, dreamer_v3.make_env(config), torch.device("cpu"))
    buffer = agent.make_buffer()
    buffer.extend(agent.store(data))  # as the training loop stores a collected batch
    torch.manual_seed(seed + 1)
    fixed = _FixedBatch(buffer.sample())
    one_step = data[:1]  # agent.update does train_ratio * numel / (B * T) = 1 update

    def update() -> None:
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if outer_autocast
               else contextlib.nullcontext())
        with ctx:
            agent.update(fixed, one_step)

    m = agent.models
    world_model = _count(agent.world_model)
    parts = {"encoder": _count(m["encoder"]), "rssm": _count(m["prior"], m["posterior"]),
             "decoder": _count(m["decoder"]), "continue": _count(m["cont"])}
    parts["reward"] = world_model - sum(parts.values())
    params = {"world_model": world_model, "actor": _count(agent.actor),
              "critic": _count(agent.critic), "slow_critic": _count(agent.slow_critic),
              "parts": parts}
    return {"update": update, "params": params}


# ============================================================================ TorchRL
def build_torchrl(sizes: dict, data: TensorDict, batch_size: int, batch_length: int,
                  seed: int = 0) -> dict:
    """TorchRL's DreamerV3 learner from its public components, wired as its
    ``sota-implementations/dreamer_v3`` builders do (see the module docstring)."""
    from tensordict.nn import (
        InteractionType,
        ProbabilisticTensorDictModule,
        ProbabilisticTensorDictSequential,
        TensorDictModule,
        TensorDictSequential,
    )
    from torchrl.data import Unbounded
    from torchrl.envs import DoubleToFloat, GymEnv, InitTracker, StepCounter, TransformedEnv
    from torchrl.envs.model_based.dreamer import DreamerEnv
    from torchrl.envs.transforms import TensorDictPrimer
    from torchrl.modules import (
        DreamerV3MLP,
        RSSMPosteriorV3,
        RSSMPriorV3,
        RSSMRolloutV3,
        SymExpTwoHot,
        WorldModelWrapper,
    )
    from torchrl.modules.distributions.continuous import IndependentNormal
    from torchrl.objectives import (
        DreamerV3ActorLoss,
        DreamerV3Loss,
        DreamerV3ModelLoss,
        DreamerV3ValueLoss,
        symexp,
        symlog,
    )
    from torchrl.objectives.utils import SoftUpdate, ValueEstimators
    from torchrl.trainers.algorithms import DreamerV3OptimizationStepper, DreamerV3Optimizer

    torch.manual_seed(seed)
    S = sizes["stoch"] * sizes["classes"]
    D, H, L, bins = sizes["deter"], sizes["hidden"], sizes["mlp_layers"], 255
    obs_dim, action_dim = data["observation"].shape[-1], data["action"].shape[-1]
    net = {"num_cells": H, "norm_eps": 1e-4}
    nxt = lambda *keys: [("next", k) for k in keys]  # noqa: E731

    # --- world model (build_world_model, vector observations)
    encoder = DreamerV3MLP(obs_dim, None, depth=L, **net)
    prior_net = RSSMPriorV3(
        action_shape=torch.Size([action_dim]), hidden_dim=H, rnn_hidden_dim=D,
        num_categoricals=sizes["stoch"], num_classes=sizes["classes"], action_dim=action_dim,
        unimix=0.01, recurrent_model="block_gru", num_blocks=sizes["blocks"], num_layers=1,
        prior_num_layers=2, norm_eps=1e-4)
    posterior_net = RSSMPosteriorV3(
        hidden_dim=H, num_categoricals=sizes["stoch"], num_classes=sizes["classes"],
        rnn_hidden_dim=D, obs_embed_dim=H, unimix=0.01, use_rms_norm=True, num_layers=1,
        norm_eps=1e-4)
    decoder_trunk = DreamerV3MLP(S + D, None, depth=L, **net)
    decoder_head = torch.nn.Linear(H, obs_dim)
    reward_net = DreamerV3MLP(S + D, bins, depth=L, outscale=0.0, **net)
    continuation_net = DreamerV3MLP(S + D, 1, depth=L, **net)
    two_hot = SymExpTwoHot(bins)
    to_float = lambda x: x.float()  # noqa: E731
    world_model = TensorDictSequential(
        TensorDictModule(symlog, nxt("observation"), nxt("symlog_observation")),
        TensorDictModule(encoder, nxt("symlog_observation"), nxt("encoded_latents")),
        RSSMRolloutV3(
            TensorDictModule(prior_net, ["state", "belief", "action"],
                             nxt("prior_logits", "state", "belief")),
            TensorDictModule(posterior_net, nxt("belief", "encoded_latents"),
                             nxt("posterior_logits", "state")),
            reset_key="is_init"),
        TensorDictModule(lambda s, b: decoder_head(decoder_trunk(s, b)), nxt("state", "belief"),
                         nxt("reco_symlog_observation")),
        TensorDictModule(to_float, nxt("reco_symlog_observation"), nxt("reco_symlog_observation")),
        TensorDictModule(symexp, nxt("reco_symlog_observation"), nxt("reco_pixels")),
        TensorDictModule(reward_net, nxt("belief", "state"), nxt("reward_logits")),
        TensorDictModule(to_float, nxt("reward_logits"), nxt("reward_logits")),
        TensorDictModule(two_hot, nxt("reward_logits"), nxt("reward")),
        TensorDictModule(continuation_net, nxt("belief", "state"), nxt("continue_pred")),
        TensorDictModule(to_float, nxt("continue_pred"), nxt("continue_pred")))
    world_model.decoder_trunk, world_model.decoder_head = decoder_trunk, decoder_head

    # --- imagination (build_imagination_model, build_continuation_model, build_mb_env)
    imagination = WorldModelWrapper(
        TensorDictSequential(TensorDictModule(prior_net, ["state", "belief", "action"],
                                              ["_", "state", "belief"])),
        TensorDictSequential(
            TensorDictModule(reward_net, ["belief", "state"], ["reward_logits"]),
            TensorDictModule(to_float, ["reward_logits"], ["reward_logits"]),
            TensorDictModule(two_hot, ["reward_logits"], ["reward"])))
    continuation = TensorDictSequential(
        TensorDictModule(continuation_net, ["belief", "state"], ["continue_logits"]),
        TensorDictModule(to_float, ["continue_logits"], ["continue_logits"]),
        TensorDictModule(torch.nn.Sigmoid(), ["continue_logits"], ["continuation"]))
    real_env = TransformedEnv(GymEnv(ENV_NAME, device="cpu"))
    for transform in (DoubleToFloat(), StepCounter(max_steps=200), InitTracker()):
        real_env.append_transform(transform)
    primer = TransformedEnv(real_env, TensorDictPrimer(random=False, default_value=0,
                                                       state=Unbounded(S), belief=Unbounded(D)))
    mb_env = DreamerEnv(world_model=imagination, prior_shape=torch.Size([S]),
                        belief_shape=torch.Size([D]), device="cpu")
    mb_env.set_specs_from_env(primer)
    mb_env.observation_spec = mb_env.state_spec.clone()
    primer.close()

    # --- actor (build_actor: continuous) and critic (build_value)
    class Actor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = DreamerV3MLP(S + D, None, depth=L, **net)
            self.mean_head = torch.nn.Linear(H, action_dim)
            self.std_head = torch.nn.Linear(H, action_dim)
            with torch.no_grad():  # the recipe's 0.01 output scale
                self.mean_head.weight.mul_(0.01), self.std_head.weight.mul_(0.01)

        def forward(self, state, belief):
            hidden = self.backbone(belief, state)
            std = 0.9 * torch.sigmoid(self.std_head(hidden) + 2) + 0.1
            return torch.tanh(self.mean_head(hidden)).float(), std.float()

    actor_net = Actor()
    actor = ProbabilisticTensorDictSequential(
        TensorDictModule(actor_net, ["state", "belief"], ["loc", "scale"]),
        ProbabilisticTensorDictModule(
            in_keys=["loc", "scale"], out_keys=["action"],
            default_interaction_type=InteractionType.RANDOM, distribution_class=IndependentNormal,
            return_log_prob=True, log_prob_key="action_log_prob"))
    value_net = DreamerV3MLP(S + D, bins, depth=L, outscale=0.0, **net)
    value = TensorDictSequential(
        TensorDictModule(value_net, ["belief", "state"], ["state_value_logits"]),
        TensorDictModule(to_float, ["state_value_logits"], ["state_value_logits"]),
        TensorDictModule(SymExpTwoHot(bins), ["state_value_logits"], ["state_value"]))

    # --- losses, optimiser, stepper (_build_learner, _make_learner_update)
    gamma = 1 - 1 / 333
    model_loss = DreamerV3ModelLoss(
        world_model, num_reward_bins=bins, free_bits=1.0, kl_mode="separate", lambda_dynamic=1.0,
        lambda_representation=0.1, unimix=0.01, lambda_continue=1.0, reco_symlog=True,
        continue_target_scale=gamma, global_average=False, detach_output=False)
    model_loss.set_keys(pixels="observation", reco_pixels="reco_pixels")
    actor_loss = DreamerV3ActorLoss(
        actor, value, mb_env, continuation_model=continuation,
        imagination_horizon=sizes["horizon"], use_reinforce=False,
        return_normalization_rate=0.01, return_normalization_min_scale=1.0)
    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=gamma, lmbda=0.95)
    value_loss = DreamerV3ValueLoss(value, value_loss="two_hot", num_value_bins=bins,
                                    actor_loss=actor_loss, slow_critic_regularization=1.0)
    target_updater = SoftUpdate(value_loss, tau=0.02)
    trainable = (list(world_model.parameters()) + list(actor.parameters())
                 + list(value_loss.parameters()))
    optimizer = DreamerV3Optimizer(trainable, lr=4e-5, agc=0.3, eps=1e-20, warmup_steps=1000)
    loss_module = DreamerV3Loss(model_loss, actor_loss, value_loss, replay_value_loss_weight=0.3,
                                continuation_horizon=333.0, lmbda=0.95)
    stepper = DreamerV3OptimizationStepper(
        loss_module, optimizer, target_updater, compile_train_step=False, cudagraph=False,
        rssm_scan_unroll=None, warmup_steps=1, mixed_precision=False)

    # --- one fixed batch [B, T] of the same real transitions
    starts = torch.arange(batch_size) * (data.shape[0] // batch_size)
    index = (starts[:, None] + torch.arange(batch_length)[None]) % data.shape[0]
    batch = TensorDict({
        "action": data["action"][index], "is_init": data["is_init"][index],
        "state": torch.zeros(batch_size, batch_length, S),
        "belief": torch.zeros(batch_size, batch_length, D),
        "next": {k: data["next", k][index] for k in ("observation", "reward", "done",
                                                      "terminated")},
    }, [batch_size, batch_length])

    def update() -> None:
        stepper.step(None, batch.clone())

    parts = {"encoder": _count(encoder), "rssm": _count(prior_net, posterior_net),
             "decoder": _count(decoder_trunk, decoder_head), "reward": _count(reward_net),
             "continue": _count(continuation_net)}
    slow = sum(t.numel() for k, t in value_loss.target_value_model_params.items(True, True)
               if not str(k[-1] if isinstance(k, tuple) else k).endswith("bins"))
    params = {"world_model": _count(world_model), "actor": _count(actor),
              "critic": _count(value_net), "slow_critic": slow, "parts": parts}
    return {"update": update, "params": params}


# ============================================================================ SheepRL
class SheepRLRunner:
    """SheepRL's update in a long-lived subprocess of its own venv (line protocol of
    ``_sheeprl_dreamer_v3_update.py``)."""

    def __init__(self, python: Path, preset: str, batch_size: int, batch_length: int,
                 precision: str, threads: int, warmup: int) -> None:
        cmd = [str(python), str(SHEEPRL_HELPER), "--preset", preset, "--batch-size",
               str(batch_size), "--sequence-length", str(batch_length), "--precision", precision,
               "--threads", str(threads), "--warmup", str(warmup)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"SheepRL helper did not start: {self.info}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise RuntimeError(f"SheepRL helper exited: {' '.join(err.split()[-60:])}")
        return json.loads(line)

    def update(self) -> float:
        self.proc.stdin.write("run 1\n")
        self.proc.stdin.flush()
        return self._read()["times"][0]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def build_sheeprl(python: Path, preset: str, batch_size: int, batch_length: int, bf16: bool,
                  threads: int, warmup: int) -> dict:
    if not python.exists():
        raise FileNotFoundError(
            f"no SheepRL venv at {python} (set REVERIE_SHEEPRL_PYTHON or --sheeprl-python); "
            f"install it with: {SHEEPRL_INSTALL}")
    runner = SheepRLRunner(python, preset, batch_size, batch_length,
                           "bf16-mixed" if bf16 else "32-true", threads, warmup)
    info = runner.info
    names = {"encoder": "encoder", "rssm": "rssm", "observation_model": "decoder",
             "reward_model": "reward", "continue_model": "continue"}  # SheepRL's -> ours
    parts = {ours: info["params"]["parts"][theirs] for theirs, ours in names.items()
             if theirs in info["params"]["parts"]}
    params = {**{k: info["params"][k] for k in ("world_model", "actor", "critic")},
              "slow_critic": info["params"]["target_critic"], "parts": parts}
    return {"update": runner.update, "params": params, "close": runner.close, "timed_inside": True,
            "versions": {"sheeprl": info["sheeprl"], "torch": info["torch"]}}


# ============================================================================ the run
def run_benchmark(preset: str = "XS", batch_size: int = 16, batch_length: int = 64,
                  rounds: int = 7, warmup: int = 1, impls=IMPLS, threads: int = 1,
                  sheeprl_python: Path = SHEEPRL_PYTHON, sheeprl_preset: str | None = None,
                  torchrl_sizes: dict | None = None) -> tuple[list[dict], dict]:
    """Build each implementation, warm up, then time ``rounds`` interleaved rounds.

    Returns ``(rows, params)``: one row per implementation (``status`` ``ok`` with the
    times, or ``skipped`` / ``fails`` with the reason) and the parameter counts.
    """
    torch.set_num_threads(threads)
    config = reverie_config(preset, batch_size, batch_length)
    sizes = torchrl_sizes or {k: getattr(config, k) for k in
                              ("deter", "hidden", "stoch", "classes", "blocks", "mlp_layers",
                               "horizon")}
    data = real_transitions(config)
    builders: dict[str, Callable[[], dict]] = {
        "reverie": lambda: build_reverie(config, data, bf16=False),
        "reverie-bf16": lambda: build_reverie(config, data, bf16=True),
        "torchrl": lambda: build_torchrl(sizes, data, batch_size, batch_length),
        "sheeprl": lambda: build_sheeprl(sheeprl_python, sheeprl_preset or preset, batch_size,
                                         batch_length, False, threads, warmup),
        "sheeprl-bf16": lambda: build_sheeprl(sheeprl_python, sheeprl_preset or preset,
                                              batch_size, batch_length, True, threads, warmup),
    }
    built, rows, params = {}, {}, {}
    for name in impls:
        t0 = time.perf_counter()
        try:
            built[name] = builders[name]()
            if not built[name].get("timed_inside"):
                for _ in range(warmup):
                    built[name]["update"]()
            params[name] = built[name]["params"]
            log(f"  {name}: built and warmed up in {time.perf_counter() - t0:.1f} s")
        except FileNotFoundError as err:
            rows[name] = {"impl": name, "status": "skipped", "error": str(err)}
            log(f"  {name}: skipped: {err}")
        except Exception as err:  # noqa: BLE001 - reported in the table
            rows[name] = {"impl": name, "status": "fails", "error": _short_error(err)}
            log(f"  {name}: fails: {rows[name]['error']}")
    times = {name: [] for name in built}
    order = list(built)
    try:
        for r in range(rounds):
            shift = r % max(1, len(order))
            for name in order[shift:] + order[:shift]:
                if built[name].get("timed_inside"):
                    times[name].append(built[name]["update"]())
                else:
                    t0 = time.perf_counter()
                    built[name]["update"]()
                    times[name].append(time.perf_counter() - t0)
            log(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {times[n][-1]:.2f} s" for n in order))
    finally:
        for b in built.values():
            if "close" in b:
                b["close"]()
    for name in built:
        ts = times[name]
        rows[name] = {"impl": name, "status": "ok", "seconds": statistics.median(ts),
                      "min": min(ts), "max": max(ts), "all_seconds": ts,
                      "bf16": name.endswith("bf16"), **built[name].get("versions", {})}
    ordered = [rows[n] for n in impls if n in rows]
    _add_ratios(ordered)
    return ordered, params


def _add_ratios(rows: list[dict]) -> None:
    """Each row's speed-up over the fastest non-Reverie row of the same precision, and
    Reverie's over the fastest non-Reverie row of any precision."""
    ok = [r for r in rows if r["status"] == "ok"]
    others = [r for r in ok if not r["impl"].startswith("reverie")]
    for row in ok:
        same = [r for r in others if r["bf16"] == row["bf16"]]
        if same:
            best = min(same, key=lambda r: r["seconds"])
            row["vs_fastest_same_precision"] = {"impl": best["impl"],
                                                "speedup": best["seconds"] / row["seconds"]}
        if row["impl"].startswith("reverie") and others:
            best = min(others, key=lambda r: r["seconds"])
            row["vs_fastest_any"] = {"impl": best["impl"], "speedup": best["seconds"] / row["seconds"]}


# ============================================================================ reporting
_LABELS = {"reverie": "Reverie (float32)", "reverie-bf16": "Reverie (bf16 autocast)",
           "torchrl": "TorchRL 0.14 published (float32)", "sheeprl": "SheepRL 0.8.4 (32-true)",
           "sheeprl-bf16": "SheepRL 0.8.4 (bf16-mixed)"}


def format_table(rows: list[dict], params: dict) -> str:
    header = ("implementation", "seconds / update (median)", "min - max", "trainable params",
              "speed-up vs fastest other, same precision", "vs fastest other, any precision")
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = _LABELS.get(r["impl"], r["impl"])
        if r["status"] != "ok":
            lines.append(f"| {label} | {r['status']}: {r['error']} | - | - | - | - |")
            continue
        p = params.get(r["impl"])
        n = f"{p['world_model'] + p['actor'] + p['critic']:,}" if p else "-"
        same = r.get("vs_fastest_same_precision")
        anyp = r.get("vs_fastest_any")
        lines.append(
            f"| {label} | {r['seconds']:.3f} | {r['min']:.3f} - {r['max']:.3f} | {n} | "
            + (f"{same['speedup']:.2f}x ({same['impl']})" if same else "-") + " | "
            + (f"{anyp['speedup']:.2f}x ({anyp['impl']})" if anyp else "-") + " |")
    return "\n".join(lines)


def format_params(params: dict) -> str:
    impls = [n for n in ("reverie", "torchrl", "sheeprl") if n in params]
    if not impls:
        return ""
    parts = ("encoder", "rssm", "decoder", "reward", "continue")
    lines = ["| component | " + " | ".join(_LABELS[n].split(" (")[0] for n in impls) + " |",
             "|---|" + "---:|" * len(impls)]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(
            f"{params[n]['parts'].get(part, 0):,}" for n in impls) + " |")
    extra = {n: params[n]["world_model"] - sum(params[n]["parts"].get(p, 0) for p in parts)
             for n in impls}
    if any(extra.values()):
        lines.append("| world model, other | " + " | ".join(f"{extra[n]:,}" for n in impls) + " |")
    for key in ("world_model", "actor", "critic"):
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(
            f"{params[n][key]:,}" for n in impls) + " |")
    lines.append("| **trainable total** | " + " | ".join(
        f"**{params[n]['world_model'] + params[n]['actor'] + params[n]['critic']:,}**"
        for n in impls) + " |")
    lines.append("| slow / target critic (EMA copy) | " + " | ".join(
        f"{params[n]['slow_critic']:,}" for n in impls) + " |")
    return "\n".join(lines)


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "tensordict": tensordict.__version__, "torchrl": torchrl.__version__,
            "threads": threads}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "reverie"], cwd=REPO_ROOT,
                               text=True, capture_output=True, check=True).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
        return out + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def format_markdown(rows: list[dict], params: dict, meta: dict) -> str:
    m, s = meta["machine"], meta["settings"]
    return "\n".join([
        "# DreamerV3 learner update: Reverie vs TorchRL vs SheepRL",
        "",
        f"Command: `{meta['command']}` at commit `{meta['commit']}`.",
        "",
        f"Machine: {m['cpu']} ({m['cpus']} logical CPUs), {m['platform']}, torch {m['torch']}, "
        f"tensordict {m['tensordict']}, torchrl {m['torchrl']}, Python {m['python']}; "
        f"{m['threads']} torch thread per implementation, one process each (SheepRL in its "
        f"own venv: {meta.get('sheeprl_versions') or 'not run'}). Load average (1/5/15 min) "
        f"before / after: {meta['load_before']} / {meta['load_after']} on {m['cpus']} cores"
        + (" (other jobs were running: absolute times are inflated for every row alike, the "
           "rounds being interleaved)" if meta["load_before"] and meta["load_before"][0] > 1.2
           else "") + f". Total time {meta['elapsed_s']:.0f} s.",
        "",
        f"Setup: one learner update (world model, actor and critic: forward, backward, optimiser "
        f"step, slow-critic EMA) on B = {s['batch_size']} sequences of T = {s['batch_length']} "
        f"real {ENV_NAME} state transitions, the {s['preset']} model (GRU {s['sizes']['deter']} "
        f"in {s['sizes']['blocks']} blocks, hidden {s['sizes']['hidden']}, "
        f"{s['sizes']['stoch']} x {s['sizes']['classes']} latents, {s['sizes']['mlp_layers']} "
        f"hidden layer per MLP), imagination horizon {s['sizes']['horizon']} from all "
        f"{s['batch_size'] * s['batch_length']} posterior latents with dynamics gradients; "
        f"{s['warmup']} warm-up update(s), then {s['rounds']} interleaved rounds (order rotating). "
        "Seconds are medians; \"speed-up\" is the fastest other implementation's median over "
        "this row's (> 1: this row is faster). bf16 rows: Reverie with the recipe's "
        "`precision=\"bfloat16\"` (its loss computations under `torch.autocast(\"cpu\", "
        "dtype=torch.bfloat16)`), SheepRL with Fabric's `bf16-mixed`; "
        "the authors' JAX code computes in bfloat16 by default, TorchRL's recipe uses bfloat16 "
        "autocast only on CUDA, SheepRL's default is float32.",
        "",
        format_table(rows, params),
        "",
        "Parameters (trainable; the slow / target critic is an EMA copy, not trained):",
        "",
        format_params(params),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (the debug preset, B=2, T=8, 1 round); no files unless --out")
    parser.add_argument("--preset", default="XS", help="Reverie preset (and SheepRL's dreamer_v3_<preset>)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates each (default 1)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads each (default 1)")
    parser.add_argument("--sheeprl-python", type=Path, default=SHEEPRL_PYTHON,
                        help=f"python of SheepRL's venv (default {SHEEPRL_PYTHON}; env "
                        "REVERIE_SHEEPRL_PYTHON)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {DEFAULT_OUT.relative_to(REPO_ROOT)}); the "
                        "markdown goes next to it with a .md suffix")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch_size, args.batch_length, args.rounds = "debug", 2, 8, 1
        args.impls = [i for i in args.impls if not i.startswith("sheeprl")]
    warnings.filterwarnings("ignore")
    command = shlex.join(["python", "benchmarks/bench_dreamer_v3.py",
                          *(sys.argv[1:] if argv is None else argv)])
    out = args.out if args.out is not None or args.quick else DEFAULT_OUT
    load_before = _loadavg()
    log(f"threads={args.threads} load={load_before} commit={_git_commit()}")
    t0 = time.perf_counter()
    rows, params = run_benchmark(args.preset, args.batch_size, args.batch_length, args.rounds,
                                 args.warmup, args.impls, args.threads, args.sheeprl_python)
    elapsed = time.perf_counter() - t0
    config = reverie_config(args.preset, args.batch_size, args.batch_length)
    sizes = {k: getattr(config, k) for k in ("deter", "hidden", "stoch", "classes", "blocks",
                                             "mlp_layers", "horizon")}
    sheeprl_versions = next((f"sheeprl {r['sheeprl']}, torch {r['torch']}" for r in rows
                             if r.get("sheeprl")), None)
    meta = {"command": command, "commit": _git_commit(), "machine": machine_info(args.threads),
            "load_before": load_before, "load_after": _loadavg(), "elapsed_s": elapsed,
            "sheeprl_versions": sheeprl_versions,
            "settings": {"preset": args.preset, "batch_size": args.batch_size,
                         "batch_length": args.batch_length, "rounds": args.rounds,
                         "warmup": args.warmup, "impls": args.impls, "env": ENV_NAME,
                         "sizes": sizes, "statistic": "median seconds over interleaved rounds"}}
    print()
    print(format_table(rows, params))
    print()
    print(format_params(params))
    print(f"\n{elapsed:.0f} s; load after {meta['load_after']}")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**meta, "table": rows, "params": params}, indent=2) + "\n")
        out.with_suffix(".md").write_text(format_markdown(rows, params, meta))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if all(r["status"] != "fails" or not r["impl"].startswith("reverie")
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
