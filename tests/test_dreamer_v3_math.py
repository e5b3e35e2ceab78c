"""DreamerV3 maths, golden values computed by hand: symlog, two-hot, unimix, straight-through
sampling, categorical KL balancing with free bits, lambda-returns with continuation
probabilities, the return normaliser and the slow-critic EMA."""

import contextlib
import io
import math

import pytest
import torch

from reverie.objectives import (
    ReturnNormalizer,
    categorical_kl,
    ema_update_,
    kl_balance,
    lambda_returns,
    lambda_returns_v3,
)
from reverie.objectives.dreamer_v3_math import (
    one_hot_straight_through,
    symexp,
    symexp_bins,
    symlog,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
    unimix_logits,
)
from reverie.objectives.return_normalizer import _quantiles

LN3 = math.log(3.0)


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


# ---------------------------------------------------------------- symlog / symexp


def test_symexp_inverts_symlog_on_a_wide_grid():
    x = torch.tensor([-1e6, -1e3, -1.0, -1e-6, 0.0, 1e-6, 1.0, 1e3, 1e6], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12, atol=0.0)
    assert torch.allclose(symlog(symexp(x[2:-2])), x[2:-2], rtol=1e-12, atol=0.0)
    # sign is kept and 0 maps to exactly 0
    assert torch.equal(torch.sign(symlog(x)), torch.sign(x))
    assert symlog(torch.zeros(1)).item() == 0.0 and symexp(torch.zeros(1)).item() == 0.0
    # near 0 symlog is the identity to first order: ln(1 + 1e-6) = 1e-6 - 5e-13
    assert symlog(x[5:6]).item() == pytest.approx(1e-6 - 5e-13, rel=1e-9)


def test_symlog_of_e_minus_one_is_one():
    # symlog(e - 1) = ln(1 + e - 1) = ln e = 1, antisymmetric
    x = torch.tensor([-(math.e - 1.0), math.e - 1.0], dtype=torch.float64)
    assert torch.allclose(symlog(x), torch.tensor([-1.0, 1.0], dtype=torch.float64),
                          rtol=0.0, atol=1e-15)
    # and symlog(1e6) = ln(1e6 + 1)
    assert symlog(torch.tensor([1e6], dtype=torch.float64)).item() == pytest.approx(
        math.log(1e6 + 1.0), rel=1e-15)


# ---------------------------------------------------------------- two-hot


def test_symexp_bins_are_symexp_of_linspace_and_antisymmetric():
    bins = symexp_bins(255)
    assert bins.shape == (255,) and bins.dtype == torch.float32
    grid = torch.linspace(-20.0, 20.0, 255, dtype=torch.float64)
    assert torch.allclose(bins.double(), symexp(grid), rtol=1e-6, atol=1e-12)  # linspace: 3e-16 mid
    assert bins[127].item() == 0.0 and torch.equal(bins, -bins.flip(0))
    assert bins[-1].item() == pytest.approx(math.expm1(20.0), rel=1e-6)


def test_uniform_logits_decode_to_exactly_zero():
    bins = symexp_bins(255)
    out = two_hot_decode(torch.zeros(4, 7, 255), bins)
    assert out.shape == (4, 7)
    assert (out == 0.0).all()  # exact, not allclose: the bins reach +-4.9e8


def test_two_hot_weights_by_hand():
    bins = torch.tensor([-2.0, 0.0, 1.0, 4.0])
    x = torch.tensor([2.5, -0.5, 1.0])
    # 2.5 in [1, 4]: w(1) = (4 - 2.5) / 3 = 0.5, w(4) = 0.5
    # -0.5 in [-2, 0]: w(-2) = (0 + 0.5) / 2 = 0.25, w(0) = 0.75
    # 1.0 on a bin: all weight there
    expected = torch.tensor([[0.0, 0.0, 0.5, 0.5],
                             [0.25, 0.75, 0.0, 0.0],
                             [0.0, 0.0, 1.0, 0.0]])
    assert torch.equal(two_hot_encode(x, bins), expected)


def test_two_hot_clamps_values_outside_the_range_to_the_edge_bins():
    bins = torch.tensor([-2.0, 0.0, 1.0, 4.0])
    out = two_hot_encode(torch.tensor([-10.0, 100.0]), bins)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    big = two_hot_encode(torch.tensor([1e12, -1e12]), symexp_bins(255))
    assert big[0, -1].item() == 1.0 and big[1, 0].item() == 1.0 and big.sum().item() == 2.0


