"""DreamerV3's losses (Hafner et al. 2023, https://arxiv.org/abs/2301.04104): world model,
actor, critic on imagined trajectories, and critic on replayed sequences.

Thin :class:`~torchrl.objectives.LossModule` s that read keys and call the maths of
:mod:`reverie.objectives.dreamer_v3_math` and :mod:`reverie.objectives.dreamer_math`. Each
returns ``(loss_td, td)``: weighted scalar ``loss_*`` terms (their sum is the loss to
minimise) and detached metrics.

Latent keys follow :class:`~reverie.modules.RSSMRolloutV3`: ``state`` (the flat one-hot
stochastic latent) and ``belief`` (the deterministic recurrent state); heads read both.

Where the defaults differ from the paper or from the authors' current code:

* The discount is applied in the λ-returns (``gamma = 1 - 1/333``) with the continue
  head trained on ``1 - terminated``, as in the paper; the authors' code folds the discount
  into the continue target (``contdisc``), which gives the same returns.
* Imagined steps are weighted by ``w_t = prod_{k=1..t} gamma c_k`` (the start state's own
  continuation is not included, unlike the authors' code: replayed start states are never
  terminal).
* Continuous actions get reparameterised gradients through the (frozen) dynamics
  (``actor_gradient="dynamics"``) and discrete actions REINFORCE, as the issue and the
  2023 paper state; the authors' current code uses REINFORCE for both
  (``actor_gradient="reinforce"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule

from reverie.objectives.dreamer_loss import _frozen, _get
from reverie.objectives.dreamer_math import discount_weights, lambda_returns
from reverie.objectives.dreamer_v3_math import (
    kl_balance,
    symexp_bins,
    symlog,
    two_hot_cross_entropy,
    two_hot_decode,
)
from reverie.validation import check_finite

__all__ = ["DreamerV3ActorLoss", "DreamerV3ModelLoss", "DreamerV3ReplayValueLoss",
           "DreamerV3ValueLoss", "two_hot_mean"]


def two_hot_mean(logits: Tensor) -> Tensor:
    """The expected value of a symexp two-hot head: ``(*B, K)`` logits -> ``(*B, 1)``, on
    ``symexp_bins(K)`` (255 bins on ``symexp(linspace(-20, 20))`` by default).

    Examples:
        >>> two_hot_mean(torch.zeros(2, 255))
        tensor([[0.],
                [0.]])
    """
    bins = symexp_bins(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    return two_hot_decode(logits, bins).unsqueeze(-1)


def _two_hot_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Two-hot cross-entropy of ``(*B, K)`` logits against ``(*B, 1)`` targets -> ``(*B, 1)``."""
    bins = symexp_bins(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    return two_hot_cross_entropy(logits, target.squeeze(-1), bins).unsqueeze(-1)


class DreamerV3ModelLoss(LossModule):
    """World-model loss (DreamerV3 eqs. 5-6)::

        loss_model_dyn    = dyn_weight * mean_{B,T} max(free_nats, KL(sg(q) || p))
        loss_model_rep    = rep_weight * mean_{B,T} max(free_nats, KL(q || sg(p)))
        loss_model_reco   = reco_weight * sum_keys mean_{B,T} sum_{event} (o_hat - f(o))^2
                            f = symlog for vector observations, identity for images in [0, 1]
        loss_model_reward = reward_weight * mean two_hot_CE(reward_logits, r)
        loss_model_cont   = cont_weight * mean BCE(cont_logit, 1 - terminated)

    with the KL summed over the ``32`` latents (free bits on the sum, per step). The world
    model runs on the batch ``[B, T]`` and writes, under ``"next"``: ``prior_logits``,
    ``posterior_logits`` (``(B, T, S, C)``), ``reco_<key>`` for every observation key,
    ``reward_logits`` (``(B, T, K)``) and ``cont_logit`` (``(B, T, 1)``).

    Args:
        world_model: encoder -> :class:`~reverie.modules.RSSMRolloutV3` -> decoder and heads.

    Keyword Args:
        vector_keys: observation keys reconstructed in symlog space (under ``"next"``).
        image_keys: image keys (``(C, H, W)`` in [0, 1]) reconstructed as they are.
        dyn_weight, rep_weight, free_nats: the KL balance (paper: 1.0, 0.1, 1 nat).
        reco_weight, reward_weight, cont_weight: the other weights (paper: 1.0 each).

    Returns (forward): ``(loss_td, td)``: the five ``loss_model_*`` terms, the detached
    mean ``kl`` (``KL(q || p)`` before free bits) and entropies ``prior_entropy``,
    ``posterior_entropy``; ``td`` is the batch with the model's outputs.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> class ToyModel(torch.nn.Module):  # observation (3,) -> every output, 4 x 5 latents
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(3, 2 * 20 + 3 + 255 + 1)
        ...     def forward(self, obs):
        ...         return self.net(obs).split([20, 20, 3, 255, 1], -1)
        >>> out = [("next", k) for k in ("posterior_logits", "prior_logits", "reco_observation",
        ...                               "reward_logits", "cont_logit")]
        >>> model = TensorDictModule(ToyModel(), [("next", "observation")], out)
        >>> unflatten = lambda td: td.set(out[0], td[out[0]].unflatten(-1, (4, 5))).set(
        ...     out[1], td[out[1]].unflatten(-1, (4, 5)))
        >>> world_model = lambda td: unflatten(model(td))
        >>> batch = TensorDict({("next", "observation"): torch.randn(2, 8, 3),
        ...                     ("next", "reward"): torch.randn(2, 8, 1),
        ...                     ("next", "terminated"): torch.zeros(2, 8, 1, dtype=torch.bool)}, [2, 8])
        >>> loss_td, _ = DreamerV3ModelLoss(world_model)(batch)
        >>> sorted(k for k in loss_td.keys() if k.startswith("loss_"))
        ['loss_model_cont', 'loss_model_dyn', 'loss_model_reco', 'loss_model_rep', 'loss_model_reward']
    """

    @dataclass
    class _AcceptedKeys:
        """Keys (all under ``"next"``): ``prior_logits``, ``posterior_logits``,
        ``reward_logits``, ``cont_logit``, ``reward``, ``terminated``."""

        prior_logits: NestedKey = ("next", "prior_logits")
        posterior_logits: NestedKey = ("next", "posterior_logits")
        reward_logits: NestedKey = ("next", "reward_logits")
        cont_logit: NestedKey = ("next", "cont_logit")
        reward: NestedKey = ("next", "reward")
        terminated: NestedKey = ("next", "terminated")

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(self, world_model: TensorDictModuleBase, *,
                 vector_keys: tuple[str, ...] = ("observation",), image_keys: tuple[str, ...] = (),
                 dyn_weight: float = 1.0, rep_weight: float = 0.1, free_nats: float = 1.0,
                 reco_weight: float = 1.0, reward_weight: float = 1.0,
                 cont_weight: float = 1.0) -> None:
        super().__init__()
        if not vector_keys and not image_keys:
            raise ValueError("DreamerV3ModelLoss: give at least one of vector_keys/image_keys.")
        self.world_model = world_model
        self.vector_keys, self.image_keys = tuple(vector_keys), tuple(image_keys)
        self.dyn_weight, self.rep_weight, self.free_nats = dyn_weight, rep_weight, free_nats
        self.reco_weight, self.reward_weight, self.cont_weight = reco_weight, reward_weight, cont_weight

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        who, keys = type(self).__name__, self.tensor_keys
        check_finite(who, tensordict, tensordict.keys(True, True), "A batch with NaN/inf is never trained on: drop or repair those transitions.")
        td = self.world_model(tensordict.clone(False))
        nd = td.ndim
        post, prior = _get(td, keys.posterior_logits, who), _get(td, keys.prior_logits, who)
        dyn, rep = kl_balance(post, prior, self.free_nats)  # (B, T)
        reco = 0.0
        for key, squash in [*[(k, True) for k in self.vector_keys],
                            *[(k, False) for k in self.image_keys]]:
            target = _get(td, ("next", key), who, " (an observation to reconstruct)")
            pred = _get(td, ("next", "reco_" + key), who, " (the decoder's output)")
            target = symlog(target) if squash else target
            reco = reco + (pred - target.to(pred.dtype)).pow(2).sum(tuple(range(nd, pred.ndim))).mean()
        reward = _get(td, keys.reward, who)
        reward_ce = _two_hot_ce(_get(td, keys.reward_logits, who), reward.to(post.dtype))
        cont_logit = _get(td, keys.cont_logit, who)
        cont_target = 1.0 - _get(td, keys.terminated, who).to(cont_logit.dtype)
        cont = F.binary_cross_entropy_with_logits(cont_logit, cont_target)
        with torch.no_grad():
            log_q, log_p = post.log_softmax(-1), prior.log_softmax(-1)
            kl = (log_q.exp() * (log_q - log_p)).sum((-2, -1)).mean()
            prior_ent = -(log_p.exp() * log_p).sum((-2, -1)).mean()
            post_ent = -(log_q.exp() * log_q).sum((-2, -1)).mean()
        loss_td = TensorDict({
            "loss_model_dyn": self.dyn_weight * dyn.mean(),
            "loss_model_rep": self.rep_weight * rep.mean(),
            "loss_model_reco": self.reco_weight * reco,
            "loss_model_reward": self.reward_weight * reward_ce.mean(),
            "loss_model_cont": self.cont_weight * cont,
            "kl": kl, "prior_entropy": prior_ent, "posterior_entropy": post_ent,
        }, [])
        return loss_td, td


class DreamerV3ActorLoss(LossModule):
    """Actor loss on trajectories imagined from posterior latents (DreamerV3 eqs. 7-11).

    From every entry's ``state``/``belief`` (detached, flattened to ``[N]``) the actor acts
    for ``horizon`` steps in ``model_based_env`` (a :class:`~reverie.envs.DreamerEnv` whose
    world model writes the two-hot decoded ``reward``). With ``c_t = sigmoid(cont_logit)``
    and ``v_t`` the critic's mean at the imagined latent ``s_t``::

        R_t  = r_{t+1} + gamma c_{t+1} ((1 - lmbda) v_{t+1} + lmbda R_{t+1}),   R_H = v_H
        w_t  = prod_{k=1..t} gamma c_k                       (w_0 = 1)
        S    = max(1, EMA(P95(R)) - EMA(P5(R)))              (return_normalizer)
        reinforce: loss_actor = -mean_t sg(w_t) (log pi(a_t | s_t) sg((R_t - v_t) / S)
                                                  + eta H[pi(. | s_t)])
        dynamics:  loss_actor = -mean_t sg(w_t) (R_t / S + eta H[pi(. | s_t)])

    ``reinforce`` rolls out without gradients; ``dynamics`` backpropagates ``R_t`` through
    the frozen dynamics, reward, continue and critic heads into the actor's reparameterised
    samples (continuous actions only). ``actor_gradient="auto"`` picks ``dynamics`` for
    continuous and ``reinforce`` for one-hot action specs.

    Args:
        actor: a :class:`~torchrl.modules.ProbabilisticActor` reading ``state``/``belief``
            (its ``get_dist`` gives the action distribution, with ``entropy()``).
        critic: writes ``value_logits`` (``(*B, K)``) from ``state``/``belief``.
        cont_model: writes ``cont_logit`` (``(*B, 1)``) from ``state``/``belief``.
        model_based_env: the imagination env.
        return_normalizer: a :class:`~reverie.objectives.ReturnNormalizer` (updated with
            every batch of returns while the loss is in training mode).

    Keyword Args:
        horizon: imagined steps ``H`` (paper: 15).
        gamma, lmbda: discount (paper: ``1 - 1/333``) and lambda (0.95).
        entropy_weight: ``eta`` (paper: ``3e-4``).
        actor_gradient: ``"auto"``, ``"reinforce"`` or ``"dynamics"``.

    Returns (forward): ``(loss_td, fake)``: ``loss_actor`` and detached metrics
    (``entropy``, ``return_scale``, ``imagined_return``), and the detached imagined rollout
    ``[N, H]`` with ``lambda_target`` (``R_t``) and ``loss_weight`` (``w_t``) for
    :class:`DreamerV3ValueLoss`.
    """

    def __init__(self, actor, critic: TensorDictModuleBase, cont_model: TensorDictModuleBase,
                 model_based_env, return_normalizer: torch.nn.Module, *, horizon: int = 15,
                 gamma: float = 1 - 1 / 333, lmbda: float = 0.95, entropy_weight: float = 3e-4,
                 actor_gradient: str = "auto") -> None:
        super().__init__()
        if actor_gradient not in ("auto", "reinforce", "dynamics"):
            raise ValueError(f"DreamerV3ActorLoss: actor_gradient={actor_gradient!r}; choose "
                             "'auto', 'reinforce' or 'dynamics'.")
        if horizon < 1:
            raise ValueError(f"DreamerV3ActorLoss: horizon={horizon}; need at least 1 step.")
        self.actor, self.critic, self.cont_model = actor, critic, cont_model
        self.model_based_env, self.return_normalizer = model_based_env, return_normalizer
        self.horizon, self.gamma, self.lmbda = horizon, gamma, lmbda
        self.entropy_weight = entropy_weight
        discrete = _is_one_hot(model_based_env.action_spec)
        if actor_gradient == "auto":
            actor_gradient = "reinforce" if discrete else "dynamics"
        if actor_gradient == "dynamics" and discrete:
            raise ValueError("DreamerV3ActorLoss: actor_gradient='dynamics' needs continuous "
                             "actions; one-hot actions use 'reinforce'.")
        self.actor_gradient = actor_gradient

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        who = type(self).__name__
        n, nd = tensordict.numel(), tensordict.ndim
        state, belief = _get(tensordict, "state", who), _get(tensordict, "belief", who)
        start = TensorDict({"state": state.detach().reshape(n, *state.shape[nd:]),
                            "belief": belief.detach().reshape(n, *belief.shape[nd:])}, [n])
        env = self.model_based_env
        dynamics = self.actor_gradient == "dynamics"
        grad = torch.enable_grad() if dynamics else torch.no_grad()
        with grad, _frozen(env.world_model, self.critic, self.cont_model), \
                set_exploration_type(ExplorationType.RANDOM):
            fake = env.rollout(self.horizon, self.actor, tensordict=start, auto_reset=True,
                               break_when_any_done=False)
            nxt = fake.get("next").select("state", "belief")
            next_value = two_hot_mean(self.critic(nxt.copy()).get("value_logits"))  # (N, H, 1)
            cont = torch.sigmoid(self.cont_model(nxt.copy()).get("cont_logit"))  # (N, H, 1)
            reward = fake.get(("next", "reward"))
            returns = lambda_returns(reward, next_value, 1.0 - cont, self.gamma, self.lmbda)
        with torch.no_grad():
            weights = discount_weights(1.0 - cont.detach(), self.gamma)  # (N, H, 1)
            if self.training:
                self.return_normalizer.update(returns.detach())
            scale = self.return_normalizer.scale()
        root = fake.select("state", "belief").detach()
        dist = self.actor.get_dist(root.copy())
        entropy = _entropy(dist, returns.shape)  # (N, H, 1)
        if dynamics:
            objective = returns / scale + self.entropy_weight * entropy
        else:
            with torch.no_grad():
                value = two_hot_mean(self.critic(root.copy()).get("value_logits"))
                advantage = (returns - value) / scale
            log_prob = dist.log_prob(fake.get("action").detach()).reshape(returns.shape)
            objective = log_prob * advantage + self.entropy_weight * entropy
        loss_td = TensorDict({
            "loss_actor": -(weights * objective).mean(),
            "entropy": entropy.mean().detach(),
            "return_scale": scale.detach().reshape(()),
            "imagined_return": returns.mean().detach(),
        }, [])
        fake = fake.detach()
        fake.set("lambda_target", returns.detach())
        fake.set("loss_weight", weights)
        return loss_td, fake


def _is_one_hot(spec) -> bool:
    from torchrl.data import OneHot

    return isinstance(spec, OneHot)


def _entropy(dist, shape: torch.Size) -> Tensor:
    """The entropy of the action distribution, summed over action dims, as ``shape``."""
    entropy = dist.entropy()
    if entropy.numel() != shape.numel():  # per-dim entropies of a factorised Normal
        entropy = entropy.sum(-1)
    return entropy.reshape(shape)


class DreamerV3ValueLoss(LossModule):
    """Critic loss on imagined latents (DreamerV3 eq. 10 and the slow critic regulariser)::

        loss_value = mean_t sg(w_t) (CE2(v(s_t), sg(R_t)) + slow_weight CE2(v(s_t), sg(v_slow(s_t))))

    with ``CE2`` the two-hot cross-entropy of the critic's logits against a value, ``R_t``
    and ``w_t`` from :class:`DreamerV3ActorLoss`, and ``v_slow`` the slow critic's mean
    (an EMA copy of the critic, updated with ``tau = 0.02`` after each step by the agent).

    Args:
        critic: writes ``value_logits`` from ``state``/``belief``.
        slow_critic: the EMA copy, same interface.

    Keyword Args:
        slow_weight: the regulariser's weight (paper: 1.0).

    Returns (forward): ``(loss_td, td)`` with ``loss_value`` and the detached mean
    ``value``.

    Examples:
        >>> import math, torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from reverie.modules import SymExpTwoHot
        >>> head = lambda: TensorDictModule(SymExpTwoHot(4, hidden=8, layers=1), ["state"],
        ...                                 ["value_logits"])  # a fresh head predicts exactly 0
        >>> fake = TensorDict({"state": torch.randn(3, 5, 4), "belief": torch.zeros(3, 5, 2),
        ...                    "lambda_target": torch.randn(3, 5, 1),
        ...                    "loss_weight": torch.ones(3, 5, 1)}, [3, 5])
        >>> loss_td, _ = DreamerV3ValueLoss(head(), head())(fake)
        >>> round(loss_td["loss_value"].item() / math.log(255), 4)  # 2 uniform cross-entropies
        2.0
    """

    def __init__(self, critic: TensorDictModuleBase, slow_critic: TensorDictModuleBase, *,
                 slow_weight: float = 1.0) -> None:
        super().__init__()
        self.critic, self.slow_critic, self.slow_weight = critic, slow_critic, slow_weight

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, fake_data: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        who = type(self).__name__
        target = _get(fake_data, "lambda_target", who, " (run DreamerV3ActorLoss first)")
        weights = _get(fake_data, "loss_weight", who, " (run DreamerV3ActorLoss first)")
        latent = fake_data.select("state", "belief").detach()
        per_step, value = _critic_terms(self.critic, self.slow_critic, latent, target.detach(),
                                        self.slow_weight)
        loss_td = TensorDict({"loss_value": (weights.detach() * per_step).mean(),
                              "value": value.mean()}, [])
        return loss_td, latent


def _critic_terms(critic, slow_critic, latent: TensorDictBase, target: Tensor,
                  slow_weight: float) -> tuple[Tensor, Tensor]:
    """``CE2(v, target) + slow_weight CE2(v, v_slow)`` per entry, and the critic's mean."""
    logits = critic(latent.copy()).get("value_logits")
    per_step = _two_hot_ce(logits, target)
    if slow_weight:
        with torch.no_grad():
            slow = two_hot_mean(slow_critic(latent.copy()).get("value_logits"))
        per_step = per_step + slow_weight * _two_hot_ce(logits, slow)
    return per_step, two_hot_mean(logits.detach())


class DreamerV3ReplayValueLoss(LossModule):
    """Critic loss on replayed sequences, bootstrapped from imagination (the authors'
    ``repval`` term, weight 0.3). Replayed sequences may cross episode boundaries::

        ret_j = r_{j+1} + gamma (1 - d_{j+1}) ((1 - l_{j+1}) b_{j+1} + l_{j+1} ret_{j+1}),
        l_{j+1} = lmbda (1 - e_{j+1}),      ret_{T-1} = b_{T-1}
        loss_replay_value = weight * mean_{j < T-1} (1 - e_j) (CE2(v(s_j), sg(ret_j))
                                                      + slow_weight CE2(v(s_j), sg(v_slow(s_j))))

    where ``s_j`` are the posterior latents of the batch (``("next", "state"/"belief")``,
    ``[B, T]``), ``r_{j+1}``, ``d_{j+1}`` the real reward and termination of the transition
    leaving ``s_j`` (``("next", "reward"/"terminated")`` at ``j + 1``), ``e_j`` whether
    ``s_j`` ended its episode (``("next", "done")`` at ``j``: terminated or truncated; the
    next transition belongs to another episode, so ``s_j`` is left out and the return before
    it bootstraps from ``b_j`` alone) and ``b_j`` the imagined λ-return from ``s_j`` (``R_0``
    of :class:`DreamerV3ActorLoss`, passed as ``bootstrap``).

    Args:
        critic, slow_critic: as in :class:`DreamerV3ValueLoss`.

    Keyword Args:
        gamma, lmbda: as in the actor loss.
        weight: the term's weight (authors' ``repval``: 0.3).
        slow_weight: the slow-critic regulariser's weight (1.0).

    Returns (forward ``(batch, bootstrap)``, ``bootstrap (B, T, 1)``): ``(loss_td, td)``:
    ``loss_replay_value``, and the latents ``[B, T - 1]`` with their ``lambda_target`` and
    ``loss_weight``.
    """

    def __init__(self, critic: TensorDictModuleBase, slow_critic: TensorDictModuleBase, *,
                 gamma: float = 1 - 1 / 333, lmbda: float = 0.95, weight: float = 0.3,
                 slow_weight: float = 1.0) -> None:
        super().__init__()
        self.critic, self.slow_critic = critic, slow_critic
        self.gamma, self.lmbda, self.weight, self.slow_weight = gamma, lmbda, weight, slow_weight

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, batch: TensorDictBase, bootstrap: Tensor) -> tuple[TensorDictBase, TensorDictBase]:
        who = type(self).__name__
        if batch.ndim < 1 or batch.shape[-1] < 2:
            raise ValueError(f"{who}: the batch needs a time dim of at least 2 steps; got "
                             f"batch_size {tuple(batch.batch_size)}.")
        reward = _get(batch, ("next", "reward"), who)
        terminated = _get(batch, ("next", "terminated"), who)
        ended = _get(batch, ("next", "done"), who)
        if bootstrap.shape != reward.shape:
            raise ValueError(f"{who}: bootstrap has shape {tuple(bootstrap.shape)}; expected the "
                             f"reward's {tuple(reward.shape)} (one imagined return per latent).")
        dtype = bootstrap.dtype
        ended = ended.to(dtype)
        with torch.no_grad():
            ret = lambda_returns(reward[..., 1:, :].to(dtype), bootstrap[..., 1:, :].detach(),
                                 terminated[..., 1:, :].to(dtype), self.gamma,
                                 self.lmbda * (1.0 - ended[..., 1:, :]))
        latent = batch.get("next").select("state", "belief").detach()[..., :-1]
        per_step, _ = _critic_terms(self.critic, self.slow_critic, latent, ret, self.slow_weight)
        weights = 1.0 - ended[..., :-1, :]
        latent.set("lambda_target", ret)
        latent.set("loss_weight", weights)
        loss = self.weight * (weights * per_step).mean()
        return TensorDict({"loss_replay_value": loss}, []), latent
