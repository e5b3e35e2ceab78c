"""WorldModelEnv: specs, shapes, done handling, TorchRL compatibility, the fast path."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.data import Bounded, Composite, LazyTensorStorage, ReplayBuffer, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.utils import check_env_specs
from torchrl.objectives.value import GAE, TDLambdaEstimator

from reverie.envs import WorldModelEnv
from reverie.envs.fast_rollout import _sampler, fast_rollout
from reverie.modules import WorldModel
from tests.helpers import (
    SpecOnlyEnv,
    make_world_model,
    policy_module,
    start_td,
    threshold_done_head,
)


def _explicit_env(wm, **kw):
    return WorldModelEnv(
        wm,
        observation_spec=Composite(latent=Unbounded((4,))),
        action_spec=Bounded(-1.0, 1.0, (1,)),
        reward_spec=Unbounded((1,)),
        device="cpu",
        **kw,
    )


@pytest.mark.parametrize("style", ["base_env", "explicit"])
@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_reward_and_done_shapes_follow_specs(style, batch):
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv()) if style == "base_env" else _explicit_env(wm)
    with torch.no_grad():
        rollout = env.rollout(7, policy_module(), tensordict=start_td(wm, batch))
    assert rollout.batch_size == (*batch, 7)
    assert rollout["next", "reward"].shape == (*batch, 7, 1)
    assert rollout["next", "done"].shape == (*batch, 7, 1)
    assert rollout["next", "terminated"].shape == (*batch, 7, 1)
    assert rollout["action"].shape == (*batch, 7, 1)


@pytest.mark.parametrize("batch_size", [(), (5,)])
def test_check_env_specs_passes(batch_size):
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv(), batch_size=batch_size)
    check_env_specs(env, tensordict=env.reset(start_td(wm, (5,))))
    env = _explicit_env(wm, batch_size=batch_size)
    check_env_specs(env, tensordict=env.reset(start_td(wm, (5,))))


def test_latent_advances_with_base_env_observation_spec():
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())  # observation spec from the base env
    assert "latent" in env.observation_spec.keys()
    with torch.no_grad():
        r = env.rollout(6, policy_module(), tensordict=start_td(wm))
    torch.testing.assert_close(r["latent"][:, 1:], r["next", "latent"][:, :-1])
    assert not torch.allclose(r["latent"][:, 0], r["latent"][:, 1])
    # each next latent is the dynamics applied to (latent, action)
    expected = wm.dynamics.module(torch.cat([r["latent"], r["action"]], -1))
    torch.testing.assert_close(r["next", "latent"], expected)
    # the real observation the start was encoded from is not carried along stale
    assert "observation" not in r.keys()


@pytest.mark.parametrize("action_dim", [2, 6])
def test_unbatched_base_env_with_multidimensional_actions(action_dim):
    wm = make_world_model(action_dim=action_dim)
    env = WorldModelEnv(wm, SpecOnlyEnv(action_dim=action_dim))
    assert env.batch_size == () and env.action_spec.shape == (action_dim,)
    r = env.rollout(4, policy_module(action_dim=action_dim), tensordict=start_td(wm, (3,)))
    assert r["action"].shape == (3, 4, action_dim)
    r = env.rollout(4, tensordict=start_td(wm, (3,)))  # random actions from the spec
    assert r["action"].shape == (3, 4, action_dim)
    assert (r["action"].abs() <= 1).all()


def test_explicit_specs_without_base_env_and_errors():
    wm = make_world_model()
    env = _explicit_env(wm)
    assert env.batch_size == ()
    assert set(env.full_done_spec.keys()) == {"done", "terminated"}
    with pytest.raises(TypeError, match="base_env"):
        WorldModelEnv(wm)
    with pytest.raises(ValueError, match="observation"):  # declared but never written
        WorldModelEnv(
            wm,
            observation_spec=Composite(observation=Unbounded((3,))),
            action_spec=Bounded(-1.0, 1.0, (1,)),
            latent_spec=Unbounded((4,)),
        )


def test_reset_needs_initial_latent():
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    with pytest.raises(RuntimeError, match="initial latent"):
        env.reset()
    with pytest.raises(RuntimeError, match="initial latent"):
        env.reset(TensorDict({"observation": torch.randn(2, 3)}, [2]))


def test_missing_reward_is_an_error_naming_the_key():
    wm = make_world_model()
    wm.reward_head = TensorDictModule(torch.nn.Linear(4, 1), [("next", "latent")], [("next", "r")])
    env = WorldModelEnv(wm, SpecOnlyEnv())
    for fast in (True, False):
        env.fast_rollout = fast
        with pytest.raises(KeyError, match="reward"):
            env.rollout(3, policy_module(), tensordict=start_td(wm))


def test_wrong_reward_shape_is_an_error():
    wm = make_world_model()
    wm.reward_head = TensorDictModule(torch.nn.Linear(4, 2), [("next", "latent")], [("next", "reward")])
    env = WorldModelEnv(wm, SpecOnlyEnv())
    with pytest.raises(ValueError, match=r"reward.*\(5, 2\).*\(5, 1\)"):
        env.rollout(3, policy_module(), tensordict=start_td(wm))


def _counting_world_model(kind):
    """latent[0] counts steps: 0, 1, 2, ...; done fires once it exceeds 2.5 (at t = 2)."""
    wm = make_world_model(done_head=threshold_done_head(kind=kind, threshold=2.5))
    wm.dynamics = TensorDictModule(lambda z, a: z + 1.0, ["latent", "action"], [("next", "latent")])
    return wm


@pytest.mark.parametrize("kind", ["bool", "probability", "logits"])
@pytest.mark.parametrize("fast", [True, False])
def test_done_head_ends_imagined_trajectories(kind, fast):
    wm = _counting_world_model(kind)
    env = WorldModelEnv(wm, SpecOnlyEnv(), done_logits=kind == "logits")
    env.fast_rollout = fast
    start = TensorDict({"latent": torch.zeros(4, 4)}, [4])
    r = env.rollout(10, policy_module(), tensordict=start)
    assert r.shape == (4, 3)  # steps t = 0, 1, 2; done after the third
    assert r["next", "done"][:, -1].all() and not r["next", "done"][:, :-1].any()
    assert r["next", "terminated"][:, -1].all()
    assert "truncated" not in r["next"].keys()  # the base env has none
    full = env.rollout(10, policy_module(), tensordict=start, break_when_any_done=False)
    assert full.shape == (4, 10)


def test_reassigned_head_takes_effect_in_env():
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    assert env.rollout(5, policy_module(), tensordict=start_td(wm)).shape == (5, 5)
    wm.done_head = threshold_done_head(threshold=-1e9)  # always done
    assert env.rollout(5, policy_module(), tensordict=start_td(wm)).shape == (5, 1)


def test_imagined_rollout_goes_through_gae_and_td_lambda():
    torch.manual_seed(1)
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    with torch.no_grad():
        r = env.rollout(6, policy_module(), tensordict=start_td(wm, (3,)))
    value = TensorDictModule(torch.nn.Linear(4, 1), ["latent"], ["state_value"])
    gamma, lmbda = 0.9, 0.8
    with torch.no_grad():
        adv = GAE(gamma=gamma, lmbda=lmbda, value_network=value)(r.clone())
    assert adv["advantage"].shape == (3, 6, 1)
    # hand-computed GAE: delta_t = r_t + gamma V(s_{t+1}) - V(s_t), A_t = sum (gamma lmbda)^k delta
    with torch.no_grad():
        v = value.module(r["latent"])
        v_next = value.module(r["next", "latent"])
    delta = r["next", "reward"] + gamma * v_next - v
    expected = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in reversed(range(6)):
        running = delta[:, t] + gamma * lmbda * running
        expected[:, t] = running
    torch.testing.assert_close(adv["advantage"], expected)
    with torch.no_grad():
        td_lambda = TDLambdaEstimator(gamma=gamma, lmbda=lmbda, value_network=value)(r.clone())
    torch.testing.assert_close(td_lambda["value_target"], expected + v)


def test_imagined_rollouts_extend_a_replay_buffer():
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    with torch.no_grad():
        r = env.rollout(6, policy_module(), tensordict=start_td(wm, (4,)))
    rb = ReplayBuffer(storage=LazyTensorStorage(100), batch_size=8)
    rb.extend(r.reshape(-1))
    assert len(rb) == 24
    sample = rb.sample()
    assert sample["next", "reward"].shape == (8, 1)
    assert sample["latent"].shape == (8, 4)


def test_gradients_flow_through_imagination_to_policy_and_model():
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    policy = policy_module()
    r = env.rollout(5, policy, tensordict=start_td(wm))
    r["next", "reward"].sum().backward()
    assert policy.module[0].weight.grad.abs().sum() > 0
    assert wm.dynamics.module.weight.grad.abs().sum() > 0
    assert wm.encoder.module.weight.grad.abs().sum() > 0  # through the start latent


# --------------------------------------------------------------------------- fast path
def _assert_identical(a, b):
    assert a.batch_size == b.batch_size
    assert a.names == b.names and a["next"].names == b["next"].names
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        x, y = a.get(key), b.get(key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert torch.equal(x, y), key


def _decoder_world_model():
    decoder = TensorDictModule(torch.nn.Linear(4, 3), [("next", "latent")], [("next", "observation")])
    return make_world_model(decoder=decoder)


def _two_stage_policy():
    return TensorDictSequential(
        TensorDictModule(torch.nn.Linear(4, 8), ["latent"], ["hidden"]),
        TensorDictModule(torch.nn.Sequential(torch.nn.Linear(8, 1), torch.nn.Tanh()), ["hidden"], ["action"]),
    )


@pytest.mark.parametrize(
    "case",
    ["base_env", "batched_env", "explicit", "done_head", "decoder_obs", "two_stage_policy",
     "no_auto_reset", "nested_batch", "done_head_nonstop", "random_actions",
     "random_actions_batched_env", "encoded_no_auto_reset", "encoded_no_auto_reset_random",
     "done_head_encoded_no_auto_reset", "unbatched_start", "model_writes_root", "flat_reward",
     "random_actions_large_batch"],
)
def test_fast_rollout_equals_generic_rollout(case):
    wm = make_world_model()
    policy = None if "random" in case else policy_module()
    batch, kwargs, env_kwargs = (5,), {}, {}
    if case == "random_actions_batched_env":
        env_kwargs["batch_size"] = (5,)
    if case == "unbatched_start":
        batch = ()
    if case == "random_actions_large_batch":
        batch = (512,)
    if case == "batched_env":
        env_kwargs["batch_size"] = (5,)
    if case.startswith("done_head"):
        wm = _counting_world_model("probability")
    if case == "done_head_nonstop":
        kwargs["break_when_any_done"] = False
    if case == "decoder_obs":
        wm = _decoder_world_model()
    if case == "model_writes_root":  # a root key the env does not declare: left out
        wm.decoder = TensorDictModule(torch.nn.Linear(4, 3), [("next", "latent")], ["decoded"])
    if case == "flat_reward":  # rewards of shape (B,) are shaped to the spec's (B, 1)
        wm.reward_head = TensorDictModule(
            torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Flatten(-2)), [("next", "latent")],
            [("next", "reward")],
        )
    if case == "two_stage_policy":
        policy = _two_stage_policy()
    if case == "nested_batch":
        batch = (2, 3)
    env = _explicit_env(wm, **env_kwargs) if case == "explicit" else WorldModelEnv(wm, SpecOnlyEnv(), **env_kwargs)
    if case == "decoder_obs":
        assert "observation" in env.observation_spec.keys()
    start = start_td(wm, batch) if not case.startswith("done_head") else TensorDict({"latent": torch.zeros(5, 4)}, [5])
    if case == "no_auto_reset":
        start = env.reset(start)
    if "no_auto_reset" in case:
        kwargs["auto_reset"] = False
    with torch.no_grad():
        torch.manual_seed(0)
        generic = EnvBase.rollout(env, 8, policy, tensordict=start.clone(), **kwargs)
        torch.manual_seed(0)
        fast = env.rollout(8, policy, tensordict=start.clone(), **kwargs)
    _assert_identical(fast, generic)
    # the fast path really ran (it gives up by returning None)
    assert fast_rollout(
        env, 8, policy, start.clone(), auto_reset=kwargs.get("auto_reset", True),
        break_when_any_done=kwargs.get("break_when_any_done", True),
    ) is not None


def test_fast_rollout_is_used_and_can_be_disabled(monkeypatch):
    from reverie.envs import world_model_env

    calls = []
    real = world_model_env.fast_rollout
    monkeypatch.setattr(world_model_env, "fast_rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    env.rollout(3, policy_module(), tensordict=start_td(wm))
    assert calls == [1]
    env.fast_rollout = False
    env.rollout(3, policy_module(), tensordict=start_td(wm))
    assert calls == [1]


def test_fast_rollout_falls_back_for_non_plain_modules():
    """A policy that is not a plain TensorDictModule chain uses the generic loop."""
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())

    def policy(td):
        return td.set("action", torch.zeros(*td.batch_size, 1))

    r = env.rollout(4, policy, tensordict=start_td(wm))
    assert (r["action"] == 0).all() and r.shape == (5, 4)


def test_world_model_in_a_collector_free_loop_is_a_plain_env():
    """WorldModelEnv is a TorchRL EnvBase with the world model's parameters as submodules."""
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    assert isinstance(env, EnvBase) and not env.batch_locked
    with pytest.raises(RuntimeError, match="read-only"):
        env.batch_locked = True
    assert env.full_world_model is wm
    assert {id(p) for p in env.parameters()} >= {id(p) for p in wm.dynamics.parameters()}
    assert isinstance(wm, WorldModel)


