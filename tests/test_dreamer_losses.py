"""Dreamer maths and losses: KL, free nats, lambda-returns, gradient routing, DreamerEnv."""

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.data import Bounded
from torchrl.envs import TransformedEnv
from torchrl.envs.utils import check_env_specs
from torchrl.modules import ProbabilisticActor, TanhNormal

from reverie.envs import DreamerDecoder, DreamerEnv
from reverie.modules import DreamerActor, ObsDecoder, RSSMPosterior, RSSMPrior, RSSMRollout
from reverie.objectives import (
    DreamerActorLoss,
    DreamerModelLoss,
    DreamerValueLoss,
    discount_weights,
    gaussian_kl,
    kl_free_nats,
    lambda_returns,
)

S, R, H, A, OBS = 3, 6, 8, 2, 4


class OnLatent(torch.nn.Module):
    """A linear map of ``[state, belief]`` (registered, so its parameters are found)."""

    def __init__(self, out):
        super().__init__()
        self.linear = torch.nn.Linear(S + R, out)

    def forward(self, state, belief):
        return self.linear(torch.cat([state, belief], -1))


def test_gaussian_kl_matches_hand_computation():
    # q = N(1, 0.5^2), p = N(0, 2^2): log(2/0.5) + (0.25 + 1) / 8 - 0.5
    kl = gaussian_kl(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0]),
                     torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0]))
    assert kl.item() == pytest.approx(math.log(4) + 1.25 / 8 - 0.5, abs=1e-6)
    # agrees with torch.distributions
    q = torch.distributions.Normal(torch.randn(5, 3), torch.rand(5, 3) + 0.1)
    p = torch.distributions.Normal(torch.randn(5, 3), torch.rand(5, 3) + 0.1)
    torch.testing.assert_close(gaussian_kl(q.loc, q.scale, p.loc, p.scale),
                               torch.distributions.kl_divergence(q, p).sum(-1))


def test_free_nats_and_delayed_clamp():
    kl = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    early = kl_free_nats(kl, 3.0)  # mean(3, 3, 6) = 4
    assert early.item() == pytest.approx(4.0)
    early.backward()
    torch.testing.assert_close(kl.grad, torch.tensor([0.0, 0.0, 1 / 3]))  # no gradient below
    kl.grad = None
    late = kl_free_nats(kl, 3.0, delayed_clamp=True)  # max(mean = 3, 3) -> 3
    assert late.item() == pytest.approx(3.0)
    assert kl_free_nats(torch.tensor([1.0, 8.0]), 3.0, delayed_clamp=True).item() == pytest.approx(4.5)
    assert kl_free_nats(torch.tensor([1.0, 8.0]), 3.0).item() == pytest.approx(5.5)


def test_lambda_returns_by_hand_with_termination():
    r = torch.tensor([1.0, 2.0, 3.0])[:, None]
    v = torch.tensor([10.0, 20.0, 30.0])[:, None]
    term = torch.tensor([0.0, 1.0, 0.0])[:, None]
    g, lam = 0.9, 0.8
    v2 = 3 + g * 30  # 30
    v1 = 2 + 0.0  # terminated: no bootstrap
    v0 = 1 + g * ((1 - lam) * 10 + lam * v1)
    out = lambda_returns(r, v, term, g, lam)
    torch.testing.assert_close(out, torch.tensor([[v0], [v1], [v2]]))
    # lambda = 1: discounted returns + bootstrap; lambda = 0: one-step TD targets
    no_term = torch.zeros(3, 1)
    torch.testing.assert_close(lambda_returns(r, v, no_term, g, 1.0)[0, 0],
                               torch.tensor(1 + g * 2 + g**2 * 3 + g**3 * 30))
    torch.testing.assert_close(lambda_returns(r, v, no_term, g, 0.0), r + g * v)
    torch.testing.assert_close(discount_weights(term, g).flatten(), torch.tensor([1.0, g, 0.0]))
    with pytest.raises(ValueError, match="one shape"):
        lambda_returns(r, v[:2], term, g, lam)


def make_parts(return_log_prob=False):
    torch.manual_seed(0)
    prior = RSSMPrior(action_dim=A, hidden_dim=H, rnn_hidden_dim=R, state_dim=S)
    posterior = RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=R, obs_embed_dim=OBS)
    reward = OnLatent(1)
    reward_fn = TensorDictModule(reward, ["state", "belief"], ["reward"])
    nxt = lambda *k: [("next", x) for x in k]  # noqa: E731
    decoder = OnLatent(OBS)
    world_model = TensorDictSequential(
        TensorDictModule(torch.nn.Identity(), nxt("observation"), nxt("embedding")),
        RSSMRollout(TensorDictModule(prior, ["state", "belief", "action"],
                                     nxt("prior_mean", "prior_std", "_", "belief")),
                    TensorDictModule(posterior, nxt("belief", "embedding"),
                                     nxt("posterior_mean", "posterior_std", "state"))),
        TensorDictModule(decoder, nxt("state", "belief"), nxt("reco_observation")),
        TensorDictModule(reward, nxt("state", "belief"), nxt("reward")))
    spec = Bounded(-1, 1, (A,))
    env = DreamerEnv(TensorDictSequential(
        TensorDictModule(prior, ["state", "belief", "action"], ["prior_mean", "prior_std", "state", "belief"]),
        reward_fn), (S,), (R,), action_spec=spec)
    actor = ProbabilisticActor(
        TensorDictModule(DreamerActor(A, depth=2, num_cells=8), ["state", "belief"], ["loc", "scale"]),
        in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal,
        distribution_kwargs={"tanh_loc": True}, spec=spec, return_log_prob=return_log_prob,
        log_prob_key="action_log_prob")
    value = TensorDictModule(OnLatent(1), ["state", "belief"], ["state_value"])
    world_params = [*prior.parameters(), *posterior.parameters(), *reward.parameters(), *decoder.parameters()]
    return world_model, env, actor, value, world_params


