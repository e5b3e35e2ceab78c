"""``DreamerPolicy``: a latent-space actor acting on a real env through RSSM filtering."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

__all__ = ["DreamerPolicy"]


class DreamerPolicy(TensorDictModuleBase):
    """Run a latent actor on a real env, filtering ``(state, belief)`` with the RSSM.

    At each call, with the latent and action kept from the previous call (zeros after
    :meth:`reset`)::

        h_t = prior(s_{t-1}, h_{t-1}, a_{t-1}).belief
        s_t ~ posterior(h_t, encoder(o_t))
        a_t = actor(s_t, h_t) + noise * (high - low) / 2 * N(0, 1), projected on the spec

    The actor runs under the caller's exploration type (its mode for evaluation, a sample
    while collecting). Call :meth:`reset` before each episode. One env at a time (the
    observation has no batch dim).

    Args:
        encoder: observation ``(*obs)`` -> embedding.
        prior: an :class:`~reverie.modules.RSSMPrior`.
        posterior: an :class:`~reverie.modules.RSSMPosterior`.
        actor: a TensorDict module reading ``state``/``belief`` and writing ``action``.
        action_spec: the env's bounded action spec.
        obs_key: the observation key read from the env's tensordict.
        noise: exploration noise, a fraction of half the action range.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.envs import GymEnv
        >>> from reverie.modules import RSSMPosterior, RSSMPrior
        >>> env = GymEnv("Pendulum-v1")
        >>> prior = RSSMPrior(env.action_spec, hidden_dim=8, rnn_hidden_dim=8, state_dim=4)
        >>> post = RSSMPosterior(hidden_dim=8, state_dim=4, rnn_hidden_dim=8, obs_embed_dim=3)
        >>> actor = TensorDictModule(lambda s, b: s[..., :1].tanh() * 2, ["state", "belief"], ["action"])
        >>> policy = DreamerPolicy(torch.nn.Identity(), prior, post, actor, env.action_spec, noise=0.3)
        >>> env.rollout(5, policy)["action"].shape
        torch.Size([5, 1])
    """

    def __init__(self, encoder: nn.Module, prior: nn.Module, posterior: nn.Module,
                 actor: TensorDictModuleBase, action_spec, obs_key: str = "observation",
                 noise: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.prior, self.posterior, self.actor = encoder, prior, posterior, actor
        self.action_spec, self.obs_key, self.noise = action_spec, obs_key, noise
        self.in_keys, self.out_keys = [obs_key], ["action"]
        self.latent: tuple | None = None

    def reset(self) -> None:
        """Forget the latent: the next call starts an episode."""
        self.latent = None

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.obs_key)
        if self.latent is None:
            self.latent = (obs.new_zeros(self.prior.state_dim),
                           obs.new_zeros(self.prior.rnn_hidden_dim),
                           obs.new_zeros(self.prior.action_dim))
        state, belief, action = self.latent
        _, _, _, belief = self.prior(state, belief, action)  # h_t
        _, _, state = self.posterior(belief, self.encoder(obs))  # s_t
        action = self.actor(TensorDict({"state": state, "belief": belief}, []))["action"]
        if self.noise > 0:
            space = self.action_spec.space
            half = (space.high - space.low) / 2
            action = self.action_spec.project(action + self.noise * half * torch.randn_like(action))
        self.latent = (state, belief, action)
        tensordict.set("action", action)
        return tensordict