def test_starts_sliced_from_a_real_rollout_keep_their_dim_names_out():
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    real = TensorDict({"observation": torch.randn(10, 3)}, [10], names=["time"])
    start = wm.encode(real[:4])
    for policy in (policy_module(), None):  # fast path and generic path
        r = env.rollout(3, policy, tensordict=start)
        assert r.shape == (4, 3) and r.names == [None, "time"]
    assert start.names == ["time"]  # the caller's tensordict is untouched


# ------------------------------------------------------------- rollout(auto_reset=False)
def _encoded_start(wm, batch):
    return wm.encode(TensorDict({"observation": torch.randn(*batch, 3)}, batch))


@pytest.mark.parametrize("batch", [(1,), (8,), ()])
@pytest.mark.parametrize("use_policy", [True, False])
@pytest.mark.parametrize("done", ["none", "threshold", "counting"])
@pytest.mark.parametrize("fast", [True, False])
def test_rollout_without_reset_from_an_encoded_start_equals_auto_reset(batch, use_policy, done, fast):
    """``rollout(auto_reset=False)`` from ``world_model.encode(...)`` (no done flags, the
    real observation still in it) is the rollout ``auto_reset=True`` gives, on both paths."""
    torch.manual_seed(0)
    if done == "counting":
        wm = _counting_world_model("probability")
    else:
        head = threshold_done_head(threshold=0.3) if done == "threshold" else None
        wm = make_world_model(done_head=head)
    env = WorldModelEnv(wm, SpecOnlyEnv())
    env.fast_rollout = fast
    policy = policy_module() if use_policy else None
    start = _encoded_start(wm, batch)
    before = start.clone()
    rollouts = {}
    with torch.no_grad():
        for auto_reset in (True, False):
            torch.manual_seed(1)  # the same random actions
            rollouts[auto_reset] = env.rollout(15, policy, tensordict=start, auto_reset=auto_reset)
    _assert_identical(rollouts[False], rollouts[True])
    assert rollouts[False].batch_size[:-1] == batch and rollouts[False].names[-1] == "time"
    assert "observation" not in rollouts[False].keys()
    # the caller's start is left as it was
    assert set(start.keys(True, True)) == set(before.keys(True, True))
    assert all(torch.equal(start.get(k), before.get(k)) for k in before.keys(True, True))


