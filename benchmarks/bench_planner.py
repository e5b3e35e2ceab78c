"""Planner speed: one MPC decision of Reverie's PETS planner vs the same CEM search in plain PyTorch.

One decision is a full CEM search (500 candidates, 50 elites, 5 iterations, horizon 15 or
30) through a probabilistic ensemble of 5 MLPs (4 hidden layers of 200 SiLU units,
Gaussian head; Pendulum sizes: 3-d observation, 1-d action) with 5 particles per
candidate, one per member (PETS TS-inf, ``propagation="fixed"``), sampling on, the known
Pendulum reward and one environment. Two implementations share the same weights, in one
process:

* ``plain``   - the search written out in plain PyTorch: the CEM loop (sample, clip,
  score, top-k, momentum update of mean and std, warm start) and the model rollout as a
  chain of ``torch.baddbmm`` calls on the ensemble's own weight tensors, with the same
  input normalisation, soft-bounded log-variance, sampling, output de-normalisation and
  reward. Its state stays in the member-major layout ``(M, rows per member, D)`` between
  steps, so it never reshuffles rows. It calls no Reverie module.
* ``reverie`` - what the ``pets`` recipe runs at every real step:
  ``PlannerPolicy(CEMPlanner, objective_factory)`` with ``objective_factory(td) =
  rollout_objective(WorldModelEnv(world_model, base_env), world_model.encode(td),
  particles=5)``, the world model built by ``reverie.algorithms.pets.make_world_model``
  and the planner by ``make_planner`` (the recipe's code path). The timed call is
  ``policy(td)`` on a Pendulum observation.

Correctness: before timing each horizon, with sampling off (``dynamics.sample = False``)
and the same batch of candidate sequences, Reverie's objective values must equal the plain
loop's (``torch.allclose``, rtol = atol = 1e-5); a horizon whose check fails is not timed
and the benchmark exits with status 1.

Metric: decisions per second (1 / median seconds per decision over interleaved rounds) and
the ratio time(reverie) / time(plain), as the ratio of the medians and as the "paired"
ratio (median over rounds of the ratio within one round, which cancels load that changes
between rounds on a shared machine). Target: paired ratio <= 1.2.

Timing, reporting and the machine info come from ``bench_imagination.py``.

Usage::

    python benchmarks/bench_planner.py            # full run (H = 15, 30), writes the results
    python benchmarks/bench_planner.py --quick    # H = 15, 3 rounds; writes only with --out
    python benchmarks/bench_planner.py --no-malloc-trim   # no page-fault noise (glibc)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import json
import math
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torchrl.envs import GymEnv

from reverie.algorithms.pets import Config, make_planner, make_world_model
from reverie.envs import WorldModelEnv
from reverie.modules import EnsembleDynamics
from reverie.planners import PlannerPolicy, rollout_objective


def _imagination_bench():
    """``benchmarks/bench_imagination.py`` as a module (its timing and reporting helpers)."""
    name = "bench_imagination"
    if name not in sys.modules:
        path = Path(__file__).resolve().with_name("bench_imagination.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_bench = _imagination_bench()
_time_calls, _warmup, rounds_for = _bench._time_calls, _bench._warmup, _bench.rounds_for
machine_info, _loadavg, _short_error = _bench.machine_info, _bench._loadavg, _bench._short_error

ENV = "Pendulum-v1"
OBS_DIM, ACTION_DIM = 3, 1
HIDDEN, DEPTH, MEMBERS, PARTICLES = 200, 4, 5, 5
CANDIDATES, ELITES, ITERATIONS = 500, 50, 5
HORIZONS = (15, 30)
IMPLS = ("plain", "reverie")
TARGET = 1.2
CHECK_TOL = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "results" / "benchmarks" / "planner.json"


# ---------------------------------------------------------------------- Reverie (the recipe)
@dataclass
class Setup:
    """Everything one horizon needs: the recipe's objects and the plain search on the same weights."""

    config: Config
    dynamics: EnsembleDynamics
    objective_factory: Callable
    policy: PlannerPolicy
    plain: PlainCEM
    td: TensorDict  # the real observation the decision is taken for (an env reset)


