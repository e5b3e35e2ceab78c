"""PILCO speed and memory: Reverie vs the published implementation (TorchRL), one process.

Cases, on transitions of random actions in the cart-pole swing-up task
(``reverie/CartPoleSwingUp-v0`` without its unwrapped-angle observation: D = 5 observations
``(x, x_dot, cos phi, sin phi, phi_dot)``, F = 1 action, float64; the published model has no
angle handling, so both model the sine and cosine directly):

* ``fit``: GP hyper-parameter fit (marginal likelihood, gpytorch + botorch L-BFGS-B) on
  n = 500 and n = 2000 transitions. Reverie fits the D GPs as one batched gpytorch model;
  the published ``GPWorldModel.fit`` fits a botorch ``ModelListGP`` of D ``SingleTaskGP``.
* ``rollout``: one 40-step imagined rollout with gradients (forward, expected saturating
  cost summed over the horizon, backward to the controller), B = 1, on n = 200 and n = 500
  training points: ``ImaginedEnv(GPWorldModel) + RBFController (50 basis functions) +
  ExponentialQuadraticCost`` of each library. Both models are given the *same*
  hyper-parameters (Reverie's fit) and training data, and before timing the one-step
  moment-matched mean and covariance of the two must agree (``rtol = 1e-5``).

Each case runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its
own; a case that exceeds ``--mem-limit-gb`` (address-space limit) or ``--timeout`` is
reported as such. Results: ``docs/results/benchmarks/pilco.{json,md}``.

Usage::

    python benchmarks/bench_pilco.py             # all cases, writes the results
    python benchmarks/bench_pilco.py --quick     # n = 500 fit, n = 200 rollout; no files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "results" / "benchmarks" / "pilco.json"
HORIZON, N_BASIS = 40, 50


def transitions(n: int, seed: int = 0):
    import gymnasium as gym
    import torch
    from tensordict import TensorDict
    from torchrl.envs import GymWrapper

    import reverie.envs  # noqa: F401  (registers the task)

    class TrigOnly(gym.ObservationWrapper):  # (x, x_dot, cos, sin, phi_dot): drop phi
        def __init__(self, env):
            super().__init__(env)
            self.observation_space = gym.spaces.Box(-float("inf"), float("inf"), (5,), "float64")

        def observation(self, observation):
            return observation[:5]

    env = GymWrapper(TrigOnly(gym.make("reverie/CartPoleSwingUp-v0")))
    env.set_seed(seed)
    torch.manual_seed(seed)
    chunks, total = [], 0
    while total < n:
        r = env.rollout(30)
        chunks.append(r)
        total += r.numel()
    data = torch.cat(chunks, 0)[:n]
    return TensorDict({"observation": data["observation"], "action": data["action"].double(),
                       ("next", "observation"): data["next", "observation"]}, [n]), env


def _published_model(obs_dim: int, action_dim: int, ours):
    """The published GPWorldModel holding Reverie's fitted hyper-parameters and data."""
    from torchrl.modules.models.gp import GPWorldModel as Published

    model = Published(obs_dim, action_dim)
    x = ours.train_inputs
    model.X_tilde_train = x.clone()
    model.ell = ours.lengthscales.clone()
    model.alpha_sq = ours.signal_var[:, None].clone()
    model.sigma_sq_eps = ours.noise_var.clone()
    # the same conditioning (Reverie's Cholesky of K + s^2 I): only the propagation differs
    model._cached_inv_K_noisy, model._cached_beta = ours.inv_gram.clone(), ours.beta.clone()
    return model


def case_fit(impl: str, n: int) -> dict:
    import torch

    data, _ = transitions(n)
    if impl == "reverie":
        from reverie.modules import GPWorldModel
        model = GPWorldModel(5, 1)
    else:
        from torchrl.modules.models.gp import GPWorldModel
        model = GPWorldModel(5, 1).double()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model.fit(data)
    return {"seconds": time.perf_counter() - t0}


