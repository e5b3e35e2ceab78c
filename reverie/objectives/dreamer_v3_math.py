"""Pure maths of DreamerV3 (Hafner et al. 2023, https://arxiv.org/abs/2301.04104).

Symlog squashing and the two-hot symexp-binned distribution used by its reward and critic
heads. Every function works on any leading batch dims.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["one_hot_straight_through", "symexp", "symexp_bins", "symlog", "two_hot_cross_entropy",
           "two_hot_decode", "two_hot_encode", "unimix_logits"]


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
    log_probs = torch.log_softmax(logits, -1)
    if unimix == 0.0:
        return log_probs
    C = logits.shape[-1]
    uniform = torch.full_like(log_probs, torch.log(torch.tensor(unimix / C)).item())
    return torch.logaddexp(log_probs + torch.log1p(torch.tensor(-unimix)).item(), uniform)


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
        tensor([[0., 0., 1.]], grad_fn=<SubBackward0>)
    """
    if uniform is None:
        uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype,
                             device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    index = (logits.detach() + gumbel).argmax(-1, keepdim=True)
    sample = torch.zeros_like(logits).scatter_(-1, index, 1.0)
    probs = torch.softmax(logits, -1)
    return sample + probs - probs.detach()