def test_encoded_start_without_reset_goes_through_envbase_rollout():
    """``EnvBase.rollout(auto_reset=False)`` itself completes the start (``maybe_reset``)."""
    wm = make_world_model(done_head=threshold_done_head(threshold=0.3))
    env = WorldModelEnv(wm, SpecOnlyEnv())
    start = _encoded_start(wm, (8,))
    with torch.no_grad():
        torch.manual_seed(1)
        generic = EnvBase.rollout(env, 15, tensordict=start.clone(), auto_reset=False)
        torch.manual_seed(1)
        reset = env.rollout(15, tensordict=start)
    _assert_identical(generic, reset)
    assert env.maybe_reset(env.reset(start)).keys() == env.reset(start).keys()


def test_rollout_without_reset_keeps_the_done_flags_it_is_given():
    """A start that carries done flags is continued as it is: a set flag is not reset."""
    wm = make_world_model()
    env = WorldModelEnv(wm, SpecOnlyEnv())
    start = env.reset(start_td(wm, (4,)))
    start["done"][0] = True  # only "done": "terminated" stays False
    for fast in (True, False):
        env.fast_rollout = fast
        r = env.rollout(3, policy_module(), tensordict=start, auto_reset=False)
        assert r["done"][0, 0] and not r["done"][1:, 0].any() and not r["terminated"][:, 0].any()
        assert r.shape == (4, 3)