def test_two_hot_round_trip_inside_the_range():
    bins = symexp_bins(255, dtype=torch.float64)
    x = torch.tensor([-1e4, -3.3, 0.0, 0.5, 77.0, 2e5], dtype=torch.float64)
    weights = two_hot_encode(x, bins)
    assert torch.allclose(weights.sum(-1), torch.ones(6, dtype=torch.float64))
    assert ((weights > 0).sum(-1) <= 2).all()
    assert torch.allclose((weights * bins).sum(-1), x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(two_hot_decode(weights.log(), bins), x, rtol=1e-10, atol=1e-10)


def test_two_hot_cross_entropy_gradient_is_softmax_minus_two_hot():
    bins = torch.tensor([-4.0, -1.0, 0.0, 1.0, 4.0])
    logits = torch.randn(3, 5, requires_grad=True)
    target = torch.tensor([0.5, -3.0, 9.0])
    two_hot_cross_entropy(logits, target, bins).sum().backward()
    expected = torch.softmax(logits.detach(), -1) - two_hot_encode(target, bins)
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    # value: -sum twohot * log_softmax; with uniform logits it is ln 5 for any target
    ce = two_hot_cross_entropy(torch.zeros(3, 5), target, bins)
    assert torch.allclose(ce, torch.full((3,), math.log(5.0)))


# ---------------------------------------------------------------- unimix


def test_unimix_floor_normalisation_and_zero_mix():
    u, C = 0.01, 4
    logits = torch.tensor([[50.0, -50.0, 0.0, -1e9], [0.0, 0.0, 0.0, 0.0]])
    mixed = unimix_logits(logits, u)
    probs = mixed.exp()
    # never below u / C (up to the float32 rounding of u / C itself)
    assert (probs >= u / C * (1 - 1e-6)).all()
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(probs, (1 - u) * torch.softmax(logits, -1) + u / C, atol=1e-7)
    # the near-one-hot row: (1 - u) + u / C = 0.9925, the rest u / C = 0.0025
    assert probs[0, 0].item() == pytest.approx(0.9925, rel=1e-6)
    assert torch.equal(unimix_logits(logits, 0.0), torch.log_softmax(logits, -1))
    with pytest.raises(ValueError, match="unimix=1.0"):
        unimix_logits(logits, 1.0)


# ---------------------------------------------------------------- straight-through


def test_straight_through_forward_is_exactly_one_hot():
    logits = (3 * torch.randn(2000, 7)).requires_grad_()
    x = one_hot_straight_through(logits).detach()
    index = x.argmax(-1)
    assert torch.equal(x, torch.nn.functional.one_hot(index, 7).float())


def test_straight_through_gradient_is_that_of_softmax():
    logits = torch.randn(5, 4, requires_grad=True)
    weights = torch.randn(5, 4)
    (one_hot_straight_through(logits) * weights).sum().backward()
    reference = logits.detach().clone().requires_grad_()
    (torch.softmax(reference, -1) * weights).sum().backward()
    assert torch.allclose(logits.grad, reference.grad, atol=1e-7)
    # by hand: d/dl_j sum_c p_c w_c = p_j (w_j - sum_c p_c w_c)
    p = torch.softmax(logits.detach(), -1)
    assert torch.allclose(logits.grad, p * (weights - (p * weights).sum(-1, keepdim=True)),
                          atol=1e-7)


def test_straight_through_sample_frequencies_match_the_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 100_000
    generator = torch.Generator().manual_seed(1)
    x = one_hot_straight_through(probs.log().expand(n, 4), generator=generator)
    freq = x.detach().mean(0)
    # each frequency has std sqrt(p (1 - p) / n) <= sqrt(0.25 / 1e5) = 0.0016; 5 std = 0.008
    assert torch.allclose(freq, probs, atol=0.008)
    # and the draw is reproducible from the generator
    again = one_hot_straight_through(probs.log().expand(n, 4),
                                     generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, again)


# ---------------------------------------------------------------- categorical KL


def test_categorical_kl_by_hand():
    q = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
    p = torch.tensor([[0.0, LN3]])  # (1/4, 3/4)
    # KL(q || p) = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln 2 + 1/2 ln(2/3) = ln(4/3) / 2
    assert categorical_kl(q, p).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # the other direction: 1/4 ln(1/2) + 3/4 ln(3/2)
    assert categorical_kl(p, q).item() == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)
    # unnormalised logits (shifted by a constant) give the same value
    assert categorical_kl(q + 5.0, p - 2.0).item() == pytest.approx(0.5 * math.log(4 / 3),
                                                                       rel=1e-6)


