"""ModelBasedEnvBase: a TorchRL env driven by a model; specs, collectors, batches, ``params=``.

The env below is the docstring's example with a learnable model: ``obs' = W (obs + a) + b``
and ``reward = sum(obs')``. With ``W = I``, ``b = 0`` and action ``a`` it is a pure
integrator, so every output is computable by hand.
"""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector  # TorchRL 0.14 name of SyncDataCollector
from torchrl.data import Composite, Unbounded
from torchrl.envs.utils import check_env_specs

from reverie.envs import ModelBasedEnvBase


class Integrator(torch.nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()

    def forward(self, obs, action):
        nxt = self.linear(obs + action)
        return nxt, nxt.sum(-1, keepdim=True)


def make_model(dim=3):
    return TensorDictModule(Integrator(dim), ["obs", "action"], ["obs", "reward"])


class LinearEnv(ModelBasedEnvBase):
    def __init__(self, model, dim=3, **kwargs):
        super().__init__(model, **kwargs)
        b = self.batch_size
        self.observation_spec = Composite(obs=Unbounded((*b, dim)), shape=b)
        self.action_spec = Unbounded((*b, dim))
        self.reward_spec = Unbounded((*b, 1))
        self.dim = dim

    def _reset(self, td=None):
        batch = self.batch_size if td is None else td.batch_size
        start = torch.ones(*batch, self.dim) if td is None else td.get("obs", None)
        if start is None:
            start = torch.ones(*batch, self.dim)
        return TensorDict({"obs": start}, batch)


def constant_policy(value):
    def policy(td):
        return td.set("action", torch.full_like(td["obs"], value))

    return policy


# ---------------------------------------------------------------- TorchRL compatibility
@pytest.mark.parametrize("batch", [(4,), (2, 3)])
def test_rollout_shapes_and_values(batch):
    env = LinearEnv(make_model())
    with torch.no_grad():
        ro = env.rollout(5, constant_policy(0.5), tensordict=TensorDict(batch_size=batch))
    assert ro.batch_size == (*batch, 5)
    assert ro["obs"].shape == (*batch, 5, 3)
    assert ro["action"].shape == (*batch, 5, 3)
    assert ro["next", "obs"].shape == (*batch, 5, 3)
    assert ro["next", "reward"].shape == (*batch, 5, 1)
    assert ro["next", "done"].shape == (*batch, 5, 1)
    assert not ro["next", "done"].any()
    # obs_t = 1 + 0.5 t per component; reward_t = 3 (1 + 0.5 (t + 1))
    steps = torch.arange(5.0)
    torch.testing.assert_close(ro["obs"][..., 0], (1 + 0.5 * steps).expand(*batch, 5))
    torch.testing.assert_close(
        ro["next", "reward"][..., 0], (3 * (1 + 0.5 * (steps + 1))).expand(*batch, 5)
    )


def test_check_env_specs():
    check_env_specs(LinearEnv(make_model()))
    check_env_specs(LinearEnv(make_model(), batch_size=[4]))


def test_sync_data_collector():
    env = LinearEnv(make_model())
    collector = Collector(env, policy=constant_policy(1.0), frames_per_batch=4, total_frames=8)
    batches = []
    for data in collector:
        batches.append(data.clone())
    collector.shutdown()
    assert len(batches) == 2
    data = torch.cat(batches)
    assert data.numel() == 8
    assert data["next", "reward"].shape == (8, 1)
    # obs starts at 1 and grows by 1 per step (no done, no reset in between)
    torch.testing.assert_close(data["obs"][:, 0], torch.arange(1.0, 9.0))
    torch.testing.assert_close(data["next", "reward"][:, 0], 3 * torch.arange(2.0, 10.0))


def test_not_batch_locked():
    env = LinearEnv(make_model())
    assert env.batch_locked is False
    with pytest.raises(RuntimeError, match="read-only"):
        env.batch_locked = True
    assert env.batch_size == torch.Size([])
    td = env.reset(TensorDict({"obs": torch.zeros(4, 3)}, [4]))
    td["action"] = torch.ones(4, 3)
    out = env.step(td)
    torch.testing.assert_close(out["next", "obs"], torch.ones(4, 3))
    torch.testing.assert_close(out["next", "reward"], torch.full((4, 1), 3.0))


def test_set_specs_from_env():
    src = LinearEnv(make_model(dim=2), dim=2)
    dst = LinearEnv(make_model(dim=3), dim=3)
    assert dst.observation_spec != src.observation_spec
    dst.set_specs_from_env(src)
    assert dst.observation_spec == src.observation_spec
    assert dst.action_spec == src.action_spec
    assert dst.full_reward_spec == src.full_reward_spec
    assert dst.full_done_spec == src.full_done_spec
    assert dst.full_state_spec == src.full_state_spec
    # copies, not shared objects
    assert dst.output_spec is not src.output_spec
    dst.observation_spec["extra"] = Unbounded((1,))
    assert "extra" not in src.observation_spec.keys()


def test_missing_reward_output_names_reward():
    model = TensorDictModule(lambda obs, a: obs + a, ["obs", "action"], ["obs"])
    env = LinearEnv(model)
    td = env.reset()
    td["action"] = torch.ones(3)
    with pytest.raises(KeyError) as info:
        env.step(td)
    assert "reward" in info.value.args[0]


# ---------------------------------------------------------------- params=
def _step(env, obs, action):
    td = TensorDict({"obs": obs, "action": action}, obs.shape[:-1])
    return env.step(td)["next"]


def test_params_tensordict_changes_outputs_exactly():
    model = make_model()
    params = TensorDict.from_module(model).detach().clone()
    params["module", "linear", "weight"] = 2 * torch.eye(3)
    params["module", "linear", "bias"] = torch.tensor([1.0, 0.0, -1.0])
    env = LinearEnv(model, params=params)
    obs, action = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5, 0.5])
    out = _step(env, obs, action)
    # 2 (obs + a) + b = [3, 5, 7] + [1, 0, -1]
    torch.testing.assert_close(out["obs"], torch.tensor([4.0, 5.0, 6.0]))
    torch.testing.assert_close(out["reward"], torch.tensor([15.0]))
    # the module's own weights are untouched, and an env without params uses them
    torch.testing.assert_close(model.module.linear.weight, torch.eye(3))
    out = _step(LinearEnv(model), obs, action)
    torch.testing.assert_close(out["obs"], torch.tensor([1.5, 2.5, 3.5]))

    zero = params.apply(torch.zeros_like)
    out = _step(LinearEnv(model, params=zero), obs, action)
    torch.testing.assert_close(out["obs"], torch.zeros(3))
    torch.testing.assert_close(out["reward"], torch.zeros(1))


