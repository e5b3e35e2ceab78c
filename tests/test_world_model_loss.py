"""WorldModelLoss: exact values per loss and distance, key handling, errors, gradient routing.

The world model below has fixed weights so every loss is computed by hand:

* encoder ``latent = [o1, 2 o2]``
* dynamics ``next latent = [l1 + a, l2 + 1]``
* reward head ``r_hat = l1' + l2'``
* done head (logits) ``l1' - l2' + 0.5``
* decoder ``reconstructed_observation = [l1, 1.25 l2]``

On the batch ``obs = [[1, 2], [0, -1]]``, ``action = [[0.5], [-1]]``:

* latent ``[[1, 4], [0, -2]]``, next latent ``[[1.5, 5], [-1, -1]]``
* ``r_hat = [[6.5], [-2]]``; true reward ``[[6], [0]]`` -> errors ``[0.5, -2]``
* done logits ``[[-3], [0.5]]``; true terminated ``[[0], [1]]`` (true done ``[[1], [1]]``:
  the first transition is a time-limit truncation)
* reconstruction ``[[1, 5], [0, -2.5]]`` vs obs -> errors ``[[0, 3], [0, -1.5]]``
* latent target ``[[1, 5], [0, 1]]`` vs next latent -> errors ``[[0.5, 0], [-1, -2]]``
"""

import contextlib
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torchrl.objectives import LossModule

from reverie.modules import WorldModel
from reverie.objectives import WorldModelLoss, distance


def _linear(weight, bias):
    weight = torch.tensor(weight, dtype=torch.float32)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


