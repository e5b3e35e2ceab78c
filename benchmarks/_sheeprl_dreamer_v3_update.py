"""SheepRL's DreamerV3 learner update, timed for ``bench_dreamer_v3.py`` (run in SheepRL's venv).

Not part of Reverie: it imports only SheepRL (0.8.4), its dependencies and gymnasium, and runs
with the python of a separate virtual environment (SheepRL pins its own versions)::

    python3 -m venv /work/sheeprl_venv
    /work/sheeprl_venv/bin/pip install torch==2.13.0
    /work/sheeprl_venv/bin/pip install sheeprl==0.8.4
    /work/sheeprl_venv/bin/python benchmarks/_sheeprl_dreamer_v3_update.py --preset XS

It builds SheepRL's DreamerV3 agent from its own Hydra configs (``exp=dreamer_v3``,
``algo=dreamer_v3_<preset>``, ``env=gym`` with ``Pendulum-v1``, the state vector as the only
observation, one environment, CPU) and one batch of ``batch_size`` sequences of
``sequence_length`` real Pendulum steps (uniform random actions in ``[-1, 1]``), then serves
the parent over a line protocol so that its rounds interleave with the other implementations:

* on start it prints one JSON line ``{"ready": true, "params": {...}, ...}``;
* each stdin line ``run N`` runs ``N`` updates and prints ``{"times": [...]}`` (seconds);
* ``quit`` (or the end of stdin) ends it.

One update is what SheepRL's training loop does per gradient step: the soft update of the
target critic, then ``sheeprl.algos.dreamer_v3.dreamer_v3.train`` (world-model loss, backward,
step; imagination, actor loss, backward, step; critic loss, backward, step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _emit(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _config(preset: str, batch_size: int, sequence_length: int, precision: str):
    import sheeprl
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from sheeprl.utils.utils import dotdict

    overrides = [
        "exp=dreamer_v3", f"algo=dreamer_v3_{preset}", "env=gym", "env.id=Pendulum-v1",
        "env.num_envs=1", "env.capture_video=False", "algo.cnn_keys.encoder=[]",
        "algo.mlp_keys.encoder=[state]", "algo.cnn_keys.decoder=[]",
        "algo.mlp_keys.decoder=[state]", f"algo.per_rank_batch_size={batch_size}",
        f"algo.per_rank_sequence_length={sequence_length}", "fabric.accelerator=cpu",
        f"fabric.precision={precision}", "metric.log_level=0", "checkpoint.save_last=False",
        "model_manager.disabled=True", "buffer.size=100000",
    ]
    config_dir = str(Path(sheeprl.__file__).parent / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)), overrides


def _batch(batch_size: int, sequence_length: int, seed: int):
    """``[T, B, ...]`` float tensors of real Pendulum-v1 steps (random actions in [-1, 1])."""
    import gymnasium as gym
    import numpy as np
    import torch

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    obs_seq, act_seq, rew_seq = [], [], []
    for b in range(batch_size):
        obs, _ = env.reset(seed=seed + b)
        obs_list, act_list, rew_list = [], [], []
        for _ in range(sequence_length):
            action = rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)
            obs_list.append(obs)
            act_list.append(action)
            obs, reward, _, _, _ = env.step(2.0 * action)  # SheepRL rescales [-1, 1] to the bounds
            rew_list.append([reward])
        obs_seq.append(obs_list)
        act_seq.append(act_list)
        rew_seq.append(rew_list)
    as_tb = lambda x: torch.as_tensor(np.array(x), dtype=torch.float32).transpose(0, 1)  # noqa: E731
    zeros = torch.zeros(sequence_length, batch_size, 1)
    is_first = zeros.clone()
    is_first[0] = 1.0
    return {"state": as_tb(obs_seq), "actions": as_tb(act_seq), "rewards": as_tb(rew_seq),
            "terminated": zeros.clone(), "truncated": zeros.clone(), "is_first": is_first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="XS", help="SheepRL size preset (algo=dreamer_v3_<preset>).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--precision", default="32-true", help="Lightning Fabric precision.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="Untimed updates before 'ready'.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import hydra
    import sheeprl
    from lightning.fabric import Fabric
    from sheeprl.algos.dreamer_v3 import dreamer_v3 as dv3
    from sheeprl.algos.dreamer_v3.agent import build_agent
    from sheeprl.algos.dreamer_v3.utils import Moments
    from sheeprl.utils.env import make_env
    from sheeprl.utils.metric import MetricAggregator

    cfg, overrides = _config(args.preset, args.batch_size, args.sequence_length, args.precision)
    MetricAggregator.disabled = True
    torch.manual_seed(args.seed)
    fabric = Fabric(accelerator="cpu", devices=1, precision=args.precision)
    env = make_env(cfg, args.seed, 0, None, "train", vector_env_idx=0)()
    action_space, observation_space = env.action_space, env.observation_space
    actions_dim = tuple(action_space.shape)
    world_model, actor, critic, target_critic, _player = build_agent(
        fabric, actions_dim, True, cfg, observation_space)
    optimizers = [hydra.utils.instantiate(c.optimizer, params=m.parameters(), _convert_="all")
                  for c, m in ((cfg.algo.world_model, world_model), (cfg.algo.actor, actor),
                               (cfg.algo.critic, critic))]
    world_opt, actor_opt, critic_opt = fabric.setup_optimizers(*optimizers)
    m = cfg.algo.actor.moments
    moments = Moments(m.decay, m.max, m.percentile.low, m.percentile.high)
    data = _batch(args.batch_size, args.sequence_length, args.seed)
    tau = cfg.algo.critic.tau

    def update() -> None:
        batch = {k: v.clone() for k, v in data.items()}  # train() writes is_first in place
        with torch.no_grad():
            for cp, tcp in zip(critic.module.parameters(), target_critic.parameters(), strict=True):
                tcp.data.copy_(tau * cp.data + (1 - tau) * tcp.data)
        dv3.train(fabric, world_model, actor, critic, target_critic, world_opt, actor_opt,
                  critic_opt, batch, None, cfg, True, actions_dim, moments)

    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    params = {"world_model": count(world_model), "actor": count(actor), "critic": count(critic),
              "target_critic": count(target_critic)}
    params["parts"] = {name: count(getattr(world_model, name)) for name in
                       ("encoder", "rssm", "observation_model", "reward_model", "continue_model")
                       if hasattr(world_model, name)}
    initial = getattr(world_model.rssm, "initial_recurrent_state", None)
    if initial is not None:
        params["parts"]["initial_recurrent_state"] = initial.numel()
    for _ in range(args.warmup):
        update()
    _emit({"ready": True, "params": params, "sheeprl": sheeprl.__version__,
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "precision": args.precision, "overrides": overrides, "pid": os.getpid()})
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] != "run":
            _emit({"error": f"unknown command {line.strip()!r}; expected 'run N' or 'quit'"})
            continue
        times = []
        for _ in range(int(words[1]) if len(words) > 1 else 1):
            start = time.perf_counter()
            update()
            times.append(time.perf_counter() - start)
        _emit({"times": times})


if __name__ == "__main__":
    main()