def test_categorical_kl_sums_latents_keeps_batch_and_is_zero_for_equal_logits():
    logits = torch.randn(4, 5, 3, 6)
    kl = categorical_kl(logits, logits)
    assert kl.shape == (4, 5) and (kl == 0).all()
    q, p = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    per_latent = [categorical_kl(q[:, s:s + 1], p[:, s:s + 1]) for s in range(3)]
    assert torch.allclose(categorical_kl(q, p), sum(per_latent), atol=1e-6)
    assert (categorical_kl(q, p) > 0).all()
    with pytest.raises(ValueError, match=r"\(2, 3, 6\).*\(2, 3, 5\)"):
        categorical_kl(q, p[..., :5])


# ---------------------------------------------------------------- KL balancing


def _q_and_p(requires_grad=True):
    q = torch.tensor([[0.0, 0.0]], requires_grad=requires_grad)  # (1/2, 1/2)
    p = torch.tensor([[0.0, LN3]], requires_grad=requires_grad)  # (1/4, 3/4)
    return q, p


def test_kl_balance_free_bits_active_clamps_to_the_floor_with_zero_gradient():
    q, p = _q_and_p()
    dyn, rep = kl_balance(q, p, free_nats=1.0)  # KL = ln(4/3)/2 = 0.1438 < 1
    assert dyn.item() == 1.0 and rep.item() == 1.0
    (dyn + rep).backward()
    assert torch.equal(q.grad, torch.zeros(1, 2)) and torch.equal(p.grad, torch.zeros(1, 2))


def test_kl_balance_free_bits_inactive_and_gradient_routing():
    kl = 0.5 * math.log(4 / 3)
    # dyn: gradient only into the prior; d KL(q||p) / d logits_p = p - q = (-1/4, 1/4)
    q, p = _q_and_p()
    dyn, _ = kl_balance(q, p, free_nats=0.1)
    assert dyn.item() == pytest.approx(kl, rel=1e-6)
    dyn.backward()
    assert q.grad is None
    assert torch.allclose(p.grad, torch.tensor([[-0.25, 0.25]]), atol=1e-7)
    # rep: gradient only into the posterior;
    # d KL / d logits_q_j = q_j (ln q_j - ln p_j - KL) = 1/2 (ln 2 - ln(4/3)/2) = ln(3)/4, -ln(3)/4
    q, p = _q_and_p()
    _, rep = kl_balance(q, p, free_nats=0.1)
    assert rep.item() == pytest.approx(kl, rel=1e-6)
    rep.backward()
    assert p.grad is None
    assert torch.allclose(q.grad, torch.tensor([[LN3 / 4, -LN3 / 4]]), atol=1e-7)


def test_kl_balance_clamps_the_latent_sum_per_step():
    # step 0: 8 latents of KL ln(4/3)/2 each: sum 1.1507 > 1 (a per-latent clamp would give 8)
    # step 1: p = (1/100, 99/100): KL = 1/2 ln 50 + 1/2 ln(50/99) = ln(2500/99)/2 = 1.6147
    # step 2: KL ln(4/3)/2 < 1 -> 1 (a clamp of the batch mean would leave it)
    q = torch.zeros(3, 8, 2)
    p = torch.zeros(3, 8, 2)
    p[0, :, 1] = LN3
    p[1, 0, 1] = math.log(99.0)
    q[1, 1:] = p[1, 1:]  # the other latents of step 1 agree exactly (KL 0)
    p[2, 0, 1] = LN3
    q[2, 1:] = p[2, 1:]
    dyn, rep = kl_balance(q, p, free_nats=1.0)
    expected = torch.tensor([8 * 0.5 * math.log(4 / 3), 0.5 * math.log(2500 / 99), 1.0])
    assert dyn.shape == (3,)
    assert torch.allclose(dyn, expected, rtol=1e-6) and torch.allclose(rep, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="free_nats=-1"):
        kl_balance(q, p, free_nats=-1)


# ---------------------------------------------------------------- lambda-returns


