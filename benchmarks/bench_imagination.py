"""Imagination speed: Reverie's ``WorldModelEnv.rollout`` vs a plain PyTorch loop vs TorchRL.

Three implementations roll out the *same* modules (same weights) from the same start
latents, in one process:

* ``plain``   - a hand-written loop of the matmuls (policy -> dynamics -> reward) that
  stacks latent, action, next latent and reward along the time dim. It is the floor: it
  builds no TensorDict and writes no done flags.
* ``reverie`` - ``reverie.envs.WorldModelEnv(...).rollout(H, policy, tensordict=start)``
  on an unbatched, not batch-locked env (one env serves every batch size).
* ``torchrl`` - TorchRL's ``torchrl.envs.model_based.WorldModelEnv`` around a
  ``torchrl.modules.WorldModel`` (one env per batch size: it is built with a batch size).

Metric: imagined transitions per second (batch x horizon / seconds per rollout) and the
ratio time(impl) / time(plain). Targets (Reverie only): <= 1.3x plain at batch 1 and 64,
<= 1.05x at batch >= 1024.

End to end (the spec's usage, a second table): ``start = world_model.encode(
data.select("observation"))`` then ``env.rollout(15, policy, tensordict=start)`` at batch
1, with a ``TensorDictModule`` policy and with random actions (``policy=None``), timed
from the observations to the finished rollout (encode, reset and rollout included). The
plain loop runs the encoder, then the same loop; its random actions are
``torch.rand(B, A) * 2 - 1`` (the action spec's ``[-1, 1]`` box, the same draws).
Target (Reverie only): <= 1.2x plain.

Timing: every implementation is warmed up, then the implementations are interleaved in
rounds (the order rotates each round); each round times enough back-to-back calls to last
``--min-time`` seconds, and the per-call median over rounds is reported. The ratio to
plain is given two ways: the ratio of the medians, and the "paired" ratio, the median over
rounds of time(impl) / time(plain) within one round. Targets are judged on the paired
ratio: on a shared machine the load changes between rounds (it was seen to switch for
several rounds at a time), and pairing within a round cancels most of it.

``--quick`` writes no files unless ``--out`` is given, so a smoke run never overwrites the
full results.

Usage::

    python benchmarks/bench_imagination.py            # full run, writes the results
    python benchmarks/bench_imagination.py --quick    # batch 1 and 64, H=15 (smoke test)
    python benchmarks/bench_imagination.py --only-e2e # the end-to-end case only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensordict
import torch
import torchrl
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from reverie.envs import WorldModelEnv
from reverie.modules import WorldModel

OBS_DIM, LATENT_DIM, ACTION_DIM, HIDDEN = 17, 64, 6, 256
BATCH_SIZES = (1, 64, 1024, 4096)
HORIZONS = (15, 50)
IMPLS = ("plain", "reverie", "torchrl")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "results" / "benchmarks" / "imagination.json"
# keys compared against the plain loop: rollout key -> index in the plain loop's outputs
COMPARED_KEYS = {
    "latent": 0,
    "action": 1,
    ("next", "latent"): 2,
    ("next", "reward"): 3,
}


# ---------------------------------------------------------------------- the model
@dataclass
class Modules:
    """The raw ``nn.Module``s, built once and shared by every implementation."""

    encoder: nn.Module
    dynamics: nn.Module
    reward: nn.Module
    policy: nn.Module


def build_modules(seed: int = 0) -> Modules:
    """17-d observation, 64-d latent, 6-d action, 256-unit ReLU MLPs."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(OBS_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, LATENT_DIM))
    dynamics = nn.Sequential(
        nn.Linear(LATENT_DIM + ACTION_DIM, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, LATENT_DIM),
    )
    reward = nn.Sequential(nn.Linear(LATENT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))
    policy = nn.Sequential(
        nn.Linear(LATENT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, ACTION_DIM), nn.Tanh()
    )
    mods = Modules(encoder, dynamics, reward, policy)
    for m in (encoder, dynamics, reward, policy):
        m.eval()
    return mods


