"""Cross-entropy method (CEM) over action sequences.

Rubinstein (1997), "Optimization of computer simulation models with rare events"; used
for MPC with learned models by PETS (Chua et al. 2018, https://arxiv.org/abs/1805.12114).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reverie.planners.base import Objective, Planner

__all__ = ["CEMPlanner", "cem_update", "top_k"]


def top_k(samples: torch.Tensor, values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best candidates of each env, best first.

    Args:
        samples: candidates ``(*E, N, H, A)``.
        values: their values ``(*E, N)``.
        k: number of elites ``K <= N``.

    Returns:
        ``(elites (*E, K, H, A), elite_values (*E, K))``, sorted by decreasing value.

    Examples:
        >>> import torch
        >>> samples = torch.arange(4.0).reshape(4, 1, 1)  # N=4 candidates, H=A=1
        >>> elites, values = top_k(samples, torch.tensor([0.0, 3.0, 1.0, 2.0]), 2)
        >>> elites.flatten().tolist(), values.tolist()
        ([1.0, 3.0], [3.0, 2.0])
    """
    elite_values, index = values.topk(k, dim=-1)  # (*E, K)
    elites = torch.take_along_dim(samples, index[..., None, None], dim=-3)  # (*E, K, H, A)
    return elites, elite_values


