"""ImaginedEnv: Gaussian-belief imagination with a moment-matching model.

The model is linear-Gaussian, so moment matching is exact: ``m' = A m + B a`` and
``S' = A S A^T + Q``. With the double integrator ``A = [[1, 1], [0, 1]]``, ``B = [0, 1]^T``,
``Q = 0.1 I``, a start at ``m = 0, S = 0`` and the constant action ``a = 1``:

* velocity ``v_t = t`` and position ``p_t = t (t - 1) / 2``: means ``[0, 1], [1, 2], [3, 3],
  [6, 4], [10, 5]``;
* ``S_1 = Q``, ``S_2 = [[.3, .1], [.1, .2]]``, ``S_3 = [[.8, .3], [.3, .3]]``,
  ``S_4 = [[1.8, .6], [.6, .4]]``, ``S_5 = [[3.5, 1], [1, .5]]``;
* reward ``-(m^T m + tr S)``: ``-1.2, -5.5, -19.1, -54.2, -129``.
"""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Composite
from torchrl.envs.utils import check_env_specs

from reverie.envs import ImaginedEnv
from tests.helpers import SpecOnlyEnv

A = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
B = torch.tensor([[0.0], [1.0]])
Q = 0.1 * torch.eye(2)

MEANS = torch.tensor([[0.0, 1.0], [1.0, 2.0], [3.0, 3.0], [6.0, 4.0], [10.0, 5.0]])
VARS = torch.tensor(
    [
        [[0.1, 0.0], [0.0, 0.1]],
        [[0.3, 0.1], [0.1, 0.2]],
        [[0.8, 0.3], [0.3, 0.3]],
        [[1.8, 0.6], [0.6, 0.4]],
        [[3.5, 1.0], [1.0, 0.5]],
    ]
)
REWARDS = torch.tensor([-1.2, -5.5, -19.1, -54.2, -129.0])


class LinearGaussian(torch.nn.Module):
    """Exact moment matching through ``x' = A x + B a + w``, ``w ~ N(0, Q)``."""

    def __init__(self, a, b, q):
        super().__init__()
        self.a, self.b, self.q = a, b, q

    def forward(self, mean, var, action):
        return mean @ self.a.T + action @ self.b.T, self.a @ var @ self.a.T + self.q


def linear_gaussian(a=A, b=B, q=Q):
    return TensorDictModule(
        LinearGaussian(a, b, q),
        [("observation", "mean"), ("observation", "var"), "action"],
        [("next", "observation", "mean"), ("next", "observation", "var")],
    )


def quadratic_reward():
    """Minus the expected quadratic cost of the next belief: ``-(m^T m + tr S)``."""

    def reward(mean, var):
        trace = var.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
        return -(mean.pow(2).sum(-1, keepdim=True) + trace)

    return TensorDictModule(
        reward,
        [("next", "observation", "mean"), ("next", "observation", "var")],
        [("next", "reward")],
    )


def constant_action(value):
    def policy(td):
        return td.set("action", torch.full((*td.batch_size, 1), value))

    return policy


def belief(mean, var):
    mean = torch.as_tensor(mean, dtype=torch.float32)
    var = torch.as_tensor(var, dtype=torch.float32)
    return TensorDict({("observation", "mean"): mean, ("observation", "var"): var}, mean.shape[:-1])


def make_env(**kwargs):
    return ImaginedEnv(linear_gaussian(), SpecOnlyEnv(obs_dim=2, action_dim=1), **kwargs)


# ---------------------------------------------------------------- propagation
def test_rollout_matches_hand_computed_moments_and_rewards():
    env = make_env(reward_module=quadratic_reward())
    start = belief([[0.0, 0.0]], torch.zeros(1, 2, 2))
    ro = env.rollout(5, constant_action(1.0), tensordict=start, auto_reset=False)
    assert ro.batch_size == (1, 5)
    torch.testing.assert_close(ro["next", "observation", "mean"][0], MEANS)
    torch.testing.assert_close(ro["next", "observation", "var"][0], VARS)
    # the root belief of step t is the next belief of step t - 1
    torch.testing.assert_close(ro["observation", "mean"][0, 1:], MEANS[:-1])
    torch.testing.assert_close(ro["observation", "var"][0, 1:], VARS[:-1])
    assert ro["next", "reward"].shape == (1, 5, 1)
    torch.testing.assert_close(ro["next", "reward"][0, :, 0], REWARDS)


