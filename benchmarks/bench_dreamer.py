"""Dreamer speed: Reverie vs a plain PyTorch loop vs the published implementation (TorchRL).

Everything runs side by side in one process, on the CPU, in float32, with one torch thread
(``--threads``). Two cases:

* ``rssm``: one RSSM filtering rollout, forward + backward, at the paper's sizes: B = 50
  sequences of T = 50 steps, 1024-d observation embedding (a leaf that takes a gradient,
  as the encoder's output would), state 30, belief 200, hidden 200, 6-d action. The
  backward is that of ``sum(posterior state) + sum(prior mean)``.

  - ``plain``: the baseline. A Python loop over time calling Reverie's ``RSSMPrior`` and
    ``RSSMPosterior`` modules directly on tensors (nn.Linear / nn.GRUCell / ELU; no
    TensorDict) and one ``torch.stack`` per output.
  - ``reverie``: ``reverie.modules.RSSMRollout`` on a ``[B, T]`` TensorDict in its
    modes: the default loop, ``use_scan=True`` (eager), ``compile_step=True``, and
    ``use_scan=True, compile_step=True`` (the scan rollout compiled with Inductor).
  - ``published``: ``torchrl.modules.models.model_based.RSSMRollout`` (with TorchRL's
    ``RSSMPrior`` / ``RSSMPosterior`` holding the same weights; their std is
    ``max(softplus, 0.1)`` instead of ``softplus + 0.1``, same cost) in the same three
    modes (the same flags). A mode that fails is reported with its error.

  Each implementation is called twice to warm up (the first call of a compiled mode
  includes compilation; reported as "first call"), then the implementations are
  interleaved over ``--repeats`` rounds (order rotating) and the median is reported, with
  its ratio to ``plain`` (ratio of medians, and the median of the per-round ratios).
  Before timing, Reverie's output under a fixed seed is compared with the plain loop's
  (same noise). "Saved MB" is the memory autograd keeps for the backward (storages saved
  by the forward, counted once each; measured in eager modes only).

* ``update``: one full Dreamer update at the paper's sizes, from 64x64x3 pixels: world
  model loss (conv encoder, RSSM, conv decoder, reward), then the actor loss (15-step
  imagination from every posterior latent), then the value loss; each with backward,
  gradient-norm clipping (100) and an Adam step. B = ``--update-batch`` (default 50)
  sequences of T = 50 steps, the *same* random batch (pixels in [0, 1], actions in
  [-1, 1], Gaussian rewards) for both implementations.

  - ``reverie``: ``reverie.algorithms.dreamer.make_models`` (``Config(pixels=True)``, the
    paper's sizes) on a spec-only env, with ``reverie.objectives.DreamerModelLoss``,
    ``DreamerActorLoss``, ``DreamerValueLoss`` called as in ``reverie.algorithms.dreamer.train``.
    Its encoder and decoder run their convolutions channels-last (their default).
  - ``published``: TorchRL's ``ObsEncoder``, ``ObsDecoder``, ``RSSMPrior``,
    ``RSSMPosterior``, ``RSSMRollout``, ``DreamerActor``, ``WorldModelWrapper``,
    ``torchrl.envs.model_based.dreamer.DreamerEnv`` and ``torchrl.objectives.dreamer``
    losses, wired as in TorchRL's example (``sota-implementations/dreamer/dreamer_utils.py``
    and ``dreamer.py``), with explicit input sizes instead of lazy layers and the same
    layer widths and depths as Reverie's recipe (actor 4 x 400, value 3 x 400, reward
    2 x 200; TorchRL's example uses a 3-layer actor and a 400-unit reward MLP).

  One warm-up update each (it also counts the tensors autograd saves, summed over the
  three graphs), then ``--update-repeats`` interleaved rounds (default 3); median seconds
  per update and the ratio Reverie / published.

``--quick`` (smoke test: 3 RSSM rounds, update batch 4, 1 update round) writes files only
with ``--out``. Results: ``docs/results/benchmarks/dreamer.{json,md}``.

Usage::

    python benchmarks/bench_dreamer.py            # full run, writes the results
    python benchmarks/bench_dreamer.py --quick    # smoke test, no files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import tensordict
import torch
import torchrl
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "results" / "benchmarks" / "dreamer.json"
B, T, EMBED, STATE, BELIEF, HIDDEN, ACTION = 50, 50, 1024, 30, 200, 200, 6
ACTOR_HIDDEN, HORIZON, GAMMA, LMBDA, GRAD_CLIP = 400, 15, 0.99, 0.95, 100.0
LR = {"model": 6e-4, "actor": 8e-5, "value": 8e-5}
NXT = lambda *keys: [("next", k) for k in keys]  # noqa: E731


def _short_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    head = text.split(" Got graph break/error:")[0][:120]
    if "Explanation:" in text:  # dynamo errors: keep the reason, not the hints
        head += " ... " + text.split("Explanation:", 1)[1].split(" Hint:")[0].strip()[:120]
    return f"{type(err).__name__}: {head}"


def saved_tensor_mb(fn: Callable[[], object]) -> float:
    """MB of the storages autograd saves for the backward during ``fn`` (each counted once)."""
    storages: dict[int, torch.UntypedStorage] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s  # held until the end: no address is reused meanwhile
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(s.nbytes() for s in storages.values()) / 2**20


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, rounds: int,
                log: Callable[[str], None], saved: dict | None = None) -> tuple[dict, dict, dict]:
    """Warm up each function (``warmup`` calls), then time ``rounds`` interleaved rounds.

    Returns ``(times, first_call_seconds, errors)``; a function that raises is dropped
    and its error kept. With ``saved`` (a dict), the first warm-up call also counts the
    tensors autograd saves (:func:`saved_tensor_mb`) into ``saved[name]``.
    """
    first, errors = {}, {}
    for name, fn in list(fns.items()):
        try:
            for i in range(warmup):
                t0 = time.perf_counter()
                if i == 0 and saved is not None:
                    saved[name] = saved_tensor_mb(fn)
                else:
                    fn()
                if i == 0:
                    first[name] = time.perf_counter() - t0
            log(f"  warmed up {name} (first call {first[name]:.2f} s)")
        except Exception as err:  # noqa: BLE001 - reported in the table
            errors[name] = _short_error(err)
            log(f"  {name} fails: {errors[name]}")
            del fns[name]
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        shift = r % max(1, len(order))
        for name in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times, first, errors


# ============================================================================ RSSM case
def rssm_inputs(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    action = torch.rand(batch, T, ACTION, generator=gen) * 2 - 1
    embedding = torch.randn(batch, T, EMBED, generator=gen).requires_grad_(True)
    return action, embedding


def plain_rssm(prior, posterior, action, embedding):
    """The baseline loop: ``(prior mean, prior std, post mean, post std, state, belief)`` ``(B, T, .)``."""
    b, t_len = action.shape[:2]
    noise = torch.randn(t_len, b, STATE, dtype=embedding.dtype)  # as RSSMRollout draws it
    state = embedding.new_zeros(b, STATE)
    belief = embedding.new_zeros(b, BELIEF)
    outs = [[] for _ in range(6)]
    # unbind: one backward node for all steps (indexing [:, t] would backprop T full-size zeros)
    for a_t, e_t, eps in zip(action.unbind(1), embedding.unbind(1), noise.unbind(0), strict=True):
        p_mean, p_std, _, belief = prior(state, belief, a_t, noise=torch.zeros_like(eps))
        q_mean, q_std, state = posterior(belief, e_t, noise=eps)
        for store, value in zip(outs, (p_mean, p_std, q_mean, q_std, state, belief), strict=True):
            store.append(value)
    return tuple(torch.stack(o, 1) for o in outs)


def reverie_rssm(prior, posterior, mode: str):
    from reverie.modules import RSSMRollout

    return RSSMRollout(
        TensorDictModule(prior, ["state", "belief", "action"],
                         NXT("prior_mean", "prior_std", "_", "belief")),
        TensorDictModule(posterior, NXT("belief", "embedding"),
                         NXT("posterior_mean", "posterior_std", "state")),
        use_scan="scan" in mode, compile_step="compile_step" in mode)


def published_rssm(prior, posterior, mode: str):
    from torchrl.modules.models.model_based import RSSMPosterior, RSSMPrior, RSSMRollout

    p = RSSMPrior(Bounded(-1.0, 1.0, (ACTION,)), hidden_dim=HIDDEN, rnn_hidden_dim=BELIEF,
                  state_dim=STATE, action_dim=ACTION)
    q = RSSMPosterior(hidden_dim=HIDDEN, state_dim=STATE, rnn_hidden_dim=BELIEF, obs_embed_dim=EMBED)
    p.load_state_dict(prior.state_dict())  # the same parameter names: the same weights
    q.load_state_dict(posterior.state_dict())
    return RSSMRollout(
        TensorDictModule(p, ["state", "belief", "action"],
                         NXT("prior_mean", "prior_std", "_", "belief")),
        TensorDictModule(q, NXT("belief", "encoded_latents"),
                         NXT("posterior_mean", "posterior_std", "state")),
        use_scan="scan" in mode, compile_step="compile_step" in mode)


MODES = ("loop", "scan", "compile_step", "scan+compile_step")


def run_rssm(batch: int, repeats: int, modes, log) -> list[dict]:
    from reverie.modules import RSSMPosterior, RSSMPrior

    torch.manual_seed(0)
    prior = RSSMPrior(action_dim=ACTION, hidden_dim=HIDDEN, rnn_hidden_dim=BELIEF, state_dim=STATE)
    posterior = RSSMPosterior(hidden_dim=HIDDEN, state_dim=STATE, rnn_hidden_dim=BELIEF,
                              obs_embed_dim=EMBED)
    action, embedding = rssm_inputs(batch)

    def plain():
        out = plain_rssm(prior, posterior, action, embedding)
        (out[4].sum() + out[0].sum()).backward()
        return out

    def ours(module):
        def fn():
            td = TensorDict({"action": action, ("next", "embedding"): embedding}, [batch, T])
            out = module(td)
            (out["next", "state"].sum() + out["next", "prior_mean"].sum()).backward()
            return out
        return fn

    def theirs(module):
        def fn():
            td = TensorDict({"state": torch.zeros(batch, T, STATE), "belief": torch.zeros(batch, T, BELIEF),
                             "action": action, ("next", "encoded_latents"): embedding}, [batch, T])
            out = module(td)
            (out["next", "state"].sum() + out["next", "prior_mean"].sum()).backward()
            return out
        return fn

    fns: dict[str, Callable[[], object]] = {"plain/loop": plain}
    errors: dict[str, str] = {}
    checks: dict[str, str] = {"plain/loop": "baseline"}
    rollouts = {mode: reverie_rssm(prior, posterior, mode) for mode in modes}
    for mode in modes:
        fns[f"reverie/{mode}"] = ours(rollouts[mode])
    for mode in modes:
        try:
            fns[f"published/{mode}"] = theirs(published_rssm(prior, posterior, mode))
        except Exception as err:  # noqa: BLE001 - reported in the table
            errors[f"published/{mode}"] = _short_error(err)
        checks[f"published/{mode}"] = "not compared (draws its own noise)"
    log(f"rssm: B={batch} T={T}: warm-up ({', '.join(fns)})")
    times, first, errs = interleaved(fns, warmup=2, rounds=repeats, log=log)
    errors.update(errs)
    # correctness: Reverie's modes vs the plain loop under the same seed (the same noise)
    # (grad mode on, as timed: no_grad would make the compiled step recompile)
    torch.manual_seed(1)
    ref = [x.detach() for x in plain_rssm(prior, posterior, action, embedding)]
    for mode in modes:
        name = f"reverie/{mode}"
        if name not in fns:
            continue
        torch.manual_seed(1)
        td = TensorDict({"action": action, ("next", "embedding"): embedding}, [batch, T])
        out = rollouts[mode](td)
        got = [out["next", k].detach() for k in ("prior_mean", "prior_std", "posterior_mean",
                                                 "posterior_std", "state", "belief")]
        diff = max((g - r).abs().max().item() for g, r in zip(got, ref, strict=True))
        checks[name] = f"matches plain (max abs diff {diff:.1e})" if diff < 1e-4 else \
            f"DIFFERS from plain (max abs diff {diff:.1e})"
    # autograd memory, eager modes only (hooks would make the compiled step recompile)
    saved = {}
    for name, fn in fns.items():
        if name.endswith("compile_step"):
            continue
        try:
            saved[name] = saved_tensor_mb(fn)
        except Exception as err:  # noqa: BLE001 - optional metric
            log(f"  saved-tensor measurement failed for {name}: {_short_error(err)}")
    rows = []
    plain_times = times.get("plain/loop")
    for name in ["plain/loop", *(f"{i}/{m}" for i in ("reverie", "published") for m in modes)]:
        impl, mode = name.split("/")
        row = {"case": "rssm", "impl": impl, "mode": mode, "batch": batch, "time_steps": T}
        if name in errors:
            rows.append({**row, "status": "fails", "error": errors[name]})
            log(f"  {name}: fails: {errors[name]}")
            continue
        sec = statistics.median(times[name])
        row.update(status="ok", seconds=sec, all_seconds=times[name], first_call_seconds=first[name],
                   saved_mb=saved.get(name), check=checks.get(name))
        if plain_times:
            row["ratio"] = sec / statistics.median(plain_times)
            row["paired_ratio"] = statistics.median(
                [a / p for a, p in zip(times[name], plain_times, strict=True)])
        rows.append(row)
        log(f"  {name}: {sec:.3f} s (x{row.get('ratio', float('nan')):.2f} plain)")
    return rows


# ============================================================================ update case
class SpecOnlyEnv(EnvBase):
    """Specs of a 64x64-pixel task with a 6-d action (never stepped)."""

    def __init__(self):
        super().__init__(batch_size=torch.Size([]))
        self.observation_spec = Composite(
            pixels=Unbounded((3, 64, 64)), state=Unbounded((STATE,)), belief=Unbounded((BELIEF,)))
        self.action_spec = Bounded(-1.0, 1.0, (ACTION,))
        self.reward_spec = Unbounded((1,))

    def _reset(self, tensordict=None, **kwargs):
        raise RuntimeError("SpecOnlyEnv is never reset")

    def _step(self, tensordict):
        raise RuntimeError("SpecOnlyEnv is never stepped")

    def _set_seed(self, seed):
        return None


def update_batch(batch: int, seed: int = 0) -> TensorDict:
    gen = torch.Generator().manual_seed(seed)
    return TensorDict({
        "state": torch.zeros(batch, T, STATE),  # the initial latent (TorchRL's TensorDictPrimer)
        "belief": torch.zeros(batch, T, BELIEF),
        "action": torch.rand(batch, T, ACTION, generator=gen) * 2 - 1,
        ("next", "pixels"): torch.rand(batch, T, 3, 64, 64, generator=gen),
        ("next", "reward"): torch.randn(batch, T, 1, generator=gen),
    }, [batch, T])


def _optim_step(optim, loss, module) -> None:
    optim.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(module.parameters(), GRAD_CLIP)
    optim.step()


def reverie_update(data: TensorDict):
    """One Dreamer update as ``reverie.algorithms.dreamer.train`` does it."""
    from reverie.algorithms.dreamer import Config, make_models
    from reverie.objectives import DreamerActorLoss, DreamerModelLoss, DreamerValueLoss

    config = Config(pixels=True, batch_size=data.shape[0], batch_length=T)
    torch.manual_seed(0)
    models = make_models(config, SpecOnlyEnv())
    world_model, actor, value = models["world_model"], models["actor"], models["value"]
    model_loss = DreamerModelLoss(world_model, free_nats=config.free_nats)
    model_loss.set_keys(pixels=("next", "pixels"), reco_pixels=("next", "reco_pixels"))
    actor_loss = DreamerActorLoss(actor, value, models["imagination"], gamma=GAMMA, lmbda=LMBDA,
                                  imagination_horizon=HORIZON)
    value_loss = DreamerValueLoss(value, gamma=GAMMA)
    optims = {"model": torch.optim.Adam(world_model.parameters(), lr=LR["model"]),
              "actor": torch.optim.Adam(actor.parameters(), lr=LR["actor"]),
              "value": torch.optim.Adam(value.parameters(), lr=LR["value"])}
    last: dict[str, float] = {}

    def update():
        losses, latent = model_loss(data)
        _optim_step(optims["model"], losses["loss_model_kl"] + losses["loss_model_reco"]
                    + losses["loss_model_reward"], world_model)
        losses_a, fake = actor_loss(latent.get("next"))
        _optim_step(optims["actor"], losses_a["loss_actor"], actor)
        losses_v, _ = value_loss(fake)
        _optim_step(optims["value"], losses_v["loss_value"], value)
        for td in (losses, losses_a, losses_v):
            last.update({k: v.item() for k, v in td.items() if k.startswith("loss")})
    return update, last, _n_params(world_model, actor, value)


def published_update(data: TensorDict):
    """One Dreamer update with TorchRL's modules and losses, wired as in its example."""
    from tensordict.nn import (
        InteractionType,
        ProbabilisticTensorDictModule,
        ProbabilisticTensorDictSequential,
        TensorDictSequential,
    )
    from torchrl.envs.model_based.dreamer import DreamerEnv
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from torchrl.modules import MLP, IndependentNormal, TanhNormal, WorldModelWrapper
    from torchrl.modules.models.model_based import (
        DreamerActor,
        ObsDecoder,
        ObsEncoder,
        RSSMPosterior,
        RSSMPrior,
        RSSMRollout,
    )
    from torchrl.objectives.dreamer import DreamerActorLoss, DreamerModelLoss, DreamerValueLoss

    env = SpecOnlyEnv()
    torch.manual_seed(0)
    encoder, decoder = ObsEncoder(in_channels=3), ObsDecoder(latent_dim=STATE + BELIEF)
    prior = RSSMPrior(env.action_spec, hidden_dim=HIDDEN, rnn_hidden_dim=BELIEF, state_dim=STATE,
                      action_dim=ACTION)
    posterior = RSSMPosterior(hidden_dim=HIDDEN, state_dim=STATE, rnn_hidden_dim=BELIEF,
                              obs_embed_dim=EMBED)
    reward_module = MLP(in_features=STATE + BELIEF, out_features=1, depth=2, num_cells=HIDDEN,
                        activation_class=nn.ELU)
    # world model (_dreamer_make_world_model)
    rollout = RSSMRollout(
        TensorDictModule(prior, ["state", "belief", "action"],
                         NXT("prior_mean", "prior_std", "_", "belief")),
        TensorDictModule(posterior, NXT("belief", "encoded_latents"),
                         NXT("posterior_mean", "posterior_std", "state")))
    decoder_td = ProbabilisticTensorDictSequential(
        TensorDictModule(decoder, NXT("state", "belief"), ["loc"]),
        ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=[("next", "reco_pixels")],
                                      distribution_class=IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 3}))
    world_model = WorldModelWrapper(
        TensorDictSequential(TensorDictModule(encoder, NXT("pixels"), NXT("encoded_latents")),
                             rollout, decoder_td),
        ProbabilisticTensorDictSequential(
            TensorDictModule(reward_module, NXT("state", "belief"), NXT("loc")),
            ProbabilisticTensorDictModule(in_keys=[("next", "loc")], out_keys=[("next", "reward")],
                                          distribution_class=IndependentNormal,
                                          distribution_kwargs={"scale": 1.0, "event_dim": 1})))
    # imagination env (_dreamer_make_mbenv)
    model_based_env = DreamerEnv(
        world_model=WorldModelWrapper(
            TensorDictSequential(TensorDictModule(prior, ["state", "belief", "action"],
                                                  ["_", "_", "state", "belief"])),
            ProbabilisticTensorDictSequential(
                TensorDictModule(reward_module, ["state", "belief"], ["loc"]),
                ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=["reward"],
                                              distribution_class=IndependentNormal,
                                              distribution_kwargs={"scale": 1.0, "event_dim": 1}))),
        prior_shape=torch.Size([STATE]), belief_shape=torch.Size([BELIEF]))
    model_based_env.set_specs_from_env(env)
    # actor (_dreamer_make_actor_sim) and value (_dreamer_make_value_model)
    spec = env.action_spec
    actor = ProbabilisticTensorDictSequential(
        TensorDictModule(DreamerActor(ACTION, depth=4, num_cells=ACTOR_HIDDEN, activation_class=nn.ELU),
                         ["state", "belief"], ["loc", "scale"]),
        ProbabilisticTensorDictModule(in_keys=["loc", "scale"], out_keys=["action"],
                                      default_interaction_type=InteractionType.RANDOM,
                                      distribution_class=TanhNormal,
                                      distribution_kwargs={"tanh_loc": True, "low": spec.space.low,
                                                           "high": spec.space.high}))
    value = ProbabilisticTensorDictSequential(
        TensorDictModule(MLP(in_features=STATE + BELIEF, out_features=1, depth=3,
                             num_cells=ACTOR_HIDDEN, activation_class=nn.ELU),
                         ["state", "belief"], ["loc"]),
        ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=["state_value"],
                                      distribution_class=IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 1}))
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):  # initialise lazy layers
        value(actor(TensorDict({"state": torch.zeros(1, STATE), "belief": torch.zeros(1, BELIEF)}, [1])))
    model_loss = DreamerModelLoss(world_model)
    actor_loss = DreamerActorLoss(actor, value, model_based_env, imagination_horizon=HORIZON,
                                  discount_loss=True)
    actor_loss.make_value_estimator(gamma=GAMMA, lmbda=LMBDA)
    value_loss = DreamerValueLoss(value, discount_loss=True, gamma=GAMMA)
    optims = {"model": torch.optim.Adam(world_model.parameters(), lr=LR["model"]),
              "actor": torch.optim.Adam(actor.parameters(), lr=LR["actor"]),
              "value": torch.optim.Adam(value.parameters(), lr=LR["value"])}
    last: dict[str, float] = {}

    def update():
        losses, sampled = model_loss(data)
        _optim_step(optims["model"], losses["loss_model_kl"] + losses["loss_model_reco"]
                    + losses["loss_model_reward"], world_model)
        losses_a, sampled = actor_loss(sampled.reshape(-1))
        _optim_step(optims["actor"], losses_a["loss_actor"], actor)
        losses_v, _ = value_loss(sampled)
        _optim_step(optims["value"], losses_v["loss_value"], value)
        for td in (losses, losses_a, losses_v):
            last.update({k: v.sum().item() for k, v in td.items() if k.startswith("loss")})
    return update, last, _n_params(world_model, actor, value)


