"""One latent world-model interface: RSSM world models (Dreamer v1, DreamerV3) behind
``WorldModel``'s encode / step / decode, imagined by ``WorldModelEnv`` and read by the
shared open-loop diagnostics."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, OneHot
from torchrl.envs.utils import ExplorationType, set_exploration_type

from reverie.diagnostics import decoded_observation, imagine_open_loop, open_loop_predict
from reverie.envs import WorldModelEnv
from reverie.modules import (
    RSSMPosterior,
    RSSMPosteriorV3,
    RSSMPrior,
    RSSMPriorV3,
    RSSMWorldModel,
    WorldModel,
)

OBS, A, E = 3, 2, 5


def v1():
    prior = RSSMPrior(action_dim=A, hidden_dim=8, rnn_hidden_dim=6, state_dim=4)
    posterior = RSSMPosterior(hidden_dim=8, state_dim=4, rnn_hidden_dim=6, obs_embed_dim=E)
    return prior, posterior, 4, 6


def v3():
    prior = RSSMPriorV3(A, 8, 8, stoch=2, classes=3, blocks=2)
    posterior = RSSMPosteriorV3(8, E, 8, stoch=2, classes=3)
    return prior, posterior, 6, 8


class Head(torch.nn.Module):
    def __init__(self, latent: int, out: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(latent, out)

    def forward(self, state, belief):
        return self.linear(torch.cat([state, belief], -1))


def make(family):
    torch.manual_seed(0)
    prior, posterior, S, D = family()
    return RSSMWorldModel(torch.nn.Linear(OBS, E), prior, posterior, Head(S + D, 1),
                          decoder=Head(S + D, OBS)), S, D


def trajectory(T=8, B=()):
    obs = torch.randn(*B, T + 1, OBS)
    return TensorDict({"observation": obs[..., :-1, :], "action": torch.rand(*B, T, A) * 2 - 1,
                       "next": {"observation": obs[..., 1:, :],
                                "reward": torch.randn(*B, T, 1)}}, [*B, T])


@pytest.mark.parametrize("family", [v1, v3])
def test_named_latent_keys_and_shapes(family):
    wm, S, D = make(family)
    assert isinstance(wm, WorldModel)
    assert wm.latent_keys == ["state", "belief"]
    start = wm.encode(TensorDict({"observation": torch.randn(5, OBS)}, [5]))
    assert start["state"].shape == (5, S) and start["belief"].shape == (5, D)
    out = wm.step(start.set("action", torch.zeros(5, A)))
    assert out["next", "state"].shape == (5, S) and out["next", "reward"].shape == (5, 1)
    assert "reco_observation" not in out.keys()  # step does not decode; decode does
    assert wm.decode(start)["reco_observation"].shape == (5, OBS)


@pytest.mark.parametrize("family", [v1, v3])
def test_encode_is_the_first_filtered_latent(family):
    """``encode(o_0)`` is the policy's first latent: h_0 = prior(0, 0, 0).belief,
    s_0 = posterior(h_0, e(o_0)); ``filter`` continues it with the actions."""
    wm, S, D = make(family)
    traj = trajectory(B=(2,))
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        latents = wm.filter(traj)
        first = wm.encode(traj[:, 0].exclude("next").clone())
        prior, posterior = wm.dynamics.module.prior, wm.encoder[1].module.posterior
        h = prior.mode(torch.zeros(2, S), torch.zeros(2, D), torch.zeros(2, A))[1]
        s = posterior.mode(h, wm.encoder[0].module(traj["observation"][:, 0]))
        h1 = prior.mode(s, h, traj["action"][:, 0])[1]
    torch.testing.assert_close(first["state"], latents["state"][:, 0])
    torch.testing.assert_close(first["belief"], h)
    torch.testing.assert_close(latents["state"][:, 0], s)
    torch.testing.assert_close(latents["belief"][:, 1], h1)


def test_filter_restarts_at_is_init():
    wm, *_ = make(v1)
    traj = trajectory(T=6)
    traj["is_init"] = torch.zeros(6, 1, dtype=torch.bool)
    traj["is_init"][3] = True
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        whole = wm.filter(traj)
        tail = wm.filter(traj[3:])
    torch.testing.assert_close(whole["state"][3:], tail["state"])
    torch.testing.assert_close(whole["belief"][3:], tail["belief"])


@pytest.mark.parametrize("family", [v1, v3])
def test_world_model_env_imagines_an_rssm_with_both_latent_keys(family):
    wm, S, D = make(family)
    env = WorldModelEnv(wm, action_spec=Bounded(-1, 1, (A,)))
    assert env.latent_keys == ["state", "belief"]
    assert set(env.observation_spec.keys()) == {"state", "belief"}
    start = wm.encode(TensorDict({"observation": torch.randn(4, OBS)}, [4]))
    torch.manual_seed(1)
    rollout = env.rollout(5, tensordict=start)
    assert rollout["next", "belief"].shape == (4, 5, D) and rollout["next", "reward"].shape == (4, 5, 1)
    # the latent advances: step t's next latent is step t+1's latent
    torch.testing.assert_close(rollout["next", "state"][:, :-1], rollout["state"][:, 1:])
    torch.testing.assert_close(rollout["state"][:, 0], start["state"])
    # the same steps by hand, with the same random draws
    torch.manual_seed(1)
    td = start.select("state", "belief")
    for t in range(5):
        td.set("action", env.action_spec.rand((4,)))
        td = wm.step(td)
        torch.testing.assert_close(td["next", "reward"], rollout["next", "reward"][:, t])
        td = td["next"].select("state", "belief")
    with pytest.raises(RuntimeError, match="'belief'"):
        env.reset(start.exclude("belief"))


def test_discrete_actions_in_the_imagination_env():
    torch.manual_seed(0)
    prior = RSSMPriorV3(3, 8, 8, stoch=2, classes=3, blocks=2)
    posterior = RSSMPosteriorV3(8, E, 8, stoch=2, classes=3)
    wm = RSSMWorldModel(torch.nn.Linear(OBS, E), prior, posterior, Head(14, 1))
    env = WorldModelEnv(wm, action_spec=OneHot(3))
    start = wm.encode(TensorDict({"observation": torch.randn(2, OBS)}, [2]))
    rollout = env.rollout(4, tensordict=start)
    assert rollout["action"].shape == (2, 4, 3) and (rollout["action"].sum(-1) == 1).all()


@pytest.mark.parametrize("family", [v1, v3])
def test_open_loop_diagnostics_are_shared(family):
    """The multi-start error table and the real-vs-imagined plot run on an RSSM world model
    through the same interface as on any WorldModel; deterministic steps give the prior's
    most likely latent."""
    wm, *_ = make(family)
    traj = trajectory(T=10)
    result = open_loop_predict(wm, traj, 4, predicted_observation=decoded_observation(wm),
                               latent_key=wm.latent_keys)
    assert result.predicted_observation.shape == (7, 4, OBS)
    truth, imagined = imagine_open_loop(wm, traj, context=3)
    assert truth.shape == imagined.shape == (7, OBS)
    # by hand: most likely steps from the filtered latent at t = 3, decoded
    prior = wm.dynamics.module.prior
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        latent = wm.filter(traj[:4])[-1]
        state, belief = latent["state"], latent["belief"]
        for k, t in enumerate(range(3, 10)):
            state, belief = prior.mode(state, belief, traj["action"][t])
            expected = wm.decoder.module(state, belief)
            torch.testing.assert_close(imagined[k], expected)
    torch.testing.assert_close(truth, traj["next", "observation"][3:])


def test_imagine_open_loop_encodes_a_plain_world_model():
    """A world model without ``filter`` starts from ``encode(real[context])``."""
    from tensordict.nn import TensorDictModule

    add = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.ones_(add.weight)
    wm = WorldModel(
        TensorDictModule(torch.nn.Identity(), ["observation"], ["latent"]),
        TensorDictModule(add, ["latent", "action"], [("next", "latent")]),
        TensorDictModule(lambda x: -x.pow(2), [("next", "latent")], [("next", "reward")]),
        decoder=TensorDictModule(torch.nn.Identity(), ["latent"], ["reco"]))
    obs = torch.arange(9.0).unsqueeze(-1)
    traj = TensorDict({"observation": obs[:-1], "action": torch.ones(8, 1),
                       "next": {"observation": obs[1:]}}, [8])
    truth, imagined = imagine_open_loop(wm, traj, context=2)
    torch.testing.assert_close(imagined, truth)  # x' = x + 1 exactly
    assert imagined[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def test_fast_rollout_draws_like_the_generic_loop_with_a_stochastic_model():
    """Random actions and the prior's samples come from one generator: the flat-tensor
    rollout draws them in EnvBase.rollout's order."""
    wm, *_ = make(v1)
    env = WorldModelEnv(wm, action_spec=Bounded(-1, 1, (A,)))
    start = wm.encode(TensorDict({"observation": torch.randn(4, OBS)}, [4]))
    outs = []
    for fast in (True, False):
        env.fast_rollout = fast
        torch.manual_seed(3)
        outs.append(env.rollout(6, tensordict=start))
    for key in ("action", ("next", "state"), ("next", "belief"), ("next", "reward")):
        assert torch.equal(outs[0][key], outs[1][key]), key