def start_latent(mods: Modules, batch: int, seed: int = 1) -> torch.Tensor:
    """Encode random observations into start latents (outside the timed region)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return mods.encoder(torch.randn(batch, OBS_DIM, generator=gen))


# ---------------------------------------------------------------------- implementations
def plain_rollout(mods: Modules, z0: torch.Tensor, horizon: int) -> tuple[torch.Tensor, ...]:
    """The floor: the same matmuls, no TensorDicts, no done flags.

    Returns ``(latent, action, next latent, reward)``, each stacked along dim 1.
    """
    pi, dyn, rew = mods.policy, mods.dynamics, mods.reward
    zs, acts, nzs, rews = [], [], [], []
    z = z0
    for _ in range(horizon):
        a = pi(z)
        z2 = dyn(torch.cat([z, a], -1))
        r = rew(z2)
        zs.append(z)
        acts.append(a)
        nzs.append(z2)
        rews.append(r)
        z = z2
    return (
        torch.stack(zs, 1),
        torch.stack(acts, 1),
        torch.stack(nzs, 1),
        torch.stack(rews, 1),
    )


def policy_module(mods: Modules) -> TensorDictModule:
    return TensorDictModule(mods.policy, in_keys=["latent"], out_keys=["action"])


def make_reverie_env(mods: Modules) -> WorldModelEnv:
    """One unbatched, not batch-locked env: it serves every batch size."""
    world_model = WorldModel(
        TensorDictModule(mods.encoder, in_keys=["observation"], out_keys=["latent"]),
        TensorDictModule(mods.dynamics, in_keys=["latent", "action"], out_keys=[("next", "latent")]),
        TensorDictModule(mods.reward, in_keys=[("next", "latent")], out_keys=[("next", "reward")]),
    )
    return WorldModelEnv(
        world_model,
        base_env=None,
        action_spec=Bounded(-1.0, 1.0, (ACTION_DIM,)),
        reward_spec=Unbounded((1,)),
        latent_spec=Unbounded((LATENT_DIM,)),
    )


class _CatInputs(nn.Module):
    """``(latent, action) -> module(cat(latent, action))``: TorchRL passes in_keys as args."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, latent: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.module(torch.cat([latent, action], -1))


class SpecOnlyEnv(EnvBase):
    """A reference env that only carries specs (TorchRL's WorldModelEnv reads them); never stepped."""

    def __init__(self, batch_size=(), latent_dim: int = LATENT_DIM, action_dim: int = ACTION_DIM):
        super().__init__(batch_size=torch.Size(batch_size))
        b = self.batch_size
        self.observation_spec = Composite(latent=Unbounded((*b, latent_dim)), shape=b)
        self.action_spec = Bounded(-1.0, 1.0, (*b, action_dim))
        self.reward_spec = Unbounded((*b, 1))

    def _reset(self, tensordict=None, **kwargs):
        raise RuntimeError("SpecOnlyEnv is never reset")

    def _step(self, tensordict):
        raise RuntimeError("SpecOnlyEnv is never stepped")

    def _set_seed(self, seed):
        return None


def _short_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"


def make_torchrl_world_model(mods: Modules):
    """TorchRL's ``torchrl.modules.WorldModel`` around the same modules."""
    from torchrl.modules import WorldModel as TorchRLWorldModel

    return TorchRLWorldModel(
        TensorDictModule(mods.encoder, in_keys=["observation"], out_keys=["latent"]),
        TensorDictModule(
            _CatInputs(mods.dynamics), in_keys=["latent", "action"], out_keys=[("next", "latent")]
        ),
        TensorDictModule(mods.reward, in_keys=[("next", "latent")], out_keys=[("next", "reward")]),
    )


def make_torchrl_env(mods: Modules, batch: int, world_model=None) -> tuple[EnvBase, str | None]:
    """TorchRL's WorldModelEnv for batch size ``batch`` (around ``world_model`` when given).

    Returns ``(env, workaround)``. TorchRL 0.14.1's constructor expands the base env's
    leaf specs to its batch size (``action_spec.expand(batch_size)``), which fails for
    a 6-d action whether the base env is unbatched or batched. The workaround builds the
    env around a 1-d-action, unbatched spec-only env (the one layout the constructor
    accepts) and then installs the real, batched specs with TorchRL's own
    ``ModelBasedEnvBase.set_specs_from_env``. Everything timed (``rollout``, ``_step``,
    ``_reset``) is TorchRL's code. Raises when even the workaround fails.
    """
    from torchrl.envs.model_based import WorldModelEnv as TorchRLWorldModelEnv

    if world_model is None:
        world_model = make_torchrl_world_model(mods)
    target = SpecOnlyEnv(batch_size=(batch,))
    try:
        return TorchRLWorldModelEnv(world_model, base_env=target, batch_size=[batch]), None
    except Exception as err:  # noqa: BLE001 - record TorchRL's error, then work around it
        first_error = _short_error(err)
    env = TorchRLWorldModelEnv(world_model, base_env=SpecOnlyEnv(batch_size=(), action_dim=1))
    env.set_specs_from_env(target)
    env.batch_size = target.batch_size
    workaround = (
        f"constructor fails with a batched spec-only base env ({first_error}); built around "
        "a 1-d-action unbatched spec env, then env.set_specs_from_env(batched spec env)"
    )
    return env, workaround


