"""RSSM world models (Dreamer v1, DreamerV3) behind the :class:`WorldModel` interface.

Both RSSM families keep a latent of two named entries, the stochastic ``state`` ``s_t``
and the deterministic ``belief`` ``h_t``. :class:`RSSMWorldModel` exposes them through the
same ``encode`` / ``step`` / ``decode`` calls as any :class:`~reverie.modules.WorldModel`,
so :class:`~reverie.envs.WorldModelEnv` imagines with them and the open-loop diagnostics
(:mod:`reverie.diagnostics`) read them without family-specific code.

Sampling follows TorchRL's exploration type: under
``set_exploration_type(ExplorationType.DETERMINISTIC)`` (or ``MODE``/``MEAN``) the prior
and the posterior return their most likely state (the Gaussian mean for v1, the argmax of
every categorical for V3); otherwise they sample.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import Tensor, nn
from torchrl.data import Composite, Unbounded
from torchrl.envs.utils import ExplorationType, exploration_type

from reverie.modules.world_model import WorldModel

__all__ = ["RSSMStart", "RSSMStep", "RSSMWorldModel", "initial_latent"]

_MOST_LIKELY = (ExplorationType.DETERMINISTIC, ExplorationType.MODE, ExplorationType.MEAN)


def _most_likely() -> bool:
    return exploration_type() in _MOST_LIKELY


def initial_latent(prior: nn.Module, lead: torch.Size, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """An RSSM's initial latent and previous action ``(*B, S), (*B, D), (*B, A)``: zeros in
    the prior's device and dtype (``like``'s, or the default float dtype, for a prior
    without parameters). Shared by :class:`RSSMWorldModel` and
    :class:`~reverie.modules.DreamerPolicy`."""
    param = next(iter(prior.parameters()), None)
    if param is not None:
        device, dtype = param.device, param.dtype
    else:
        device = like.device
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return tuple(torch.zeros(*lead, n, device=device, dtype=dtype)
                 for n in (prior.state_dim, prior.belief_dim, prior.action_dim))


class RSSMStep(nn.Module):
    """One prior step ``(s_t, h_t, a_t) -> (s_{t+1}, h_{t+1})``: a sample of the prior, or
    its most likely state under a deterministic exploration type.

    Args:
        prior: an :class:`~reverie.modules.RSSMPrior` or
            :class:`~reverie.modules.RSSMPriorV3` (``forward`` ending in ``(..., state,
            belief)`` and ``mode(state, belief, action) -> (state, belief)``).
    """

    def __init__(self, prior: nn.Module) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, state: Tensor, belief: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        if _most_likely():
            return self.prior.mode(state, belief, action)
        out = self.prior(state, belief, action)
        return out[-2], out[-1]


class RSSMStart(nn.Module):
    """The latent of an episode's first observation, as the acting policy filters it::

        h_0 = prior(0, 0, 0).belief,   s_0 ~ posterior(h_0, e_0)

    Shapes: ``embedding (*B, E)`` -> ``state (*B, S)``, ``belief (*B, D)``.
    """

    def __init__(self, prior: nn.Module, posterior: nn.Module) -> None:
        super().__init__()
        self.prior, self.posterior = prior, posterior

    def forward(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        state, belief, action = initial_latent(self.prior, embedding.shape[:-1], embedding)
        belief = self.prior.mode(state, belief, action)[1]
        return _posterior_state(self.posterior, belief, embedding), belief


def _posterior_state(posterior: nn.Module, belief: Tensor, embedding: Tensor) -> Tensor:
    if _most_likely():
        return posterior.mode(belief, embedding)
    return posterior(belief, embedding)[-1]


class RSSMWorldModel(WorldModel):
    """An RSSM (Dreamer v1 or DreamerV3) as a :class:`~reverie.modules.WorldModel`.

    Latent keys (:attr:`latent_keys`): ``state`` ``(*B, S)`` and ``belief`` ``(*B, D)``.
    Components, all TensorDict modules built from the plain modules given:

    * ``encoder``: ``obs_key -> embedding -> (state, belief)`` (:class:`RSSMStart`: the
      latent of a first observation);
    * ``dynamics``: ``(state, belief, action) -> ("next", state), ("next", belief)``
      (:class:`RSSMStep`);
    * ``reward_head``: ``("next", state), ("next", belief) -> ("next", "reward")``;
    * ``done_head`` (optional): reads ``("next", state)``/``("next", belief)``, writes
      ``("next", "terminated")`` (see :class:`~reverie.envs.WorldModelEnv`);
    * ``decoder``: ``(state, belief) -> reconstruction_key``; not run by :meth:`step`
      (imagination does not need observations), only by :meth:`decode`.

    :meth:`filter` gives the posterior latent of every step of a real trajectory.

    Args:
        obs_encoder: ``observation (*B, *obs) -> embedding (*B, E)``.
        prior: :class:`~reverie.modules.RSSMPrior` or :class:`~reverie.modules.RSSMPriorV3`.
        posterior: :class:`~reverie.modules.RSSMPosterior` or
            :class:`~reverie.modules.RSSMPosteriorV3`.
        reward: ``(state, belief) -> reward (*B, 1)`` (for DreamerV3 the decoded two-hot mean).

    Keyword Args:
        decoder: ``(state, belief) -> observation (*B, *obs)``, in observation units (for
            DreamerV3, ``symexp`` of what the symlog decoder predicts).
        done_head: a TensorDict module writing ``("next", "terminated")``.
        obs_key: the observation key. Default ``"observation"``.
        reconstruction_key: the decoder's out key. Default ``"reco_" + obs_key``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from reverie.envs import WorldModelEnv
        >>> from reverie.modules import RSSMPosterior, RSSMPrior, RSSMWorldModel
        >>> prior = RSSMPrior(action_dim=1, hidden_dim=8, rnn_hidden_dim=6, state_dim=3)
        >>> posterior = RSSMPosterior(hidden_dim=8, state_dim=3, rnn_hidden_dim=6, obs_embed_dim=4)
        >>> reward = lambda state, belief: state.sum(-1, keepdim=True)
        >>> wm = RSSMWorldModel(torch.nn.Linear(3, 4), prior, posterior, reward,
        ...                     decoder=lambda state, belief: torch.cat([state, belief], -1)[..., :3])
        >>> wm.latent_keys
        ['state', 'belief']
        >>> start = wm.encode(TensorDict({"observation": torch.randn(5, 3)}, [5]))
        >>> env = WorldModelEnv(wm, action_spec=Bounded(-1, 1, (1,)))  # latent: state, belief
        >>> rollout = env.rollout(15, tensordict=start)
        >>> rollout["next", "reward"].shape, rollout["next", "belief"].shape
        (torch.Size([5, 15, 1]), torch.Size([5, 15, 6]))
        >>> wm.decode(rollout[:, -1])["reco_observation"].shape
        torch.Size([5, 3])
    """

    def __init__(self, obs_encoder: nn.Module, prior: nn.Module, posterior: nn.Module,
                 reward: nn.Module, *, decoder: nn.Module | None = None,
                 done_head: TensorDictModuleBase | None = None, obs_key: str = "observation",
                 reconstruction_key: str | None = None) -> None:
        latent = ["state", "belief"]
        nxt = [("next", k) for k in latent]
        encoder = TensorDictSequential(
            TensorDictModule(obs_encoder, [obs_key], ["embedding"]),
            TensorDictModule(RSSMStart(prior, posterior), ["embedding"], latent))
        dynamics = TensorDictModule(RSSMStep(prior), [*latent, "action"], nxt)
        reward_head = TensorDictModule(reward, nxt, [("next", "reward")])
        decoder_td = None
        if decoder is not None:
            decoder_td = TensorDictModule(decoder, latent, [reconstruction_key or f"reco_{obs_key}"])
        super().__init__(encoder, dynamics, reward_head, done_head=done_head, decoder=decoder_td,
                         decode_on_step=False)
        object.__setattr__(self, "_parts", (obs_encoder, prior, posterior))
        self.obs_key = obs_key

    @property
    def latent_spec(self) -> Composite:
        """Spec of one latent: ``state`` ``(S,)`` and ``belief`` ``(D,)``."""
        prior = self._parts[1]
        return Composite(state=Unbounded((prior.state_dim,)), belief=Unbounded((prior.belief_dim,)))

    @property
    def reconstruction_key(self):
        """The key :meth:`decode` writes (``None`` without a decoder)."""
        return None if self.decoder is None else self.decoder.out_keys[0]

    def filter(self, trajectory: TensorDictBase) -> TensorDictBase:
        """The posterior latent at every step of real data, as the acting policy filters it.

        For ``t = 0..T-1`` (the latent and the previous action restart from zeros at
        ``t = 0`` and wherever ``is_init[t]`` is set)::

            h_t = prior(s_{t-1}, h_{t-1}, a_{t-1}).belief,   s_t ~ posterior(h_t, e(o_t))

        Args:
            trajectory: ``[*B, T]`` with ``obs_key`` (``o_t``), ``action`` (``a_t``) and
                optionally ``is_init`` (``(*B, T, 1)``).

        Returns:
            a TensorDict ``[*B, T]`` with ``state`` ``(*B, T, S)`` and ``belief``
            ``(*B, T, D)``: ``latent[..., t]`` has seen ``o_0..o_t`` and ``a_0..a_{t-1}``.
        """
        obs_encoder, prior, posterior = self._parts
        if trajectory.batch_dims == 0:
            raise ValueError("RSSMWorldModel.filter needs a time dim: batch size [*B, T], got [].")
        for key in (self.obs_key, "action"):
            if key not in trajectory.keys():
                raise KeyError(f"RSSMWorldModel.filter: the trajectory has no {key!r} (it holds "
                               f"{sorted(map(str, trajectory.keys()))}).")
        embedding = obs_encoder(trajectory.get(self.obs_key))  # (*B, T, E)
        actions, is_init = trajectory.get("action"), trajectory.get("is_init", None)
        lead, T = trajectory.batch_size[:-1], trajectory.batch_size[-1]
        state, belief, action = initial_latent(prior, lead, embedding)
        states, beliefs = [], []
        for t in range(T):
            if is_init is not None:
                keep = ~is_init[..., t, :].reshape(*lead, -1).any(-1, keepdim=True)
                state, belief, action = (x * keep for x in (state, belief, action))
            belief = prior.mode(state, belief, action)[1]
            state = _posterior_state(posterior, belief, embedding[..., t, :])
            action = actions[..., t, :].to(belief.dtype)
            states.append(state)
            beliefs.append(belief)
        return TensorDict({"state": torch.stack(states, -2), "belief": torch.stack(beliefs, -2)},
                          trajectory.batch_size, device=trajectory.device)
