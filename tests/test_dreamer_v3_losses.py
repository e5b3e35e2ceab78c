"""DreamerV3's loss modules: hand-computed values, gradient routing, slow critic, replay returns."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded, OneHot
from torchrl.modules import OneHotCategorical, ProbabilisticActor

from reverie.envs import DreamerEnv
from reverie.modules import ClippedNormal, RSSMPriorV3, SymExpTwoHot
from reverie.objectives import (
    DreamerV3ActorLoss,
    DreamerV3ModelLoss,
    DreamerV3ReplayValueLoss,
    DreamerV3ValueLoss,
    ReturnNormalizer,
    symlog,
)

K = 255  # two-hot bins


class _Fixed(nn.Module):
    """Writes given tensors (with a learnable offset so gradients can be checked)."""

    def __init__(self, **values):
        super().__init__()
        self.names = list(values)
        self.values = nn.ParameterDict({k: nn.Parameter(v.clone()) for k, v in values.items()})

    def forward(self, _):
        return tuple(self.values[k] for k in self.names)


def _fixed_world_model(values: dict) -> TensorDictModule:
    keys = [("next", k) for k in values]
    return TensorDictModule(_Fixed(**values), [("next", "observation")], keys)


def test_model_loss_terms_equal_the_hand_computation():
    # one sequence of 2 steps, 1 categorical latent with 2 classes
    post = torch.log(torch.tensor([[[[0.9, 0.1]], [[0.5, 0.5]]]]))  # (1, 2, 1, 2)
    prior = torch.log(torch.tensor([[[[0.5, 0.5]], [[0.5, 0.5]]]]))
    obs = torch.tensor([[[math.e - 1.0, 0.0], [0.0, -(math.e - 1.0)]]])  # symlog: (1, 0), (0, -1)
    reco = torch.zeros(1, 2, 2)
    batch = TensorDict({("next", "observation"): obs,
                        ("next", "reward"): torch.zeros(1, 2, 1),
                        ("next", "terminated"): torch.tensor([[[False], [True]]])}, [1, 2])
    wm = _fixed_world_model({"posterior_logits": post, "prior_logits": prior,
                             "reco_observation": reco, "reward_logits": torch.zeros(1, 2, K),
                             "cont_logit": torch.zeros(1, 2, 1)})
    loss = DreamerV3ModelLoss(wm, free_nats=0.1)
    out, _ = loss(batch)
    kl0 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.3681; step 1: 0 -> 0.1
    kl_mean = (max(kl0, 0.1) + 0.1) / 2
    assert out["loss_model_dyn"].item() == pytest.approx(kl_mean, rel=1e-6)
    assert out["loss_model_rep"].item() == pytest.approx(0.1 * kl_mean, rel=1e-6)
    assert out["loss_model_reco"].item() == pytest.approx((1.0 + 1.0) / 2, rel=1e-6)  # sum dims
    assert out["loss_model_reward"].item() == pytest.approx(math.log(K), rel=1e-6)  # uniform
    assert out["loss_model_cont"].item() == pytest.approx(math.log(2), rel=1e-6)  # logit 0
    assert out["kl"].item() == pytest.approx(kl0 / 2, rel=1e-5)
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    total.backward()
    # free bits: the second step's KL (0 < 0.1) gives the logits no gradient
    grads = wm.module.values
    assert torch.all(grads["prior_logits"].grad[0, 1] == 0)
    assert torch.all(grads["posterior_logits"].grad[0, 1] == 0)
    assert grads["prior_logits"].grad[0, 0].abs().sum() > 0


def test_dynamics_term_trains_only_the_prior_and_representation_term_only_the_posterior():
    post = torch.randn(2, 3, 4, 5)
    prior = torch.randn(2, 3, 4, 5)
    batch = TensorDict({("next", "observation"): torch.zeros(2, 3, 1),
                        ("next", "reward"): torch.zeros(2, 3, 1),
                        ("next", "terminated"): torch.zeros(2, 3, 1, dtype=torch.bool)}, [2, 3])
    for term, trained, frozen in (("loss_model_dyn", "prior_logits", "posterior_logits"),
                                  ("loss_model_rep", "posterior_logits", "prior_logits")):
        wm = _fixed_world_model({"posterior_logits": post, "prior_logits": prior,
                                 "reco_observation": torch.zeros(2, 3, 1),
                                 "reward_logits": torch.zeros(2, 3, K),
                                 "cont_logit": torch.zeros(2, 3, 1)})
        out, _ = DreamerV3ModelLoss(wm, free_nats=0.0)(batch)
        out[term].backward()
        values = wm.module.values
        assert values[trained].grad.abs().sum() > 0
        assert values[frozen].grad is None or torch.all(values[frozen].grad == 0)


def test_image_keys_are_reconstructed_without_symlog_and_vector_keys_with_it():
    obs = torch.full((1, 1, 3), 2.0)
    batch = TensorDict({("next", "observation"): obs, ("next", "reward"): torch.zeros(1, 1, 1),
                        ("next", "terminated"): torch.zeros(1, 1, 1, dtype=torch.bool)}, [1, 1])
    values = {"posterior_logits": torch.zeros(1, 1, 1, 2), "prior_logits": torch.zeros(1, 1, 1, 2),
              "reco_observation": torch.zeros(1, 1, 3), "reward_logits": torch.zeros(1, 1, K),
              "cont_logit": torch.zeros(1, 1, 1)}
    vec, _ = DreamerV3ModelLoss(_fixed_world_model(values))(batch)
    img, _ = DreamerV3ModelLoss(_fixed_world_model(values), vector_keys=(),
                                image_keys=("observation",))(batch)
    assert vec["loss_model_reco"].item() == pytest.approx(3 * symlog(torch.tensor(2.0)).item() ** 2)
    assert img["loss_model_reco"].item() == pytest.approx(3 * 4.0)
    with pytest.raises(ValueError, match="vector_keys/image_keys"):
        DreamerV3ModelLoss(_fixed_world_model(values), vector_keys=())


# ----------------------------------------------------------------------------- imagination
def _imagination(action_spec, reward: float = 1.0, slope: float = 0.0):
    """A DreamerEnv on a small V3 prior whose reward is ``reward + slope * mean(belief)``;
    critic and continue heads on the latent (the critic starts at exactly 0)."""
    S, D = 4, 8
    prior = RSSMPriorV3(action_spec.shape[-1], deter=D, hidden=8, stoch=2, classes=2, blocks=2)

    class Reward(nn.Module):
        def forward(self, state, belief):
            return reward + slope * belief.mean(-1, keepdim=True)

    env = DreamerEnv(TensorDictSequential(
        TensorDictModule(prior, ["state", "belief", "action"], ["prior_logits", "state", "belief"]),
        TensorDictModule(Reward(), ["state", "belief"], ["reward"])), (S,), (D,),
        action_spec=action_spec)

    class Head(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, state, belief):
            return self.net(torch.cat([state, belief], -1))

    critic = TensorDictModule(Head(SymExpTwoHot(S + D, 8, 1)), ["state", "belief"], ["value_logits"])
    cont_net = nn.Linear(S + D, 1)
    nn.init.zeros_(cont_net.weight)
    nn.init.constant_(cont_net.bias, 40.0)  # sigmoid(40) == 1.0 in float32: always continue
    cont = TensorDictModule(Head(cont_net), ["state", "belief"], ["cont_logit"])
    if isinstance(action_spec, OneHot):
        head = TensorDictModule(Head(nn.Linear(S + D, action_spec.shape[-1])), ["state", "belief"],
                                ["logits"])
        actor = ProbabilisticActor(head, ["logits"], ["action"], spec=action_spec,
                                   distribution_class=OneHotCategorical)
    else:
        class Gauss(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(S + D, action_spec.shape[-1])

            def forward(self, state, belief):
                return torch.tanh(self.lin(torch.cat([state, belief], -1))), torch.full(
                    (*state.shape[:-1], action_spec.shape[-1]), 0.5)

        actor = ProbabilisticActor(TensorDictModule(Gauss(), ["state", "belief"], ["loc", "scale"]),
                                   ["loc", "scale"], ["action"], spec=action_spec,
                                   distribution_class=ClippedNormal)
    start = TensorDict({"state": torch.zeros(3, S), "belief": torch.zeros(3, D)}, [3])
    return env, prior, actor, critic, cont, start


@pytest.mark.parametrize("discrete", [True, False])
def test_actor_loss_returns_by_hand_and_gradient_routing(discrete):
    spec = OneHot(3) if discrete else Bounded(-1.0, 1.0, (2,))
    env, prior, actor, critic, cont, start = _imagination(spec)
    gamma, lmbda, H = 0.9, 0.95, 4
    loss = DreamerV3ActorLoss(actor, critic, cont, env, ReturnNormalizer(), horizon=H,
                              gamma=gamma, lmbda=lmbda)
    assert loss.actor_gradient == ("reinforce" if discrete else "dynamics")
    out, fake = loss(start)
    # reward 1, continuation 1, critic exactly 0: R_t = 1 + gamma lmbda R_{t+1}, R_H = 0
    expected = torch.tensor([sum((gamma * lmbda) ** k for k in range(H - t)) for t in range(H)])
    assert torch.allclose(fake["lambda_target"][0, :, 0], expected, atol=1e-6)
    assert torch.allclose(fake["loss_weight"][0, :, 0], gamma ** torch.arange(H).float())
    # gradients, with a reward that depends on the imagined latent
    env, prior, actor, critic, cont, start = _imagination(spec, slope=1.0)
    out, _ = DreamerV3ActorLoss(actor, critic, cont, env, ReturnNormalizer(), horizon=H)(start)
    out["loss_actor"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.grad is None for m in (prior, critic, cont) for p in m.parameters())
    assert all(p.requires_grad for m in (prior, critic, cont) for p in m.parameters())


def test_dynamics_gradient_is_refused_for_discrete_actions():
    env, _, actor, critic, cont, _ = _imagination(OneHot(3))
    with pytest.raises(ValueError, match="needs continuous"):
        DreamerV3ActorLoss(actor, critic, cont, env, ReturnNormalizer(), actor_gradient="dynamics")


def test_value_loss_by_hand_and_the_slow_critic_takes_no_gradient():
    env, _, actor, critic, cont, start = _imagination(OneHot(3))
    slow = TensorDictModule(type(critic.module)(SymExpTwoHot(12, 8, 1)), ["state", "belief"],
                            ["value_logits"])
    _, fake = DreamerV3ActorLoss(actor, critic, cont, env, ReturnNormalizer(), horizon=3,
                                 gamma=0.5)(start)
    out, _ = DreamerV3ValueLoss(critic, slow)(fake)
    # a zero-initialised two-hot head has uniform logits: each cross-entropy is log(K),
    # whatever the target; weights 1, 0.5, 0.25
    assert out["loss_value"].item() == pytest.approx(2 * math.log(K) * (1 + 0.5 + 0.25) / 3, rel=1e-5)
    assert out["value"].item() == 0.0
    out["loss_value"].backward()
    assert all(p.grad is None for p in slow.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def test_replay_value_returns_by_hand():
    _, _, _, critic, _, _ = _imagination(OneHot(3))
    # B = 1, T = 3 latents s_0..s_2; rewards/terminations of the transitions leaving them are
    # the entries at j + 1; imagined returns (bootstrap) b = (10, 20, 30)
    batch = TensorDict({
        ("next", "state"): torch.zeros(1, 3, 4), ("next", "belief"): torch.zeros(1, 3, 8),
        ("next", "reward"): torch.tensor([[[9.0], [1.0], [2.0]]]),
        ("next", "terminated"): torch.tensor([[[False], [False], [True]]]),
        ("next", "done"): torch.tensor([[[False], [False], [True]]])}, [1, 3])
    boot = torch.tensor([[[10.0], [20.0], [30.0]]])
    gamma, lmbda = 0.5, 0.8
    out, td = DreamerV3ReplayValueLoss(critic, critic, gamma=gamma, lmbda=lmbda, weight=0.3)(batch, boot)
    ret1 = 2.0 + gamma * 0.0 * 30.0  # terminated after s_1
    ret0 = 1.0 + gamma * ((1 - lmbda) * 20.0 + lmbda * ret1)
    assert torch.allclose(td["lambda_target"][0, :, 0], torch.tensor([ret0, ret1]))
    assert out["loss_replay_value"].item() == pytest.approx(0.3 * 2 * math.log(K), rel=1e-5)
    with pytest.raises(ValueError, match="bootstrap has shape"):
        DreamerV3ReplayValueLoss(critic, critic)(batch, boot[:, :2])


def test_replay_returns_stop_at_an_episode_end_inside_the_sequence():
    _, _, _, critic, _, _ = _imagination(OneHot(3))
    # T = 4: s_1 ends its episode by truncation (done, not terminated); s_2 starts the next
    batch = TensorDict({
        ("next", "state"): torch.zeros(1, 4, 4), ("next", "belief"): torch.zeros(1, 4, 8),
        ("next", "reward"): torch.tensor([[[0.0], [1.0], [5.0], [2.0]]]),
        ("next", "terminated"): torch.zeros(1, 4, 1, dtype=torch.bool),
        ("next", "done"): torch.tensor([[[False], [True], [False], [False]]])}, [1, 4])
    boot = torch.tensor([[[10.0], [20.0], [30.0], [40.0]]])
    gamma, lmbda = 0.5, 0.8
    out, td = DreamerV3ReplayValueLoss(critic, critic, gamma=gamma, lmbda=lmbda)(batch, boot)
    ret2 = 2.0 + gamma * 40.0
    ret1 = 5.0 + gamma * ((1 - lmbda) * 30.0 + lmbda * ret2)  # s_1's own target: weight 0
    ret0 = 1.0 + gamma * 20.0  # the truncated s_1 ends the return: bootstrap b_1 alone
    assert torch.allclose(td["lambda_target"][0, :, 0], torch.tensor([ret0, ret1, ret2]))
    assert td["loss_weight"][0, :, 0].tolist() == [1.0, 0.0, 1.0]
    assert out["loss_replay_value"].item() == pytest.approx(0.3 * 2 * math.log(K) * 2 / 3, rel=1e-5)