def rollout_outputs(out: TensorDict) -> tuple[torch.Tensor, ...]:
    """``(latent, action, next latent, reward)`` of a TensorDict rollout."""
    keys = sorted(COMPARED_KEYS, key=COMPARED_KEYS.get)
    return tuple(out.get(k) for k in keys)


# ---------------------------------------------------------------------- timing
def _time_calls(fn: Callable[[], object], n: int) -> float:
    """Seconds per call over ``n`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _warmup(fn: Callable[[], object], min_time: float, min_calls: int = 2) -> float:
    """Call ``fn`` at least ``min_calls`` times and for ``min_time`` s; return the median call time."""
    start = time.perf_counter()
    times: list[float] = []
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] or times)


def rounds_for(round_seconds: float, rounds: int, budget: float = 40.0, min_rounds: int = 5) -> int:
    """Fewer rounds when one round is long (huge batches on a slow machine), at least ``min_rounds``.

    ``round_seconds`` is the estimated time of one round (all implementations); the rounds
    of one (batch, horizon) setting are kept within about ``budget`` seconds.
    """
    if round_seconds <= 0:
        return rounds
    return max(min(rounds, min_rounds), min(rounds, int(budget // round_seconds)))


def time_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, min_time: float, warmup_time: float
) -> tuple[dict[str, list[float]], dict[str, int], int]:
    """Warm every function up, then time them in interleaved rounds (the order rotates).

    Returns ``(seconds per call in each round, calls per round, rounds)`` per function.
    """
    calls: dict[str, int] = {}
    round_seconds = 0.0
    for impl, fn in fns.items():
        one = _warmup(fn, warmup_time)
        calls[impl] = max(1, math.ceil(min_time / max(one, 1e-9)))
        round_seconds += calls[impl] * one
    n_rounds = rounds_for(round_seconds, rounds)
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    order = list(fns)
    for r in range(n_rounds):
        shift = r % len(order)
        for impl in order[shift:] + order[:shift]:
            times[impl].append(_time_calls(fns[impl], calls[impl]))
    return times, calls, n_rounds


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def target_for(batch: int) -> float:
    return 1.3 if batch <= 64 else 1.05


def run_benchmark(
    batch_sizes=BATCH_SIZES,
    horizons=HORIZONS,
    *,
    rounds: int = 11,
    min_time: float = 0.2,
    warmup_time: float = 0.2,
    impls=IMPLS,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time every implementation on every (batch, horizon); return one row per (impl, B, H).

    Before timing, each implementation's rollout is compared with the plain loop's on the
    same start latent; ``row["matches_plain"]`` says whether latent, action, next latent
    and reward are exactly equal (``torch.equal``).
    """
    log = log or (lambda msg: None)
    mods = build_modules(seed)
    policy = policy_module(mods)
    reverie_env = make_reverie_env(mods)
    rows: list[dict] = []
    with torch.no_grad():
        for batch in batch_sizes:
            z0 = start_latent(mods, batch, seed=seed + 1)
            start = TensorDict({"latent": z0}, [batch])
            torchrl_env, torchrl_note, torchrl_error = None, None, None
            if "torchrl" in impls:
                try:
                    torchrl_env, torchrl_note = make_torchrl_env(mods, batch)
                except Exception as err:  # noqa: BLE001 - reported in the table
                    torchrl_error = f"fails: {_short_error(err)}"
            for horizon in horizons:
                fns: dict[str, Callable[[], object]] = {}
                notes: dict[str, str | None] = {}
                errors: dict[str, str] = {}
                matches: dict[str, bool | None] = {}
                for impl in impls:
                    if impl == "plain":
                        fns[impl] = lambda h=horizon, z=z0: plain_rollout(mods, z, h)
                    elif impl == "reverie":
                        fns[impl] = lambda h=horizon, td=start: reverie_env.rollout(
                            h, policy, tensordict=td
                        )
                    elif impl == "torchrl":
                        if torchrl_env is None:
                            errors[impl] = torchrl_error
                            continue
                        notes[impl] = torchrl_note
                        # TorchRL's rollout writes into the start tensordict (done flags,
                        # action, "next"): give every call a fresh one, as a caller must
                        fns[impl] = lambda h=horizon, env=torchrl_env, z=z0: env.rollout(
                            h, policy, tensordict=TensorDict({"latent": z}, [z.shape[0]])
                        )
                    else:
                        raise ValueError(f"unknown implementation {impl!r}")
                # correctness first: every rollout must reproduce the plain loop exactly
                reference = plain_rollout(mods, z0, horizon)
                for impl, fn in list(fns.items()):
                    if impl == "plain":
                        matches[impl] = True
                        continue
                    try:
                        out = rollout_outputs(fn())
                    except Exception as err:  # noqa: BLE001 - reported in the table
                        errors[impl] = f"fails: {_short_error(err)}"
                        del fns[impl]
                        continue
                    matches[impl] = all(
                        o is not None and o.shape == r.shape and torch.equal(o, r)
                        for o, r in zip(out, reference, strict=True)
                    )
                times, calls, n_rounds = time_interleaved(fns, rounds, min_time, warmup_time)
                medians = {impl: statistics.median(ts) for impl, ts in times.items()}
                plain = medians.get("plain")
                for impl in impls:
                    row = {
                        "impl": impl,
                        "batch": batch,
                        "horizon": horizon,
                        "transitions": batch * horizon,
                    }
                    if impl in errors:
                        row.update(error=errors[impl], status="fails")
                        rows.append(row)
                        log(_row_line(row))
                        continue
                    sec = medians[impl]
                    row.update(
                        seconds_per_rollout=sec,
                        transitions_per_s=batch * horizon / sec,
                        rounds=n_rounds,
                        calls_per_round=calls[impl],
                        seconds_per_round=times[impl],
                        matches_plain=matches.get(impl),
                    )
                    if plain is not None:
                        row["ratio_to_plain"] = sec / plain
                        paired = [t / p for t, p in zip(times[impl], times["plain"], strict=True)]
                        row["ratio_to_plain_paired_median"] = statistics.median(paired)
                    if impl == "reverie" and plain is not None:
                        # judged on the paired ratio: the load of a shared machine changes
                        # between rounds, and pairing within a round cancels most of it
                        row["target"] = target_for(batch)
                        judged = row["ratio_to_plain_paired_median"]
                        row["status"] = "PASS" if judged <= row["target"] else "FAIL"
                    if notes.get(impl):
                        row["note"] = notes[impl]
                    rows.append(row)
                    log(_row_line(row))
    return rows