def _n_params(*modules) -> dict[str, int]:
    names = ("world_model", "actor", "value")
    return {n: sum(p.numel() for p in m.parameters()) for n, m in zip(names, modules, strict=True)}


def run_update(batch: int, repeats: int, log) -> list[dict]:
    data = update_batch(batch)
    fns, losses, params, errors = {}, {}, {}, {}
    for impl, build in (("reverie", reverie_update), ("published", published_update)):
        try:
            fns[impl], losses[impl], params[impl] = build(data)
        except Exception as err:  # noqa: BLE001 - reported in the table
            errors[impl] = _short_error(err)
            log(f"  {impl} update cannot be built: {errors[impl]}")
    log(f"update: B={batch} T={T} pixels 3x64x64: warm-up ({', '.join(fns)})")
    saved: dict[str, float] = {}
    times, first, errs = interleaved(fns, warmup=1, rounds=repeats, log=log, saved=saved)
    errors.update(errs)
    rows = []
    ref = statistics.median(times["published"]) if "published" in times else None
    for impl in ("reverie", "published"):
        row = {"case": "update", "impl": impl, "mode": "eager", "batch": batch, "time_steps": T}
        if impl in errors:
            rows.append({**row, "status": "fails", "error": errors[impl]})
            continue
        sec = statistics.median(times[impl])
        row.update(status="ok", seconds=sec, all_seconds=times[impl], first_call_seconds=first[impl],
                   saved_mb=saved.get(impl), last_losses=losses[impl], n_params=params[impl])
        if ref is not None:
            row["ratio"] = sec / ref
            row["paired_ratio"] = statistics.median(
                [a / p for a, p in zip(times[impl], times["published"], strict=True)])
        rows.append(row)
        log(f"  {impl}: {sec:.2f} s per update")
    return rows