def test_params_list_form():
    model = make_model()
    weight, bias = 2 * torch.eye(3), torch.tensor([1.0, 0.0, -1.0])
    assert [name for name, _ in model.named_parameters()] == [
        "module.linear.weight",
        "module.linear.bias",
    ]
    env = LinearEnv(model, params=[weight, bias])
    out = _step(env, torch.tensor([1.0, 2.0, 3.0]), torch.full((3,), 0.5))
    torch.testing.assert_close(out["obs"], torch.tensor([4.0, 5.0, 6.0]))


def test_params_with_buffers_list_form():
    model = make_model()
    model.module.register_buffer("offset", torch.zeros(3))
    inner = model.module
    original_forward = inner.forward

    def forward(obs, action):
        nxt, _ = original_forward(obs, action)
        nxt = nxt + inner.offset
        return nxt, nxt.sum(-1, keepdim=True)

    inner.forward = forward
    env = LinearEnv(
        model,
        params=[torch.eye(3), torch.zeros(3)],
        buffers=[torch.tensor([10.0, 20.0, 30.0])],
    )
    out = _step(env, torch.zeros(3), torch.zeros(3))
    torch.testing.assert_close(out["obs"], torch.tensor([10.0, 20.0, 30.0]))
    with pytest.raises(ValueError, match="got 2 tensors in `buffers`.*has 1"):
        LinearEnv(model, params=[torch.eye(3), torch.zeros(3)], buffers=[torch.zeros(3)] * 2)


def test_gradients_flow_to_params_not_module():
    model = make_model()
    params = TensorDict.from_module(model).detach().clone().requires_grad_()
    env = LinearEnv(model, params=params)
    obs = torch.tensor([1.0, 2.0, 3.0])
    out = _step(env, obs, torch.zeros(3))
    out["reward"].sum().backward()
    # reward = sum_i (W obs + b)_i: d/dW_ij = obs_j, d/db_i = 1
    torch.testing.assert_close(params["module", "linear", "weight"].grad, obs.expand(3, 3))
    torch.testing.assert_close(params["module", "linear", "bias"].grad, torch.ones(3))
    assert model.module.linear.weight.grad is None
    assert model.module.linear.bias.grad is None

    weight = torch.eye(3, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    env = LinearEnv(model, params=[weight, bias])
    with torch.enable_grad():
        ro = env.rollout(3, constant_policy(0.0), tensordict=TensorDict(batch_size=[2]))
    ro["next", "reward"].sum().backward()
    # obs_t = W obs_{t-1} + b stays 1 at W = I, b = 0, and r_t = 1^T obs_t depends on W and b
    # through all t steps: d r_t / d W_ij = d r_t / d b_i = t. Sum over t = 1..3 and the
    # batch of 2: 2 (1 + 2 + 3) = 12 (gradients flow across steps, through the env).
    torch.testing.assert_close(weight.grad, torch.full((3, 3), 12.0))
    torch.testing.assert_close(bias.grad, torch.full((3,), 12.0))
    assert model.module.linear.weight.grad is None


def test_wrong_number_of_params_names_the_counts():
    model = make_model()
    with pytest.raises(ValueError, match="got 1 tensors in `params`.*has 2"):
        LinearEnv(model, params=[torch.eye(3)])
    with pytest.raises(ValueError, match="got 3 tensors in `params`.*has 2"):
        LinearEnv(model, params=[torch.eye(3), torch.zeros(3), torch.zeros(3)])


def test_params_tensordict_with_separate_buffers_is_rejected():
    model = make_model()
    with pytest.raises(TypeError, match="buffers"):
        LinearEnv(model, params=TensorDict.from_module(model), buffers=[torch.zeros(1)])


def test_base_reset_must_be_implemented():
    class NoReset(ModelBasedEnvBase):
        pass

    env = NoReset(make_model())
    with pytest.raises(NotImplementedError, match="NoReset must implement _reset"):
        env._reset(None)