# ---------------------------------------------------------------------- end to end
E2E_BATCH, E2E_HORIZON, E2E_TARGET = 1, 15, 1.2
E2E_ACTIONS = ("policy", "random")
# the encode step alone, to show how much of the end-to-end time it takes
E2E_ENCODE = "encode only"


def plain_end_to_end(
    mods: Modules, obs: torch.Tensor, horizon: int, random_actions: bool
) -> tuple[torch.Tensor, ...]:
    """The floor of the spec's usage: encode, then the plain loop.

    Random actions are ``torch.rand(B, A) * 2 - 1``: the action spec's ``[-1, 1]`` box,
    drawn as ``Bounded.rand`` draws it (same numbers for the same seed).
    """
    z = mods.encoder(obs)
    if not random_actions:
        return plain_rollout(mods, z, horizon)
    dyn, rew = mods.dynamics, mods.reward
    zs, acts, nzs, rews = [], [], [], []
    for _ in range(horizon):
        a = torch.rand(z.shape[0], ACTION_DIM) * 2.0 - 1.0
        z2 = dyn(torch.cat([z, a], -1))
        r = rew(z2)
        zs.append(z)
        acts.append(a)
        nzs.append(z2)
        rews.append(r)
        z = z2
    return (
        torch.stack(zs, 1),
        torch.stack(acts, 1),
        torch.stack(nzs, 1),
        torch.stack(rews, 1),
    )