def real_batch(B=4, T=5):
    return TensorDict({"action": torch.rand(B, T, A) * 2 - 1, ("next", "observation"): torch.randn(B, T, OBS),
                       ("next", "reward"): torch.randn(B, T, 1)}, [B, T])


def model_loss(world_model, **kwargs):
    loss = DreamerModelLoss(world_model, **kwargs)
    loss.set_keys(observation=("next", "observation"), reconstruction=("next", "reco_observation"))
    return loss


def test_model_loss_terms_by_hand():
    world_model, *_ = make_parts()
    batch = real_batch()
    loss_td, td = model_loss(world_model, free_nats=0.0, lambda_reco=2.0)(batch)
    kl = gaussian_kl(td["next", "posterior_mean"], td["next", "posterior_std"],
                     td["next", "prior_mean"], td["next", "prior_std"])
    torch.testing.assert_close(loss_td["loss_model_kl"], kl.mean())
    reco = (td["next", "reco_observation"] - batch["next", "observation"]).pow(2).sum(-1).mean()
    torch.testing.assert_close(loss_td["loss_model_reco"], 2 * reco)
    reward = (td["next", "reward"] - batch["next", "reward"]).pow(2).mean()
    torch.testing.assert_close(loss_td["loss_model_reward"], reward)
    torch.testing.assert_close(td["next", "true_reward"], batch["next", "reward"])
    assert "reward" in batch["next"].keys()  # the caller's batch is not modified
    glob, _ = model_loss(world_model, free_nats=0.0, global_average=True)(batch)
    assert glob["loss_model_reco"].item() == pytest.approx(
        (td["next", "reco_observation"] - batch["next", "observation"]).pow(2).mean().item(), rel=0.5)
    with pytest.raises(ValueError, match="reco_loss"):
        DreamerModelLoss(world_model, reco_loss="l3")
    with pytest.raises(KeyError, match="pixels"):
        DreamerModelLoss(world_model)(batch)


def test_actor_gradient_reaches_the_actor_only_and_value_target_is_detached():
    world_model, env, actor, value, world_params = make_parts()
    batch = real_batch()
    _, latent = model_loss(world_model)(batch)
    actor_loss = DreamerActorLoss(actor, value, env, imagination_horizon=4)
    loss_td, fake = actor_loss(latent.get("next"))
    assert fake.batch_size == (20, 4)
    loss_td["loss_actor"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.grad is None for p in world_params)
    assert all(p.grad is None for p in value.parameters())
    assert all(p.requires_grad for p in world_params)  # unfrozen afterwards
    assert not fake["lambda_target"].requires_grad and not fake["state"].requires_grad
    # the returns are the lambda-returns of the imagined rewards and next values
    with torch.no_grad():
        next_v = value(fake["next"].select("state", "belief").copy())["state_value"]
    expected = lambda_returns(fake["next", "reward"], next_v, fake["next", "terminated"], 0.99, 0.95)
    torch.testing.assert_close(fake["lambda_target"], expected)
    w = discount_weights(fake["next", "terminated"], 0.99)
    torch.testing.assert_close(loss_td["loss_actor"], -(w * expected).mean())
    # value loss: gradients reach the value model only
    for p in actor.parameters():
        p.grad = None
    value_td, _ = DreamerValueLoss(value)(fake)
    value_td["loss_value"].backward()
    assert all(p.grad is not None for p in value.parameters())
    assert all(p.grad is None for p in [*actor.parameters(), *world_params])
    v = value(fake.select("state", "belief").copy())["state_value"]
    torch.testing.assert_close(value_td["loss_value"], (w * 0.5 * (v - expected).pow(2)).mean())


def test_actor_loss_estimator_settings():
    _, env, actor, value, _ = make_parts()
    loss = DreamerActorLoss(actor, value, env)
    loss.make_value_estimator(gamma=0.5, lmbda=0.1)
    assert (loss.gamma, loss.lmbda) == (0.5, 0.1)
    from torchrl.objectives.utils import ValueEstimators
    with pytest.raises(NotImplementedError, match="TDLambda"):
        loss.make_value_estimator(ValueEstimators.GAE)