def build(
    horizon: int,
    *,
    candidates: int = CANDIDATES,
    elites: int = ELITES,
    iterations: int = ITERATIONS,
    seed: int = 0,
) -> Setup:
    """The PETS recipe's world model, imagination env, planner and policy, plus ``PlainCEM``.

    The ensemble keeps its random initial weights; its input and output normalisation is
    fitted on one random Pendulum episode, so both are non-trivial.
    """
    torch.manual_seed(seed)
    config = Config(
        env=ENV, seed=seed, hidden=HIDDEN, depth=DEPTH, num_members=MEMBERS, num_elites=MEMBERS,
        propagation="fixed", reward="known", particles=PARTICLES, planner="cem",
        candidates=candidates, elites=elites, iterations=iterations, horizon=horizon,
    )
    env = GymEnv(ENV)
    env.set_seed(seed)
    world_model, dynamics = make_world_model(config, OBS_DIM, ACTION_DIM)
    with torch.no_grad():
        data = env.rollout(200)  # uniform random actions
    dynamics.fit_input_stats(data["observation"], data["action"])
    dynamics.fit_output_stats(data["observation"], data["next", "observation"])

    # exactly as reverie/algorithms/pets.py plans
    imagination = WorldModelEnv(world_model, env)
    planner = make_planner(config, imagination.action_spec)

    def objective_factory(td):
        start = world_model.encode(td.select("observation"))
        return rollout_objective(imagination, start, particles=config.particles)

    policy = PlannerPolicy(planner, objective_factory)
    td = env.reset()
    plain = PlainCEM(dynamics, planner, particles=config.particles)
    return Setup(config, dynamics, objective_factory, policy, plain, td)