def case_rollout(impl: str, n: int, repeats: int) -> dict:
    import torch
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule

    from reverie.envs.cartpole_swingup import swingup_cost_matrix
    from reverie.modules import GPWorldModel

    data, env = transitions(n)
    ours = GPWorldModel(5, 1)
    ours.fit(data, max_iter=100)
    target = torch.tensor([0, 0, 1.0, 0, 0], dtype=torch.float64)
    weights = torch.as_tensor(swingup_cost_matrix()[:5, :5], dtype=torch.float64)  # no phi
    start = TensorDict({("observation", "mean"): torch.tensor([[0, 0, -1.0, 0, 0]], dtype=torch.float64),
                        ("observation", "var"): 1e-2 * torch.eye(5, dtype=torch.float64)[None]}, [1])
    keys = dict(in_keys=[("observation", "mean"), ("observation", "var")],
                out_keys=[("action", "mean"), ("action", "var"), ("action", "cross_covariance")])
    torch.manual_seed(0)
    if impl == "reverie":
        from reverie.envs import ImaginedEnv
        from reverie.modules import RBFController
        from reverie.objectives import ExponentialQuadraticCost

        controller = RBFController(5, 1, 10.0, n_basis=N_BASIS).double()
        cost = ExponentialQuadraticCost(target, weights)
        imagined = ImaginedEnv(ours, env, batch_size=[1], reward_module=cost.as_reward())

        def step() -> float:
            r = imagined.rollout(HORIZON, TensorDictModule(controller, **keys),
                                 tensordict=imagined.reset(start.clone()))
            loss = -r["next", "reward"].sum()
            loss.backward()
            return loss.item()
    else:
        from torchrl.envs.model_based import ImaginedEnv
        from torchrl.modules.models import RBFController
        from torchrl.objectives import ExponentialQuadraticCost

        model = _published_model(5, 1, ours)
        check_agreement(model, ours, start)
        controller = RBFController(5, 1, max_action=torch.tensor([10.0]), n_basis=N_BASIS).double()
        cost = ExponentialQuadraticCost(target=target, weights=weights, reduction="none")
        imagined = ImaginedEnv(world_model_module=model, base_env=env)

        def step() -> float:
            r = imagined.rollout(HORIZON, TensorDictModule(controller, **keys),
                                 tensordict=start.clone())
            loss = cost(r["next"])["loss_cost"].sum()
            loss.backward()
            return loss.item()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"seconds": times[len(times) // 2], "all_seconds": times}


def check_agreement(published, ours, start) -> None:
    """One moment-matching step of both models on the same belief and action must agree."""
    import torch

    td = start.clone()
    td["action", "mean"] = torch.tensor([[1.0]], dtype=torch.float64)
    td["action", "var"] = torch.tensor([[[0.5]]], dtype=torch.float64)
    c = torch.tensor([[[0.01], [0.0], [0.0], [0.02], [0.0]]], dtype=torch.float64)  # cov[x, u]
    td["action", "cross_covariance"] = c
    mean, var = ours.propagate(td["observation", "mean"], td["observation", "var"],
                               td["action", "mean"], td["action", "var"], c)
    theirs = td.clone()
    # the published model reads Sigma_x^{-1} cov[x, u] under this key
    theirs["action", "cross_covariance"] = torch.linalg.solve(td["observation", "var"], c)
    with torch.no_grad():
        out = published(theirs)
    pm, pv = out["next", "observation", "mean"], out["next", "observation", "var"]
    if not (torch.allclose(pm, mean, rtol=1e-5, atol=1e-7) and torch.allclose(pv, var, rtol=1e-4, atol=1e-6)):
        raise SystemExit(f"moment matching disagrees: mean {mean} vs {pm}; var diag "
                         f"{var.diagonal(dim1=-2, dim2=-1)} vs {pv.diagonal(dim1=-2, dim2=-1)}")


def child(args) -> None:
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.case == "fit":
        result = case_fit(args.impl, args.n)
    else:
        result = case_rollout(args.impl, args.n, args.repeats)
    result["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result))


def run_case(case: str, impl: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", case, impl, str(n), "--repeats", str(args.repeats)]
    limit = int(args.mem_limit_gb * 2**30)

    def cap():  # an address-space cap so a runaway case fails instead of swapping
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    row = {"case": case, "impl": impl, "n": n}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timeout > {args.timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        status = "out of memory" if "memory" in tail[0].lower() or "alloc" in tail[0].lower() else tail[0][:120]
        return {**row, "status": status}
    return {**row, "status": "ok", **json.loads(lines[-1][len("RESULT "):])}


def format_table(rows: list[dict]) -> str:
    lines = ["| case | n | Reverie (s) | published (s) | published / Reverie | Reverie peak RSS (GB) | published peak RSS (GB) |",
             "|---|---|---|---|---|---|---|"]
    keyed = {(r["case"], r["n"], r["impl"]): r for r in rows}
    for case, n in sorted({(r["case"], r["n"]) for r in rows}):
        ours, theirs = keyed.get((case, n, "reverie")), keyed.get((case, n, "published"))

        def cell(r, k):
            if r is None:
                return "-"
            return f"{r[k]:.3g}" if r["status"] == "ok" else r["status"]
        ratio = (f"{theirs['seconds'] / ours['seconds']:.2f}x"
                 if ours and theirs and ours["status"] == theirs["status"] == "ok" else "-")
        label = "fit (marginal likelihood)" if case == "fit" else f"{HORIZON}-step rollout + backward"
        lines.append(f"| {label} | {n} | {cell(ours, 'seconds')} | {cell(theirs, 'seconds')} | {ratio} | "
                     f"{cell(ours, 'max_rss_gb')} | {cell(theirs, 'max_rss_gb')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("CASE", "IMPL", "N"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--mem-limit-gb", type=float, default=16.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.child:
        args.case, args.impl, args.n = args.child[0], args.child[1], int(args.child[2])
        child(args)
        return 0
    fits, rollouts = ([500], [200]) if args.quick else ([500, 2000], [200, 500])
    rows = []
    for case, sizes in (("fit", fits), ("rollout", rollouts)):
        for n in sizes:
            for impl in ("reverie", "published"):
                row = run_case(case, impl, n, args)
                print(json.dumps(row))
                rows.append(row)
    table = format_table(rows)
    print(table)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is not None:
        import torch
        meta = {"command": " ".join(["python benchmarks/bench_pilco.py", *sys.argv[1:]]),
                "load_average_1_5_15_min_at_end": [round(v, 2) for v in os.getloadavg()],
                "machine": platform.platform(), "python": platform.python_version(),
                "torch": torch.__version__, "threads": 1, "horizon": HORIZON, "n_basis": N_BASIS,
                "mem_limit_gb": args.mem_limit_gb}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**meta, "table": rows}, indent=2) + "\n")
        md = ["# PILCO: Reverie vs the published implementation", "",
              f"Command: `{meta['command']}` (one CPU thread per process, {meta['machine']}; "
              f"load average over 1/5/15 min at the end: {meta['load_average_1_5_15_min_at_end']} "
              "on 2 cores).", "",
              "Cart-pole swing-up transitions of random actions (D = 5, F = 1, float64). Rollout: "
              f"{HORIZON} imagined steps, B = 1, RBF controller with {N_BASIS} basis functions, "
              "expected saturating cost, backward to the controller; both models hold the same "
              "hyper-parameters and data and their one-step moment matching agrees before timing. "
              "Median of the repeats; peak RSS of the case's own process.", "", table, ""]
        out.with_suffix(".md").write_text("\n".join(md))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
