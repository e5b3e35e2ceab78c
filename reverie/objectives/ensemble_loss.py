"""``EnsembleNLLLoss``: the Gaussian negative log-likelihood of a probabilistic ensemble."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from reverie.validation import check_finite

__all__ = ["EnsembleNLLLoss", "gaussian_nll"]


def gaussian_nll(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    target: torch.Tensor,
    dim: int | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Gaussian negative log-likelihood with a diagonal covariance, constant dropped.

    .. math::

        \\mathcal{L} = \\frac{1}{N} \\sum_{n, d} \\frac{1}{2}\\Big[
            (y_{nd} - \\mu_{nd})^2 e^{-\\ell_{nd}} + \\ell_{nd} \\Big]

    with ``l = log sigma^2``; ``N`` counts the averaged elements (the ``0.5 log 2 pi``
    constant is dropped). PETS (Chua et al. 2018, https://arxiv.org/abs/1805.12114) eq. 2.

    Args:
        mean: ``(*S)`` predicted means.
        logvar: ``(*S)`` predicted log-variances.
        target: ``(*S)`` targets (same shape: no broadcasting).
        dim: dimension(s) to average over; ``None`` averages over everything (a scalar).

    Returns:
        the mean NLL over ``dim``.

    Examples:
        >>> gaussian_nll(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]),
        ...              torch.tensor([1.0, 1.0]))
        tensor(0.7500)
    """
    if not mean.shape == logvar.shape == target.shape:
        raise ValueError(
            f"gaussian_nll: mean {tuple(mean.shape)}, logvar {tuple(logvar.shape)} and target "
            f"{tuple(target.shape)} must have the same shape."
        )
    nll = 0.5 * ((target - mean).pow(2) * torch.exp(-logvar) + logvar)
    return nll.mean() if dim is None else nll.mean(dim)


class EnsembleNLLLoss(LossModule):
    """Gaussian NLL of an :class:`~reverie.modules.ensemble.EnsembleDynamics` on bootstrap batches.

    The batch has batch size ``(M, B)``: row ``m`` is member ``m``'s bootstrap sample
    (a ``(B,)`` batch is shared by all members). With targets
    ``y = dynamics.normalise_targets(s, s', r)`` and ``(mu_m, l_m) = dynamics.predict_members(s, a)``:

    * ``loss_nll = sum_m gaussian_nll(mu_m, l_m, y_m)``: a sum over members of each
      member's mean NLL, so every member learns at the rate of a single model.
    * ``loss_logvar_bounds = w * (sum(max_logvar) - sum(min_logvar))``: keeps the learned
      log-variance bounds tight (PETS appendix A.1).
    * ``mse``: diagnostic (not a loss): mean squared error of the means in normalised
      target space, averaged over members, detached.

    Args:
        dynamics: the ensemble dynamics.

    Keyword Args:
        logvar_bound_weight: ``w`` above. Default ``0.01``.

    Keys (``set_keys``): ``observation`` (``"observation"``), ``action`` (``"action"``),
    ``next_observation`` (``("next", "observation")``), ``reward`` (``("next", "reward")``,
    read only when ``dynamics.learn_reward``).

    Raises:
        KeyError: a key is missing (named in the message).
        ValueError: a batch or tensor of the wrong shape (the key and shape named).

    Examples:
        >>> from tensordict import TensorDict
        >>> from reverie.modules.ensemble import EnsembleDynamics
        >>> dyn = EnsembleDynamics(3, 1, num_members=4, hidden=16, depth=2)
        >>> loss = EnsembleNLLLoss(dyn)
        >>> obs = torch.randn(4, 32, 3)
        >>> batch = TensorDict({"observation": obs, "action": torch.randn(4, 32, 1),
        ...                     "next": {"observation": obs + 0.1}}, [4, 32])
        >>> out = loss(batch)
        >>> sorted(out.keys())
        ['loss_logvar_bounds', 'loss_nll', 'mse']
        >>> (out["loss_nll"] + out["loss_logvar_bounds"]).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read by :class:`EnsembleNLLLoss` (change with ``set_keys``).

        Attributes:
            observation: the state ``s``. Default ``"observation"``.
            action: the action ``a``. Default ``"action"``.
            next_observation: the next state ``s'``. Default ``("next", "observation")``.
            reward: the reward ``r`` (only with ``learn_reward``). Default ``("next", "reward")``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        next_observation: NestedKey = ("next", "observation")
        reward: NestedKey = ("next", "reward")

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(self, dynamics, *, logvar_bound_weight: float = 0.01) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.logvar_bound_weight = float(logvar_bound_weight)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _get(self, td: TensorDictBase, key: NestedKey, last: int) -> torch.Tensor:
        value = td.get(key, None)
        if value is None:
            raise KeyError(
                f"EnsembleNLLLoss: {key!r} is not in the batch (keys: "
                f"{sorted(map(str, td.keys(True, True)))}). Check the batch or `set_keys(...)`."
            )
        want = (*td.batch_size, last)
        if value.shape != want:
            raise ValueError(
                f"EnsembleNLLLoss: {key!r} has shape {tuple(value.shape)}, expected {want} "
                "(batch (M, B) + feature size)."
            )
        dtype = next(self.dynamics.parameters()).dtype
        if value.is_floating_point() and value.dtype != dtype:
            raise TypeError(
                f"EnsembleNLLLoss: {key!r} is {value.dtype} but the ensemble is {dtype}; cast "
                f"the batch (batch.to({dtype})) or the model (dynamics.to({dtype}))."
            )
        return value

    def batch_tensors(self, tensordict: TensorDictBase):
        """``(obs, action, targets)`` of a batch, each ``(M, B, ·)``, targets normalised."""
        dyn = self.dynamics
        members = dyn.num_members
        if tensordict.batch_dims == 1:  # one batch shared by all members
            tensordict = tensordict.expand(members, *tensordict.batch_size)
        if tensordict.batch_dims != 2 or tensordict.batch_size[0] != members:
            raise ValueError(
                f"EnsembleNLLLoss expects a batch of batch size (M={members}, B) (one "
                f"bootstrap batch per member) or (B,); got {tuple(tensordict.batch_size)}."
            )
        keys = self.tensor_keys
        obs = self._get(tensordict, keys.observation, dyn.obs_dim)
        action = self._get(tensordict, keys.action, dyn.action_dim)
        next_obs = self._get(tensordict, keys.next_observation, dyn.obs_dim)
        reward = self._get(tensordict, keys.reward, 1) if dyn.learn_reward else None
        return obs, action, dyn.normalise_targets(obs, next_obs, reward)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Compute the loss terms on a batch of batch size ``(M, B)`` (or ``(B,)``).

        Returns:
            TensorDict with scalar ``loss_nll``, ``loss_logvar_bounds`` and ``mse``.
        """
        check_finite(type(self).__name__, tensordict, tensordict.keys(True, True),
                     "A batch with NaN/inf is never trained on: drop or repair those transitions.")
        obs, action, target = self.batch_tensors(tensordict)  # (M, B, ·)
        mean, logvar = self.dynamics.predict_members(obs, action)  # (M, B, out)
        nll = gaussian_nll(mean, logvar, target, dim=(-2, -1))  # (M,)
        model = self.dynamics.model
        bounds = self.logvar_bound_weight * (model.max_logvar.sum() - model.min_logvar.sum())
        mse = (mean.detach() - target).pow(2).mean()
        return TensorDict(
            {"loss_nll": nll.sum(), "loss_logvar_bounds": bounds, "mse": mse}, batch_size=[]
        )