# ---------------------------------------------------------------------- plain PyTorch
def _pendulum_reward(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``-(theta^2 + 0.1 thetadot^2 + 0.001 u^2)`` at the state before the step, ``(..., 1)``."""
    theta = torch.atan2(obs[..., 1:2], obs[..., 0:1])
    theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    u = action.clamp(-2.0, 2.0)
    return -(theta.pow(2) + 0.1 * obs[..., 2:3].pow(2) + 0.001 * u.pow(2))


class PlainCEM:
    """The CEM search of ``CEMPlanner`` + ``rollout_objective`` + ``EnsembleDynamics``, hand-written.

    It reads the ensemble's tensors (weights, biases, log-variance bounds, normalisation
    statistics; shared, not copied) and the planner's settings once, then never calls a
    Reverie module.

    Layout: ``rollout_objective`` puts particles innermost, so flattened row ``r = n P + p``
    is candidate ``n``, particle ``p``, and the ensemble's ``"fixed"`` propagation runs row
    ``r`` through member ``r % M``. Here the state is kept as ``(M, G, D)`` with
    ``G = N P / M``: entry ``(m, g)`` is row ``g M + m``, i.e. member ``m``, candidate
    ``g // (P / M)`` (``P`` a multiple of ``M``). Same rows, same members; no transposes.
    """

    def __init__(self, dynamics: EnsembleDynamics, planner, *, particles: int) -> None:
        model = dynamics.model
        members = model.num_members
        if not torch.equal(model.elite_idx.cpu(), torch.arange(members)):
            raise ValueError("PlainCEM: every member must be an elite (num_elites == num_members).")
        if particles % members or model.propagation != "fixed" or dynamics.learn_reward:
            raise ValueError("PlainCEM: needs fixed propagation, P a multiple of M, no reward head.")
        self.dynamics = dynamics  # read for .sample only
        self.members, self.per_member = members, particles // members
        self.obs_dim = dynamics.obs_dim
        self.layers = [(m.weight.detach(), m.bias.detach().unsqueeze(1)) for m in model.layers]
        self.head = (model.head.weight.detach(), model.head.bias.detach().unsqueeze(1))
        self.min_logvar, self.max_logvar = model.min_logvar.detach(), model.max_logvar.detach()
        self.in_mean, self.in_std = model.input_mean, model.input_std
        self.out_mean, self.out_std = dynamics.target_mean, dynamics.target_std
        # the planner's settings
        self.low, self.high = planner.action_low, planner.action_high
        self.horizon, self.action_dim = planner.horizon, planner.action_dim
        self.num_candidates, self.num_elites = planner.num_candidates, planner.num_elites
        self.iterations, self.alpha, self.min_std = planner.iterations, planner.alpha, planner.min_std
        self.init_std = planner.init_std
        self.solution: torch.Tensor | None = None

    def objective(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Mean over particles of the summed imagined reward: ``(D,), (N, H, A) -> (N,)``."""
        num, horizon, adim = actions.shape
        m, c, d = self.members, self.per_member, self.obs_dim
        rows = num * c  # per member
        if c > 1:
            actions = actions.repeat_interleave(c, dim=0)  # (G, H, A): row g -> candidate g // c
        state = obs.expand(m, rows, d)
        total = torch.zeros(m, rows, 1, dtype=obs.dtype)
        sample = self.dynamics.sample
        for t in range(horizon):
            action = actions[:, t].expand(m, rows, adim)
            h = (torch.cat([state, action], -1) - self.in_mean) / self.in_std
            for weight, bias in self.layers:
                h = F.silu(torch.baddbmm(bias, h, weight))
            out = torch.baddbmm(self.head[1], h, self.head[0])
            mean = out[..., :d]
            if sample:
                raw = out[..., d:]
                logvar = self.max_logvar - F.softplus(self.max_logvar - raw)
                logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
                mean = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
            nxt = state + (mean * self.out_std + self.out_mean)
            total += _pendulum_reward(state, action)
            state = nxt
        return total.reshape(m, num, c).mean(dim=(0, 2))

    def plan(self, obs: torch.Tensor) -> torch.Tensor:
        """One CEM search from the warm start; returns the first action ``(A,)``."""
        h, a = self.horizon, self.action_dim
        middle = ((self.low + self.high) / 2).expand(h, a)
        if self.solution is None:
            mean = middle.clone()
        else:  # receding horizon: shift the last plan, fill the end with the middle
            mean = torch.cat([self.solution[1:], middle[-1:]])
        std = self.init_std.expand(h, a)
        for _ in range(self.iterations):
            noise = torch.randn(self.num_candidates, h, a, dtype=mean.dtype)
            samples = torch.clamp(mean + std * noise, self.low, self.high)  # (N, H, A)
            values = self.objective(obs, samples)
            elites = samples[values.topk(self.num_elites).indices]  # (K, H, A)
            mean = self.alpha * mean + (1 - self.alpha) * elites.mean(0)
            std = (self.alpha * std + (1 - self.alpha) * elites.std(0, correction=0)).clamp_min(
                self.min_std
            )
        self.solution = torch.clamp(mean, self.low, self.high)
        return self.solution[0]


# ---------------------------------------------------------------------- correctness
def check_objectives(setup: Setup, num: int | None = None, seed: int = 123) -> dict:
    """Reverie's objective vs the plain one, sampling off, on the same candidate sequences.

    Returns ``{"ok", "max_abs_diff", "candidates"}``; ``ok`` is ``torch.allclose`` with
    rtol = atol = 1e-5.
    """
    num = setup.plain.num_candidates if num is None else num
    plain = setup.plain
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(num, plain.horizon, plain.action_dim, generator=gen)
    samples = torch.clamp((plain.low + plain.high) / 2 + plain.init_std * noise, plain.low, plain.high)
    obs = setup.td["observation"]
    dynamics = setup.dynamics
    previous = dynamics.sample
    dynamics.sample = False
    try:
        with torch.no_grad():
            reverie = setup.objective_factory(setup.td)(samples)
            reference = plain.objective(obs, samples)
    finally:
        dynamics.sample = previous
    ok = reverie.shape == reference.shape and torch.allclose(
        reverie, reference, rtol=CHECK_TOL, atol=CHECK_TOL
    )
    diff = (reverie - reference).abs().max().item() if reverie.shape == reference.shape else math.inf
    return {"ok": bool(ok), "max_abs_diff": diff, "candidates": num}


