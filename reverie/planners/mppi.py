"""Model-predictive path integral control (MPPI) over action sequences.

Williams et al. (2017), "Information theoretic MPC for model-based reinforcement learning",
https://ieeexplore.ieee.org/document/7989202.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reverie.planners.base import Objective, Planner

__all__ = ["MPPIPlanner", "mppi_weights"]


def mppi_weights(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """Path-integral weights of ``N`` candidates from their values, over the last dim.

    .. math::

        w_n = \\frac{\\exp\\big((v_n - \\max_m v_m) / \\lambda\\big)}
                   {\\sum_{n'} \\exp\\big((v_{n'} - \\max_m v_m) / \\lambda\\big)}

    i.e. ``softmax(values / lambda)``; subtracting the max keeps the exponentials finite
    (the best candidate gets ``exp(0) = 1`` before normalisation). ``-inf`` values get
    weight 0.

    Args:
        values: ``(*E, N)``, higher is better.
        temperature: ``lambda > 0``; small values approach the argmax, large ones the mean.

    Returns:
        weights ``(*E, N)`` summing to 1 over ``N``.

    Examples:
        >>> import math, torch
        >>> w = mppi_weights(torch.tensor([0.0, math.log(3.0)]), temperature=1.0)
        >>> [round(x, 6) for x in w.tolist()]
        [0.25, 0.75]
    """
    if temperature <= 0:
        raise ValueError(f"mppi_weights: temperature must be > 0, got {temperature}.")
    top = values.max(dim=-1, keepdim=True).values
    return torch.softmax((values - top) / temperature, dim=-1)


class MPPIPlanner(Planner):
    """MPPI: move the mean sequence by the exponentially weighted average of perturbations.

    Each of the ``iterations`` steps samples perturbations ``eps_n`` and, with the values
    ``v_n`` of the (clipped) perturbed sequences,

    .. math::

        a_n = \\operatorname{clip}(\\mu + \\epsilon_n), \\quad
        \\epsilon_n \\sim \\mathcal{N}(0, \\operatorname{diag}(\\sigma^2)), \\qquad
        \\mu \\leftarrow \\mu + \\sum_n w_n\\,(a_n - \\mu) = \\sum_n w_n\\,a_n,

    with ``w = mppi_weights(v, lambda)`` (:func:`mppi_weights`). With ``adapt_std=True``
    the noise also follows the weighted spread,
    ``sigma <- max(sqrt(sum_n w_n (a_n - mu)^2), min_std)`` (as in TD-MPC), which lets
    several iterations converge; by default ``sigma = noise_std`` is fixed, and the plan is
    refined across control steps by the warm start.

    For a quadratic objective ``-(a - a*)^2 / 2`` and many samples, one update moves
    each coordinate to the precision-weighted average
    ``(mu / sigma^2 + a* / lambda) / (1 / sigma^2 + 1 / lambda)`` (a Gaussian
    posterior), which a test checks.

    Args:
        action_low, action_high: bounds ``(A,)``.
        horizon: planning horizon ``H``.

    Keyword Args:
        action_spec: a bounded TorchRL spec instead of the bounds.
        num_candidates: ``N`` sequences sampled per iteration and env.
        iterations: weighted updates (objective calls) per :meth:`plan`.
        temperature: ``lambda`` of the weights.
        noise_std: perturbation std, float or ``(A,)`` (default: half the action range).
        adapt_std: refit the std to the weighted spread after each iteration.
        min_std: floor of the adapted std.
        warm_start: start from the previous solution shifted by one step.

    Shapes: ``plan(objective, batch_shape=E)`` calls ``objective`` on ``(*E, N, H, A)``,
    expects ``(*E, N)`` and returns the mean ``(*E, H, A)``.

    Examples:
        >>> import torch
        >>> from reverie.planners import MPPIPlanner
        >>> planner = MPPIPlanner(torch.tensor([-1.0]), torch.tensor([1.0]), horizon=3,
        ...                       num_candidates=1000, iterations=5, temperature=0.01,
        ...                       adapt_std=True)
        >>> plan = planner.plan(lambda a: -(a - 0.5).pow(2).sum((-2, -1)))
        >>> plan.shape, torch.allclose(plan, torch.full((3, 1), 0.5), atol=0.05)
        (torch.Size([3, 1]), True)
    """

    def __init__(
        self,
        action_low: torch.Tensor | Sequence[float] | None = None,
        action_high: torch.Tensor | Sequence[float] | None = None,
        horizon: int = 15,
        *,
        action_spec=None,
        num_candidates: int = 500,
        iterations: int = 1,
        temperature: float = 1.0,
        noise_std: float | torch.Tensor | None = None,
        adapt_std: bool = False,
        min_std: float = 1e-3,
        warm_start: bool = True,
    ) -> None:
        super().__init__(action_low, action_high, horizon, action_spec=action_spec,
                         warm_start=warm_start)
        if num_candidates < 1 or iterations < 1 or temperature <= 0:
            raise ValueError(
                "MPPIPlanner: need num_candidates >= 1, iterations >= 1 and temperature > 0; got "
                f"{num_candidates}, {iterations}, {temperature}."
            )
        self.num_candidates = int(num_candidates)
        self.iterations = int(iterations)
        self.temperature = float(temperature)
        self.adapt_std = bool(adapt_std)
        self.min_std = float(min_std)
        self.register_buffer("noise_std", self._spread(noise_std, "noise_std"))

    def _optimize(self, objective: Objective, mean, batch_shape, warm, generator):
        std = self.noise_std.expand_as(mean)  # (*E, H, A)
        for _ in range(self.iterations):
            noise = self._randn(
                (*batch_shape, self.num_candidates, self.horizon, self.action_dim), generator
            )
            samples = self.clip(mean.unsqueeze(-3) + std.unsqueeze(-3) * noise)  # (*E, N, H, A)
            values = self.evaluate(objective, samples, batch_shape)  # (*E, N)
            weights = mppi_weights(values, self.temperature)[..., None, None]  # (*E, N, 1, 1)
            mean = mean + (weights * (samples - mean.unsqueeze(-3))).sum(dim=-3)
            if self.adapt_std:
                spread = (weights * (samples - mean.unsqueeze(-3)).pow(2)).sum(dim=-3)
                std = spread.sqrt().clamp_min(self.min_std)
        return mean

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_candidates={self.num_candidates}, "
            f"iterations={self.iterations}, temperature={self.temperature}"
        )
