"""The shared training spine: collectors and batched envs, devices, lean checkpoints, exact
resume of real recipes, trained agents for users."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer

from reverie import load_agent, training
from reverie.algorithms import dreamer, dreamer_v3, pets, pilco, world_model
from reverie.runs import load_checkpoint, resolve_config
from reverie.training import (
    Agent,
    buffer_state_dict,
    load_buffer_state_dict,
    make_replay_buffer,
    resolve_device,
)

DREAMER_SMALL = ["env_steps=400", "eval_every=0", "eval_episodes=1", "progress=false"]


def _dreamer(tmp_path, name: str, *extra: str):
    config = resolve_config(dreamer.Config, ["debug"], [*DREAMER_SMALL, *extra,
                                                       f"run_dir={tmp_path / name}"])
    summary = dreamer.train(config)
    return summary, load_checkpoint(tmp_path / name / "checkpoint.pt"), config


# ----------------------------------------------------------------------------- collection
def test_two_envs_and_two_workers_store_what_one_env_stores_and_slices_stay_in_episodes(tmp_path):
    """200 agent steps (400 env steps, action repeat 2) as 1 env, 2 batched envs, and 2
    collector processes of 2 envs: the same number of stored transitions, whole 50-step
    episodes, and every sampled Dreamer slice inside one episode."""
    runs = {"one": [], "two_envs": ["num_envs=2"],
            "two_workers": ["num_envs=2", "collector_workers=2", "seed_episodes=4"]}
    for name, extra in runs.items():
        summary, state, config = _dreamer(tmp_path, name, *extra)
        assert summary["env_steps"] == 400, name
        rows = state["buffer"]["_storage"]["_storage"]
        assert state["buffer"]["_storage"]["_len"] == 200 and rows["episode"].shape == (200,), name
        # whole episodes: 4 ids, 50 frames each, contiguous, starting with is_init
        episodes = rows["episode"]
        assert torch.equal(episodes, torch.arange(4).repeat_interleave(50)), name
        assert rows["is_init"].reshape(4, 50)[:, 0].all() and not rows["is_init"].reshape(4, 50)[:, 1:].any()
        assert rows["next.truncated"].reshape(4, 50)[:, -1].all(), name
        agent = dreamer.make_agent(config, dreamer.make_env(config), torch.device("cpu"))
        buffer = agent.make_buffer()
        load_buffer_state_dict(buffer, state["buffer"])
        for _ in range(20):
            batch = buffer.sample().reshape(config.batch_size, config.batch_length)
            ids = batch["episode"]
            assert (ids == ids[:, :1]).all(), name  # one episode per slice
            assert not batch["is_init"][:, 1:].any(), name  # no episode start inside a slice


def test_frames_that_do_not_split_over_envs_are_refused(tmp_path):
    config = resolve_config(pets.Config, ["debug"], ["num_envs=3", f"run_dir={tmp_path}",
                                                     "progress=false"])
    with pytest.raises(ValueError, match="frames_per_batch=40 .* 3 env"):
        pets.train(config)


# ----------------------------------------------------------------------------- devices
def test_a_missing_device_is_refused_before_anything_is_created(tmp_path):
    for name in ("cuda:3", "mps") if not torch.cuda.is_available() else ("cuda:99",):
        config = resolve_config(pets.Config, ["debug"], [f"device={name}",
                                                         f"run_dir={tmp_path / 'x'}"])
        with pytest.raises(ValueError, match=f"device='{name}' is not available.*Available: cpu"):
            pets.train(config)
        assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        resolve_device("gpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("recipe", [pets, pilco, dreamer, dreamer_v3, world_model])
def test_every_parameter_and_sampled_batch_is_on_the_config_device(recipe):
    config = resolve_config(recipe.Config, ["debug"], ["device=auto"])
    device = resolve_device(config.device)
    env = recipe.make_env(config)
    agent = recipe.make_agent(config, env, device)
    assert all(t.device.type == device.type for t in [*agent.parameters(), *agent.buffers()])
    buffer = agent.make_buffer()
    collector = training.make_collector(
        training.collect.EnvFactory(recipe.make_env, config, agent.schedule.max_episode_steps),
        None, agent.schedule.frames_per_batch)
    collector.set_seed(0)
    batch, _ = training.collect.flatten_batch(next(iter(collector)), 0)
    collector.shutdown()
    buffer.extend(agent.store(batch))
    assert buffer.sample().device.type == device.type


def test_an_agent_with_a_module_off_the_device_is_refused():
    class Bad(Agent):
        schedule = training.Schedule(total_steps=1, frames_per_batch=1, random_steps=0,
                                     max_episode_steps=1)

        def __init__(self):
            super().__init__("meta")
            self.net = torch.nn.Linear(2, 2)  # on the CPU

        def policy(self, explore):
            raise NotImplementedError

        def make_buffer(self):
            raise NotImplementedError

        def update(self, buffer, batch):
            raise NotImplementedError

    with pytest.raises(RuntimeError, match="net.weight is on cpu, the run's device is meta"):
        training.loop._check_agent(Bad(), torch.device("meta"))


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoints_hold_the_data_not_the_capacity(tmp_path):
    """A PETS debug run (buffer capacity 1,000,000) checkpoints in well under 5 MB."""
    run_dir = tmp_path / "pets"
    pets.train(resolve_config(pets.Config, ["debug"], [f"run_dir={run_dir}", "progress=false"]))
    assert (run_dir / "checkpoint.pt").stat().st_size < 5e6
    rows = load_checkpoint(run_dir / "checkpoint.pt")["buffer"]["_storage"]["_storage"]
    assert all(v.shape[0] == 120 for v in rows.values())


def test_pixel_dreamer_debug_checkpoint_is_under_50_mb(tmp_path):
    """``--preset pixels --preset debug`` (800 env steps: 400 frames of 3x64x64 floats)."""
    run_dir = tmp_path / "pixels"
    config = resolve_config(dreamer.Config, ["pixels", "debug"], [f"run_dir={run_dir}",
                                                                  "progress=false"])
    assert config.env_steps == 800 and config.pixels
    dreamer.train(config)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    rows = state["buffer"]["_storage"]["_storage"]
    assert "pixels" not in rows and rows["next.pixels"].shape == (400, 3, 64, 64)  # frames once
    assert (run_dir / "checkpoint.pt").stat().st_size < 50e6


def test_a_full_buffer_round_trips_and_keeps_overwriting_the_same_rows():
    def filled():
        rb = ReplayBuffer(storage=LazyTensorStorage(10), batch_size=4)
        rb.extend(TensorDict(x=torch.arange(13.0), batch_size=[13]))  # wrapped: cursor at 3
        return rb

    rb, restored = filled(), ReplayBuffer(storage=LazyTensorStorage(10), batch_size=4)
    load_buffer_state_dict(restored, buffer_state_dict(rb))
    assert torch.equal(restored[:]["x"], rb[:]["x"])
    more = TensorDict(x=torch.tensor([100.0, 101.0]), batch_size=[2])
    rb.extend(more)
    restored.extend(more.clone())
    assert torch.equal(restored[:]["x"], rb[:]["x"])  # rows 3 and 4 overwritten in both
    with pytest.raises(ValueError, match="empty buffer"):
        load_buffer_state_dict(restored, buffer_state_dict(rb))
    small = make_replay_buffer(5, 2)
    with pytest.raises(ValueError, match="capacity 5"):
        load_buffer_state_dict(small, buffer_state_dict(rb))


# ----------------------------------------------------------------------------- exact resume
def _kill_in_update(monkeypatch, agent_cls, call: int) -> None:
    real, calls = agent_cls.update, {"n": 0}

    def update(self, buffer, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(self, buffer, batch)

    monkeypatch.setattr(agent_cls, "update", update)


def _rows(run_dir):
    """Metric rows, without wall-clock timings (``*_s``)."""
    return [r for r in (run_dir / "metrics.csv").read_text().splitlines() if "_s," not in r]


@pytest.mark.parametrize(("recipe", "agent_cls", "overrides", "kill_at"), [
    (pets, pets.PETSAgent, ["checkpoint_every=40"], 3),
    (pilco, pilco.PILCOAgent, ["checkpoint_every=10", "trials=2", "stop_when_solved=false"], 2),
    (dreamer_v3, dreamer_v3.DreamerV3Agent, ["checkpoint_every=100", "env_steps=400"], 2),
    (dreamer, dreamer.DreamerAgent, ["checkpoint_every=400"], 2),
    (world_model, world_model.WorldModelAgent, ["checkpoint_every=40", "iterations=2"], 2),
])
def test_kill_and_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch, recipe, agent_cls,
                                                     overrides, kill_at):
    common = ["progress=false", *overrides]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    recipe.train(resolve_config(recipe.Config, ["debug"], [*common, f"run_dir={straight}"]))
    with monkeypatch.context() as patch:
        _kill_in_update(patch, agent_cls, kill_at)
        with pytest.raises(KeyboardInterrupt):
            recipe.train(resolve_config(recipe.Config, ["debug"], [*common, f"run_dir={killed}"]))
    assert not (killed / "summary.json").exists()
    recipe.train(resolve_config(recipe.Config, [], [f"resume={killed}"]))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert a == b  # the same returns and model errors, bit for bit
    assert _rows(straight) == _rows(killed)  # every metric row once, the same values
    sa, sb = (load_checkpoint(d / "checkpoint.pt") for d in (straight, killed))
    assert all(torch.equal(sa["agent"][k], sb["agent"][k]) for k in sa["agent"]
               if isinstance(sa["agent"][k], torch.Tensor))
    ra, rb = sa["buffer"]["_storage"]["_storage"], sb["buffer"]["_storage"]["_storage"]
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)


# ----------------------------------------------------------------------------- users
def test_load_agent_plays_a_gymnasium_episode(tmp_path):
    run_dir = tmp_path / "pets"
    summary = pets.train(resolve_config(pets.Config, ["debug"], [f"run_dir={run_dir}",
                                                                  "progress=false"]))
    agent = load_agent(run_dir)
    assert agent.env_steps == 120 and "pets on Pendulum-v1" in repr(agent)
    assert agent.play(1) == summary["eval/returns"]  # the evaluation, reproduced
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    agent.reset()
    total, done, steps = 0.0, False, 0
    while not done:
        action = agent.predict(obs)
        assert action.shape == (1,) and -2.0 <= action[0] <= 2.0
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done, steps = total + reward, terminated or truncated, steps + 1
    assert steps == 200 and total > -1700  # an episode played by the planner
    with pytest.raises(ValueError, match=r"observation of shape \(4,\), the agent was trained on \(3,\)"):
        agent.predict([0.0, 0.0, 0.0, 0.0])