# ---------------------------------------------------------------------- timing
def disable_malloc_trim() -> str:
    """Stop glibc from returning freed heap memory to the kernel (``mallopt``); returns a note.

    By default glibc trims the top of the heap once more than ``M_TRIM_THRESHOLD`` is
    free and serves large blocks with ``mmap``, so the ensemble's ~2 MB activation buffers
    are handed back and faulted in again, a chaotic share of the time (seen 0 to ~15% of a
    decision, differently for the two implementations). With a 1 GiB trim threshold and a
    32 MiB mmap threshold the pages stay mapped and the timing measures the computation.
    """
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1
        ok = libc.mallopt(m_mmap_threshold, 1 << 25) == 1 and ok
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        return "glibc default (mallopt not available)"
    return "glibc, mallopt(M_TRIM_THRESHOLD=1 GiB, M_MMAP_THRESHOLD=32 MiB): no trimming"


def _minor_faults() -> int:
    """Minor page faults of this process so far (fresh memory pages the kernel handed out)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_benchmark(
    horizons=HORIZONS,
    *,
    rounds: int = 11,
    min_time: float = 0.2,
    warmup_time: float = 0.5,
    warmup_calls: int = 2,
    candidates: int = CANDIDATES,
    elites: int = ELITES,
    iterations: int = ITERATIONS,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time both implementations at every horizon; one row per (impl, H).

    The objective check runs first; a horizon that fails it gets error rows and no timing.
    """
    log = log or (lambda msg: None)
    rows: list[dict] = []
    for horizon in horizons:
        setup = build(horizon, candidates=candidates, elites=elites, iterations=iterations,
                      seed=seed)
        check = check_objectives(setup)
        base = {"horizon": horizon, "candidates": candidates, "elites": elites,
                "iterations": iterations, "alpha": setup.plain.alpha, "objective_check": check}
        if not check["ok"]:
            for impl in IMPLS:
                row = {"impl": impl, **base, "status": "fails",
                       "error": f"objective check failed: max |diff| {check['max_abs_diff']:.3g}"}
                rows.append(row)
                log(_row_line(row))
            continue
        obs, td = setup.td["observation"], setup.td
        fns = {
            "plain": lambda p=setup.plain, o=obs: p.plan(o),
            "reverie": lambda pol=setup.policy, x=td: pol(x),
        }
        with torch.no_grad():
            calls: dict[str, int] = {}
            round_seconds = 0.0
            for impl, fn in fns.items():
                one = _warmup(fn, warmup_time, min_calls=warmup_calls)
                calls[impl] = max(1, math.ceil(min_time / max(one, 1e-9)))
                round_seconds += calls[impl] * one
            n_rounds = rounds_for(round_seconds, rounds, budget=60.0)
            times: dict[str, list[float]] = {impl: [] for impl in fns}
            faults: dict[str, list[float]] = {impl: [] for impl in fns}
            order = list(fns)
            for r in range(n_rounds):
                shift = r % len(order)
                for impl in order[shift:] + order[:shift]:
                    before = _minor_faults()
                    times[impl].append(_time_calls(fns[impl], calls[impl]))
                    faults[impl].append((_minor_faults() - before) / calls[impl])
        plain = statistics.median(times["plain"])
        for impl in IMPLS:
            sec = statistics.median(times[impl])
            paired = [t / p for t, p in zip(times[impl], times["plain"], strict=True)]
            row = {
                "impl": impl, **base,
                "seconds_per_decision": sec,
                "decisions_per_s": 1.0 / sec,
                "rounds": n_rounds,
                "calls_per_round": calls[impl],
                "seconds_per_round": times[impl],
                "ratio_to_plain": sec / plain,
                "ratio_to_plain_paired_median": statistics.median(paired),
                "minor_page_faults_per_decision": statistics.median(faults[impl]),
            }
            if impl == "reverie":
                row["target"] = TARGET
                row["status"] = "PASS" if row["ratio_to_plain_paired_median"] <= TARGET else "FAIL"
            rows.append(row)
            log(_row_line(row))
    return rows


# ---------------------------------------------------------------------- reporting
HEADER = (
    "implementation", "H", "decisions/s", "ms/decision", "ratio to plain", "paired ratio",
    "target", "result",
)