def test_dreamer_env_rollout_specs_and_decoder():
    _, env, actor, _, _ = make_parts()
    check_env_specs(env)
    start = TensorDict({"state": torch.randn(5, S), "belief": torch.randn(5, R)}, [5])
    out = env.rollout(7, actor, tensordict=start, auto_reset=True)
    assert out["next", "reward"].shape == (5, 7, 1)
    torch.testing.assert_close(out["state"][:, 0], start["state"])
    torch.testing.assert_close(out["state"][:, 1:], out["next", "state"][:, :-1])
    with pytest.raises(KeyError, match="belief"):
        env.reset(TensorDict({"state": torch.zeros(2, S)}, [2]))
    decoder = TensorDictModule(ObsDecoder(channels=2, latent_dim=S + R), ["state", "belief"], ["reco_pixels"])
    env.obs_decoder = decoder
    decoded = env.decode_obs(start.clone())
    assert decoded["reco_pixels"].shape == (5, 3, 64, 64)
    tenv = TransformedEnv(env, DreamerDecoder())
    assert tenv.observation_spec["reco_pixels"].shape == (3, 64, 64)
    assert tenv.rollout(2)["next", "reco_pixels"].shape == (2, 3, 64, 64)


def test_entropy_bonus_uses_the_log_prob_of_the_imagined_actions():
    world_model, env, actor, value, _ = make_parts(return_log_prob=True)
    _, latent = model_loss(world_model)(real_batch())
    torch.manual_seed(0)
    plain_td, fake = DreamerActorLoss(actor, value, env, imagination_horizon=3)(latent.get("next"))
    torch.manual_seed(0)
    bonus_td, fake2 = DreamerActorLoss(actor, value, env, imagination_horizon=3,
                                       entropy_weight=0.5)(latent.get("next"))
    entropy = -fake2["action_log_prob"].reshape(20, 3, 1)
    w = discount_weights(fake2["next", "terminated"], 0.99)
    torch.testing.assert_close(bonus_td["loss_actor"],
                               -(w * (fake2["lambda_target"] + 0.5 * entropy)).mean())
    torch.testing.assert_close(bonus_td["entropy"], entropy.mean())
    bonus_td["loss_actor"].backward()
    assert all(p.grad is not None for p in actor.parameters())
    with pytest.raises(KeyError, match="return_log_prob=True"):
        actor_without = make_parts()[2]
        DreamerActorLoss(actor_without, value, env, entropy_weight=0.1)(latent.get("next"))


def test_dreamer_env_runs_in_a_torchrl_collector():
    from torchrl.collectors import Collector

    _, env, actor, _, _ = make_parts()
    collector = Collector(env, actor, frames_per_batch=10, total_frames=20,
                          auto_register_policy_transforms=False)
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2
    batch = batches[0]
    assert batch["next", "reward"].shape == (10, 1) and batch["next", "state"].shape == (10, S)
    assert (batch["state"][0] == 0).all()  # collectors reset to the zero latent
    torch.testing.assert_close(batch["state"][1:], batch["next", "state"][:-1])


def test_model_loss_keys_are_named_for_what_they_hold():
    """The reconstruction keys are ``observation``/``reconstruction``; TorchRL's
    ``pixels``/``reco_pixels`` still set them, with a DeprecationWarning."""
    world_model, *_ = make_parts()
    loss = DreamerModelLoss(world_model)
    assert loss.tensor_keys.observation == ("next", "pixels")
    with pytest.warns(DeprecationWarning, match="'observation'"):
        loss.set_keys(pixels=("next", "observation"), reco_pixels=("next", "reco_observation"))
    assert loss.tensor_keys.observation == ("next", "observation")
    assert loss.tensor_keys.reconstruction == ("next", "reco_observation")
    batch = real_batch()
    torch.manual_seed(0)
    old_names = loss(batch)[0]["loss_model_reco"]
    torch.manual_seed(0)
    torch.testing.assert_close(old_names, model_loss(world_model)(batch)[0]["loss_model_reco"])


def test_dreamer_env_without_an_action_spec_says_how_to_give_one():
    from tensordict.nn import TensorDictSequential

    prior = TensorDictModule(RSSMPrior(action_dim=1, hidden_dim=8, rnn_hidden_dim=6, state_dim=3),
                             ["state", "belief", "action"], ["prior_mean", "prior_std", "state", "belief"])
    reward = TensorDictModule(lambda s, b: s.sum(-1, keepdim=True), ["state", "belief"], ["reward"])
    env = DreamerEnv(TensorDictSequential(prior, reward), (3,), (6,))
    with pytest.raises(RuntimeError, match="no action spec.*set_specs_from_env"):
        env.rollout(3)
    with pytest.raises(RuntimeError, match="no action spec"):
        env.rand_action()


def test_model_loss_refuses_a_nan_batch():
    from reverie.validation import NonFiniteError

    world_model, *_ = make_parts()
    batch = real_batch()
    batch["next", "observation"][1, 2, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"DreamerModelLoss: \('next', 'observation'\)"):
        model_loss(world_model)(batch)
