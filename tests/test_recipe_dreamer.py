"""Dreamer recipe: the world model learns on real data, the debug run, eval and resume."""

import json

import pytest
import torch

from reverie.algorithms import dreamer
from reverie.cli import main
from reverie.diagnostics import imagine_open_loop
from reverie.runs import resolve_config
from reverie.training import budget_capacity


def test_world_model_losses_fall_on_pendulum_data():
    """150 updates on random Pendulum data cut the reward and reconstruction errors."""
    torch.manual_seed(0)
    config = dreamer.Config(hidden=32, belief_dim=32, state_dim=8, batch_size=8, batch_length=20,
                            free_nats=0.0)
    env = dreamer.make_env(config)
    env.set_seed(0)
    data = env.rollout(400, break_when_any_done=False)
    models = dreamer.make_models(config, env)
    loss = dreamer.DreamerModelLoss(models["world_model"], free_nats=0.0)
    loss.set_keys(observation=("next", "observation"), reconstruction=("next", "reco_observation"))
    optim = torch.optim.Adam(models["world_model"].parameters(), lr=3e-3)

    def sample():
        starts = torch.randint(0, 400 - 20, (8,))
        return torch.stack([data[s:s + 20] for s in starts.tolist()])

    first = None
    for _ in range(150):
        terms, _ = loss(sample())
        total = terms["loss_model_kl"] + terms["loss_model_reco"] + terms["loss_model_reward"]
        if first is None:
            first = {k: terms[k].item() for k in ("loss_model_reco", "loss_model_reward")}
        optim.zero_grad()
        total.backward()
        optim.step()
    with torch.no_grad():
        last, _ = loss(sample())
    assert last["loss_model_reco"].item() < 0.2 * first["loss_model_reco"], (first, last)
    assert last["loss_model_reward"].item() < 0.2 * first["loss_model_reward"], (first, last)