def test_lambda_returns_v3_by_hand_with_a_fractional_continuation():
    gamma, lmbda = 0.9, 0.8
    reward = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)  # r_1, r_2, r_3
    value = torch.tensor([[10.0], [20.0], [30.0]], dtype=torch.float64)  # v_1, v_2, v_3
    cont = torch.tensor([[1.0], [0.5], [1.0]], dtype=torch.float64)  # c_1, c_2, c_3
    # R_2 = r_3 + g c_3 v_3                       = 3 + 0.9 * 30              = 30
    # R_1 = r_2 + g c_2 ((1 - l) v_2 + l R_2)     = 2 + 0.45 (4 + 24)         = 14.6
    # R_0 = r_1 + g c_1 ((1 - l) v_1 + l R_1)     = 1 + 0.9 (2 + 11.68)       = 13.312
    expected = torch.tensor([[13.312], [14.6], [30.0]], dtype=torch.float64)
    out = lambda_returns_v3(reward, value, cont, gamma, lmbda)
    assert torch.allclose(out, expected, rtol=0.0, atol=1e-12)
    # batched, and continuation 0 is termination
    batch = lambda_returns_v3(reward.expand(2, 3, 1), value.expand(2, 3, 1),
                              torch.stack([cont, torch.zeros_like(cont)]), gamma, lmbda)
    assert torch.allclose(batch[0], expected, atol=1e-12)
    assert torch.equal(batch[1], reward)
    term = torch.tensor([[False], [True], [False]])
    assert torch.allclose(lambda_returns_v3(reward, value, ~term, gamma, lmbda),
                          lambda_returns(reward, value, term, gamma, lmbda), atol=1e-12)


# ---------------------------------------------------------------- return normaliser


def test_return_normalizer_two_updates_by_hand():
    norm = ReturnNormalizer(decay=0.5)
    # update 1: 0, 1, ..., 20 (n = 21): Per 5 at position 0.05 * 20 = 1 -> 1, Per 95 at 19 -> 19
    norm.update(torch.arange(21.0).reshape(3, 7))
    assert norm.low_ema.item() == 0.5 and norm.high_ema.item() == 9.5  # 0.5 * 1, 0.5 * 19
    # update 2 (n = 11): positions 0.05 * 10 = 0.5 and 9.5, linearly interpolated:
    # Per 5 = (-10 - 6) / 2 = -8, Per 95 = (6 + 30) / 2 = 18
    returns = torch.tensor([30.0, 0.0, -6.0, 0.0, 0.0, 6.0, 0.0, -10.0, 0.0, 0.0, 0.0])
    norm.update(returns)
    # low = 0.5 * 0.5 + 0.5 * (-8) = -3.75, high = 0.5 * 9.5 + 0.5 * 18 = 13.75
    assert norm.low_ema.item() == -3.75 and norm.high_ema.item() == 13.75
    assert norm.scale().item() == 17.5 and norm.offset().item() == -3.75
    assert norm.corr.item() == 0.75  # 1 - 0.5^2


def test_return_normalizer_default_decay_and_the_floor_of_one():
    norm = ReturnNormalizer()
    assert norm.scale().item() == 1.0  # before any update: max(1, 0 - 0)
    norm.update(torch.arange(21.0))
    norm.update(torch.tensor([30.0, 0.0, -6.0, 0.0, 0.0, 6.0, 0.0, -10.0, 0.0, 0.0, 0.0]))
    # low = 0.99 (0.01 * 1) + 0.01 (-8) = -0.0701, high = 0.99 (0.01 * 19) + 0.01 * 18 = 0.3681
    assert norm.low_ema.item() == pytest.approx(-0.0701, rel=1e-6)
    assert norm.high_ema.item() == pytest.approx(0.3681, rel=1e-6)
    assert norm.scale().item() == 1.0  # range 0.4382 is floored at 1
    # a wide batch repeated: the range grows to 0.99^n (...) and passes the floor
    for _ in range(300):
        norm.update(torch.arange(0.0, 2001.0))  # Per 5 = 100, Per 95 = 1900
    assert norm.scale().item() == pytest.approx(1800.0 * (1 - 0.99 ** 300)
                                                + 0.99 ** 300 * 0.4382, rel=1e-4)


def test_return_normalizer_debias():
    norm = ReturnNormalizer(decay=0.5, debias=True)
    norm.update(torch.arange(21.0))
    # corr = 0.5: the statistics are the batch percentiles themselves
    assert norm.offset().item() == 1.0 and norm.scale().item() == 18.0
    norm.update(torch.tensor([30.0, 0.0, -6.0, 0.0, 0.0, 6.0, 0.0, -10.0, 0.0, 0.0, 0.0]))
    # corr = 0.75: (13.75 - (-3.75)) / 0.75 = 23.333
    assert norm.scale().item() == pytest.approx(17.5 / 0.75, rel=1e-6)
    assert norm.offset().item() == pytest.approx(-5.0, rel=1e-6)