@pytest.mark.parametrize(
    "spec",
    [
        Bounded(-1.0, 1.0, (6,)),
        Bounded(torch.tensor([-2.0, 0.0, 3.0]), torch.tensor([-1.0, 5.0, 3.5]), (3,)),
        Bounded(-1.0, 1.0, (2, 3), dtype=torch.float64),
        Bounded(-3.3, 1.1, (5,)),  # high - low + low > high: the clamp is needed
        Bounded(-1.0, 2.0, (3,), dtype=torch.float16),
    ],
)
@pytest.mark.parametrize("shape", [(), (1,), (64, 2)])
def test_fast_random_actions_are_the_action_specs_own_draws(spec, shape):
    torch.manual_seed(3)
    expected = [spec.rand(torch.Size(shape)) for _ in range(3)]
    torch.manual_seed(3)
    sample = _sampler(spec)
    got = [sample(torch.Size(shape)) for _ in range(3)]
    for e, g in zip(expected, got, strict=True):
        assert e.dtype == g.dtype and e.shape == g.shape
        assert torch.equal(e, g)


def test_fast_random_actions_follow_bounds_changed_after_the_first_draw():
    spec = Bounded(-1.0, 1.0, (4,))
    sample = _sampler(spec)
    sample(torch.Size([2]))
    spec.space.low.fill_(-3.3)  # edited in place
    spec.space.high.fill_(1.1)
    for _ in range(2):
        torch.manual_seed(5)
        expected = spec.rand(torch.Size([256]))
        torch.manual_seed(5)
        assert torch.equal(sample(torch.Size([256])), expected)
        spec.space.low = torch.full((4,), 0.5)  # replaced
        spec.space.high = torch.full((4,), 0.75)


@pytest.mark.parametrize("fast", [True, False])
def test_a_wrong_action_width_names_the_component_and_the_shapes(fast):
    """The world model was built for 1-d actions; the spec says 2: the error names the
    module, its input keys and their shapes, on both rollout paths."""
    from torchrl.data import Bounded

    from reverie.modules.components import ComponentError

    wm = WorldModel(
        TensorDictModule(torch.nn.Linear(3, 4), ["observation"], ["latent"]),
        TensorDictModule(torch.nn.Linear(4 + 1, 4), ["latent", "action"], [("next", "latent")]),
        TensorDictModule(torch.nn.Linear(4, 1), [("next", "latent")], [("next", "reward")]))
    env = WorldModelEnv(wm, action_spec=Bounded(-1, 1, (2,)), latent_spec=Unbounded((4,)))
    env.fast_rollout = fast
    start = TensorDict({"latent": torch.zeros(5, 4)}, [5])
    with pytest.raises(ComponentError, match=r"'action' \(5, 2\)") as info:
        env.rollout(3, tensordict=start)
    assert "'latent' (5, 4)" in str(info.value)
