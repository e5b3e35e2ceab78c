"""``DreamerPolicy``: a latent-space actor acting on real envs through RSSM filtering."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from reverie.modules.rssm_world_model import initial_latent

__all__ = ["DreamerPolicy"]


class DreamerPolicy(TensorDictModuleBase):
    """Run a latent actor on real envs, filtering ``(state, belief)`` with the RSSM.

    At each call, per env, with the latent and action kept from that env's previous call
    (zeros at an episode start)::

        h_t = prior(s_{t-1}, h_{t-1}, a_{t-1}).belief
        s_t ~ posterior(h_t, encoder(o_t))
        a_t = actor(s_t, h_t) + noise * (high - low) / 2 * N(0, 1), projected on the spec

    The actor runs under the caller's exploration type (its mode for evaluation, a sample
    while collecting).

    Shapes: the tensordict has any batch shape ``(*E,)`` (one entry per env, ``()`` for a
    single env): observation ``(*E, *obs)`` -> ``action (*E, A)``. The latent is kept per
    env in :attr:`latent`, a tuple ``(state (*E, S), belief (*E, R), action (*E, A))`` of
    tensors on the modules' device (``None`` until the first call and after :meth:`reset`).

    Episode starts: an env's latent restarts from zeros when the tensordict holds
    ``is_init`` (``(*E, 1)`` or ``(*E,)``, as written by torchrl's ``InitTracker``) set for
    that env; every env's does after :meth:`reset` or when the batch shape changes. Without
    ``is_init`` no env is reset between calls, so call :meth:`reset` before each episode.
    ``is_init`` is read when present but is not one of :attr:`in_keys` (``[obs_key]``), so
    envs without an ``InitTracker`` still work with ``env.rollout`` and collectors.

    The module holds no lambdas or closures: it can be pickled and sent to collector
    workers.

    Args:
        encoder: observation ``(*E, *obs)`` -> embedding ``(*E, embed)``.
        prior: an :class:`~reverie.modules.RSSMPrior` or :class:`~reverie.modules.RSSMPriorV3`
            (any module ``(state, belief, action) -> (..., belief)`` with attributes
            ``state_dim``, ``belief_dim`` and ``action_dim``).
        posterior: an :class:`~reverie.modules.RSSMPosterior` or
            :class:`~reverie.modules.RSSMPosteriorV3` (``(belief, embedding) -> (..., state)``).
        actor: a TensorDict module reading ``state``/``belief`` and writing ``action``.
        action_spec: the env's bounded action spec (shape ``(A,)`` or ``(*E, A)``).
        obs_key: the observation key read from the env's tensordict.
        noise: exploration noise, a fraction of half the action range.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.envs import (Compose, GymEnv, InitTracker, SerialEnv, StepCounter,
        ...                           TransformedEnv)
        >>> from reverie.modules import RSSMPosterior, RSSMPrior
        >>> def make_env():  # episodes of 4 steps, each start marked by is_init
        ...     return TransformedEnv(GymEnv("Pendulum-v1"), Compose(StepCounter(4), InitTracker()))
        >>> env = SerialEnv(2, make_env)  # batch (2,)
        >>> prior = RSSMPrior(env.action_spec, hidden_dim=8, rnn_hidden_dim=8, state_dim=4)
        >>> post = RSSMPosterior(hidden_dim=8, state_dim=4, rnn_hidden_dim=8, obs_embed_dim=3)
        >>> actor = TensorDictModule(torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Tanh()),
        ...                          ["state"], ["action"])
        >>> policy = DreamerPolicy(torch.nn.Identity(), prior, post, actor, env.action_spec,
        ...                        noise=0.3)
        >>> data = env.rollout(6, policy, break_when_any_done=False)
        >>> data["action"].shape, [tuple(x.shape) for x in policy.latent]
        (torch.Size([2, 6, 1]), [(2, 4), (2, 8), (2, 1)])
        >>> data["is_init"][0, :, 0].tolist()  # env 0's latent restarted from zeros at t = 0 and 4
        [True, False, False, False, True, False]
        >>> policy.reset(torch.tensor([True, False]))  # forget env 0 only
        >>> [bool(belief.any()) for belief in policy.latent[1]]
        [False, True]
        >>> env.close()
    """

    def __init__(self, encoder: nn.Module, prior: nn.Module, posterior: nn.Module,
                 actor: TensorDictModuleBase, action_spec, obs_key: str = "observation",
                 noise: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.prior, self.posterior, self.actor = encoder, prior, posterior, actor
        self.action_spec, self.obs_key, self.noise = action_spec, obs_key, noise
        self.in_keys, self.out_keys = [obs_key], ["action"]
        self.latent: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        """Forget the latent: the next call starts an episode.

        Args:
            env_mask: bool ``(*E,)`` or ``(*E, 1)``: forget only the envs where it is set
                (their latent becomes zeros). ``None``: forget every env.
        """
        if env_mask is None or self.latent is None:
            self.latent = None
            return
        self.latent = self._masked_zeros(self.latent, env_mask)

    @staticmethod
    def _masked_zeros(latent: tuple, mask: torch.Tensor) -> tuple:
        """``latent`` with zeros where ``mask`` (``(*E,)`` or ``(*E, 1)``) is set."""
        batch = latent[0].shape[:-1]
        mask = mask.to(latent[0].device).bool().reshape(*batch, -1).any(-1, keepdim=True)  # (*E, 1)
        return tuple(torch.where(mask, torch.zeros_like(x), x) for x in latent)

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.obs_key)
        batch = tensordict.batch_size
        if self.latent is None or self.latent[0].shape[:-1] != batch:
            self.latent = initial_latent(self.prior, batch, obs)
        else:
            is_init = tensordict.get("is_init", None)
            if is_init is not None:
                self.latent = self._masked_zeros(self.latent, is_init)
        state, belief, action = self.latent
        belief = self.prior(state, belief, action)[-1]  # h_t
        state = self.posterior(belief, self.encoder(obs))[-1]  # s_t
        action = self.actor(TensorDict({"state": state, "belief": belief}, batch))["action"]
        if self.noise > 0:
            space = self.action_spec.space
            half = (space.high.to(action.device) - space.low.to(action.device)) / 2
            action = self.action_spec.project(action + self.noise * half * torch.randn_like(action))
        self.latent = (state, belief, action)
        tensordict.set("action", action)
        return tensordict