def test_return_normalizer_quantiles_match_torch_quantile():
    x = torch.randn(37, 11) * 5
    ours = torch.stack(_quantiles(x.flatten(), (0.05, 0.95)))
    assert torch.allclose(ours, torch.quantile(x.flatten(), torch.tensor([0.05, 0.95])),
                          rtol=1e-6, atol=1e-6)
    assert torch.equal(_quantiles(torch.tensor([3.0]), (0.05, 0.95))[1], torch.tensor(3.0))


def test_return_normalizer_state_dict_round_trip_is_exact():
    norm = ReturnNormalizer()
    for _ in range(3):
        norm.update(torch.randn(16, 15) * 100)
    assert set(norm.state_dict()) == {"low_ema", "high_ema", "corr"}
    buffer = io.BytesIO()
    torch.save(norm.state_dict(), buffer)
    buffer.seek(0)
    fresh = ReturnNormalizer()
    assert not torch.equal(fresh.scale(), norm.scale())
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh.scale(), norm.scale()) and torch.equal(fresh.offset(), norm.offset())
    batch = torch.randn(64) * 100
    norm.update(batch)
    fresh.update(batch)
    assert torch.equal(fresh.high_ema, norm.high_ema)


def test_return_normalizer_dtype_device_and_no_gradient():
    norm = ReturnNormalizer(decay=0.5).to(torch.float64)
    returns = (torch.arange(21.0) * 1.0).requires_grad_()
    with no_host_reads():
        norm.update(returns)  # float32 returns into float64 statistics
        norm.scale(), norm.offset()
    assert norm.low_ema.dtype == torch.float64 and norm.scale().dtype == torch.float64
    assert norm.low_ema.grad_fn is None and not norm.high_ema.requires_grad
    assert torch.equal(norm.high_ema, torch.tensor(9.5, dtype=torch.float64))


def test_return_normalizer_errors():
    norm = ReturnNormalizer()
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        norm.update(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="meta"):
        norm.update(torch.zeros(4, device="meta"))
    with pytest.raises(ValueError, match="low=95"):
        ReturnNormalizer(low=95, high=5)
    with pytest.raises(ValueError, match="decay=1"):
        ReturnNormalizer(decay=1)


# ---------------------------------------------------------------- slow critic EMA


def test_ema_update_one_step_by_hand():
    target = [torch.tensor([1.0, -2.0], dtype=torch.float64), torch.zeros(2, 2)]
    source = [torch.tensor([3.0, 8.0], dtype=torch.float64), torch.ones(2, 2)]
    ema_update_(target, source, tau=0.02)
    # 0.98 * 1 + 0.02 * 3 = 1.04, 0.98 * (-2) + 0.02 * 8 = -1.8; 0.98 * 0 + 0.02 * 1 = 0.02
    assert torch.allclose(target[0], torch.tensor([1.04, -1.8], dtype=torch.float64),
                          rtol=0.0, atol=1e-15)
    assert torch.allclose(target[1], torch.full((2, 2), 0.02), rtol=0.0, atol=1e-9)
    assert torch.equal(source[1], torch.ones(2, 2))  # the source is untouched


def test_ema_update_on_modules_and_errors():
    slow, fast = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in slow.parameters()]
    ema_update_(slow.parameters(), fast.parameters(), tau=0.02)
    for old, new, src in zip(before, slow.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(new, 0.98 * old + 0.02 * src, atol=1e-7)
        assert new.grad_fn is None
    ema_update_(slow.parameters(), fast.parameters(), tau=1.0)
    assert all(torch.equal(a, b) for a, b in zip(slow.parameters(), fast.parameters(),
                                                   strict=True))
    with pytest.raises(ValueError, match="2 target tensors but 1 source"):
        ema_update_(slow.parameters(), [fast.weight], tau=0.02)
    with pytest.raises(ValueError, match=r"tensor 0 has target shape \(2, 3\) but source "):
        ema_update_([slow.weight], [torch.zeros(3, 2)], tau=0.02)
    with pytest.raises(ValueError, match="tau=1.5"):
        ema_update_([slow.weight], [fast.weight], tau=1.5)