def _row_cells(row: dict) -> tuple[str, ...]:
    if "error" in row:
        return (row["impl"], str(row["horizon"]), row["error"], "-", "-", "-", "-", row["status"])
    target = row.get("target")
    return (
        row["impl"],
        str(row["horizon"]),
        f"{row['decisions_per_s']:.2f}",
        f"{1000 * row['seconds_per_decision']:.0f}",
        f"{row['ratio_to_plain']:.3f}x",
        f"{row['ratio_to_plain_paired_median']:.3f}x",
        "-" if target is None else f"<= {target:.2f}x",
        row.get("status", "-"),
    )


def _row_line(row: dict) -> str:
    c = _row_cells(row)
    return (f"{c[0]:<8} H={c[1]:>3}  {c[2]:>8} dec/s  {c[3]:>6} ms  {c[4]:>8}  {c[5]:>8}  "
            f"{c[6]:>9}  {c[7]}")


def format_table(rows: list[dict]) -> str:
    cells = [HEADER, *(_row_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(s.ljust(w) if j == 0 else s.rjust(w)
                               for j, (s, w) in enumerate(zip(c, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[dict], meta: dict) -> str:
    m = meta["machine"]
    s = meta["settings"]
    lines = [
        "# Planner speed: Reverie's PETS planner (`PlannerPolicy` + `CEMPlanner` + "
        "`rollout_objective` + `WorldModelEnv`) vs a plain PyTorch CEM loop",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m['cpu']} ({m['cpus']} logical CPUs), torch {m['torch']}, "
        f"tensordict {m['tensordict']}, torchrl {m['torchrl']}, Python {m['python']}, "
        f"{m['threads']} torch thread(s). Load average before/after: "
        f"{meta['load_before']} / {meta['load_after']}. Total time {meta['elapsed_s']:.0f} s. "
        f"Allocator: {meta.get('allocator', 'glibc default')}.",
        "",
        f"Setting: one MPC decision = a full CEM search ({s['candidates']} candidates, "
        f"{s['elites']} elites, {s['iterations']} iterations, momentum {s['alpha']}) for one "
        f"Pendulum-v1 observation, through an ensemble of {s['members']} MLPs ({s['depth']} "
        f"hidden layers of {s['hidden']} SiLU units, Gaussian head, inputs 3+1 -> outputs 3) "
        f"with {s['particles']} particles per candidate (one per member, TS-inf \"fixed\" "
        "propagation), sampling on, the known Pendulum reward, warm start from the previous "
        "decision, the same weights in both implementations, `torch.no_grad()`. Metric: "
        "decisions per second (1 / median seconds per decision over interleaved rounds) and "
        "time(reverie) / time(plain) as the ratio of the medians; \"paired ratio\" is the "
        "median over rounds of the same ratio within one round, which cancels load that "
        "changes between rounds on a shared machine. Target: paired ratio <= "
        f"{TARGET:.1f}x.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_row_cells(row)) + " |")
    reverie = [r for r in rows if r["impl"] == "reverie"]
    passed = sum(r.get("status") == "PASS" for r in reverie)
    checks = [r["objective_check"] for r in reverie]
    worst = max((c["max_abs_diff"] for c in checks), default=float("nan"))
    lines += [
        "",
        f"Reverie meets its target in {passed} of {len(reverie)} rows.",
        "",
        "Notes:",
        "",
        "- `reverie` times `policy(td)`, the call the `pets` recipe makes at every real step: "
        "`PlannerPolicy` encodes the observation, builds `rollout_objective(WorldModelEnv("
        "world_model, base_env), start, particles=5)` and runs `CEMPlanner.plan`, which plays "
        "every candidate batch back through `WorldModelEnv.rollout` (fast path) and "
        "`EnsembleDynamics`. The world model and the planner come from "
        "`reverie.algorithms.pets.make_world_model` / `make_planner`.",
        "- `plain` is the same search written out: CEM with the same clipping, top-k, "
        "momentum and std floor; the rollout as `baddbmm` + SiLU on the ensemble's own weight "
        "tensors with the same normalisation, soft log-variance bounds, sampling and reward, "
        "the state kept member-major `(M, N P / M, D)` so rows never move. It builds no "
        "TensorDict, records no trajectory (only the running reward sum) and does no shape "
        "or NaN checks.",
        f"- Before timing, with sampling off and the same {checks[0]['candidates'] if checks else '-'} "
        "candidate sequences, Reverie's objective values were checked to equal the plain "
        f"loop's (`allclose`, rtol = atol = {CHECK_TOL:g}; largest difference {worst:.2g}).",
        "- Page faults: glibc's allocator hands freed activation buffers (about 2 MB each) "
        "back to the kernel and faults them in again, a varying share of the time of both "
        "implementations on CPU (median minor page faults per decision: "
        + ", ".join(f"{r['impl']} H={r['horizon']}: {r['minor_page_faults_per_decision']:,.0f}"
                    for r in rows if "minor_page_faults_per_decision" in r)
        + "). `--no-malloc-trim` keeps the pages mapped (see the allocator above).",
        "- Sampling noise is drawn differently (Reverie per flattened row, plain per "
        "member-major entry), so the two searches do not take identical decisions; the work "
        "per decision is the same.",
        "",
    ]
    return "\n".join(lines)


def settings_for(rows: list[dict], horizons, *, rounds: int, min_time: float, seed: int) -> dict:
    """The settings block of the JSON (and of the markdown's description)."""
    first = rows[0] if rows else {}
    return {
        "env": ENV, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "hidden": HIDDEN,
        "depth": DEPTH, "members": MEMBERS, "particles": PARTICLES,
        "candidates": first.get("candidates", CANDIDATES),
        "elites": first.get("elites", ELITES),
        "iterations": first.get("iterations", ITERATIONS),
        "alpha": first.get("alpha"),
        "horizons": list(horizons), "rounds": rounds, "min_time_s": min_time, "seed": seed,
        "target_paired_ratio": TARGET, "check_tolerance": CHECK_TOL,
        "statistic": "median seconds per decision over interleaved rounds",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="H=15 only, 3 rounds (smoke test); writes files only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {DEFAULT_OUT.relative_to(REPO_ROOT)}); "
                        "the markdown table goes next to it with a .md suffix")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds (default 11, 3 with --quick; fewer, at "
                        "least 5, when a round is long)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds each implementation is timed per round (default 0.2; "
                        "a decision takes longer, so one call per round)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-malloc-trim", action="store_true",
                        help="keep freed memory mapped (glibc mallopt) so that page faults do "
                        "not add noise; default: the allocator as it is")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    allocator = disable_malloc_trim() if args.no_malloc_trim else "glibc default"
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(
        ["python", "benchmarks/bench_planner.py", *argv]
    )
    horizons = (15,) if args.quick else HORIZONS
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 11)
    warmup_time, warmup_calls = (0.0, 1) if args.quick else (0.5, 2)
    out = args.out if args.out is not None or args.quick else DEFAULT_OUT

    load_before = _loadavg()
    t0 = time.perf_counter()
    print(f"threads={args.threads} load={load_before}", flush=True)
    rows = run_benchmark(
        horizons, rounds=rounds, min_time=args.min_time, warmup_time=warmup_time,
        warmup_calls=warmup_calls, seed=args.seed, log=lambda line: print(line, flush=True),
    )
    elapsed = time.perf_counter() - t0
    settings = settings_for(rows, horizons, rounds=rounds, min_time=args.min_time,
                            seed=args.seed)
    meta = {
        "command": command,
        "machine": machine_info(args.threads),
        "allocator": allocator,
        "load_before": load_before,
        "load_after": _loadavg(),
        "elapsed_s": elapsed,
        "settings": settings,
    }
    print()
    print(format_table(rows))
    reverie = [r for r in rows if r["impl"] == "reverie"]
    passed = sum(r.get("status") == "PASS" for r in reverie)
    print(f"\nReverie meets its target in {passed}/{len(reverie)} rows; "
          f"{elapsed:.0f} s; load after {meta['load_after']}")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**meta, "table": rows}, indent=2) + "\n")
        out.with_suffix(".md").write_text(format_markdown(rows, meta))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    if any(not r["objective_check"]["ok"] for r in rows):
        print("ERROR: Reverie's objective differs from the plain loop's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
