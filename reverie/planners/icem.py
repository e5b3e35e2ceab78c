"""Improved cross-entropy method (iCEM) with coloured noise and elite reuse.

Pinneri et al. (2020), "Sample-efficient Cross-Entropy Method for Real-time Planning",
https://arxiv.org/abs/2008.06389.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reverie.planners.base import Objective, Planner
from reverie.planners.cem import cem_update, top_k

__all__ = ["ICEMPlanner", "colored_noise"]


def colored_noise(
    beta: float,
    shape: Sequence[int] | torch.Size,
    horizon_dim: int = -1,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gaussian noise with power spectral density ``1 / f^beta`` along ``horizon_dim``.

    White noise ``x`` (i.i.d. standard normal) is filtered in the frequency domain:

    .. math::

        y = \\frac{1}{c}\\,\\mathcal{F}^{-1}\\!\\big[\\,s(f)\\,\\mathcal{F}[x](f)\\,\\big], \\qquad
        s(f) = \\max(f, 1/T)^{-\\beta/2}, \\qquad
        c^2 = \\frac{1}{T}\\sum_{k=0}^{T-1} s(f_k)^2,

    over the ``T`` frequencies ``f_k = min(k, T - k) / T`` of the length-``T`` axis (the
    zero frequency takes the scale of the lowest one, ``1/T``). Then
    ``E|F[y](f)|^2 = T s(f)^2 / c^2`` is proportional to ``f^{-beta}``, and since the
    filter is a symmetric circulant matrix ``C`` with ``(C C^T)_{tt} = c^2``, every
    ``y_t`` has exactly unit variance. ``beta = 0`` returns the white noise itself
    (``y = x``); ``beta = 1`` is pink, ``beta = 2`` red (Brownian-like) noise, whose
    samples are smoother in time.

    Args:
        beta: spectral exponent ``beta >= 0``.
        shape: output shape; ``T = shape[horizon_dim]``.
        horizon_dim: the (time) dimension along which the noise is coloured.
        generator: optional ``torch.Generator`` for the white noise.

    Keyword Args:
        dtype, device: of the output (default: torch defaults).

    Returns:
        a tensor of ``shape``; the samples are independent along every other dimension.

    Examples:
        >>> import torch
        >>> from reverie.planners import colored_noise
        >>> noise = colored_noise(2.0, (10000, 16), horizon_dim=-1)
        >>> noise.shape, round(noise.var().item(), 1)
        (torch.Size([10000, 16]), 1.0)
        >>> g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        >>> torch.equal(colored_noise(0.0, (3, 5), 0, g1), torch.randn(3, 5, generator=g2))
        True
    """
    shape = torch.Size(shape)
    white = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if beta == 0:
        return white
    if beta < 0:
        raise ValueError(f"colored_noise: beta must be >= 0, got {beta}.")
    dim = horizon_dim % len(shape)
    length = shape[dim]
    freq = torch.fft.rfftfreq(length, dtype=white.dtype, device=white.device)  # (T//2 + 1,)
    freq = freq.clamp_min(1.0 / length)
    scale = freq.pow(-beta / 2)
    # mean of s^2 over the full (two-sided) spectrum: bins 1..ceil(T/2)-1 appear twice
    power = scale.pow(2)
    twice = power[1 : (length + 1) // 2].sum()
    nyquist = power[-1] if length % 2 == 0 and length > 1 else power.new_zeros(())
    norm = ((power[0] + 2 * twice + nyquist) / length).sqrt()
    view = [1] * len(shape)
    view[dim] = scale.shape[0]
    spectrum = torch.fft.rfft(white, dim=dim) * (scale / norm).reshape(view)
    return torch.fft.irfft(spectrum, n=length, dim=dim)


class ICEMPlanner(Planner):
    """iCEM: CEM with coloured noise, decaying populations and reused elites.

    Differences from :class:`~reverie.planners.CEMPlanner` (Pinneri et al. 2020):

    * samples are ``clip(mu + sigma * eps)`` with ``eps`` coloured noise along time,
      PSD ``1/f^noise_beta`` (:func:`colored_noise`), so candidates are smooth in time;
    * iteration ``i`` samples ``N_i = max(floor(N / population_decay^i), 2 K)`` sequences;
    * the best ``ceil(keep_elites_fraction * K)`` elites of an iteration are evaluated
      again in the next one, and those of the last iteration are shifted one step (last
      step = middle of the bounds) into the first iteration of the next :meth:`plan`;
    * the mean sequence is added as a candidate in the last iteration;
    * the result is the best sequence evaluated (``return_mean=False``, as in the paper).

    The Gaussian update is :func:`~reverie.planners.cem.cem_update`
    (``mu <- alpha mu + (1 - alpha) mean(elites)``, same for ``sigma``).
    :meth:`reset` also forgets the kept elites (for masked envs they become the middle
    of the bounds, an ordinary candidate).

    Args:
        action_low, action_high: bounds ``(A,)``.
        horizon: planning horizon ``H``.

    Keyword Args:
        action_spec: a bounded TorchRL spec instead of the bounds.
        num_candidates: ``N``, population of the first iteration.
        num_elites: ``K``.
        iterations: optimisation iterations (objective calls) per :meth:`plan`.
        noise_beta: coloured-noise exponent (0 white, 2 red).
        keep_elites_fraction: fraction of elites reused in the next iteration and plan.
        population_decay: ``gamma`` of ``N_i = max(N / gamma^i, 2 K)``.
        alpha: momentum on the mean and std updates.
        init_std: initial std, a float or ``(A,)`` (default: half the action range).
        min_std: floor of the std.
        warm_start: start from the previous solution and elites shifted by one step.
        return_mean: return the final mean instead of the best sequence.

    Shapes: ``plan(objective, batch_shape=E)`` calls ``objective`` on
    ``(*E, N_i + extra, H, A)``, expects ``(*E, N_i + extra)`` and returns ``(*E, H, A)``.

    Examples:
        >>> import torch
        >>> from reverie.planners import ICEMPlanner
        >>> planner = ICEMPlanner(-torch.ones(1), torch.ones(1), horizon=5, iterations=5)
        >>> plan = planner.plan(lambda a: -(a - 0.2).pow(2).sum((-2, -1)), batch_shape=(4,))
        >>> plan.shape, torch.allclose(plan, torch.full_like(plan, 0.2), atol=0.05)
        (torch.Size([4, 5, 1]), True)
        >>> planner.kept_elites.shape  # ceil(0.3 * 10) elites for the next plan
        torch.Size([4, 3, 5, 1])
        >>> [planner.population(i) for i in range(5)]  # N_i = max(300 / 1.25^i, 2 K)
        [300, 240, 192, 153, 122]
    """

    def __init__(
        self,
        action_low: torch.Tensor | Sequence[float] | None = None,
        action_high: torch.Tensor | Sequence[float] | None = None,
        horizon: int = 15,
        *,
        action_spec=None,
        num_candidates: int = 300,
        num_elites: int = 10,
        iterations: int = 3,
        noise_beta: float = 2.0,
        keep_elites_fraction: float = 0.3,
        population_decay: float = 1.25,
        alpha: float = 0.1,
        init_std: float | torch.Tensor | None = None,
        min_std: float = 1e-3,
        warm_start: bool = True,
        return_mean: bool = False,
    ) -> None:
        super().__init__(action_low, action_high, horizon, action_spec=action_spec,
                         warm_start=warm_start)
        if not 1 <= num_elites <= num_candidates:
            raise ValueError(
                f"ICEMPlanner: need 1 <= num_elites <= num_candidates, got num_elites="
                f"{num_elites}, num_candidates={num_candidates}."
            )
        if iterations < 1 or not 0.0 <= alpha < 1.0 or population_decay < 1.0:
            raise ValueError(
                "ICEMPlanner: need iterations >= 1, 0 <= alpha < 1 and population_decay >= 1; "
                f"got {iterations}, {alpha}, {population_decay}."
            )
        if not 0.0 <= keep_elites_fraction <= 1.0 or noise_beta < 0:
            raise ValueError(
                "ICEMPlanner: need 0 <= keep_elites_fraction <= 1 and noise_beta >= 0; got "
                f"{keep_elites_fraction}, {noise_beta}."
            )
        self.num_candidates = int(num_candidates)
        self.num_elites = int(num_elites)
        self.iterations = int(iterations)
        self.noise_beta = float(noise_beta)
        self.keep_elites_fraction = float(keep_elites_fraction)
        self.population_decay = float(population_decay)
        self.alpha = float(alpha)
        self.min_std = float(min_std)
        self.return_mean = bool(return_mean)
        self.register_buffer("init_std", self._spread(init_std, "init_std"))
        self.register_buffer("_kept_elites", None, persistent=False)

    @property
    def num_kept(self) -> int:
        """Elites reused in the next iteration and plan: ``ceil(keep_elites_fraction * K)``."""
        return math.ceil(self.keep_elites_fraction * self.num_elites - 1e-9)

    def population(self, iteration: int) -> int:
        """``N_i = max(floor(N / population_decay^i), 2 K)`` sampled in iteration ``i``."""
        size = int(self.num_candidates / self.population_decay**iteration)
        return max(size, min(2 * self.num_elites, self.num_candidates))

    @property
    def kept_elites(self) -> torch.Tensor | None:
        """Elites ``(*E, num_kept, H, A)`` of the last plan, unshifted (``None`` after reset)."""
        return self._kept_elites

    def _forget(self, env_mask) -> None:
        if env_mask is None or self._kept_elites is None:
            self._kept_elites = None
        else:
            self._kept_elites = torch.where(
                env_mask[..., None, None, None], self.middle(), self._kept_elites
            )

    def _optimize(self, objective: Objective, mean, batch_shape, warm, generator):
        horizon, action_dim, kept_count = self.horizon, self.action_dim, self.num_kept
        kept = None
        if warm and kept_count and self._kept_elites is not None and (
            self._kept_elites.shape == (*batch_shape, kept_count, horizon, action_dim)
        ):
            last = self.middle().expand(*batch_shape, kept_count, 1, action_dim)
            kept = torch.cat([self._kept_elites[..., 1:, :], last], dim=-2)  # (*E, k, H, A)
        std = self.init_std.expand_as(mean)  # (*E, H, A)
        best = mean
        best_value = torch.full(batch_shape, float("-inf"), dtype=mean.dtype, device=mean.device)
        elites = None
        for i in range(self.iterations):
            size = self.population(i)
            noise = colored_noise(
                self.noise_beta, (*batch_shape, size, action_dim, horizon), -1, generator,
                dtype=mean.dtype, device=mean.device,
            ).transpose(-1, -2)  # (*E, N_i, H, A), coloured along H
            parts = [self.clip(mean.unsqueeze(-3) + std.unsqueeze(-3) * noise)]
            if i > 0 and kept_count:
                parts.append(elites[..., :kept_count, :, :])  # best of the previous iteration
            elif kept is not None:
                parts.append(kept)  # shifted from the previous plan
            if i == self.iterations - 1:
                parts.append(self.clip(mean).unsqueeze(-3))
            samples = torch.cat(parts, dim=-3)  # (*E, N_i + extra, H, A)
            values = self.evaluate(objective, samples, batch_shape)
            elites, elite_values = top_k(samples, values, self.num_elites)
            better = elite_values[..., 0] > best_value  # (*E,)
            best = torch.where(better[..., None, None], elites[..., 0, :, :], best)
            best_value = torch.maximum(best_value, elite_values[..., 0])
            mean, std = cem_update(mean, std, elites, self.alpha, self.min_std)
        self._kept_elites = elites[..., :kept_count, :, :].clone() if kept_count else None
        return mean if self.return_mean else best

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_candidates={self.num_candidates}, "
            f"num_elites={self.num_elites}, iterations={self.iterations}, "
            f"noise_beta={self.noise_beta}"
        )
