"""Pure maths of DreamerV3 (Hafner et al. 2023, https://arxiv.org/abs/2301.04104).

Symlog squashing and the two-hot symexp-binned distribution used by its reward and critic
heads; unimix and straight-through categorical latents; the balanced categorical KL with free
bits; the slow-critic EMA; lambda-returns with continuation probabilities. Every function works
on any leading batch dims. The return normaliser is :mod:`reverie.objectives.return_normalizer`,
the LaProp optimiser and adaptive gradient clipping :mod:`reverie.optim`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from reverie.objectives.dreamer_math import lambda_returns

__all__ = ["one_hot_straight_through", "symexp", "symexp_bins", "symlog", "two_hot_cross_entropy",
           "two_hot_decode", "two_hot_encode", "unimix_logits",
           "categorical_kl", "ema_update_", "kl_balance", "lambda_returns_v3"]


def symlog(x: Tensor) -> Tensor:
    """``symlog(x) = sign(x) ln(|x| + 1)`` (DreamerV3 eq. 1), elementwise.

    Examples:
        >>> symlog(torch.tensor([-(torch.e - 1), 0.0, torch.e - 1]))
        tensor([-1.,  0.,  1.])
    """
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """``symexp(x) = sign(x) (exp(|x|) - 1)``, the inverse of :func:`symlog`, elementwise.

    Examples:
        >>> symexp(symlog(torch.tensor([-100.0, 0.0, 3.5])))
        tensor([-100.0000,    0.0000,    3.5000])
    """
    return torch.sign(x) * torch.expm1(x.abs())


def symexp_bins(num_bins: int = 255, low: float = -20.0, high: float = 20.0,
                dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The two-hot bins ``B = symexp(linspace(low, high, num_bins))`` (DreamerV3 eq. 10).

    The bins are made exactly antisymmetric (``B[k] == -B[K-1-k]``, and ``B[(K-1)/2] == 0``
    for odd ``K``) when ``low == -high``, so a uniform distribution decodes to exactly 0.

    Returns ``(num_bins,)``.

    Examples:
        >>> b = symexp_bins(5, -2.0, 2.0)
        >>> b
        tensor([-6.3891, -1.7183,  0.0000,  1.7183,  6.3891])
        >>> bool((b == -b.flip(0)).all())
        True
    """
    if num_bins < 2:
        raise ValueError(f"symexp_bins: num_bins={num_bins}; need at least 2 bins.")
    if not low < high:
        raise ValueError(f"symexp_bins: low={low} must be below high={high}.")
    grid = torch.linspace(low, high, num_bins, dtype=torch.float64)
    bins = symexp(grid)
    if low == -high:  # exact antisymmetry: mirror the lower half
        half = num_bins // 2
        bins[num_bins - half:] = -bins[:half].flip(0)
        if num_bins % 2:
            bins[half] = 0.0
    return bins.to(dtype=dtype, device=device)


