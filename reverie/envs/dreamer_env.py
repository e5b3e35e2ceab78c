"""Latent imagination for Dreamer: :class:`DreamerEnv` and the :class:`DreamerDecoder` transform."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase, Transform

from reverie.envs.model_based import ModelBasedEnvBase

__all__ = ["DreamerDecoder", "DreamerEnv"]


class DreamerEnv(ModelBasedEnvBase):
    """Imagination in the RSSM's latent space ``(state, belief)``.

    ``world_model`` maps ``(state, belief, action)`` to the next ``(state, belief)`` and a
    ``reward`` (e.g. a :class:`~tensordict.nn.TensorDictSequential` of the prior, with
    out_keys ``["prior_mean", "prior_std", "state", "belief"]``, and a reward head reading
    ``state`` and ``belief``). A module output ``terminated`` (bool) ends trajectories;
    without one, imagination never terminates (Dreamer v1).

    Observation spec: ``state (*batch, *prior_shape)``, ``belief (*batch, *belief_shape)``;
    reward spec ``(*batch, 1)``. The action spec comes from the real env through
    :meth:`set_specs_from_env` (or the ``action_spec`` argument).

    ``reset(td)`` starts from ``td["state"]`` and ``td["belief"]`` (e.g. posterior states of
    real data); with no tensordict (collectors) or one holding neither, it starts from the
    RSSM's initial latent, zeros. A tensordict holding only one of them is an error.

    This is the spec's (and TorchRL's) interface, for a hand-assembled world model that
    writes root keys. Reverie's own Dreamer recipes imagine with the shared
    :class:`~reverie.envs.WorldModelEnv` over an :class:`~reverie.modules.RSSMWorldModel`
    (latent keys ``state``/``belief``), which also gives them the shared diagnostics.

    Args:
        world_model: the transition + reward module.
        prior_shape: shape of ``state`` (e.g. ``(30,)``).
        belief_shape: shape of ``belief`` (e.g. ``(200,)``).
        obs_decoder: optional module writing a decoded observation from ``state``/``belief``
            (used by :meth:`decode_obs` and :class:`DreamerDecoder`).
        device, batch_size: as in :class:`ModelBasedEnvBase`.
        action_spec: the action spec (default: set later by :meth:`set_specs_from_env`).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.data import Bounded
        >>> from reverie.modules import RSSMPrior
        >>> prior = TensorDictModule(RSSMPrior(action_dim=1, hidden_dim=8, rnn_hidden_dim=6, state_dim=3),
        ...     in_keys=["state", "belief", "action"],
        ...     out_keys=["prior_mean", "prior_std", "state", "belief"])
        >>> reward = TensorDictModule(lambda s, b: s.sum(-1, keepdim=True), ["state", "belief"], ["reward"])
        >>> env = DreamerEnv(TensorDictSequential(prior, reward), (3,), (6,),
        ...                  action_spec=Bounded(-1, 1, (1,)))
        >>> start = TensorDict({"state": torch.zeros(4, 3), "belief": torch.zeros(4, 6)}, [4])
        >>> env.rollout(15, tensordict=start, auto_reset=True)["next", "reward"].shape
        torch.Size([4, 15, 1])
    """

    def __init__(
        self,
        world_model: TensorDictModuleBase,
        prior_shape: Sequence[int],
        belief_shape: Sequence[int],
        obs_decoder: TensorDictModuleBase | None = None,
        device: torch.device | str | None = "cpu",
        batch_size: Sequence[int] | None = None,
        *,
        action_spec=None,
    ) -> None:
        super().__init__(world_model, device=device, batch_size=batch_size)
        self.obs_decoder = obs_decoder
        self.prior_shape, self.belief_shape = torch.Size(prior_shape), torch.Size(belief_shape)
        b = self.batch_size
        self.observation_spec = Composite(
            state=Unbounded((*b, *self.prior_shape), device=self.device),
            belief=Unbounded((*b, *self.belief_shape), device=self.device),
            shape=b, device=self.device,
        )
        self.reward_spec = Unbounded((*b, 1), device=self.device)
        if action_spec is not None:
            self.action_spec = action_spec.to(self.device)

    def set_specs_from_env(self, env: EnvBase) -> None:
        """Take the action spec of ``env`` (the real env); the latent specs stay."""
        spec = env.action_spec
        if env.batch_size:
            spec = spec[(0,) * len(env.batch_size)]
        self.action_spec = spec.clone().expand(*self.batch_size, *spec.shape).to(self.device)

    def _require_action_spec(self) -> None:
        if not list(self.full_action_spec.keys(True, True)):
            raise RuntimeError(
                "DreamerEnv has no action spec, so it cannot draw random actions: pass "
                "action_spec=... at construction, call env.set_specs_from_env(real_env), or "
                "roll out with a policy.")

    def rollout(self, max_steps: int, policy=None, *args, **kwargs):
        """``EnvBase.rollout``; without a policy the random actions need the action spec."""
        if policy is None:
            self._require_action_spec()
        return super().rollout(max_steps, policy, *args, **kwargs)

    def rand_action(self, tensordict: TensorDictBase | None = None):
        self._require_action_spec()
        return super().rand_action(tensordict)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = self.run_world_model(tensordict.copy())
        missing = [k for k in ("state", "belief", "reward") if k not in out.keys()]
        if missing:
            raise KeyError(
                f"DreamerEnv: the world model wrote no {missing}; it wrote "
                f"{sorted(map(str, out.keys(True, True)))}. It must map (state, belief, action) "
                "to (state, belief, reward).")
        lead = tensordict.batch_size
        result = TensorDict({"state": out["state"], "belief": out["belief"],
                             "reward": out["reward"]}, lead, device=self.device)
        terminated = out.get("terminated", None)
        if terminated is None:
            terminated = torch.zeros((*lead, 1), dtype=torch.bool, device=self.device)
        result.set("terminated", terminated.bool())
        result.set("done", terminated.bool().clone())
        return result

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        lead = self.batch_size if tensordict is None else tensordict.batch_size
        state = belief = None
        if tensordict is not None:
            state, belief = tensordict.get("state", None), tensordict.get("belief", None)
        if (state is None) != (belief is None):
            raise KeyError(
                f"DreamerEnv.reset: the tensordict holds {'state' if belief is None else 'belief'}"
                f" but not {'belief' if belief is None else 'state'}; give both (the initial "
                "latent) or neither (zeros).")
        if state is None:
            state = torch.zeros((*lead, *self.prior_shape), device=self.device)
            belief = torch.zeros((*lead, *self.belief_shape), device=self.device)
        zeros = torch.zeros((*lead, 1), dtype=torch.bool, device=self.device)
        return TensorDict({"state": state, "belief": belief, "terminated": zeros,
                           "done": zeros.clone()}, lead, device=self.device)

    def decode_obs(self, tensordict: TensorDictBase, compute_latents: bool = False) -> TensorDictBase:
        """Decode ``state``/``belief`` with ``obs_decoder`` (after one model step if
        ``compute_latents``)."""
        if self.obs_decoder is None:
            raise RuntimeError("DreamerEnv.decode_obs: the env was built without obs_decoder.")
        if compute_latents:
            tensordict = self.run_world_model(tensordict)
        return self.obs_decoder(tensordict)


class DreamerDecoder(Transform):
    """Decode imagined latents into observations at every reset and step.

    Args:
        obs_decoder: a TensorDict module reading ``state``/``belief`` and writing
            ``out_key`` (default: the parent :class:`DreamerEnv`'s ``obs_decoder``).
        out_key: the decoded observation's key (default the decoder's first out key).

    The transform declares ``out_key`` in the observation spec, with the shape of a decoded
    zero latent.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.data import Bounded
        >>> from torchrl.envs import TransformedEnv
        >>> from reverie.modules import ObsDecoder, RSSMPrior
        >>> prior = TensorDictModule(RSSMPrior(action_dim=1, hidden_dim=8, rnn_hidden_dim=6, state_dim=3),
        ...     in_keys=["state", "belief", "action"],
        ...     out_keys=["prior_mean", "prior_std", "state", "belief"])
        >>> reward = TensorDictModule(lambda s, b: s.sum(-1, keepdim=True), ["state", "belief"], ["reward"])
        >>> decoder = TensorDictModule(ObsDecoder(channels=4), ["state", "belief"], ["reco_pixels"])
        >>> env = TransformedEnv(DreamerEnv(TensorDictSequential(prior, reward), (3,), (6,),
        ...     obs_decoder=decoder, action_spec=Bounded(-1, 1, (1,))), DreamerDecoder())
        >>> env.rollout(3)["next", "reco_pixels"].shape
        torch.Size([3, 3, 64, 64])
    """

    def __init__(self, obs_decoder: TensorDictModuleBase | None = None,
                 out_key: NestedKey | None = None) -> None:
        super().__init__(in_keys=["state", "belief"], out_keys=[out_key] if out_key else None)
        self.obs_decoder = obs_decoder

    def _decoder(self) -> TensorDictModuleBase:
        decoder = self.obs_decoder
        if decoder is None:
            base = self.parent.base_env if self.parent is not None else None
            decoder = getattr(base, "obs_decoder", None)
        if decoder is None:
            raise RuntimeError(
                "DreamerDecoder: no obs_decoder; pass one or give the DreamerEnv an obs_decoder.")
        return decoder

    def _key(self) -> NestedKey:
        return self.out_keys[0] if self.out_keys else self._decoder().out_keys[0]

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._decoder()(next_tensordict)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        decoder = self._decoder()
        base = self.parent.base_env if self.parent is not None else None
        prior_shape = getattr(base, "prior_shape", observation_spec["state"].shape[-1:])
        belief_shape = getattr(base, "belief_shape", observation_spec["belief"].shape[-1:])
        param = next(decoder.parameters(), None)
        device = param.device if param is not None else observation_spec.device
        probe = TensorDict({"state": torch.zeros(1, *prior_shape, device=device),
                            "belief": torch.zeros(1, *belief_shape, device=device)}, [1])
        with torch.no_grad():
            shape = decoder(probe).get(self._key()).shape[1:]
        observation_spec[self._key()] = Unbounded(
            (*observation_spec.shape, *shape), device=observation_spec.device)
        return observation_spec