def test_dreamer_debug_run_eval_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    code = main(["train", "dreamer", "--preset", "debug", "env_steps=400", f"run_dir={run_dir}",
                 "progress=false"])
    assert code == 0
    for name in ["config.json", "metrics.csv", "learning_curve.png", "checkpoint.pt",
                 "summary.json", "diagnostics/imagined_vs_real.png"]:
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 400 and summary["updates"] > 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 400 and len(state["buffer"]["_storage"]["_storage"]["episode"]) == 4 * 50
    assert main(["eval", str(run_dir)]) == 0
    # resume with a larger budget: the buffer and the models carry over
    assert main(["train", "--resume", str(run_dir), "env_steps=600"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 600
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    returns = [int(r[0]) for r in rows if r[1] == "train/episode_return"]
    assert returns == sorted(set(returns)) and returns[-1] == 600  # no duplicated rows
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["loop"]["next_episode"] == 6 and state["loop"]["batches"] == 6


def test_the_replay_capacity_follows_the_memory_budget():
    from tensordict import TensorDict

    frame = TensorDict({"pixels": torch.zeros(3, 64, 64), ("next", "pixels"): torch.zeros(3, 64, 64)}, [])
    assert budget_capacity(1_000_000, 4.0, frame) == 4_000_000_000 // 98_304  # 40,690 frames pairs
    assert budget_capacity(10_000, 4.0, frame) == 10_000  # the requested size fits
    with pytest.raises(ValueError, match="buffer_gb=1e-06 holds no transition of 98.3 kB; raise buffer_gb"):
        budget_capacity(10, 1e-6, frame)
    with pytest.raises(ValueError, match="more than half of this machine's .* lower buffer_gb"):
        budget_capacity(10**9, 10**6, frame)


@pytest.mark.parametrize("presets", [["cpu"], ["debug"], ["pixels", "debug"], ["debug", "pixels"]])
def test_pixels_work_with_every_preset_and_presets_compose_in_any_order(presets):
    """``pixels=true`` with any preset: a million-step buffer of 49 kB frames is cut to the
    4 GB budget instead of refused (it needed 98 GB)."""
    config = resolve_config(dreamer.Config, presets, ["pixels=true"])
    assert config == resolve_config(dreamer.Config, presets[::-1], ["pixels=true"])
    env = dreamer.make_env(config)
    agent = dreamer.make_agent(config, env, torch.device("cpu"))
    per = 3 * 64 * 64 * 4  # one stored frame (the model reads ("next", pixels) only)
    if config.buffer_size * per <= 3.9e9:
        assert agent.capacity == config.buffer_size
    else:  # the frame plus under 512 bytes of state, action, reward and flags
        assert 4e9 // (per + 512) <= agent.capacity <= 4e9 // per
    assert agent.make_buffer().storage.max_size == agent.capacity


def test_resize_image_spec_and_values():
    from tensordict import TensorDict

    from reverie.envs.image import ResizeImage

    # a constant image stays constant; a left/right split keeps its two halves' values
    flat = torch.full((2, 3, 40, 40), 0.25)
    torch.testing.assert_close(ResizeImage(8, 8)(TensorDict({"pixels": flat}, [2]))["pixels"],
                               torch.full((2, 3, 8, 8), 0.25))
    split = torch.cat([torch.zeros(1, 3, 40, 20), torch.ones(1, 3, 40, 20)], -1)
    out = ResizeImage(8, 8)(TensorDict({"pixels": split}, [1]))["pixels"]
    assert out.shape == (1, 3, 8, 8)
    assert (out[..., :3] < 0.01).all() and (out[..., 5:] > 0.99).all()
    with pytest.raises(ValueError, match="ToTensorImage"):
        ResizeImage(4, 4)(TensorDict({"pixels": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, [1]))


def test_dreamer_policy_filters_like_the_rssm_and_resets():
    from tensordict import TensorDict

    from reverie.modules import DreamerPolicy

    config = dreamer.Config(hidden=16, belief_dim=16, state_dim=4, actor_hidden=16)
    env = dreamer.make_env(config)
    models = dreamer.make_models(config, env)
    policy = DreamerPolicy(models["encoder"], models["prior"], models["posterior"], models["actor"],
                           env.action_spec)
    env.set_seed(0)
    torch.manual_seed(0)
    rollout = env.rollout(6, policy)
    assert policy.latent is not None
    # by hand, with the same noise: h_t from (s, h, a) of the previous step, s_t from o_t
    prior, post, enc = models["prior"], models["posterior"], models["encoder"]
    torch.manual_seed(0)
    s, h, a = torch.zeros(4), torch.zeros(16), torch.zeros(1)
    with torch.no_grad():
        for t in range(6):
            _, _, _, h = prior(s, h, a)
            _, _, s = post(h, enc(rollout["observation"][t]))
            a = models["actor"](TensorDict({"state": s, "belief": h}, []))["action"]
            torch.testing.assert_close(a, rollout["action"][t])
    policy.reset()
    assert policy.latent is None
    # the world model's filter is the policy's filtering (most likely latents here)
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        latents = models["latent_model"].filter(rollout)
        s, h, a = torch.zeros(4), torch.zeros(16), torch.zeros(1)
        for t in range(6):
            h = prior.mode(s, h, a)[1]
            s = post.mode(h, enc(rollout["observation"][t]))
            a = rollout["action"][t]
            torch.testing.assert_close(latents["state"][t], s)
            torch.testing.assert_close(latents["belief"][t], h)
    with pytest.raises(ValueError, match="context"):
        imagine_open_loop(models["latent_model"], rollout, 6)


def test_pixel_world_model_shapes_follow_cnn_channels():
    """The pixel configuration: 64x64 frames, a ``32 * cnn_channels`` embedding, and a
    decoder whose frames have the observation's shape."""
    config = dreamer.Config(pixels=True, cnn_channels=8, hidden=16, belief_dim=16, state_dim=4,
                            max_episode_steps=20)
    env = dreamer.make_env(config)
    env.set_seed(0)
    data = env.rollout(4, break_when_any_done=False)
    assert data["next", "pixels"].shape == (4, 3, 64, 64)
    models = dreamer.make_models(config, env)
    out = models["world_model"](data.unsqueeze(0))  # (1, 4): one sequence of 4 steps
    assert out["next", "embedding"].shape == (1, 4, 32 * 8) and models["encoder"].out_features == 32 * 8
    assert out["next", "reco_pixels"].shape == (1, 4, 3, 64, 64)
    assert models["encoder"].encoder[0].out_channels == 8
