"""Dreamer's three losses (Hafner et al. 2019): world model, actor, value.

Each is a thin :class:`~torchrl.objectives.LossModule` that reads keys, calls the maths of
:mod:`reverie.objectives.dreamer_math` and returns ``(loss_td, td)``.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators

from reverie.objectives.dreamer_math import (
    discount_weights,
    gaussian_kl,
    kl_free_nats,
    lambda_returns,
)
from reverie.objectives.world_model_loss import _DISTANCES, distance
from reverie.validation import check_finite

__all__ = ["DreamerActorLoss", "DreamerModelLoss", "DreamerValueLoss"]


def _check_distance(name: str, value: str) -> str:
    if value not in _DISTANCES:
        raise ValueError(f"Unknown {name}={value!r}; choose one of {list(_DISTANCES)}.")
    return value


def _get(td: TensorDictBase, key: NestedKey, who: str, hint: str = "") -> torch.Tensor:
    value = td.get(key, None)
    if value is None:
        raise KeyError(
            f"{who}: missing key {key!r}{hint}; the tensordict holds "
            f"{sorted(map(str, td.keys(True, True)))}. Rename with set_keys(...) if needed.")
    return value


@contextlib.contextmanager
def _frozen(*modules: torch.nn.Module):
    """Parameters of ``modules`` take no gradient inside the block (graphs still pass through)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class DreamerModelLoss(LossModule):
    """World-model loss: KL (with free nats) + reconstruction + reward.

    The batch ``[*B, T]`` of real transitions has its true ``("next", "reward")`` moved to
    ``("next", "true_reward")``; ``world_model`` (encoder -> :class:`RSSMRollout` -> decoder
    and reward head) then writes the prior/posterior statistics, the reconstruction and the
    predicted reward. Terms::

        loss_model_kl     = lambda_kl * kl_free_nats(KL(q || p), free_nats, delayed_clamp)
        loss_model_reco   = lambda_reco * mean_{B,T} sum_{obs dims} d(o_hat, o)
                            (mean over every element with global_average=True)
        loss_model_reward = lambda_reward * mean d(r_hat, r)

    Args:
        world_model: the module run on the batch.

    Keyword Args:
        lambda_kl, lambda_reco, lambda_reward: weights.
        reco_loss, reward_loss: ``l2`` (default), ``l1`` or ``smooth_l1``.
        free_nats: the KL floor (nats, on the KL summed over the state dim).
        delayed_clamp: clamp the averaged KL instead of each step's.
        global_average: average the reconstruction over every element instead of summing
            over the observation's dims.

    Returns (forward): ``(loss_td, td)``: scalars ``loss_model_kl``, ``loss_model_reco``,
    ``loss_model_reward`` (and the unweighted ``kl`` for logging, detached) and the batch
    with the model's outputs.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from reverie.modules import RSSMPosterior, RSSMPrior, RSSMRollout
        >>> nxt = lambda *k: [("next", x) for x in k]
        >>> rssm = RSSMRollout(
        ...     TensorDictModule(RSSMPrior(action_dim=1, hidden_dim=8, rnn_hidden_dim=8, state_dim=3),
        ...         ["state", "belief", "action"], nxt("prior_mean", "prior_std", "_", "belief")),
        ...     TensorDictModule(RSSMPosterior(hidden_dim=8, state_dim=3, rnn_hidden_dim=8, obs_embed_dim=4),
        ...         nxt("belief", "embedding"), nxt("posterior_mean", "posterior_std", "state")))
        >>> world_model = TensorDictSequential(
        ...     TensorDictModule(torch.nn.Linear(2, 4), nxt("observation"), nxt("embedding")), rssm,
        ...     TensorDictModule(lambda s, b: torch.cat([s, b], -1)[..., :2], nxt("state", "belief"),
        ...                      nxt("reco_observation")),
        ...     TensorDictModule(lambda s, b: s[..., :1], nxt("state", "belief"), nxt("reward")))
        >>> loss = DreamerModelLoss(world_model)
        >>> loss.set_keys(observation=("next", "observation"),
        ...               reconstruction=("next", "reco_observation"))
        >>> batch = TensorDict({"action": torch.randn(2, 5, 1), ("next", "observation"): torch.randn(2, 5, 2),
        ...                     ("next", "reward"): torch.randn(2, 5, 1)}, [2, 5])
        >>> loss_td, out = loss(batch)
        >>> sorted(loss_td.keys())
        ['kl', 'loss_model_kl', 'loss_model_reco', 'loss_model_reward']
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of :class:`DreamerModelLoss` (change with ``set_keys``).

        Attributes:
            reward: predicted reward. Default ``("next", "reward")``.
            true_reward: where the true reward is moved. Default ``("next", "true_reward")``.
            prior_mean, prior_std, posterior_mean, posterior_std: RSSM statistics
                (under ``"next"``).
            observation: the observation to reconstruct (frames or a state vector).
                Default ``("next", "pixels")``, TorchRL's layout for frames.
            reconstruction: the decoder's output. Default ``("next", "reco_pixels")``.

        TorchRL's names for these two, ``pixels`` and ``reco_pixels``, are still accepted
        by ``set_keys`` (with a ``DeprecationWarning``)
        """

        reward: NestedKey = ("next", "reward")
        true_reward: NestedKey = ("next", "true_reward")
        prior_mean: NestedKey = ("next", "prior_mean")
        prior_std: NestedKey = ("next", "prior_std")
        posterior_mean: NestedKey = ("next", "posterior_mean")
        posterior_std: NestedKey = ("next", "posterior_std")
        observation: NestedKey = ("next", "pixels")
        reconstruction: NestedKey = ("next", "reco_pixels")

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(self, world_model: TensorDictModuleBase, *, lambda_kl: float = 1.0,
                 lambda_reco: float = 1.0, lambda_reward: float = 1.0, reco_loss: str | None = None,
                 reward_loss: str | None = None, free_nats: float = 3.0,
                 delayed_clamp: bool = False, global_average: bool = False) -> None:
        super().__init__()
        self.world_model = world_model
        self.lambda_kl, self.lambda_reco, self.lambda_reward = lambda_kl, lambda_reco, lambda_reward
        self.reco_loss = _check_distance("reco_loss", reco_loss or "l2")
        self.reward_loss = _check_distance("reward_loss", reward_loss or "l2")
        self.free_nats, self.delayed_clamp = free_nats, delayed_clamp
        self.global_average = global_average

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def set_keys(self, **kwargs):
        """``LossModule.set_keys``; TorchRL's ``pixels``/``reco_pixels`` map to
        ``observation``/``reconstruction``."""
        for old, new in (("pixels", "observation"), ("reco_pixels", "reconstruction")):
            if old in kwargs:
                warnings.warn(f"DreamerModelLoss.set_keys({old}=...) is deprecated: the key is "
                              f"named {new!r} (it may hold a state vector, not pixels).",
                              DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        return super().set_keys(**kwargs)

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        who, keys = type(self).__name__, self.tensor_keys
        check_finite(who, tensordict, tensordict.keys(True, True), "A batch with NaN/inf is never trained on: drop or repair those transitions.")
        td = tensordict.clone(False)
        td.set(keys.true_reward, _get(td, keys.reward, who, " (the true reward)"))
        td.del_(keys.reward)
        td = self.world_model(td)
        kl = gaussian_kl(_get(td, keys.posterior_mean, who), _get(td, keys.posterior_std, who),
                         _get(td, keys.prior_mean, who), _get(td, keys.prior_std, who))  # (*B, T)
        target = _get(td, keys.observation, who, " (the reconstruction target)")
        reco = distance(_get(td, keys.reconstruction, who), target, self.reco_loss)
        if not self.global_average:  # sum over the observation's own dims
            reco = reco.sum(tuple(range(td.ndim, reco.ndim)))
        reward = distance(_get(td, keys.reward, who), td.get(keys.true_reward), self.reward_loss)
        loss_td = TensorDict({
            "loss_model_kl": self.lambda_kl * kl_free_nats(kl, self.free_nats, self.delayed_clamp),
            "loss_model_reco": self.lambda_reco * reco.mean(),
            "loss_model_reward": self.lambda_reward * reward.mean(),
            "kl": kl.mean().detach(),
        }, [])
        return loss_td, td


class DreamerActorLoss(LossModule):
    """Actor loss: maximise lambda-returns of trajectories imagined from posterior states.

    From the ``state``/``belief`` of every entry of the batch (detached, flattened to
    ``[N]``), the actor acts for ``imagination_horizon`` steps in ``model_based_env``
    (reparameterised samples: ``ExplorationType.RANDOM``). The world model and the value
    model take no gradient from this loss (their parameters are frozen during it) but pass
    it through to the actor. With ``v`` the value of each next latent::

        V^lambda = lambda_returns(r, v, terminated, gamma, lmbda)
        loss_actor = -mean(w * (V^lambda + eta * H)),  w = discount_weights(terminated, gamma)
                                                        if discount_loss else 1

    where ``H = -log pi(a_t | s_t)`` is a one-sample entropy estimate of the imagined action
    (read from ``action_log_prob``: build the actor with ``return_log_prob=True``) and ``eta
    = entropy_weight`` (0, Dreamer v1, by default). A tanh-Gaussian actor whose mean runs into
    the saturated region of the tanh loses its gradient and its spread; the entropy term
    (``-log pi`` includes ``log(1 - tanh^2)``) pushes it back.

    Args:
        actor_model: a probabilistic actor reading ``state``/``belief`` and writing ``action``.
        value_model: writes ``state_value`` from ``state``/``belief``.
        model_based_env: a :class:`~reverie.envs.DreamerEnv`.

    Keyword Args:
        imagination_horizon: imagined steps ``H``.
        discount_loss: weight steps by ``w``.
        gamma, lmbda: discount and lambda of the returns (also via ``make_value_estimator``).
        entropy_weight: ``eta``, the weight of the entropy bonus.

    Returns (forward): ``(loss_td, fake_data)``: ``loss_actor`` (and the detached
    ``entropy`` estimate when ``entropy_weight > 0``) and the detached imagined
    rollout ``[N, H]`` with ``lambda_target`` (for :class:`DreamerValueLoss`).
    """

    @dataclass
    class _AcceptedKeys:
        """Keys: ``belief``, ``state``, ``reward``, ``value`` (``"state_value"``), ``done``
        (``"terminated"``), ``log_prob`` (``"action_log_prob"``)."""

        belief: NestedKey = "belief"
        state: NestedKey = "state"
        reward: NestedKey = "reward"
        value: NestedKey = "state_value"
        done: NestedKey = "terminated"
        log_prob: NestedKey = "action_log_prob"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TDLambda

    def __init__(self, actor_model, value_model, model_based_env, *, imagination_horizon: int = 15,
                 discount_loss: bool = True, gamma: float = 0.99, lmbda: float = 0.95,
                 entropy_weight: float = 0.0) -> None:
        super().__init__()
        self.actor_model, self.value_model = actor_model, value_model
        self.entropy_weight = entropy_weight
        self.model_based_env = model_based_env
        self.imagination_horizon, self.discount_loss = imagination_horizon, discount_loss
        self.make_value_estimator(gamma=gamma, lmbda=lmbda)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> None:
        """Set the return estimator: TD(lambda) (Dreamer's), ``gamma`` and ``lmbda``."""
        value_type = value_type or self.default_value_estimator
        if value_type != ValueEstimators.TDLambda:
            raise NotImplementedError(
                f"DreamerActorLoss: value estimator {value_type} is not supported; Dreamer "
                "uses ValueEstimators.TDLambda.")
        self.gamma = float(hyperparams.get("gamma", getattr(self, "gamma", 0.99)))
        self.lmbda = float(hyperparams.get("lmbda", getattr(self, "lmbda", 0.95)))

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        keys, who = self.tensor_keys, type(self).__name__
        n, nd = tensordict.numel(), tensordict.ndim
        state, belief = _get(tensordict, keys.state, who), _get(tensordict, keys.belief, who)
        start = TensorDict({"state": state.detach().reshape(n, *state.shape[nd:]),  # (N, S)
                            "belief": belief.detach().reshape(n, *belief.shape[nd:])}, [n])
        env = self.model_based_env
        with _frozen(env.world_model, self.value_model), set_exploration_type(ExplorationType.RANDOM):
            fake = env.rollout(self.imagination_horizon, self.actor_model, tensordict=start,
                               auto_reset=True, break_when_any_done=False)
            latent = fake.get("next").select("state", "belief").copy()
            next_value = self.value_model(latent).get(keys.value)  # (N, H, 1)
        reward = fake.get(("next", keys.reward))
        terminated = fake.get(("next", keys.done))
        returns = lambda_returns(reward, next_value, terminated, self.gamma, self.lmbda)  # (N, H, 1)
        weights = (discount_weights(terminated, self.gamma) if self.discount_loss
                   else torch.ones_like(returns))
        objective, entropy = returns, None
        if self.entropy_weight > 0:
            log_prob = _get(fake, keys.log_prob, who,
                            " (build the actor with return_log_prob=True for entropy_weight > 0)")
            entropy = -log_prob.reshape(returns.shape)  # (N, H, 1)
            objective = returns + self.entropy_weight * entropy
        out = {"loss_actor": -(weights * objective).mean()}
        if entropy is not None:
            out["entropy"] = entropy.mean().detach()
        fake = fake.detach()
        fake.set("lambda_target", returns.detach())
        fake.set("loss_weight", weights.detach())
        return TensorDict(out, []), fake


class DreamerValueLoss(LossModule):
    """Value loss on imagined latents: regress ``v(s_t)`` on the (detached) lambda-returns.

    ``loss_value = mean(w * 0.5 d(v(s_t), V^lambda_t))`` with ``w`` the discount weights of
    the actor loss when ``discount_loss`` (``gamma^t`` when the data carries none).

    Args:
        value_model: writes ``state_value`` from ``state``/``belief``.
        value_loss: ``l2`` (default), ``l1`` or ``smooth_l1``.
        discount_loss: weight steps by ``w``.
        gamma: discount of the weights when the data carries no ``loss_weight``.

    Returns (forward): ``(loss_td, td)`` with ``loss_value``.
    """

    @dataclass
    class _AcceptedKeys:
        """Keys: ``value`` (``"state_value"``), ``value_target`` (``"lambda_target"``)."""

        value: NestedKey = "state_value"
        value_target: NestedKey = "lambda_target"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(self, value_model, value_loss: str | None = None, discount_loss: bool = True,
                 gamma: float = 0.99) -> None:
        super().__init__()
        self.value_model = value_model
        self.value_loss = _check_distance("value_loss", value_loss or "l2")
        self.discount_loss, self.gamma = discount_loss, gamma

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, fake_data: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        keys, who = self.tensor_keys, type(self).__name__
        target = _get(fake_data, keys.value_target, who, " (run DreamerActorLoss first)").detach()
        td = self.value_model(fake_data.select("state", "belief").copy())
        value = td.get(keys.value)
        per_step = 0.5 * distance(value, target, self.value_loss)  # (N, H, 1)
        if self.discount_loss:
            weights = fake_data.get("loss_weight", None)
            if weights is None:
                h = per_step.shape[-2]
                weights = self.gamma ** torch.arange(h, dtype=per_step.dtype, device=per_step.device)
                weights = weights[:, None]
            per_step = per_step * weights
        return TensorDict({"loss_value": per_step.mean()}, []), td