def cem_update(
    mean: torch.Tensor,
    std: torch.Tensor,
    elites: torch.Tensor,
    alpha: float,
    min_std: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CEM update of a diagonal Gaussian from its elites, with momentum.

    .. math::

        \\mu \\leftarrow \\alpha\\,\\mu + (1 - \\alpha)\\,\\frac{1}{K}\\sum_{k} a_k, \\qquad
        \\sigma \\leftarrow \\max\\Big(\\alpha\\,\\sigma + (1 - \\alpha)\\,
            \\sqrt{\\tfrac{1}{K}\\textstyle\\sum_{k} (a_k - \\bar a)^2},\\ \\sigma_{\\min}\\Big)

    elementwise over ``(H, A)``, with ``a_k`` the ``K`` elites and ``\\bar a`` their mean.

    Args:
        mean, std: current distribution ``(*E, H, A)``.
        elites: ``(*E, K, H, A)``.
        alpha: momentum, the weight kept on the old parameters (0: plain CEM).
        min_std: floor of the standard deviation.

    Returns:
        the new ``(mean, std)``, each ``(*E, H, A)``.

    Examples:
        >>> import torch
        >>> elites = torch.tensor([[[1.0]], [[3.0]]])  # K=2 elites, H=A=1
        >>> mean, std = cem_update(torch.zeros(1, 1), torch.ones(1, 1), elites, alpha=0.5)
        >>> mean.item(), std.item()  # 0.5*0 + 0.5*2, 0.5*1 + 0.5*1
        (1.0, 1.0)
    """
    elite_mean = elites.mean(dim=-3)
    elite_std = elites.std(dim=-3, correction=0)
    mean = alpha * mean + (1 - alpha) * elite_mean
    std = (alpha * std + (1 - alpha) * elite_std).clamp_min(min_std)
    return mean, std


class CEMPlanner(Planner):
    """Cross-entropy method: refit a diagonal Gaussian over action sequences to its elites.

    Each of the ``iterations`` steps samples ``N`` sequences per env,

    .. math::

        a_n = \\operatorname{clip}(\\mu + \\sigma \\odot \\epsilon_n,\\ a_{low},\\ a_{high}),
        \\qquad \\epsilon_n \\sim \\mathcal{N}(0, I), \\quad a_n \\in \\mathbb{R}^{H \\times A},

    scores them with one call to the objective, keeps the ``K`` best and updates
    ``(mu, sigma)`` with :func:`cem_update` (momentum ``alpha``, floor ``min_std``).
    Samples are clipped to the bounds (a clipped, not renormalised, Gaussian: mass past a
    bound lands on it, so optima on the boundary are reached exactly). ``mu`` starts from
    :meth:`~reverie.planners.Planner.initial_guess` (warm start), ``sigma`` from
    ``init_std`` at every call.

    Args:
        action_low, action_high: bounds ``(A,)``.
        horizon: planning horizon ``H``.

    Keyword Args:
        action_spec: a bounded TorchRL spec instead of the bounds.
        num_candidates: ``N`` sequences sampled per iteration and env.
        num_elites: ``K`` best sequences the Gaussian is refit to.
        iterations: optimisation iterations (objective calls) per :meth:`plan`.
        alpha: momentum on the mean and std updates.
        init_std: initial std, a float or ``(A,)`` (default: half the action range).
        min_std: floor of the std.
        warm_start: start from the previous solution shifted by one step.
        return_mean: return the final mean (default); else the best sequence sampled in
            any iteration.

    Shapes: ``plan(objective, batch_shape=E)`` calls ``objective`` on ``(*E, N, H, A)``,
    expects ``(*E, N)`` and returns ``(*E, H, A)``.

    Examples:
        >>> import torch
        >>> from reverie.planners import CEMPlanner
        >>> target = torch.tensor([[0.3], [-0.6], [0.9]])  # 3 envs, A = 1
        >>> def objective(actions):  # (3, N, H, 1) -> (3, N)
        ...     return -(actions - target[:, None, None]).pow(2).sum((-2, -1))
        >>> planner = CEMPlanner(torch.tensor([-1.0]), torch.tensor([1.0]), horizon=5,
        ...                      num_candidates=200, num_elites=20, iterations=10)
        >>> plan = planner.plan(objective, batch_shape=(3,))
        >>> plan.shape
        torch.Size([3, 5, 1])
        >>> torch.allclose(plan[:, 0], target, atol=0.05)
        True
    """

    def __init__(
        self,
        action_low: torch.Tensor | Sequence[float] | None = None,
        action_high: torch.Tensor | Sequence[float] | None = None,
        horizon: int = 15,
        *,
        action_spec=None,
        num_candidates: int = 500,
        num_elites: int = 50,
        iterations: int = 5,
        alpha: float = 0.1,
        init_std: float | torch.Tensor | None = None,
        min_std: float = 1e-3,
        warm_start: bool = True,
        return_mean: bool = True,
    ) -> None:
        super().__init__(action_low, action_high, horizon, action_spec=action_spec,
                         warm_start=warm_start)
        if not 1 <= num_elites <= num_candidates:
            raise ValueError(
                f"CEMPlanner: need 1 <= num_elites <= num_candidates, got num_elites="
                f"{num_elites}, num_candidates={num_candidates}."
            )
        if iterations < 1 or not 0.0 <= alpha < 1.0:
            raise ValueError(
                f"CEMPlanner: need iterations >= 1 and 0 <= alpha < 1, got {iterations}, {alpha}."
            )
        self.num_candidates = int(num_candidates)
        self.num_elites = int(num_elites)
        self.iterations = int(iterations)
        self.alpha = float(alpha)
        self.min_std = float(min_std)
        self.return_mean = bool(return_mean)
        self.register_buffer("init_std", self._spread(init_std, "init_std"))

    def _optimize(self, objective: Objective, mean, batch_shape, warm, generator):
        horizon, action_dim = self.horizon, self.action_dim
        std = self.init_std.expand_as(mean)  # (*E, H, A)
        best = mean
        best_value = torch.full(batch_shape, float("-inf"), dtype=mean.dtype, device=mean.device)
        for _ in range(self.iterations):
            noise = self._randn((*batch_shape, self.num_candidates, horizon, action_dim), generator)
            samples = self.clip(mean.unsqueeze(-3) + std.unsqueeze(-3) * noise)  # (*E, N, H, A)
            values = self.evaluate(objective, samples, batch_shape)  # (*E, N)
            elites, elite_values = top_k(samples, values, self.num_elites)
            better = elite_values[..., 0] > best_value  # (*E,)
            best = torch.where(better[..., None, None], elites[..., 0, :, :], best)
            best_value = torch.maximum(best_value, elite_values[..., 0])
            mean, std = cem_update(mean, std, elites, self.alpha, self.min_std)
        return mean if self.return_mean else best

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_candidates={self.num_candidates}, "
            f"num_elites={self.num_elites}, iterations={self.iterations}, alpha={self.alpha}"
        )