def test_rollout_from_general_beliefs_with_feedback_policy():
    env = make_env(batch_size=[])
    m0 = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-3.0, 0.0]])
    s0 = torch.tensor([[0.5, 0.1], [0.1, 0.2]]).expand(3, 2, 2)

    def policy(td):  # a = -0.5 * velocity mean
        return td.set("action", -0.5 * td["observation", "mean"][..., 1:])

    ro = env.rollout(5, policy, tensordict=env.reset(belief(m0, s0)), auto_reset=False)
    assert ro.batch_size == (3, 5)
    m, s = m0, s0
    for t in range(5):
        torch.testing.assert_close(ro["observation", "mean"][:, t], m)
        torch.testing.assert_close(ro["observation", "var"][:, t], s)
        a = -0.5 * m[:, 1:]
        torch.testing.assert_close(ro["action"][:, t], a)
        m, s = m @ A.T + a @ B.T, A @ s @ A.T + Q
        torch.testing.assert_close(ro["next", "observation", "mean"][:, t], m)
        torch.testing.assert_close(ro["next", "observation", "var"][:, t], s)


def test_gradients_flow_through_imagination_to_the_policy():
    env = make_env(reward_module=quadratic_reward())
    gain = torch.tensor(0.5, requires_grad=True)

    def policy(td):  # a = gain * velocity
        return td.set("action", gain * td["observation", "mean"][..., 1:])

    ro = env.rollout(1, policy, tensordict=belief([[0.0, 1.0]], torch.zeros(1, 2, 2)))
    ro["next", "reward"].sum().backward()
    # m1 = [1, 1 + k], S1 = Q: r = -(1 + (1 + k)^2 + 0.2), dr/dk = -2 (1 + k) = -3 at k = 0.5
    torch.testing.assert_close(gain.grad, torch.tensor(-3.0))


def test_reward_is_nan_without_reward_module():
    env = make_env()
    ro = env.rollout(3, constant_action(1.0), tensordict=belief([[0.0, 0.0]], torch.zeros(1, 2, 2)))
    assert ro["next", "reward"].shape == (1, 3, 1)
    assert ro["next", "reward"].isnan().all()
    torch.testing.assert_close(ro["next", "observation", "mean"][0], MEANS[:3])


def test_never_done():
    env = make_env(batch_size=[])
    ro = env.rollout(
        200, constant_action(0.0), tensordict=belief([[0.0, 0.0]] * 2, torch.zeros(2, 2, 2))
    )
    assert ro.batch_size == (2, 200)
    for key in ("done", "terminated"):
        assert ro["next", key].shape == (2, 200, 1)
        assert ro["next", key].dtype == torch.bool
        assert not ro["next", key].any()
    assert not env.any_done(ro[:, -1]["next"])


