"""DreamerV3's return normaliser (Hafner et al. 2023, https://arxiv.org/abs/2301.04104, eq. 8).

The actor's advantages are divided by ``max(1, S)`` where ``S`` is an exponential moving
average of the range between the 95th and the 5th percentile of the imagined lambda-returns:
large returns are scaled down, small ones are never scaled up (so noise near sparse rewards is
not amplified).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ReturnNormalizer"]


def _quantiles(x: Tensor, qs: tuple[float, ...]) -> list[Tensor]:
    """Linearly interpolated quantiles of the flat ``x`` (``torch.quantile``'s default
    ``'linear'``, numpy's ``percentile``): one sort, positions known from the shape, so no
    host sync and no input-size limit."""
    ordered = x.sort().values
    n = ordered.numel()
    out = []
    for q in qs:
        pos = q * (n - 1)
        below = min(int(pos), n - 1)
        above = min(below + 1, n - 1)
        out.append(torch.lerp(ordered[below], ordered[above], pos - below))
    return out


class ReturnNormalizer(torch.nn.Module):
    """EMA of the ``low``/``high`` batch percentiles of the returns; ``scale() = max(limit,
    high_ema - low_ema)``.

    Each :meth:`update` does ``low_ema <- decay low_ema + (1 - decay) Per(R, low)`` and likewise
    for ``high_ema``, starting from 0. As both averages start at 0 and are updated together,
    ``high_ema - low_ema`` is exactly the paper's ``EMA(Per(R, 95) - Per(R, 5), 0.99)``. The
    percentiles are linearly interpolated over all elements of the batch (``torch.quantile``'s
    default, numpy's ``percentile`` as in the authors' code).

    DreamerV3's advantage is ``(R - v) / scale()``, with no offset (the paper, eq. 8, and the
    authors' code). :meth:`offset` returns ``low_ema`` only for logging returns mapped onto
    ``[0, 1]`` as the authors do (``(R - offset()) / scale()``); it is not part of the advantage.

    First update: the paper does not say how the averages start. The authors' ``Normalize``
    (``impl='perc'``) starts them at 0 and, with ``debias=True``, divides the statistics by
    ``max(1 - decay, 1 - decay^n)`` after ``n`` updates (an EMA of ones in the buffer ``corr``).
    Their DreamerV3 config sets ``retnorm.debias: False``, so the early scales are shrunk
    towards 0 and the ``limit`` floor of 1 rules (returns are then not scaled down until the
    average range exceeds 1). ``debias=False`` is the default here; ``debias=True`` is the
    authors' alternative.

    The statistics are buffers (``low_ema``, ``high_ema``, ``corr``: 0-dim, float32 until the
    module is moved with ``.to(...)``); the state dict round-trips exactly. :meth:`update` reads
    no value back to the host.

    Args:
        decay: EMA decay (0.99; the authors' ``rate = 1 - decay = 0.01``).
        low, high: the quantiles in ``[0, 1]`` (0.05 and 0.95).
        limit: the floor of the scale (1).
        debias: divide the averages by ``max(1 - decay, corr)`` (see above).

    Examples:
        >>> norm = ReturnNormalizer(decay=0.5)
        >>> norm.update(torch.arange(101.0))  # percentiles 5 and 95
        >>> norm.low_ema, norm.high_ema, norm.scale()  # 0.5 * 5, 0.5 * 95, 47.5 - 2.5
        (tensor(2.5000), tensor(47.5000), tensor(45.))
        >>> ReturnNormalizer().scale()  # the floor before any update
        tensor(1.)
    """

    low_ema: Tensor
    high_ema: Tensor
    corr: Tensor

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95,
                 limit: float = 1.0, debias: bool = False):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ReturnNormalizer: decay={decay}; need 0 <= decay < 1 (0.99).")
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(
                f"ReturnNormalizer: quantiles low={low}, high={high}; need 0 <= low < high <= 1 "
                "(quantiles, not percentiles: 0.05 and 0.95).")
        if limit < 0.0:
            raise ValueError(f"ReturnNormalizer: limit={limit}; need limit >= 0 (1.0).")
        self.decay, self.low, self.high = float(decay), float(low), float(high)
        self.limit, self.debias = float(limit), bool(debias)
        self.register_buffer("low_ema", torch.zeros(()))
        self.register_buffer("high_ema", torch.zeros(()))
        self.register_buffer("corr", torch.zeros(()))

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, low={self.low}, high={self.high}, limit={self.limit}, "
                f"debias={self.debias}")

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        """Move the averages towards the percentiles of ``returns`` (any shape, all elements
        pooled; no gradient flows)."""
        if returns.numel() == 0:
            raise ValueError(
                f"ReturnNormalizer.update: returns of shape {tuple(returns.shape)} are empty; "
                "pass at least one return.")
        if returns.device != self.low_ema.device:
            raise ValueError(
                f"ReturnNormalizer.update: returns on {returns.device} but the statistics on "
                f"{self.low_ema.device}; move the normaliser with .to({str(returns.device)!r}).")
        x = returns.detach().flatten().to(self.low_ema.dtype)
        q_low, q_high = _quantiles(x, (self.low, self.high))
        rate = 1.0 - self.decay
        self.low_ema.mul_(self.decay).add_(q_low, alpha=rate)
        self.high_ema.mul_(self.decay).add_(q_high, alpha=rate)
        self.corr.mul_(self.decay).add_(rate)

    def _debiased(self, value: Tensor) -> Tensor:
        if not self.debias:
            return value
        return value / self.corr.clamp_min(1.0 - self.decay)

    def scale(self) -> Tensor:
        """``max(limit, high_ema - low_ema)``, 0-dim: divide advantages ``R - v`` by it."""
        return self._debiased(self.high_ema - self.low_ema).clamp_min(self.limit)

    def offset(self) -> Tensor:
        """``low_ema``, 0-dim: only for logging ``(R - offset()) / scale()``; DreamerV3's
        advantages have no offset."""
        return self._debiased(self.low_ema.clone())