def two_hot_encode(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of ``x`` on sorted ``bins`` (DreamerV3 eq. 9).

    For ``B_k <= x < B_{k+1}`` the weights are ``w_k = (B_{k+1} - x) / (B_{k+1} - B_k)`` and
    ``w_{k+1} = 1 - w_k``; every other weight is 0. Values beyond the outermost bins put all
    their weight on that bin. The weights sum to 1 and ``sum_k w_k B_k == x`` inside the range.

    Args:
        x: ``(*B,)`` values (not squashed: the bins carry the symexp spacing).
        bins: ``(K,)`` increasing.

    Returns:
        ``(*B, K)``.

    Examples:
        >>> two_hot_encode(torch.tensor([0.25, 5.0]), torch.tensor([0.0, 1.0, 2.0]))
        tensor([[0.7500, 0.2500, 0.0000],
                [0.0000, 0.0000, 1.0000]])
    """
    K = bins.shape[-1]
    x = x.to(bins.dtype)
    clamped = x.clamp(bins[0], bins[-1])
    # index of the bin at or below x, in [0, K-2] so that k+1 exists
    below = (torch.searchsorted(bins, clamped.contiguous(), right=True) - 1).clamp(0, K - 2)
    lo, hi = bins[below], bins[below + 1]
    w_hi = ((clamped - lo) / (hi - lo)).clamp(0.0, 1.0)
    out = torch.zeros(*x.shape, K, dtype=bins.dtype, device=bins.device)
    out.scatter_(-1, below.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, (below + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def two_hot_decode(logits: Tensor, bins: Tensor) -> Tensor:
    """Expected value ``softmax(logits)^T B`` of the binned distribution (DreamerV3 eq. 10).

    Summed from the middle bin outwards in mirrored pairs, so symmetric bins with symmetric
    (e.g. uniform) probabilities decode to exactly 0, as a freshly initialised head should.

    Args:
        logits: ``(*B, K)``.
        bins: ``(K,)``.

    Returns:
        ``(*B,)``.

    Examples:
        >>> bins = symexp_bins(255)
        >>> two_hot_decode(torch.zeros(3, 255), bins)
        tensor([0., 0., 0.])
        >>> x = torch.tensor([-7.5, 0.3, 1234.0])
        >>> torch.allclose(two_hot_decode(two_hot_encode(x, bins).log(), bins), x)
        True
    """
    probs = torch.softmax(logits, -1)
    weighted = probs * bins.to(probs.dtype)
    K = bins.shape[-1]
    half = K // 2
    # pair bin k (below the middle) with bin K-1-k (above it), then add the pairs outwards
    pairs = weighted[..., :half].flip(-1) + weighted[..., K - half:]
    middle = weighted[..., half] if K % 2 else 0.0
    return pairs.sum(-1) + middle


def two_hot_cross_entropy(logits: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """``-twohot(target)^T log softmax(logits)`` (DreamerV3's reward and critic loss).

    Args:
        logits: ``(*B, K)``.
        target: ``(*B,)``; no gradient flows into it.
        bins: ``(K,)``.

    Returns:
        ``(*B,)``.

    Examples:
        >>> bins = torch.tensor([0.0, 1.0])
        >>> two_hot_cross_entropy(torch.zeros(1, 2), torch.tensor([0.5]), bins)  # ln 2
        tensor([0.6931])
    """
    weights = two_hot_encode(target.detach(), bins).to(logits.dtype)
    return -(weights * torch.log_softmax(logits, -1)).sum(-1)


def unimix_logits(logits: Tensor, unimix: float = 0.01) -> Tensor:
    """Logits of the mixture ``(1 - u) softmax(logits) + u / C`` over the last dim (DreamerV3's
    1% uniform mix of categorical latents and discrete actions, section "Robustness").

    The result is normalised (``logsumexp == 0``); ``unimix=0`` gives ``log_softmax(logits)``.

    Args:
        logits: ``(*B, C)``.
        unimix: the uniform weight ``u`` in ``[0, 1)``.

    Returns:
        ``(*B, C)`` log-probabilities.

    Examples:
        >>> unimix_logits(torch.tensor([0.0, -1e9]), 0.01).exp()
        tensor([0.9950, 0.0050])
    """
    if not 0.0 <= unimix < 1.0:
        raise ValueError(f"unimix_logits: unimix={unimix}; need 0 <= unimix < 1.")
    if unimix == 0.0:
        return torch.log_softmax(logits, -1)
    # every mixed probability is >= u / C > 0: its log is finite (about 2x faster than a
    # logaddexp of the two log-probabilities)
    probs = torch.softmax(logits, -1)
    return torch.log(probs * (1.0 - unimix) + unimix / logits.shape[-1])


def one_hot_straight_through(logits: Tensor, generator: torch.Generator | None = None,
                             uniform: Tensor | None = None) -> Tensor:
    """A one-hot sample of ``Categorical(logits)`` with straight-through gradients:
    ``sample + probs - sg(probs)`` (DreamerV3's latents and discrete actions).

    Args:
        logits: ``(*B, C)``.
        generator: random generator of the draw.
        uniform: optional ``(*B, C)`` uniform noise in ``(0, 1)`` that fixes the draw (the
            Gumbel-max trick: ``argmax(logits - log(-log(uniform)))``).

    Returns:
        ``(*B, C)``: forward values are exactly one-hot; the gradient is that of ``probs``.

    Examples:
        >>> logits = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
        >>> x = one_hot_straight_through(logits, uniform=torch.tensor([[0.5, 0.5, 0.5]]))
        >>> x
        tensor([[0., 0., 1.]], grad_fn=<AddBackward0>)
    """
    if uniform is None:
        uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype,
                             device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    index = (logits.detach() + gumbel).argmax(-1, keepdim=True)
    sample = torch.zeros_like(logits).scatter_(-1, index, 1.0)
    probs = torch.softmax(logits, -1)
    return sample + (probs - probs.detach())  # exactly one-hot: probs - probs.detach() == 0


def categorical_kl(logits_q: Tensor, logits_p: Tensor) -> Tensor:
    """``KL(q || p)`` of ``S`` independent categoricals, summed over the latents and classes.

    ``KL = sum_s sum_c q_sc (log q_sc - log p_sc)`` with ``log q = log_softmax(logits_q)`` and
    ``log p = log_softmax(logits_p)``, so the logits need not be normalised (but must be finite:
    use :func:`unimix_logits` rather than ``-inf`` for impossible classes).

    Args:
        logits_q: ``(*B, S, C)``.
        logits_p: ``(*B, S, C)``.

    Returns:
        ``(*B,)``.

    Examples:
        >>> # q = (1/2, 1/2), p = (1/4, 3/4): KL = ln(2)/2 + ln(2/3)/2 = ln(4/3)/2
        >>> categorical_kl(torch.zeros(1, 2), torch.tensor([[0.0, torch.tensor(3.0).log()]]))
        tensor(0.1438)
    """
    if logits_q.shape != logits_p.shape or logits_q.dim() < 2:
        raise ValueError(
            f"categorical_kl: logits_q {tuple(logits_q.shape)} and logits_p "
            f"{tuple(logits_p.shape)} must have one shape (*B, S, C) with a latent dim S and a "
            "class dim C (add a latent dim with .unsqueeze(-2) for a single categorical).")
    log_q = torch.log_softmax(logits_q, -1)
    log_p = torch.log_softmax(logits_p, -1)
    return (log_q.exp() * (log_q - log_p)).sum((-2, -1))


def kl_balance(posterior_logits: Tensor, prior_logits: Tensor,
               free_nats: float = 1.0) -> tuple[Tensor, Tensor]:
    """DreamerV3's dynamics and representation losses (eq. 5), with free bits.

    ::

        dyn = max(free_nats, KL(sg(q) || p))   # gradient only into the prior p
        rep = max(free_nats, KL(q || sg(p)))   # gradient only into the posterior q

    The KL is summed over the ``S`` latents and clamped per step (batch element), as in the
    paper and the authors' code; below ``free_nats`` a term has no gradient at all. The loss
    weights (``beta_dyn = 1``, ``beta_rep = 0.1``) are left to the caller.

    Args:
        posterior_logits: ``(*B, S, C)`` logits of ``q(z | h, x)``.
        prior_logits: ``(*B, S, C)`` logits of ``p(z | h)``.
        free_nats: the floor; ``0`` switches free bits off.

    Returns:
        ``(dyn, rep)``, each ``(*B,)``. Their forward values are equal.

    Examples:
        >>> q, p = torch.zeros(1, 2), torch.tensor([[0.0, torch.tensor(3.0).log()]])
        >>> kl_balance(q, p, free_nats=0.1)  # KL = ln(4/3)/2 = 0.1438 > 0.1
        (tensor(0.1438), tensor(0.1438))
        >>> kl_balance(q, p)  # below the default 1 nat
        (tensor(1.), tensor(1.))
    """
    if free_nats < 0:
        raise ValueError(f"kl_balance: free_nats={free_nats}; need free_nats >= 0.")
    dyn = categorical_kl(posterior_logits.detach(), prior_logits)
    rep = categorical_kl(posterior_logits, prior_logits.detach())
    return dyn.clamp_min(free_nats), rep.clamp_min(free_nats)


def ema_update_(target_params: Iterable[Tensor], source_params: Iterable[Tensor],
                tau: float) -> None:
    """In place ``target <- (1 - tau) target + tau source`` for each pair of tensors.

    DreamerV3's slow critic tracks the critic with ``tau = 0.02`` after every update (EMA decay
    0.98). Runs under ``torch.no_grad()`` with one ``torch._foreach_lerp_``.

    Args:
        target_params: tensors updated in place (e.g. ``slow_critic.parameters()``).
        source_params: tensors read, in the same order (e.g. ``critic.parameters()``).
        tau: the rate in ``[0, 1]``; ``1`` copies.

    Examples:
        >>> target, source = [torch.zeros(2)], [torch.tensor([1.0, -50.0])]
        >>> ema_update_(target, source, tau=0.02)
        >>> target
        [tensor([ 0.0200, -1.0000])]
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"ema_update_: tau={tau}; need 0 <= tau <= 1 (0.02 for the slow critic).")
    targets, sources = list(target_params), list(source_params)
    if len(targets) != len(sources):
        raise ValueError(
            f"ema_update_: {len(targets)} target tensors but {len(sources)} source tensors; "
            "pass the parameters of two identically built modules, in the same order.")
    for i, (t, s) in enumerate(zip(targets, sources, strict=True)):
        if t.shape != s.shape:
            raise ValueError(
                f"ema_update_: tensor {i} has target shape {tuple(t.shape)} but source shape "
                f"{tuple(s.shape)}; the two modules must be built identically.")
    if not targets:
        return
    with torch.no_grad():
        sources = [s.to(t.dtype) for t, s in zip(targets, sources, strict=True)]
        torch._foreach_lerp_(targets, sources, tau)


def lambda_returns_v3(reward: Tensor, next_value: Tensor, continuation: Tensor, gamma: float,
                      lmbda: float) -> Tensor:
    """DreamerV3's lambda-returns with continuation probabilities (eq. 7), bootstrapped at the
    horizon: ``R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1})``,
    ``R_H = v_H``.

    :func:`reverie.objectives.dreamer_math.lambda_returns` with ``terminated = 1 - c``. Index
    ``t`` of every input is the transition from state ``t`` to ``t+1``: ``reward[t] = r_{t+1}``,
    ``continuation[t] = c_{t+1}`` (may be fractional: the continue head's probability),
    ``next_value[t] = v_{t+1}``. The paper uses ``gamma = 1 - 1/333``; the authors' current code
    folds that discount into the continuation target and passes ``gamma = 1``.

    Args:
        reward, next_value, continuation: ``(*B, H, 1)``.
        gamma, lmbda: discount and lambda (0.95 in DreamerV3).

    Returns:
        ``(*B, H, 1)``.

    Examples:
        >>> r, v = torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0]])
        >>> c = torch.tensor([[0.5], [1.0]])
        >>> lambda_returns_v3(r, v, c, gamma=1.0, lmbda=0.5)  # R1 = 2 + 20, R0 = 1 + .5(5 + 11)
        tensor([[ 9.],
                [22.]])
    """
    return lambda_returns(reward, next_value, 1.0 - continuation.to(reward.dtype), gamma, lmbda)
