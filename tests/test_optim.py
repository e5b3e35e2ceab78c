"""LaProp and adaptive gradient clipping (reverie.optim), golden values computed by hand."""

import contextlib
import copy
import io

import pytest
import torch

from reverie.optim import LaProp, adaptive_clip_grad_


@contextlib.contextmanager
def no_host_reads():
    """Inside, every Python-level read of a tensor value (``.item()``, ``float(t)``, ``if t``,
    ...) raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read back to the host")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
            patch.setattr(torch.Tensor, name, refuse)
        yield


# ---------------------------------------------------------------- LaProp


def _step(opt, p, grad):
    p.grad = torch.tensor([grad], dtype=p.dtype)
    opt.step()


def test_laprop_two_steps_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = LaProp([p], lr=0.1, betas=(0.9, 0.999), eps=0.0)
    # step 1, g = 2: nu = 0.001 * 4 = 0.004, nu / (1 - 0.999) = 4, g / sqrt(4) = 1,
    #   mu = 0.1 * 1 = 0.1, mu / (1 - 0.9) = 1, p = 1 - 0.1 * 1 = 0.9
    _step(opt, p, 2.0)
    assert p.item() == pytest.approx(0.9, abs=1e-15)
    # step 2, g = -1: nu = 0.999 * 0.004 + 0.001 * 1 = 0.004996,
    #   nu / (1 - 0.999^2) = 0.004996 / 0.001999 = 2.49924962..., sqrt = 1.58090152...,
    #   g / sqrt = -0.63255047..., mu = 0.9 * 0.1 + 0.1 * (-0.63255047) = 0.02674495...,
    #   mu / (1 - 0.9^2) = 0.02674495 / 0.19 = 0.14076291..., p = 0.9 - 0.014076291 = 0.88592371
    _step(opt, p, -1.0)
    assert p.item() == pytest.approx(0.8859237089049186, abs=1e-12)
    # (Adam would give 0.9 - 0.1 * (0.08 / 0.19) / 1.5809 = 0.87337: the momentum averages
    # normalised gradients here)
    state = opt.state[p]
    assert state["step"].item() == 2.0
    assert state["exp_avg_sq"].item() == pytest.approx(0.004996, abs=1e-15)
    assert state["exp_avg"].item() == pytest.approx(0.026744953080654832, abs=1e-15)


def test_laprop_defaults_are_dreamer_v3s():
    opt = LaProp([torch.nn.Parameter(torch.zeros(1))])
    assert opt.defaults == dict(lr=4e-5, betas=(0.9, 0.999), eps=1e-20, weight_decay=0.0)


def test_laprop_zero_gradient_with_tiny_eps_is_no_step_and_no_nan():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = LaProp([p])  # eps = 1e-20: 0 / (0 + 1e-20) = 0
    p.grad = torch.zeros(2)
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([1.0, -2.0]))


def test_laprop_decoupled_weight_decay_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = LaProp([p], lr=0.1, weight_decay=0.5, eps=0.0)
    # p = 1 - 0.1 * (mu_hat + 0.5 * 1) = 1 - 0.1 * 1.5 = 0.85
    _step(opt, p, 2.0)
    assert p.item() == pytest.approx(0.85, abs=1e-15)


def test_laprop_skips_parameters_without_gradient_and_keeps_half_state_in_float32():
    a = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.ones(2))
    opt = LaProp([a, b], lr=0.01)
    a.grad = torch.full((3,), 0.5, dtype=torch.bfloat16)
    opt.step()
    assert b not in opt.state or not opt.state[b]
    assert opt.state[a]["exp_avg"].dtype == torch.float32 and a.dtype == torch.bfloat16
    assert torch.equal(a.detach(), torch.full((3,), 0.99, dtype=torch.bfloat16))


def test_laprop_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = LaProp(net.parameters(), lr=1e-2)
    x = torch.randn(32, 4)

    def train(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()

    train(net, opt, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = copy.deepcopy(net)
    twin_opt = LaProp(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(torch.load(buffer))
    train(net, opt, 4)
    train(twin, twin_opt, 4)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    fresh = copy.deepcopy(twin)
    train(fresh, LaProp(fresh.parameters(), lr=1e-2), 1)  # a reset state moves differently
    assert not torch.equal(fresh[0].weight, twin[0].weight)


def test_laprop_rejects_bad_hyperparameters():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="lr=-1"):
        LaProp(p, lr=-1)
    with pytest.raises(ValueError, match=r"betas=\(0.9, 1.0\)"):
        LaProp(p, betas=(0.9, 1.0))


# ---------------------------------------------------------------- adaptive gradient clipping


def test_adaptive_clip_grad_active_inactive_and_floor_by_hand():
    # active: ||p|| = 5, threshold 0.3 * 5 = 1.5, ||g|| = 3 -> factor 1.5 / 3 = 0.5
    a = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    a.grad = torch.tensor([0.0, 3.0])
    # inactive, per tensor: ||p|| = sqrt(100 + 0.01) = 10.0005, threshold 3.00015 > ||g|| = 1
    # (AGC per unit would clip row 1: its threshold is 0.3 * 0.1 = 0.03)
    b = torch.nn.Parameter(torch.tensor([[10.0, 0.0], [0.0, 0.1]]))
    b.grad = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # floor: ||p|| = 0 -> threshold 0.3 * 1e-3 = 3e-4, ||g|| = 5e-3 -> factor 0.06
    c = torch.nn.Parameter(torch.zeros(3))
    c.grad = torch.tensor([3e-3, 0.0, 4e-3])
    d = torch.nn.Parameter(torch.ones(2))  # no gradient: skipped
    with no_host_reads():
        factors = adaptive_clip_grad_([a, b, c, d], clip=0.3, eps=1e-3)
    assert factors.shape == (3,) and factors.dtype == torch.float32
    torch.testing.assert_close(factors, torch.tensor([0.5, 1.0, 0.06]))
    assert factors[1].item() == 1.0
    assert torch.equal(a.grad, torch.tensor([0.0, 1.5]))
    assert torch.equal(b.grad, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(c.grad, torch.tensor([1.8e-4, 0.0, 2.4e-4]))
    assert d.grad is None


def test_adaptive_clip_grad_bounds_every_ratio():
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    (1e3 * net(torch.randn(8, 5))).pow(2).sum().backward()
    factors = adaptive_clip_grad_(net.parameters(), clip=0.3)
    assert (factors < 1).all()  # the huge loss is clipped everywhere
    for p in net.parameters():
        assert p.grad.norm() <= 0.3 * max(1e-3, p.norm().item()) * (1 + 1e-5)


def test_adaptive_clip_grad_edge_cases():
    assert adaptive_clip_grad_([torch.nn.Parameter(torch.ones(2))]).shape == (0,)
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 10.0)  # ||g|| = 20, threshold 0.3 * 2 = 0.6
    factors = adaptive_clip_grad_(p)
    torch.testing.assert_close(factors, torch.tensor([0.03]))
    with pytest.raises(ValueError, match="clip=0"):
        adaptive_clip_grad_(p, clip=0)
