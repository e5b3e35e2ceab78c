"""The ``dreamer_v3`` recipe: continuous, discrete and pixel debug runs in the shared loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchrl.data import OneHot

from reverie import load_agent
from reverie.algorithms import dreamer_v3
from reverie.diagnostics.video import video_suffix
from reverie.runs import load_checkpoint, resolve_config


def _train(tmp_path, name: str, *overrides: str):
    run_dir = tmp_path / name
    config = resolve_config(dreamer_v3.Config, ["debug"],
                            ["progress=false", f"run_dir={run_dir}", *overrides])
    return dreamer_v3.train(config), run_dir


def _series(run_dir, name: str) -> list[float]:
    rows = [r.split(",") for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    return [float(r[2]) for r in rows if r[1] == name]


def test_continuous_debug_run_trains_every_part(tmp_path):
    summary, run_dir = _train(tmp_path, "pendulum", "env_steps=600")
    assert summary["env_steps"] == 600 and summary["updates"] == 5 * 50  # 8 * 100 / 16 per batch
    for name in ("train/loss_model_dyn", "train/loss_model_reco", "train/loss_model_reward",
                 "train/loss_model_cont", "train/loss_actor", "train/loss_value",
                 "train/loss_replay_value"):
        assert all(math.isfinite(v) for v in _series(run_dir, name)), name
    assert (run_dir / "diagnostics" / "imagined_vs_real.png").exists()
    state = load_checkpoint(run_dir / "checkpoint.pt")["agent"]
    assert any(k.startswith("slow_critic.") for k in state)
    assert any(k.startswith("return_normalizer.") for k in state)


def test_discrete_actions_run_end_to_end_with_one_hot_actions(tmp_path):
    summary, run_dir = _train(tmp_path, "cartpole", "env=CartPole-v1")
    assert summary["env_steps"] == 400
    agent = load_agent(run_dir)
    env = agent.make_env()
    assert isinstance(env.action_spec, OneHot)
    episode = agent.play(1)
    assert len(episode) == 1 and episode[0] >= 1  # CartPole pays 1 per step
    config = resolve_config(dreamer_v3.Config, ["debug"], ["env=CartPole-v1"])
    model = dreamer_v3.make_agent(config, dreamer_v3.make_env(config), torch.device("cpu"))
    assert model.losses["actor"].actor_gradient == "reinforce"


@pytest.mark.parametrize("preset", ["XS", "S", "M"])
def test_size_presets_are_the_papers(preset):
    config = resolve_config(dreamer_v3.Config, [preset], [])
    sizes = {"XS": (256, 256, 24, 1), "S": (512, 512, 32, 2), "M": (1024, 640, 48, 3)}[preset]
    assert (config.deter, config.hidden, config.cnn_depth, config.mlp_layers) == sizes
    assert (config.stoch, config.classes, config.blocks) == (32, 32, 8)


def test_pixel_debug_run_writes_the_open_loop_video(tmp_path):
    summary, run_dir = _train(tmp_path, "pixels", "pixels=true", "env_steps=300", "eval_every=0")
    assert summary["env_steps"] == 300
    assert (run_dir / "diagnostics" / f"imagined_vs_real{video_suffix()}").exists()
    assert (run_dir / "diagnostics" / f"eval_episode{video_suffix()}").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["pixels"] is True


def test_replay_slices_cross_episodes_so_short_episodes_and_their_ends_are_replayed():
    from tensordict import TensorDict

    config = resolve_config(dreamer_v3.Config, ["debug"], ["env=CartPole-v1", "batch_length=8"])
    agent = dreamer_v3.make_agent(config, dreamer_v3.make_env(config), torch.device("cpu"))
    n = 60  # episodes of 5 steps, all shorter than batch_length
    step = torch.arange(n) % 5
    batch = TensorDict({
        "observation": torch.randn(n, 4), "action": torch.zeros(n, 2), "is_init": (step == 0)[:, None],
        "episode": torch.arange(n) // 5,
        ("next", "observation"): torch.randn(n, 4), ("next", "reward"): torch.ones(n, 1),
        ("next", "terminated"): (step == 4)[:, None], ("next", "done"): (step == 4)[:, None],
        ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool)}, [n])
    buffer = agent.make_buffer()
    buffer.extend(agent.store(batch))
    sample = buffer.sample().reshape(config.batch_size, config.batch_length)
    assert bool(sample["next", "terminated"].any())  # episode ends are replayed
    assert bool(sample["is_init"][:, 1:].any())  # a slice continues into the next episode
    assert torch.equal(sample["episode"].diff(dim=1).clamp(0, 1).bool(), sample["is_init"][:, 1:, 0])


def test_world_model_learns_the_observations_and_rewards_of_a_fixed_batch():
    from torchrl.envs import Compose, InitTracker, StepCounter, TransformedEnv

    torch.manual_seed(0)
    config = resolve_config(dreamer_v3.Config, ["debug"], ["train_ratio=16", "lr=1e-3"])
    agent = dreamer_v3.make_agent(config, dreamer_v3.make_env(config), torch.device("cpu"))
    env = TransformedEnv(dreamer_v3.make_env(config), Compose(StepCounter(100), InitTracker()))
    env.set_seed(0)
    data = env.rollout(400, break_when_any_done=False)
    buffer = agent.make_buffer()
    buffer.extend(agent.store(data))
    fixed = buffer.sample().reshape(config.batch_size, config.batch_length)

    def losses():
        with torch.no_grad():
            out, _ = agent.losses["model"](fixed.clone())
        return out["loss_model_reco"].item(), out["loss_model_reward"].item()

    before = losses()
    for _ in range(4):  # 4 x 100 updates (16 replayed steps per agent step, 16 per update)
        agent.update(buffer, data[:100])
    after = losses()
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1], (before, after)