def run_end_to_end(
    batch: int = E2E_BATCH,
    horizon: int = E2E_HORIZON,
    *,
    actions=(*E2E_ACTIONS, E2E_ENCODE),
    rounds: int = 21,
    min_time: float = 0.2,
    warmup_time: float = 0.2,
    impls=IMPLS,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time the spec's usage from observations to rollout; one row per (actions, impl).

    ``actions`` is ``"policy"``, ``"random"`` or ``E2E_ENCODE`` (``"encode only"``: the
    encode call alone, ``world_model.encode(data.select("observation"))`` vs the raw
    encoder; no target).

    Reverie: ``env.rollout(H, policy, tensordict=world_model.encode(data.select(
    "observation")))`` on the unbatched env; TorchRL: the same calls on its
    ``WorldModel`` and ``WorldModelEnv`` (built for batch ``B``); plain:
    :func:`plain_end_to_end`. ``data`` holds an observation and an action per row, as
    real transitions do; ``select`` gives each call a fresh start (``encode`` writes the
    latent into it). Each rollout is first checked against the plain loop from the same
    random seed (``row["matches_plain"]``).
    """
    log = log or (lambda msg: None)
    mods = build_modules(seed)
    policy = policy_module(mods)
    env = make_reverie_env(mods)
    world_model = env.full_world_model
    gen = torch.Generator().manual_seed(seed + 1)
    data = TensorDict(
        {
            "observation": torch.randn(batch, OBS_DIM, generator=gen),
            "action": torch.zeros(batch, ACTION_DIM),
        },
        [batch],
    )
    obs = data["observation"]
    torchrl_env = torchrl_wm = torchrl_note = torchrl_error = None
    if "torchrl" in impls:
        try:
            torchrl_wm = make_torchrl_world_model(mods)
            torchrl_env, torchrl_note = make_torchrl_env(mods, batch, torchrl_wm)
        except Exception as err:  # noqa: BLE001 - reported in the table
            torchrl_error = f"fails: {_short_error(err)}"
    rows: list[dict] = []
    with torch.no_grad():
        for mode in actions:
            random_actions = mode == "random"
            pol = None if random_actions else policy
            fns: dict[str, Callable[[], object]] = {}
            errors: dict[str, str] = {}
            matches: dict[str, bool] = {}
            encode_only = mode == E2E_ENCODE
            for impl in impls:
                if impl == "plain":
                    fns[impl] = (
                        (lambda: mods.encoder(obs)) if encode_only
                        else (lambda r=random_actions: plain_end_to_end(mods, obs, horizon, r))
                    )
                elif impl == "reverie":
                    fns[impl] = (
                        (lambda: world_model.encode(data.select("observation"))) if encode_only
                        else (lambda p=pol: env.rollout(
                            horizon, p, tensordict=world_model.encode(data.select("observation"))
                        ))
                    )
                elif impl == "torchrl":
                    if torchrl_env is None:
                        errors[impl] = torchrl_error
                        continue
                    fns[impl] = (
                        (lambda: torchrl_wm.encode(data.select("observation"))) if encode_only
                        else (lambda p=pol: torchrl_env.rollout(
                            horizon, p, tensordict=torchrl_wm.encode(data.select("observation"))
                        ))
                    )
                else:
                    raise ValueError(f"unknown implementation {impl!r}")
            torch.manual_seed(seed + 2)
            reference = (
                (mods.encoder(obs),) if encode_only
                else plain_end_to_end(mods, obs, horizon, random_actions)
            )
            for impl, fn in list(fns.items()):
                if impl == "plain":
                    matches[impl] = True
                    continue
                torch.manual_seed(seed + 2)
                try:
                    out = (fn()["latent"],) if encode_only else rollout_outputs(fn())
                except Exception as err:  # noqa: BLE001 - reported in the table
                    errors[impl] = f"fails: {_short_error(err)}"
                    del fns[impl]
                    continue
                matches[impl] = all(
                    o is not None and o.shape == r.shape and torch.equal(o, r)
                    for o, r in zip(out, reference, strict=True)
                )
            times, calls, n_rounds = time_interleaved(fns, rounds, min_time, warmup_time)
            plain = times.get("plain")
            for impl in impls:
                row = {"impl": impl, "actions": mode, "batch": batch, "horizon": horizon}
                if impl in errors:
                    row.update(error=errors[impl], status="fails")
                    rows.append(row)
                    log(_e2e_line(row))
                    continue
                sec = statistics.median(times[impl])
                row.update(
                    seconds_per_call=sec,
                    rounds=n_rounds,
                    calls_per_round=calls[impl],
                    seconds_per_round=times[impl],
                    matches_plain=matches.get(impl),
                )
                if plain is not None:
                    row["ratio_to_plain"] = sec / statistics.median(plain)
                    paired = [t / p for t, p in zip(times[impl], plain, strict=True)]
                    row["ratio_to_plain_paired_median"] = statistics.median(paired)
                    row["ratio_to_plain_paired_iqr"] = _iqr(paired)
                    if impl == "reverie" and not encode_only:
                        row["target"] = E2E_TARGET
                        judged = row["ratio_to_plain_paired_median"]
                        row["status"] = "PASS" if judged <= E2E_TARGET else "FAIL"
                if impl == "torchrl" and torchrl_note:
                    row["note"] = torchrl_note
                rows.append(row)
                log(_e2e_line(row))
    return rows


def _iqr(values: list[float]) -> list[float]:
    """``[25th, 75th]`` percentiles (``statistics.quantiles``, exclusive method)."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


E2E_HEADER = ("implementation", "actions", "B", "H", "us per call", "ratio to plain",
              "paired ratio (IQR)", "target", "result")


def _e2e_cells(row: dict) -> tuple[str, ...]:
    head = (row["impl"], row["actions"], str(row["batch"]), str(row["horizon"]))
    if "error" in row:
        return (*head, row["error"], "-", "-", "-", "-")
    ratio = row.get("ratio_to_plain")
    paired = row.get("ratio_to_plain_paired_median")
    iqr = row.get("ratio_to_plain_paired_iqr")
    target = row.get("target")
    result = row.get("status", "-")
    if row.get("matches_plain") is False:
        result += " (outputs differ from plain!)"
    return (
        *head,
        f"{row['seconds_per_call'] * 1e6:,.0f}",
        "-" if ratio is None else f"{ratio:.3f}x",
        "-" if paired is None else f"{paired:.3f}x ({iqr[0]:.2f}-{iqr[1]:.2f})",
        "-" if target is None else f"<= {target:.2f}x",
        result,
    )


def _e2e_line(row: dict) -> str:
    c = _e2e_cells(row)
    return f"{c[0]:<8} {c[1]:<6} B={c[2]:>2} H={c[3]:>3}  {c[4]:>8} us  {c[5]:>8}  {c[6]:>20}  {c[7]:>9}  {c[8]}"


def _text_table(cells: list[tuple[str, ...]], left: int) -> str:
    """Aligned text table: header row, a rule, then rows; the first ``left`` columns left-aligned."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) if j < left else x.rjust(w)
                               for j, (x, w) in enumerate(zip(c, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_e2e_table(rows: list[dict]) -> str:
    return _text_table([E2E_HEADER, *(_e2e_cells(r) for r in rows)], left=2)


def format_e2e_markdown(rows: list[dict]) -> list[str]:
    """The end-to-end section of the results page."""
    lines = [
        "",
        "## End to end: the spec's usage at batch 1",
        "",
        "`start = world_model.encode(data.select(\"observation\"))` then "
        "`env.rollout(15, policy, tensordict=start)`, timed from the observations to the "
        "finished rollout (encode, reset and rollout included), with a `TensorDictModule` "
        "policy and with random actions (`policy=None`). The plain loop runs the encoder "
        "and then the same loop; its random actions are `torch.rand(B, A) * 2 - 1`, the same "
        "draws as the action spec's. \"Paired ratio\" is the median (and interquartile "
        "range) over rounds of time(impl) / time(plain) within one round. Target for "
        f"Reverie: <= {E2E_TARGET}x.",
        "",
        "| " + " | ".join(E2E_HEADER) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(E2E_HEADER) - 2)) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_e2e_cells(row)) + " |")
    reverie = [r for r in rows if r["impl"] == "reverie" and "target" in r]
    passed = sum(r["status"] == "PASS" for r in reverie)
    lines += [
        "",
        f"Reverie meets its target in {passed} of {len(reverie)} rows. Every rollout was "
        "checked to equal the plain loop exactly (latent, action, next latent, reward) from "
        "the same random seed before timing.",
        "",
        "- \"encode only\" times the encode call alone: `world_model.encode(data.select("
        "\"observation\"))` (TorchRL: its `WorldModel.encode`) against the raw encoder "
        "`encoder(obs)`. Both world models call the encoder through `TensorDictModule`, whose "
        "per-call overhead (with tensordict 0.14.3 it also looks pandas up with "
        "`importlib.util.find_spec` on every output it writes, a file-system search when "
        "pandas is not installed) makes the encode call cost several times the raw encoder; "
        "that difference is part of every end-to-end row and is not in the rollout-only rows "
        "above.",
        "- Reverie's random actions (`policy=None`) come from the action spec "
        "(`env.rand_action`'s numbers, bit for bit); without a done model every step is "
        "taken, so the fast path draws the actions of all steps in one `torch.rand` call "
        "(the same numbers and generator state as step-by-step draws on the CPU).",
    ]
    return lines


# ---------------------------------------------------------------------- reporting
HEADER = (
    "implementation", "B", "H", "transitions/s", "ratio to plain", "paired ratio", "target",
    "result",
)


def _row_cells(row: dict) -> tuple[str, ...]:
    if "error" in row:
        return (row["impl"], str(row["batch"]), str(row["horizon"]), row["error"], "-", "-", "-", "-")
    ratio = row.get("ratio_to_plain")
    paired = row.get("ratio_to_plain_paired_median")
    target = row.get("target")
    result = row.get("status", "-")
    if row.get("matches_plain") is False:
        result += " (outputs differ from plain!)"
    return (
        row["impl"],
        str(row["batch"]),
        str(row["horizon"]),
        _fmt_int(row["transitions_per_s"]),
        "-" if ratio is None else f"{ratio:.3f}x",
        "-" if paired is None else f"{paired:.3f}x",
        "-" if target is None else f"<= {target:.2f}x",
        result,
    )


def _row_line(row: dict) -> str:
    c = _row_cells(row)
    return f"{c[0]:<8} B={c[1]:>5} H={c[2]:>3}  {c[3]:>14} tr/s  {c[4]:>8}  {c[5]:>8}  {c[6]:>9}  {c[7]}"


def format_table(rows: list[dict]) -> str:
    return _text_table([HEADER, *(_row_cells(r) for r in rows)], left=1)


def format_markdown(rows: list[dict], meta: dict, e2e_rows: list[dict] | None = None) -> str:
    m = meta["machine"]
    lines = [
        "# Imagination speed: Reverie `WorldModelEnv.rollout` vs a plain PyTorch loop vs TorchRL",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m['cpu']} ({m['cpus']} logical CPUs), torch {m['torch']}, "
        f"tensordict {m['tensordict']}, torchrl {m['torchrl']}, Python {m['python']}, "
        f"{m['threads']} torch thread(s){_nice_note(m)}. Load average before/after: "
        f"{meta['load_before']} / {meta['load_after']}. Total time {meta['elapsed_s']:.0f} s.",
        "",
        "Setting: 17-d observation, 64-d latent, 6-d action, 256-unit ReLU MLPs (dynamics "
        "(64+6)->256->256->64, reward 64->256->1, policy 64->256->6 tanh), the same weights "
        "in all implementations, `torch.no_grad()`. Metric: imagined transitions per second "
        "(B x H / median seconds per rollout over interleaved rounds) and time(impl) / "
        "time(plain) as the ratio of the medians; \"paired ratio\" is the median over rounds of "
        "the same ratio within one round, which cancels load that changes between rounds on a "
        "shared machine. Targets apply to Reverie and are judged on the paired ratio: <= 1.3x "
        "at B = 1 and 64, <= 1.05x at B >= 1024.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_row_cells(row)) + " |")
    reverie = [r for r in rows if r["impl"] == "reverie" and "status" in r]
    passed = sum(r["status"] == "PASS" for r in reverie)
    lines += [
        "",
        f"Reverie meets its target in {passed} of {len(reverie)} rows.",
        "",
        "Notes:",
        "",
        "- `plain` is the floor: `a = pi(z); z2 = dyn(cat(z, a)); r = rew(z2)` per step and one "
        "`torch.stack` per output at the end. It returns latent, action, next latent and reward "
        "only. Reverie (and TorchRL) also return the `done`/`terminated` flags at t and t+1 "
        "(four bool tensors of shape (B, H, 1)) inside a TensorDict with batch size (B, H) "
        "and a named time dim; that work is included in their time.",
        "- Every rollout was checked to equal the plain loop exactly (latent, action, next "
        "latent, reward) before timing; a row marked \"outputs differ\" would say otherwise.",
        "- Reverie uses one unbatched, not batch-locked env for every batch size; TorchRL's env "
        "is built per batch size.",
        "- TorchRL's `rollout` writes into the start tensordict (done flags, action, `\"next\"`), "
        "so every TorchRL call gets a fresh `TensorDict({\"latent\": z0}, [B])` (about 10 us, "
        "included in its time). Reverie's rollout leaves its start tensordict unchanged and "
        "reuses it.",
    ]
    noted = [r for r in rows if r.get("note")]
    if noted:
        first = noted[0]
        lines.append(
            f"- TorchRL (B = {first['batch']}; the same at every batch size): {first['note']}. "
            "Everything timed is TorchRL's code."
        )
    if e2e_rows:
        lines += format_e2e_markdown(e2e_rows)
    lines.append("")
    return "\n".join(lines)


def _nice_note(machine: dict) -> str:
    nice = machine.get("niceness")
    return f", niceness {nice} (other jobs ran on the machine)" if nice else ""


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
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tensordict": tensordict.__version__,
        "torchrl": torchrl.__version__,
        "threads": threads,
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
    }


def _loadavg() -> str:
    try:
        return "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 1 and 64, H=15 only (smoke test); writes files only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {DEFAULT_OUT.relative_to(REPO_ROOT)}); "
                        "the markdown table goes next to it with a .md suffix")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--rounds", type=int, default=11,
                        help="interleaved timing rounds (default 11; fewer, at least 5, when a "
                        "round is long)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds each implementation is timed per round (default 0.2)")
    parser.add_argument("--e2e-rounds", type=int, default=21,
                        help="interleaved rounds of the end-to-end case (default 21)")
    parser.add_argument("--only-e2e", action="store_true",
                        help="run the end-to-end case only (writes files only with --out)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(
        ["python", "benchmarks/bench_imagination.py", *argv]
    )
    if args.quick:
        batch_sizes, horizons = (1, 64), (15,)
    else:
        batch_sizes, horizons = BATCH_SIZES, HORIZONS
    out = args.out if args.out is not None or args.quick or args.only_e2e else DEFAULT_OUT

    load_before = _loadavg()
    t0 = time.perf_counter()
    print(f"threads={args.threads} load={load_before}", flush=True)
    rows = [] if args.only_e2e else run_benchmark(
        batch_sizes, horizons, rounds=args.rounds, min_time=args.min_time, seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    print("end to end (encode + reset + rollout):", flush=True)
    e2e_rows = run_end_to_end(
        rounds=args.e2e_rounds, min_time=args.min_time, seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    elapsed = time.perf_counter() - t0
    meta = {
        "command": command,
        "machine": machine_info(args.threads),
        "load_before": load_before,
        "load_after": _loadavg(),
        "elapsed_s": elapsed,
    }
    if rows:
        print()
        print(format_table(rows))
    reverie = [r for r in rows if r["impl"] == "reverie" and "status" in r]
    passed = sum(r["status"] == "PASS" for r in reverie)
    print()
    print(format_e2e_table(e2e_rows))
    reverie += [r for r in e2e_rows if r["impl"] == "reverie" and "status" in r]
    passed = sum(r["status"] == "PASS" for r in reverie)
    print(f"\nReverie meets its target in {passed}/{len(reverie)} rows; "
          f"{elapsed:.0f} s; load after {meta['load_after']}")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "obs_dim": OBS_DIM, "latent_dim": LATENT_DIM, "action_dim": ACTION_DIM,
            "hidden": HIDDEN, "batch_sizes": list(batch_sizes), "horizons": list(horizons),
            "rounds": args.rounds, "min_time_s": args.min_time, "seed": args.seed,
            "statistic": "median seconds per rollout over interleaved rounds",
            "end_to_end": {
                "batch": E2E_BATCH, "horizon": E2E_HORIZON, "actions": list(E2E_ACTIONS),
                "rounds": args.e2e_rounds, "target": E2E_TARGET,
                "timed": "world_model.encode(data.select('observation')) + env.rollout(H, "
                         "policy, tensordict=start); plain: encoder + loop",
            },
        }
        payload = {**meta, "settings": settings, "table": rows, "end_to_end": e2e_rows}
        out.write_text(json.dumps(payload, indent=2) + "\n")
        out.with_suffix(".md").write_text(format_markdown(rows, meta, e2e_rows))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    if any(r.get("matches_plain") is False for r in rows + e2e_rows):
        print("ERROR: some rollout differs from the plain loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