# ---------------------------------------------------------------- reset
def test_reset_from_belief():
    env = make_env()
    var = torch.tensor([[[0.5, 0.1], [0.1, 0.2]]])
    td = env.reset(belief([[1.0, -2.0]], var))
    torch.testing.assert_close(td["observation", "mean"], torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(td["observation", "var"], var)
    assert not td["done"].any() and td["done"].shape == (1, 1)


def test_reset_from_point_observation_has_zero_variance():
    env = make_env()
    td = env.reset(TensorDict({"observation": torch.tensor([[1.0, 2.0]])}, [1]))
    assert set(td["observation"].keys()) == {"mean", "var"}
    torch.testing.assert_close(td["observation", "mean"], torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(td["observation", "var"], torch.zeros(1, 2, 2))
    ro = env.rollout(2, constant_action(1.0), tensordict=td, auto_reset=False)
    torch.testing.assert_close(
        ro["next", "observation", "mean"][0], torch.tensor([[3.0, 3.0], [6.0, 4.0]])
    )


def test_reset_without_tensordict_draws_from_base_spec():
    base = SpecOnlyEnv(obs_dim=2, action_dim=1)
    base.observation_spec = Composite(observation=Bounded(5.0, 6.0, (2,)))
    env = ImaginedEnv(linear_gaussian(), base, batch_size=[3])
    td = env.reset()
    mean = td["observation", "mean"]
    assert mean.shape == (3, 2)
    assert ((mean >= 5.0) & (mean <= 6.0)).all()
    assert mean.unique().numel() > 1  # drawn, not a constant
    torch.testing.assert_close(td["observation", "var"], torch.zeros(3, 2, 2))


# ---------------------------------------------------------------- specs
def test_specs_and_default_batch_size():
    env = make_env()
    assert env.batch_size == (1,)  # unbatched base env
    assert env.observation_spec["observation", "mean"].shape == (1, 2)
    assert env.observation_spec["observation", "var"].shape == (1, 2, 2)
    assert env.action_spec.shape == (1, 1)
    assert env.full_reward_spec["reward"].shape == (1, 1)
    assert env.batch_locked is False


@pytest.mark.parametrize("with_reward", [False, True])
def test_check_env_specs(with_reward):
    env = make_env(reward_module=quadratic_reward() if with_reward else None)
    check_env_specs(env)
    check_env_specs(make_env(batch_size=[4], reward_module=quadratic_reward()))


def test_action_dim_greater_than_one_with_unbatched_base_env():
    a = torch.eye(4) + 0.1 * torch.diag(torch.ones(3), 1)
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, -1.0]])
    q = 0.01 * torch.eye(4)
    env = ImaginedEnv(linear_gaussian(a, b, q), SpecOnlyEnv(obs_dim=4, action_dim=2))
    assert env.action_spec.shape == (1, 2)
    check_env_specs(env)
    m0 = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ro = env.rollout(4, tensordict=env.reset(belief(m0, torch.zeros(1, 4, 4))))  # random actions
    assert ro["action"].shape == (1, 4, 2)
    assert ro["next", "observation", "var"].shape == (1, 4, 4, 4)
    m, s = m0, torch.zeros(1, 4, 4)
    for t in range(4):
        m, s = m @ a.T + ro["action"][:, t] @ b.T, a @ s @ a.T + q
        torch.testing.assert_close(ro["next", "observation", "mean"][:, t], m)
        torch.testing.assert_close(ro["next", "observation", "var"][:, t], s)


def test_model_without_belief_outputs_names_the_keys():
    model = TensorDictModule(
        lambda mean: mean, [("observation", "mean")], [("next", "observation", "loc")]
    )
    env = ImaginedEnv(model, SpecOnlyEnv(obs_dim=2, action_dim=1))
    td = env.reset(belief([[0.0, 0.0]], torch.zeros(1, 2, 2)))
    td["action"] = torch.zeros(1, 1)
    with pytest.raises(KeyError) as info:
        env.step(td)
    message = info.value.args[0]
    assert "('next', 'observation', 'mean')" in message
    assert "('next', 'observation', 'var')" in message


def test_batched_base_env():
    env = ImaginedEnv(linear_gaussian(), SpecOnlyEnv(obs_dim=2, action_dim=1, batch_size=(3,)))
    assert env.batch_size == (3,)
    assert env.observation_spec["observation", "var"].shape == (3, 2, 2)
    assert env.action_spec.shape == (3, 1)
    check_env_specs(env)
    start = belief(torch.zeros(3, 2), torch.zeros(3, 2, 2))
    ro = env.rollout(5, constant_action(1.0), tensordict=start, auto_reset=False)
    torch.testing.assert_close(ro["next", "observation", "mean"], MEANS.expand(3, 5, 2))
    torch.testing.assert_close(ro["next", "observation", "var"], VARS.expand(3, 5, 2, 2))
