"""``ExponentialQuadraticCost``: the expected saturating cost of a Gaussian state (PILCO)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from reverie.modules.moment_matching import expected_saturating_cost

__all__ = ["ExpectedCostReward", "ExponentialQuadraticCost"]


class ExponentialQuadraticCost(LossModule):
    """Expected saturating cost ``E[1 - exp(-1/2 (x - t)^T W (x - t))]`` of ``x ~ N(m, S)``.

    Analytic and differentiable (PILCO eqs. 24-25, see
    :func:`~reverie.modules.moment_matching.expected_saturating_cost`):
    ``1 - |I + S W|^{-1/2} exp(-1/2 (m - t)^T W (I + S W)^{-1} (m - t))``.

    Args:
        target: ``(D,)`` target state ``t`` (default: the origin).
        weights: ``(D, D)`` PSD precision ``W`` (default: identity). Put the cost width in
            it: ``W = A^T A / width^2`` penalises ``|A (x - t)|`` on the scale ``width``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch dims.

    Reads ``("observation", "mean")`` ``(*B, D)`` and ``("observation", "var")``
    ``(*B, D, D)`` (``set_keys(loc=..., scale=...)`` to change); returns
    ``TensorDict(loss_cost=...)`` (a scalar, or ``(*B,)`` with ``reduction="none"``).

    Example:
        >>> cost = ExponentialQuadraticCost(target=torch.zeros(2), reduction="none")
        >>> td = TensorDict({("observation", "mean"): torch.zeros(3, 2),
        ...                  ("observation", "var"): torch.zeros(3, 2, 2)}, [3])
        >>> cost(td)["loss_cost"]
        tensor([0., 0., 0.])
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read by :class:`ExponentialQuadraticCost`.

        Attributes:
            loc: belief mean. Default ``("observation", "mean")``.
            scale: belief covariance. Default ``("observation", "var")``.
        """

        loc: NestedKey = ("observation", "mean")
        scale: NestedKey = ("observation", "var")

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(
        self,
        target: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"ExponentialQuadraticCost: reduction={reduction!r}; use mean|sum|none.")
        self.reduction = reduction
        if target is not None and target.dim() != 1:
            raise ValueError(f"ExponentialQuadraticCost: target must be (D,), got {tuple(target.shape)}.")
        if weights is not None and (weights.dim() != 2 or weights.shape[0] != weights.shape[1]):
            raise ValueError(f"ExponentialQuadraticCost: weights must be (D, D), got {tuple(weights.shape)}.")
        self.register_buffer("target", target)
        self.register_buffer("weights", weights)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def expected_cost(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """``(*B, D)``, ``(*B, D, D)`` -> ``(*B,)`` expected cost (no reduction)."""
        D = mean.shape[-1]
        if cov.shape[-2:] != (D, D):
            raise ValueError(
                f"ExponentialQuadraticCost: covariance shape {tuple(cov.shape)} does not match "
                f"the mean's dimension {D}; expected (..., {D}, {D})."
            )
        target = self.target if self.target is not None else mean.new_zeros(D)
        weights = self.weights if self.weights is not None else torch.eye(D, dtype=mean.dtype, device=mean.device)
        if target.shape[-1] != D or weights.shape[-1] != D:
            raise ValueError(
                f"ExponentialQuadraticCost: target {tuple(target.shape)} / weights "
                f"{tuple(weights.shape)} do not match the state dimension {D}."
            )
        return expected_saturating_cost(mean, cov, target.to(mean), weights.to(mean))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = self.tensor_keys
        values = []
        for key in (keys.loc, keys.scale):
            value = tensordict.get(key, None)
            if value is None:
                raise KeyError(
                    f"ExponentialQuadraticCost: {key!r} is not in the tensordict (keys: "
                    f"{sorted(map(str, tensordict.keys(True, True)))}); use set_keys(loc=..., scale=...)."
                )
            values.append(value)
        cost = self.expected_cost(*values)
        if self.reduction == "mean":
            return TensorDict(loss_cost=cost.mean())
        if self.reduction == "sum":
            return TensorDict(loss_cost=cost.sum())
        return TensorDict(loss_cost=cost, batch_size=cost.shape)

    def as_reward(self, belief_key: NestedKey = ("next", "observation")) -> ExpectedCostReward:
        """A module writing ``("next", "reward") = -E[cost]`` of the next belief, for
        :class:`~reverie.envs.ImaginedEnv`'s ``reward_module``."""
        return ExpectedCostReward(self, belief_key)


class ExpectedCostReward(TensorDictModuleBase):
    """``("next", "reward") (*B, 1) = -E[c(x')]`` for the belief at ``belief_key``."""

    def __init__(self, cost: ExponentialQuadraticCost, belief_key: NestedKey = ("next", "observation")):
        super().__init__()
        self.cost = cost
        key = (belief_key,) if isinstance(belief_key, str) else tuple(belief_key)
        self.in_keys = [(*key, "mean"), (*key, "var")]
        self.out_keys = [("next", "reward")]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        mean, var = (tensordict.get(k, None) for k in self.in_keys)
        if mean is None or var is None:
            raise KeyError(f"ExpectedCostReward: needs {self.in_keys}; the tensordict has "
                           f"{sorted(map(str, tensordict.keys(True, True)))}.")
        tensordict.set(("next", "reward"), -self.cost.expected_cost(mean, var)[..., None])
        return tensordict
