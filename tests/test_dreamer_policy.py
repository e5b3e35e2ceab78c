"""``DreamerPolicy`` over batched envs: a latent per env, resets at ``is_init``, picklable.

The references are computed by hand, one env at a time, from the RSSM and the actor, with
the noise the batched policy drew (each step: the prior's ``(*E, S)``, the posterior's
``(*E, S)``, then the action noise's ``(*E, A)``, from the global generator).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs import Compose, GymEnv, InitTracker, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal

from reverie.modules import DreamerActor, DreamerPolicy, RSSMPosterior, RSSMPrior, mlp

S, R, H, A, OBS = 4, 16, 16, 1, 3
NOISE = 0.3


def make_env(max_steps: int | None = None) -> TransformedEnv:
    """Pendulum-v1 with an ``InitTracker`` (and a ``StepCounter`` when ``max_steps`` is set)."""
    transforms = [InitTracker()] if max_steps is None else [StepCounter(max_steps), InitTracker()]
    return TransformedEnv(GymEnv("Pendulum-v1"), Compose(*transforms))


def make_policy(action_spec, noise: float = NOISE, policy_spec=None) -> DreamerPolicy:
    """A small Dreamer policy: MLP encoder, RSSM, tanh-Gaussian actor (mode by default), for
    one env's ``action_spec``; ``policy_spec`` (default: that one) is the policy's."""
    encoder = mlp(OBS, H, H, depth=2, activation=nn.ELU)
    prior = RSSMPrior(action_spec, hidden_dim=H, rnn_hidden_dim=R, state_dim=S)
    posterior = RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=R, obs_embed_dim=H)
    space = action_spec.space
    actor = ProbabilisticActor(
        TensorDictModule(DreamerActor(A, num_cells=16, in_features=S + R), ["state", "belief"],
                         ["loc", "scale"]),
        in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal,
        distribution_kwargs={"low": space.low, "high": space.high,
                             "tanh_loc": True, "upscale": 5.0},
        spec=action_spec, default_interaction_type=ExplorationType.DETERMINISTIC)
    return DreamerPolicy(encoder, prior, posterior, actor, policy_spec or action_spec, noise=noise)


def draws(seed: int, steps: int, batch: tuple[int, ...], noise: float) -> list[tuple]:
    """The noise a batched policy draws after ``torch.manual_seed(seed)``, step by step."""
    torch.manual_seed(seed)
    out = []
    for _ in range(steps):
        prior_noise, post_noise = torch.randn(*batch, S), torch.randn(*batch, S)
        action_noise = torch.randn(*batch, A) if noise > 0 else None
        out.append((prior_noise, post_noise, action_noise))
    return out


def filter_one_env(policy, spec, obs, is_init, noise):
    """One env alone, by hand: ``obs (T, OBS)``, ``is_init (T,)`` and ``noise`` a list of
    ``(prior, posterior, action)`` noise of that env -> actions ``(T, A)``, latents per step."""
    s, h, a = torch.zeros(S), torch.zeros(R), torch.zeros(A)
    half = (spec.space.high - spec.space.low) / 2
    actions, latents = [], []
    with torch.no_grad():
        for t in range(obs.shape[0]):
            if is_init[t]:
                s, h, a = torch.zeros(S), torch.zeros(R), torch.zeros(A)
            prior_noise, post_noise, action_noise = noise[t]
            _, _, _, h = policy.prior(s, h, a, noise=prior_noise)
            _, _, s = policy.posterior(h, policy.encoder(obs[t]), noise=post_noise)
            a = policy.actor(TensorDict({"state": s, "belief": h}, []))["action"]
            if action_noise is not None:
                a = spec.project(a + policy.noise * half * action_noise)
            actions.append(a)
            latents.append((s, h, a))
    return torch.stack(actions), latents


def test_batched_rollout_equals_single_env_runs_env_by_env():
    env = SerialEnv(3, make_env)
    single_spec = make_env().action_spec
    policy = make_policy(single_spec, policy_spec=env.action_spec)  # noise bounds of shape (3, A)
    env.set_seed(0)
    torch.manual_seed(1)
    rollout = env.rollout(7, policy, break_when_any_done=False)  # (3, 7)
    env.close()
    assert rollout["action"].shape == (3, 7, A)
    assert [tuple(x.shape) for x in policy.latent] == [(3, S), (3, R), (3, A)]
    steps = draws(1, 7, (3,), NOISE)
    assert rollout["is_init"][:, 0].all() and not rollout["is_init"][:, 1:].any()
    for i in range(3):
        noise = [tuple(x[i] for x in step) for step in steps]
        actions, latents = filter_one_env(policy, single_spec, rollout["observation"][i],
                                          rollout["is_init"][i, :, 0], noise)
        torch.testing.assert_close(rollout["action"][i], actions)
        for kept, by_hand in zip(policy.latent, latents[-1], strict=True):
            torch.testing.assert_close(kept[i], by_hand)
    # the envs saw different observations, so their actions differ
    assert not torch.allclose(rollout["action"][0], rollout["action"][1])


@pytest.mark.parametrize("init_shape", [(3, 1), (3,)])
def test_is_init_resets_only_that_envs_latent(init_shape):
    spec = make_env().action_spec
    policy = make_policy(spec)
    obs = torch.randn(2, 3, OBS)
    for t in range(2):
        policy(TensorDict({"observation": obs[t]}, [3]))
    assert all(bool(x.any()) for x in policy.latent[:2])
    carried_on, restarted = copy.deepcopy(policy), copy.deepcopy(policy)
    restarted.reset()
    td = TensorDict({"observation": torch.randn(3, OBS)}, [3])
    is_init = torch.tensor([False, True, False]).reshape(init_shape)
    for p, step in ((policy, td.clone().set("is_init", is_init)), (carried_on, td.clone()),
                    (restarted, td.clone())):
        torch.manual_seed(3)
        p(step)
    for kept, cont, fresh in zip(policy.latent, carried_on.latent, restarted.latent, strict=True):
        torch.testing.assert_close(kept[[0, 2]], cont[[0, 2]])  # envs 0, 2 carried on
        torch.testing.assert_close(kept[1], fresh[1])  # env 1 restarted from zeros
    assert not torch.allclose(policy.latent[1][1], carried_on.latent[1][1])
    # reset(env_mask) zeroes the masked envs and leaves the others as they are
    before = [x.clone() for x in policy.latent]
    policy.reset(torch.tensor([[False], [False], [True]]))
    for kept, old in zip(policy.latent, before, strict=True):
        assert torch.equal(kept[:2], old[:2]) and not kept[2].any()
    policy.reset()
    assert policy.latent is None


def test_batch_shape_change_and_unbatched_calls_start_from_zeros():
    policy = make_policy(make_env().action_spec)
    policy(TensorDict({"observation": torch.randn(3, OBS)}, [3]))
    assert policy.latent[0].shape == (3, S)
    single = TensorDict({"observation": torch.randn(OBS)}, [])
    torch.manual_seed(4)
    action = policy(single.clone())["action"]
    assert action.shape == (A,) and [tuple(x.shape) for x in policy.latent] == [(S,), (R,), (A,)]
    fresh = make_policy(make_env().action_spec)
    fresh.load_state_dict(policy.state_dict())
    torch.manual_seed(4)
    torch.testing.assert_close(fresh(single.clone())["action"], action)
    # is_init of shape (1,) or () on an unbatched tensordict
    for flag in (torch.tensor([True]), torch.tensor(True)):
        torch.manual_seed(4)
        torch.testing.assert_close(policy(single.clone().set("is_init", flag))["action"], action)


def test_policy_survives_pickle():
    policy = make_policy(make_env().action_spec)
    td = TensorDict({"observation": torch.randn(2, OBS)}, [2])
    policy(td.clone())
    clone = pickle.loads(pickle.dumps(policy))
    assert clone.noise == policy.noise and clone.obs_key == policy.obs_key
    assert clone.in_keys == policy.in_keys and clone.out_keys == policy.out_keys
    outs = []
    for p in (policy, clone):
        torch.manual_seed(5)
        outs.append(p(td.clone())["action"])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(policy.latent, clone.latent, strict=True):
        torch.testing.assert_close(a, b)
    pickle.loads(pickle.dumps(make_policy(make_env().action_spec)))  # before any call


def test_rollout_resets_at_each_episode_start():
    env = make_env(max_steps=5)
    policy = make_policy(env.action_spec)
    latents = []
    forward = policy.forward

    def recording(td):
        out = forward(td)
        latents.append(tuple(x.clone() for x in policy.latent))
        return out

    policy.forward = recording
    env.set_seed(0)
    torch.manual_seed(2)
    rollout = env.rollout(12, policy, break_when_any_done=False)
    env.close()
    is_init = rollout["is_init"][:, 0]
    assert is_init.nonzero().flatten().tolist() == [0, 5, 10]
    steps = draws(2, 12, (), NOISE)
    obs = rollout["observation"]
    actions, by_hand = filter_one_env(policy, env.action_spec, obs, is_init, steps)
    torch.testing.assert_close(rollout["action"], actions)
    for t in (0, 5, 10):  # the latent after an is_init step: one filter step from zeros
        prior_noise, post_noise, _ = steps[t]
        with torch.no_grad():
            zeros = torch.zeros(S), torch.zeros(R), torch.zeros(A)
            _, _, _, h = policy.prior(*zeros, noise=prior_noise)
            _, _, s = policy.posterior(h, policy.encoder(obs[t]), noise=post_noise)
        torch.testing.assert_close(latents[t][0], s)
        torch.testing.assert_close(latents[t][1], h)
        for kept, ref in zip(latents[t], by_hand[t], strict=True):
            torch.testing.assert_close(kept, ref)
    # without the resets the filter would have carried on from the previous episode
    _, carried = filter_one_env(policy, env.action_spec, obs, torch.arange(12) == 0, steps)
    assert not torch.allclose(carried[5][1], latents[5][1])


def test_actor_runs_under_the_callers_exploration_type():
    policy = make_policy(make_env().action_spec, noise=0.0)
    td = TensorDict({"observation": torch.randn(4, OBS)}, [4])
    actions = {}
    for kind in (ExplorationType.DETERMINISTIC, ExplorationType.RANDOM):
        policy.reset()
        torch.manual_seed(6)
        with set_exploration_type(kind):
            actions[kind] = policy(td.clone())["action"]
    mode, sample = actions[ExplorationType.DETERMINISTIC], actions[ExplorationType.RANDOM]
    assert not torch.allclose(mode, sample)


def test_runs_in_a_collector_over_a_batched_env():
    from torchrl.collectors import Collector

    env = SerialEnv(2, lambda: make_env(max_steps=4))
    policy = make_policy(make_env().action_spec)
    collector = Collector(env, policy, frames_per_batch=12, total_frames=12)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch["action"].shape == (2, 6, A)
    assert batch["is_init"][:, :, 0].sum(-1).tolist() == [2, 2]  # starts at t = 0 and 4
    assert [tuple(x.shape) for x in policy.latent] == [(2, S), (2, R), (2, A)]
