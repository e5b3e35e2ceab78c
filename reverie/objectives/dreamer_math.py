"""Pure maths of Dreamer (Hafner et al. 2019): Gaussian KL with free nats, lambda-returns."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["discount_weights", "gaussian_kl", "kl_free_nats", "lambda_returns"]


def gaussian_kl(mean_q: Tensor, std_q: Tensor, mean_p: Tensor, std_p: Tensor) -> Tensor:
    """KL divergence of diagonal Gaussians, summed over the last dim.

    ``KL(q || p) = sum_i [ log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2)
    - 1/2 ]``

    Args:
        mean_q, std_q: posterior ``q`` parameters ``(*B, S)``.
        mean_p, std_p: prior ``p`` parameters ``(*B, S)``.

    Returns:
        ``(*B,)``.

    Examples:
        >>> gaussian_kl(torch.zeros(1), torch.ones(1), torch.ones(1), torch.ones(1))
        tensor(0.5000)
    """
    kl = (torch.log(std_p / std_q)
          + (std_q.pow(2) + (mean_q - mean_p).pow(2)) / (2 * std_p.pow(2)) - 0.5)
    return kl.sum(-1)


def kl_free_nats(kl: Tensor, free_nats: float, delayed_clamp: bool = False) -> Tensor:
    """Dreamer's KL term with free nats: no gradient below ``free_nats``.

    * ``delayed_clamp=False``: ``mean(max(KL, free_nats))`` (each KL clamped, then averaged);
    * ``delayed_clamp=True``: ``max(mean(KL), free_nats)`` (averaged, then clamped: single
      steps may fall below the floor as long as the average does not).

    Examples:
        >>> kl = torch.tensor([1.0, 5.0])
        >>> kl_free_nats(kl, 3.0), kl_free_nats(kl, 3.0, delayed_clamp=True)
        (tensor(4.), tensor(3.))
    """
    if delayed_clamp:
        return kl.mean().clamp_min(free_nats)
    return kl.clamp_min(free_nats).mean()


def lambda_returns(reward: Tensor, next_value: Tensor, terminated: Tensor, gamma: float,
                   lmbda: float | Tensor) -> Tensor:
    """TD(lambda) returns over the time dim (dim ``-2``), bootstrapped at the horizon.

    With ``g_t = gamma (1 - terminated_t)`` (Dreamer eq. 6, recursive form)::

        V_{H-1} = r_{H-1} + g_{H-1} v_H
        V_t     = r_t + g_t ((1 - lambda) v_{t+1} + lambda V_{t+1})

    where ``r_t`` is the reward of step t and ``v_{t+1} = next_value[t]`` the value of the
    state it reaches. A tensor ``lmbda`` (``(*B, H, 1)``) gives each step its own lambda:
    ``lambda_t`` weighs ``V_{t+1}`` in ``V_t`` (0 cuts the return at a sequence's episode end:
    ``V_t`` then bootstraps from ``v_{t+1}`` alone).

    Args:
        reward: ``(*B, H, 1)``.
        next_value: ``(*B, H, 1)``.
        terminated: ``(*B, H, 1)`` bool or float.
        gamma, lmbda: discount and lambda (a float or ``(*B, H, 1)``).

    Returns:
        ``(*B, H, 1)``.

    Examples:
        >>> r, v = torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0]])
        >>> lambda_returns(r, v, torch.zeros(2, 1), gamma=0.5, lmbda=0.5)  # V1 = 12, V0 = 1 + .5(5 + 6)
        tensor([[ 6.5000],
                [12.0000]])
    """
    if not (reward.shape == next_value.shape == terminated.shape):
        raise ValueError(
            f"lambda_returns: reward {tuple(reward.shape)}, next_value "
            f"{tuple(next_value.shape)} and terminated {tuple(terminated.shape)} must have one "
            "shape (*B, H, 1).")
    g = gamma * (1.0 - terminated.to(reward.dtype))  # (*B, H, 1)
    if isinstance(lmbda, Tensor) and lmbda.shape != reward.shape:
        raise ValueError(f"lambda_returns: lmbda has shape {tuple(lmbda.shape)}; a tensor lmbda "
                         f"needs the reward's shape {tuple(reward.shape)}.")
    out = []
    last = next_value[..., -1, :]
    for t in range(reward.shape[-2] - 1, -1, -1):
        lam = lmbda[..., t, :] if isinstance(lmbda, Tensor) else lmbda
        boot = next_value[..., t, :] if t == reward.shape[-2] - 1 else (
            (1 - lam) * next_value[..., t, :] + lam * last)
        last = reward[..., t, :] + g[..., t, :] * boot
        out.append(last)
    return torch.stack(out[::-1], -2)


def discount_weights(terminated: Tensor, gamma: float) -> Tensor:
    """Weights of imagined steps: ``w_0 = 1``, ``w_t = prod_{k < t} gamma (1 - terminated_k)``.

    ``terminated (*B, H, 1)`` -> ``(*B, H, 1)``.

    Examples:
        >>> discount_weights(torch.tensor([[0.0], [1.0], [0.0]]), 0.5).flatten()
        tensor([1.0000, 0.5000, 0.0000])
    """
    g = gamma * (1.0 - terminated.float())
    ones = torch.ones_like(g[..., :1, :])
    return torch.cat([ones, g[..., :-1, :]], -2).cumprod(-2)