# ============================================================================ reporting
HEADER = ("case", "implementation / mode", "seconds (median)", "ratio", "paired ratio",
          "first call (s)", "saved MB", "check")


def _cells(row: dict) -> tuple[str, ...]:
    if row["case"] == "rssm":
        case = f"RSSM rollout fwd+bwd, B={row['batch']}, T={row['time_steps']}"
        base = "vs plain"
    else:
        case = f"Dreamer update (pixels), B={row['batch']}, T={row['time_steps']}"
        base = "vs published"
    label = f"{row['impl']} / {row['mode']}"
    if row["status"] != "ok":
        return (case, label, f"fails: {row['error']}", "-", "-", "-", "-", "-")
    ratio = row.get("ratio")
    paired = row.get("paired_ratio")
    saved = row.get("saved_mb")
    check = row.get("check") or "-"
    if row["case"] == "update":
        check = ", ".join(f"{k} {v:.3g}" for k, v in row["last_losses"].items())
    return (case, label, f"{row['seconds']:.3f}",
            "-" if ratio is None else f"{ratio:.2f}x {base}",
            "-" if paired is None else f"{paired:.2f}x",
            f"{row['first_call_seconds']:.2f}",
            "-" if saved is None else f"{saved:.0f}", check)


def format_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5 + ["---"]) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "tensordict": tensordict.__version__, "torchrl": torchrl.__version__, "threads": threads}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _rounds(n: int) -> str:
    return f"{n} interleaved round{'' if n == 1 else 's'}"