class Spy(TensorDictModuleBase):
    """Wraps a component and records the keys of every tensordict it is called on."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.in_keys = inner.in_keys
        self.out_keys = inner.out_keys
        self.seen = []

    def forward(self, td):
        self.seen.append(set(td.keys(True, True)))
        return self.inner(td)


def fixed_model(*, spy=False):
    encoder = TensorDictModule(_linear([[1, 0], [0, 2]], [0, 0]), ["observation"], ["latent"])
    if spy:
        encoder = Spy(encoder)
    dynamics = TensorDictModule(
        _linear([[1, 0, 1], [0, 1, 0]], [0, 1]), ["latent", "action"], [("next", "latent")]
    )
    reward_head = TensorDictModule(
        _linear([[1, 1]], [0]), [("next", "latent")], [("next", "reward")]
    )
    done_head = TensorDictModule(
        _linear([[1, -1]], [0.5]), [("next", "latent")], [("next", "done")]
    )
    decoder = TensorDictModule(
        _linear([[1, 0], [0, 1.25]], [0, 0]), ["latent"], ["reconstructed_observation"]
    )
    return WorldModel(encoder, dynamics, reward_head, done_head=done_head, decoder=decoder)


def fixed_batch(*, terminated=True):
    nxt = {
        "reward": torch.tensor([[6.0], [0.0]]),
        "done": torch.tensor([[True], [True]]),
        "target_latent": torch.tensor([[1.0, 5.0], [0.0, 1.0]]),
    }
    if terminated:
        nxt["terminated"] = torch.tensor([[False], [True]])
    return TensorDict(
        {
            "observation": torch.tensor([[1.0, 2.0], [0.0, -1.0]]),
            "action": torch.tensor([[0.5], [-1.0]]),
            "next": nxt,
        },
        [2],
    )


def latent_loss(model, **kwargs):
    loss = WorldModelLoss(model, losses=["latent"], **kwargs)
    loss.set_keys(predicted_latent=("next", "latent"), target_latent=("next", "target_latent"))
    return loss


@contextlib.contextmanager
def raises_key_error(*fragments):
    """Like ``pytest.raises(KeyError)``, checking that the message holds every fragment.

    (``str(KeyError)`` is the repr of the message, which escapes quotes, so ``match=`` on it
    cannot find ``('next', 'reward')``; the message itself is ``args[0]``.)
    """
    with pytest.raises(KeyError) as info:
        yield info
    message = info.value.args[0]
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def _bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


# ---------------------------------------------------------------- exact values
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("l2", (0.5**2 + 2.0**2) / 2),  # 2.125
        ("l1", (0.5 + 2.0) / 2),  # 1.25
        ("smooth_l1", (0.5 * 0.5**2 + (2.0 - 0.5)) / 2),  # 0.8125
    ],
)
def test_reward_loss_exact(kind, expected):
    out = WorldModelLoss(fixed_model(), reward_loss=kind)(fixed_batch())
    assert out["loss_reward"].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("l2", (3.0**2 + 0.5**2) / 2),  # 4.625
        ("l1", (3.0 + 0.5) / 2),  # 1.75
        ("smooth_l1", ((3.0 - 0.5) + 0.5 * 0.5**2) / 2),  # 1.3125
        ("bce", (_bce(-3.0, 0.0) + _bce(0.5, 1.0)) / 2),
    ],
)
def test_done_loss_targets_terminated_not_truncation(kind, expected):
    out = WorldModelLoss(fixed_model(), losses=["done"], done_loss=kind)(fixed_batch())
    assert out["loss_done"].item() == pytest.approx(expected, abs=1e-6)


def test_done_loss_falls_back_to_done_without_terminated():
    batch = fixed_batch(terminated=False)
    out = WorldModelLoss(fixed_model(), losses=["done"])(batch)
    # targets [1, 1]: errors [-4, -0.5]
    assert out["loss_done"].item() == pytest.approx((16 + 0.25) / 2, abs=1e-6)
    out = WorldModelLoss(fixed_model(), losses=["done"], done_loss="bce")(batch)
    assert out["loss_done"].item() == pytest.approx((_bce(-3, 1) + _bce(0.5, 1)) / 2, abs=1e-6)


def test_done_loss_with_bool_prediction():
    model = fixed_model()
    model.done_head = TensorDictModule(
        lambda latent: latent[..., :1] > 0, [("next", "latent")], [("next", "done")]
    )
    # predictions [[True], [False]] vs terminated [[False], [True]]
    out = WorldModelLoss(model, losses=["done"])(fixed_batch())
    assert out["loss_done"].item() == 1.0


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("l2", (3.0**2 + 1.5**2) / 4),  # 2.8125
        ("l1", (3.0 + 1.5) / 4),  # 1.125
        ("smooth_l1", ((3.0 - 0.5) + (1.5 - 0.5)) / 4),  # 0.875
    ],
)
def test_reconstruction_loss_exact(kind, expected):
    out = WorldModelLoss(fixed_model(), losses=["reconstruction"], reconstruction_loss=kind)(
        fixed_batch()
    )
    assert out["loss_reconstruction"].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("l2", (0.25 + 1.0 + 4.0) / 4),  # 1.3125
        ("l1", (0.5 + 1.0 + 2.0) / 4),  # 0.875
        ("smooth_l1", (0.5 * 0.25 + 0.5 * 1.0 + (2.0 - 0.5)) / 4),  # 0.53125
    ],
)
def test_latent_loss_exact(kind, expected):
    out = latent_loss(fixed_model(), latent_loss=kind)(fixed_batch())
    assert out["loss_latent"].item() == pytest.approx(expected, abs=1e-6)


def test_weights_scale_each_loss():
    loss = WorldModelLoss(
        fixed_model(),
        losses=["reward", "done", "reconstruction", "latent"],
        reward_weight=2.0,
        done_weight=0.5,
        reconstruction_weight=4.0,
        latent_weight=0.0,
    )
    loss.set_keys(predicted_latent=("next", "latent"), target_latent=("next", "target_latent"))
    out = loss(fixed_batch())
    assert out["loss_reward"].item() == pytest.approx(2.0 * 2.125)
    assert out["loss_done"].item() == pytest.approx(0.5 * 4.625)
    assert out["loss_reconstruction"].item() == pytest.approx(4.0 * 2.8125)
    assert out["loss_latent"].item() == 0.0


def test_distance_function_exact():
    p, y = torch.tensor([0.5, 3.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])
    torch.testing.assert_close(distance(p, y, "l2"), torch.tensor([0.25, 4.0, 4.0]))
    torch.testing.assert_close(distance(p, y, "l1"), torch.tensor([0.5, 2.0, 2.0]))
    torch.testing.assert_close(distance(p, y, "smooth_l1"), torch.tensor([0.125, 1.5, 1.5]))
    torch.testing.assert_close(
        distance(p, y, "bce"),
        torch.tensor([_bce(0.5, 0.0), _bce(3.0, 1.0), _bce(-1.0, 1.0)]),
    )
    with pytest.raises(ValueError, match="Unknown distance 'huber'"):
        distance(p, y, "huber")


# ---------------------------------------------------------------- key handling
def test_ground_truth_is_moved_before_the_model_runs():
    model = fixed_model(spy=True)
    loss = WorldModelLoss(model, losses=["reward", "done"])
    loss(fixed_batch())
    (seen,) = model.encoder.seen
    assert ("next", "reward") not in seen
    assert ("next", "done") not in seen
    assert ("next", "terminated") not in seen
    assert {("next", "true_reward"), ("next", "true_done"), ("next", "true_terminated")} <= seen


def test_input_batch_is_not_mutated():
    batch = fixed_batch()
    before = batch.clone()
    WorldModelLoss(fixed_model(), losses=["reward", "done", "reconstruction"])(batch)
    assert set(batch.keys(True, True)) == set(before.keys(True, True))
    assert (batch == before).all()


def test_set_keys_changes_the_keys_read():
    model = fixed_model()
    model.reward_head = TensorDictModule(
        _linear([[1, 1]], [0]), [("next", "latent")], [("next", "r")]
    )
    batch = fixed_batch()
    batch["next", "r"] = batch["next"].pop("reward")
    loss = WorldModelLoss(model)
    loss.set_keys(reward="r", true_reward="r_true")
    seen = Spy(model.encoder)
    model.encoder = seen
    out = loss(batch)
    assert out["loss_reward"].item() == pytest.approx(2.125)
    assert ("next", "r_true") in seen.seen[0] and ("next", "r") not in seen.seen[0]
    # with default keys the batch has no ("next", "reward"): the error names it
    with raises_key_error("('next', 'reward')"):
        WorldModelLoss(model)(batch)


def test_set_keys_for_done_and_reconstruction():
    model = fixed_model()
    model.decoder = TensorDictModule(_linear([[1, 0], [0, 1.25]], [0, 0]), ["latent"], ["obs_hat"])
    batch = fixed_batch()
    batch["next", "term"] = batch["next"].pop("terminated")
    loss = WorldModelLoss(model, losses=["done", "reconstruction"])
    loss.set_keys(terminated="term", reconstructed_observation="obs_hat")
    out = loss(batch)
    assert out["loss_done"].item() == pytest.approx(4.625)
    assert out["loss_reconstruction"].item() == pytest.approx(2.8125)


def test_result_is_tensordict_of_scalars_in_requested_order():
    loss = WorldModelLoss(fixed_model(), losses=["reconstruction", "reward", "done"])
    out = loss(fixed_batch())
    assert isinstance(out, TensorDict)
    assert out.batch_size == torch.Size([])
    assert list(out.keys()) == ["loss_reconstruction", "loss_reward", "loss_done"]
    for value in out.values():
        assert value.shape == torch.Size([])
    assert list(WorldModelLoss(fixed_model())(fixed_batch()).keys()) == ["loss_reward"]


def test_is_a_torchrl_loss_module():
    model = fixed_model()
    loss = WorldModelLoss(model)
    assert isinstance(loss, LossModule)
    # the model's parameters are the loss module's parameters (what an optimiser gets)
    assert {id(p) for p in loss.parameters()} == {id(p) for p in model.parameters()}


def test_sequence_batches():
    batch = fixed_batch()
    seq = torch.stack([batch, batch, batch], dim=1)  # [B=2, T=3]
    assert seq.batch_size == torch.Size([2, 3])
    loss = WorldModelLoss(fixed_model(), losses=["reward", "done", "reconstruction", "latent"])
    loss.set_keys(predicted_latent=("next", "latent"), target_latent=("next", "target_latent"))
    out = loss(seq)
    assert out["loss_reward"].item() == pytest.approx(2.125)
    assert out["loss_done"].item() == pytest.approx(4.625)
    assert out["loss_reconstruction"].item() == pytest.approx(2.8125)
    assert out["loss_latent"].item() == pytest.approx(1.3125)
    assert ("next", "reward") in seq.keys(True, True)


# ---------------------------------------------------------------- errors
def test_unknown_loss_name():
    with pytest.raises(ValueError, match="Unknown loss type.*'kl'"):
        WorldModelLoss(fixed_model(), losses=["reward", "kl"])


def test_no_loss_selected():
    with pytest.raises(ValueError, match="at least one loss"):
        WorldModelLoss(fixed_model(), losses=[])


def test_duplicate_loss_name():
    with pytest.raises(ValueError, match="'reward'"):
        WorldModelLoss(fixed_model(), losses=["reward", "reward"])


@pytest.mark.parametrize("arg", ["reward_loss", "done_loss", "reconstruction_loss", "latent_loss"])
def test_unknown_distance_names_the_argument(arg):
    with pytest.raises(ValueError, match=f"{arg}='huber'"):
        WorldModelLoss(fixed_model(), **{arg: "huber"})


def test_bce_only_for_done():
    WorldModelLoss(fixed_model(), done_loss="bce")
    with pytest.raises(ValueError, match="reward_loss='bce'"):
        WorldModelLoss(fixed_model(), reward_loss="bce")


def test_shape_mismatch_is_an_error_not_broadcast():
    model = fixed_model()
    model.reward_head = TensorDictModule(
        lambda latent: latent.sum(-1), [("next", "latent")], [("next", "reward")]
    )  # (B,) instead of (B, 1)
    with pytest.raises(ValueError, match=r"reward.*\(2,\).*\(2, 1\)"):
        WorldModelLoss(model)(fixed_batch())


def test_missing_ground_truth_reward():
    batch = fixed_batch()
    del batch["next", "reward"]
    with raises_key_error("('next', 'reward')"):
        WorldModelLoss(fixed_model())(batch)


def test_missing_ground_truth_done():
    batch = fixed_batch()
    del batch["next", "done"]
    del batch["next", "terminated"]
    with raises_key_error("('next', 'terminated')", "('next', 'done')"):
        WorldModelLoss(fixed_model(), losses=["done"])(batch)


def test_missing_prediction():
    model = fixed_model()
    model.done_head = None
    with raises_key_error("predicted done", "('next', 'done')"):
        WorldModelLoss(model, losses=["done"])(fixed_batch())
    model.decoder = None
    with raises_key_error("'reconstructed_observation'"):
        WorldModelLoss(model, losses=["reconstruction"])(fixed_batch())
    with raises_key_error("'predicted_latent'"):
        WorldModelLoss(model, losses=["latent"])(fixed_batch())


def test_missing_latent_target():
    batch = fixed_batch()
    del batch["next", "target_latent"]
    with raises_key_error("target latent ('next', 'target_latent')"):
        latent_loss(fixed_model())(batch)


# ---------------------------------------------------------------- gradients
def _grads(model, value):
    model.zero_grad(set_to_none=True)
    value.backward()
    return {
        name: module.module.weight.grad
        for name, module in model.components()
        if isinstance(module, TensorDictModule) and isinstance(module.module, torch.nn.Linear)
    }


def test_gradient_routing():
    model = fixed_model()
    loss = WorldModelLoss(model, losses=["reward", "reconstruction"])
    out = loss(fixed_batch())

    grads = _grads(model, out["loss_reward"])
    for name in ("encoder", "dynamics", "reward_head"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert grads["decoder"] is None and grads["done_head"] is None
    # d loss / d w_reward = mean_i 2 (r_hat_i - r_i) * next_latent_i
    #   = (2 * 0.5 * [1.5, 5] + 2 * -2 * [-1, -1]) / 2 = [2.75, 4.5]
    torch.testing.assert_close(grads["reward_head"], torch.tensor([[2.75, 4.5]]))

    out = loss(fixed_batch())
    grads = _grads(model, out["loss_reconstruction"])
    assert grads["reward_head"] is None and grads["dynamics"] is None
    assert grads["decoder"].abs().sum() > 0 and grads["encoder"].abs().sum() > 0


# ------------------------------------------------------------------ non-finite data
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_batch_with_nan_or_inf_is_refused_naming_the_key_and_index(bad):
    from reverie.validation import NonFiniteError

    loss = WorldModelLoss(fixed_model(), losses=["reward"])
    batch = fixed_batch()
    batch["next", "reward"][1, 0] = bad
    with pytest.raises(NonFiniteError, match=r"\('next', 'reward'\).*1 non-finite value.*\(1, 0\)"):
        loss(batch)


def test_a_diverged_prediction_is_refused():
    from reverie.validation import NonFiniteError

    wm = fixed_model()
    with torch.no_grad():
        next(wm.reward_head.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="reward.*diverged"):
        WorldModelLoss(wm, losses=["reward"])(fixed_batch())
