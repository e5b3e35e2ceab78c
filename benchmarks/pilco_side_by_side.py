"""The published PILCO recipe (TorchRL) vs Reverie's on InvertedPendulum-v5: same budget, same machine.

Published side: the procedure of TorchRL's ``sota-implementations/pilco`` with its
default config, built from TorchRL's published modules (``GPWorldModel``, ``RBFController``,
``ImaginedEnv``, ``MeanActionSelector``, ``ExponentialQuadraticCost``): 200 random steps,
then 3 epochs of {fit the GP on the (last 350) transitions, 100 Adam steps (lr 5e-3) on the
expected cost of a 40-step imagined rollout from N(0, 1e-3 I), one 100-step evaluation
episode whose transitions are added}. Reverie side: ``reverie train pilco --env
InvertedPendulum-v5`` with the same real-interaction budget (``random_trials=2`` of 100
steps, ``trials=3`` of at most 100 steps, ``horizon=40``).

Both are scored the same way: the mean return (steps balanced, at most 100) of 3 evaluation
episodes of the final controller from seeded resets, per seed, and wall-clock seconds.
Results: ``docs/results/pilco/InvertedPendulum-v5/side_by_side.{json,md}``.

Usage::

    python benchmarks/pilco_side_by_side.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "docs" / "results" / "pilco" / "InvertedPendulum-v5"
ENV = "InvertedPendulum-v5"


def evaluate(env_factory, policy, seed: int, episodes: int = 3, steps: int = 100) -> list[float]:
    import torch
    returns = []
    for i in range(episodes):
        env = env_factory()
        env.set_seed(20_000 + 1000 * seed + i)
        with torch.no_grad():
            r = env.rollout(steps, policy, break_when_any_done=True)
        returns.append(r["next", "reward"].sum().item())
    return returns


def published(seed: int) -> dict:
    """TorchRL's published PILCO procedure (default config), on its own modules."""
    import tensordict
    import torch
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule
    from torchrl.envs import GymEnv, TransformedEnv
    from torchrl.envs.model_based import ImaginedEnv
    from torchrl.envs.transforms import MeanActionSelector
    from torchrl.modules.models import GPWorldModel, RBFController
    from torchrl.objectives import ExponentialQuadraticCost

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    env = GymEnv(ENV)
    env.set_seed(seed)
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    rollout = env.rollout(200, break_when_any_done=False, break_when_all_done=False)
    controller = RBFController(obs_dim, action_dim, n_basis=10, max_action=env.action_spec.high).double()
    policy = TensorDictModule(controller, in_keys=[("observation", "mean"), ("observation", "var")],
                              out_keys=[("action", "mean"), ("action", "var"), ("action", "cross_covariance")])
    optim = torch.optim.Adam(policy.parameters(), lr=5e-3)
    start = TensorDict({("observation", "mean"): torch.zeros(obs_dim, dtype=torch.float64),
                        ("observation", "var"): 1e-3 * torch.eye(obs_dim, dtype=torch.float64)})
    eval_env = TransformedEnv(env, MeanActionSelector())
    cost = ExponentialQuadraticCost(reduction="none")
    for _ in range(3):
        model = GPWorldModel(obs_dim, action_dim)
        model.fit(rollout.to(torch.float64))
        model.eval()
        imagined = ImaginedEnv(world_model_module=model, base_env=env)
        reset = start.expand(*imagined.batch_size)
        for _ in range(100):
            optim.zero_grad()
            data = imagined.rollout(max_steps=40, policy=policy, tensordict=reset)
            loss = cost(data)["loss_cost"].sum(-1).mean()
            loss.backward()
            optim.step()
        with torch.no_grad():
            test = eval_env.rollout(100, policy, break_when_any_done=True)
        test.set("observation", test.get(("observation", "mean")))
        test.set("action", test.get(("action", "mean")))
        test.set(("next", "observation"), test.get(("next", "observation", "mean")))
        test = test.select(*rollout.keys(include_nested=True, leaves_only=True))
        rollout = tensordict.cat([rollout, test], 0)[-350:]
    wall = time.perf_counter() - t0
    returns = evaluate(lambda: TransformedEnv(GymEnv(ENV), MeanActionSelector()), policy, seed)
    return {"eval_returns": returns, "eval_return": sum(returns) / len(returns), "wall_clock_s": wall}


def reverie(seed: int, run_root: Path) -> dict:
    run_dir = run_root / f"reverie-s{seed}"
    cmd = [sys.executable, "-m", "reverie.cli", "train", "pilco", "--env", ENV, "--seed", str(seed),
           f"run_dir={run_dir}", "random_trials=2", "trials=3", "trial_steps=100", "horizon=40",
           "policy_iters=100", "stop_when_solved=false", "eval_episodes=3", "progress=false"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    wall = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"eval_returns": summary["eval/returns"], "eval_return": summary["eval/return"],
            "wall_clock_s": wall, "command": " ".join(cmd[2:])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--impl", choices=["both", "published", "reverie"], default="both")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "side_by_side")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    results = {"published": {}, "reverie": {}}
    for seed in args.seeds:
        if args.impl in ("both", "published"):
            try:
                results["published"][seed] = published(seed)
            except Exception as err:  # report, don't hide, a crash of the published code
                results["published"][seed] = {"error": f"{type(err).__name__}: {err}"[:300]}
            print("published", seed, results["published"][seed], flush=True)
        if args.impl in ("both", "reverie"):
            results["reverie"][seed] = reverie(seed, args.runs)
            print("reverie", seed, results["reverie"][seed], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/pilco_side_by_side.py --seeds " + " ".join(map(str, args.seeds))
    (args.out / "side_by_side.json").write_text(json.dumps({"command": command, **results}, indent=2) + "\n")
    lines = ["# PILCO on InvertedPendulum-v5: published recipe vs Reverie", "",
             f"Command: `{command}` (one CPU thread). Budget: 200 random steps + 3 controller "
             "episodes of at most 100 steps; score: mean return (steps balanced, max 100) of 3 "
             "evaluation episodes of the final controller.", "",
             "| seed | published return | published wall (s) | Reverie return | Reverie wall (s) |",
             "|---|---|---|---|---|"]
    for seed in args.seeds:
        p, r = results["published"].get(seed, {}), results["reverie"].get(seed, {})
        pr = p.get("eval_return", p.get("error", "-"))
        lines.append(f"| {seed} | {pr if isinstance(pr, str) else f'{pr:.1f}'} | "
                     f"{p.get('wall_clock_s', float('nan')):.0f} | {r.get('eval_return', float('nan')):.1f} | "
                     f"{r.get('wall_clock_s', float('nan')):.0f} |")
    (args.out / "side_by_side.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