def format_markdown(rows: list[dict], meta: dict) -> str:
    m, s = meta["machine"], meta["settings"]
    return "\n".join([
        "# Dreamer speed: Reverie vs a plain PyTorch loop vs the published implementation (TorchRL)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m['cpu']} ({m['cpus']} logical CPUs), {m['platform']}, torch {m['torch']}, "
        f"tensordict {m['tensordict']}, torchrl {m['torchrl']}, Python {m['python']}, "
        f"{m['threads']} torch thread(s), one process. Load average (1/5/15 min) before / after: "
        f"{meta['load_before']} / {meta['load_after']} on {m['cpus']} cores"
        + (" (other jobs were running, so absolute times are inflated for every implementation)"
           if meta["load_before"] and meta["load_before"][0] > 1.5 else "")
        + f". Total time {meta['elapsed_s']:.0f} s.",
        "",
        f"Setup: float32 on the CPU. RSSM: one filtering rollout of B = {s['rssm_batch']} sequences x "
        f"T = {T} steps, forward + backward of sum(posterior state) + sum(prior mean); 1024-d "
        f"embedding (takes a gradient), state {STATE}, belief {BELIEF}, hidden {HIDDEN}, action "
        f"{ACTION}; 2 warm-up calls, then {_rounds(s['rssm_repeats'])}. Update: one "
        f"Dreamer update from 64x64x3 pixels (world model + actor + value, each backward, "
        f"grad clip {GRAD_CLIP:g} and Adam), B = {s['update_batch']} x T = {T}, imagination horizon "
        f"{HORIZON}, actor/value {ACTOR_HIDDEN} units, the same random batch for both (Reverie's "
        f"encoder and decoder run channels-last, their default; the published ones NCHW); 1 warm-up "
        f"update, then {_rounds(s['update_repeats'])}. Seconds are medians; \"ratio\" is the "
        "ratio of medians to the baseline (the plain loop for the RSSM, the published update for "
        "the update), \"paired ratio\" the median of the per-round ratios. \"first call\" includes "
        "compilation for compile_step (seconds when TorchInductor's on-disk cache is warm from an "
        "earlier run, about 40 s cold on this machine). \"saved MB\": storages autograd saves for the backward "
        "(eager modes only; for the update, summed over its three graphs and counted during "
        "the warm-up update, whose \"first call\" time includes that bookkeeping). \"check\": Reverie's RSSM outputs vs the plain loop under the same "
        "seed; for the update, the loss values of the last timed update.",
        "",
        format_table(rows),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 RSSM rounds, update batch 4, 1 update round; writes "
                        "files only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {DEFAULT_OUT.relative_to(REPO_ROOT)}); the "
                        "markdown goes next to it with a .md suffix")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved RSSM rounds (default 15; 3 with --quick)")
    parser.add_argument("--update-repeats", type=int, default=None,
                        help="interleaved update rounds (default 3; 1 with --quick)")
    parser.add_argument("--update-batch", type=int, default=None,
                        help=f"sequences per update (default {B}; 4 with --quick)")
    parser.add_argument("--rssm-batch", type=int, default=B, help=f"RSSM sequences (default {B})")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="RSSMRollout modes (default all four)")
    parser.add_argument("--skip-update", action="store_true", help="RSSM case only")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    update_repeats = args.update_repeats or (1 if args.quick else 3)
    batch = args.update_batch or (4 if args.quick else B)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    command = shlex.join(["python", "benchmarks/bench_dreamer.py", *(sys.argv[1:] if argv is None else argv)])
    out = args.out if args.out is not None or args.quick else DEFAULT_OUT

    def log(line: str) -> None:
        print(line, flush=True)

    load_before = _loadavg()
    log(f"threads={args.threads} load={load_before}")
    t0 = time.perf_counter()
    rows = run_rssm(args.rssm_batch, repeats, args.modes, log)
    if not args.skip_update:
        rows += run_update(batch, update_repeats, log)
    elapsed = time.perf_counter() - t0
    meta = {
        "command": command, "machine": machine_info(args.threads), "load_before": load_before,
        "load_after": _loadavg(), "elapsed_s": elapsed,
        "settings": {"rssm_batch": args.rssm_batch, "time_steps": T, "embedding": EMBED,
                     "state": STATE, "belief": BELIEF, "hidden": HIDDEN, "action_dim": ACTION,
                     "rssm_repeats": repeats, "rssm_warmup": 2, "modes": args.modes,
                     "update_batch": None if args.skip_update else batch,
                     "update_repeats": update_repeats, "update_warmup": 1,
                     "actor_value_hidden": ACTOR_HIDDEN, "imagination_horizon": HORIZON,
                     "gamma": GAMMA, "lmbda": LMBDA, "grad_clip": GRAD_CLIP, "lr": LR,
                     "dtype": "float32", "device": "cpu",
                     "statistic": "median seconds over interleaved rounds"},
    }
    table = format_table(rows)
    print()
    print(table)
    print(f"\n{elapsed:.0f} s; load after {meta['load_after']}")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**meta, "table": rows}, indent=2) + "\n")
        out.with_suffix(".md").write_text(format_markdown(rows, meta))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    bad = [r for r in rows if "DIFFERS" in str(r.get("check", ""))]
    if bad:
        print("ERROR: a Reverie RSSM mode differs from the plain loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
