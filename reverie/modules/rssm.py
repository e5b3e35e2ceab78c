"""Dreamer's recurrent state-space model (RSSM, Hafner et al. 2019, https://arxiv.org/abs/1912.01603).

The latent at time t is a deterministic belief ``h_t`` (GRU state) and a stochastic state
``s_t ~ N(mu, sigma)``::

    prior      h_{t+1} = GRU(h_t, ELU(W [s_t, a_t]))      p(s_{t+1} | h_{t+1}) = N(mu_p, sigma_p)
    posterior                                             q(s_{t+1} | h_{t+1}, e_{t+1}) = N(mu_q, sigma_q)

with ``sigma = softplus(.) + scale_lb`` and ``e`` an observation embedding. In TorchRL's
transition layout the root of ``td[t]`` holds ``(s_t, h_t, a_t)`` and ``("next", ...)`` holds
what step t produces: ``h_{t+1}``, the prior and posterior of ``s_{t+1}`` (from the embedding
of ``("next", obs)``), the reward ``r_{t+1}``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import unravel_key
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from reverie.modules.rssm_scan import rssm_scan, supports_rssm_scan

__all__ = ["RSSMPosterior", "RSSMPrior", "RSSMRollout"]


def _gru(cell: nn.GRUCell, x: Tensor, h: Tensor) -> Tensor:
    """``GRUCell`` over any leading dims: ``x (*B, I)``, ``h (*B, H)`` -> ``(*B, H)``."""
    lead = x.shape[:-1]
    return cell(x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(*lead, -1)


def _gaussian(params: Tensor, scale_lb: float, noise: Tensor | None):
    """``params (*B, 2S)`` -> ``mean, std = softplus(.) + scale_lb, sample`` each ``(*B, S)``."""
    mean, raw = params.chunk(2, -1)
    std = F.softplus(raw) + scale_lb
    if noise is None:
        noise = torch.randn_like(mean)
    return mean, std, mean + std * noise


class RSSMPrior(nn.Module):
    """Transition prior: ``(s_t, h_t, a_t) -> (mu_p, sigma_p, s_{t+1} ~ p, h_{t+1})``.

    Args:
        action_spec: the env's action spec (its last dim is the action size); or give
            ``action_dim``.
        hidden_dim: width of the state-action projection and of the prior MLP.
        rnn_hidden_dim: size of the belief ``h`` (any value, independent of ``hidden_dim``).
        state_dim: size of the stochastic state ``s``.
        scale_lb: lower bound of the standard deviation.
        action_dim: action size when no ``action_spec`` is given.

    Shapes: ``state (*B, S)``, ``belief (*B, R)``, ``action (*B, A)`` -> ``prior_mean,
    prior_std, state (*B, S)``, ``belief (*B, R)``. ``noise`` (``(*B, S)``, default a fresh
    standard normal draw) fixes the sample ``state = mean + std * noise``.

    Examples:
        >>> import torch
        >>> prior = RSSMPrior(action_dim=2, hidden_dim=16, rnn_hidden_dim=24, state_dim=4)
        >>> mean, std, state, belief = prior(torch.zeros(5, 4), torch.zeros(5, 24), torch.ones(5, 2))
        >>> mean.shape, belief.shape, bool((std > 0.1).all())
        (torch.Size([5, 4]), torch.Size([5, 24]), True)
    """

    def __init__(
        self,
        action_spec=None,
        hidden_dim: int = 200,
        rnn_hidden_dim: int = 200,
        state_dim: int = 30,
        scale_lb: float = 0.1,
        action_dim: int | None = None,
    ) -> None:
        super().__init__()
        if action_dim is None:
            if action_spec is None:
                raise ValueError("RSSMPrior: give action_spec or action_dim (the action size).")
            action_dim = int(action_spec.shape[-1])
        self.state_dim, self.rnn_hidden_dim, self.action_dim = state_dim, rnn_hidden_dim, action_dim
        self.belief_dim = rnn_hidden_dim  # the latent interface shared with RSSMPriorV3
        self.scale_lb = scale_lb
        self.action_state_projector = nn.Sequential(
            nn.Linear(state_dim + action_dim, hidden_dim), nn.ELU())
        self.rnn = nn.GRUCell(hidden_dim, rnn_hidden_dim)
        self.rnn_to_prior_projector = nn.Sequential(
            nn.Linear(rnn_hidden_dim, hidden_dim), nn.ELU(), nn.Linear(hidden_dim, 2 * state_dim))

    def forward(self, state: Tensor, belief: Tensor, action: Tensor, noise: Tensor | None = None):
        if action.shape[-1] != self.action_dim:
            raise ValueError(
                f"RSSMPrior: action has {action.shape[-1]} features (shape {tuple(action.shape)}) "
                f"but the prior was built for action_dim={self.action_dim}.")
        x = self.action_state_projector(torch.cat([state, action.to(state.dtype)], -1))  # (*B, H)
        belief = _gru(self.rnn, x, belief)  # (*B, R)
        mean, std, state = _gaussian(self.rnn_to_prior_projector(belief), self.scale_lb, noise)
        return mean, std, state, belief


    def mode(self, state: Tensor, belief: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """The most likely step: ``(mu_p, h_{t+1})``, the prior's mean and the new belief."""
        mean, _, _, belief = self(state, belief, action, noise=torch.zeros_like(state))
        return mean, belief


class RSSMPosterior(nn.Module):
    """Representation model: ``(h_{t+1}, e_{t+1}) -> (mu_q, sigma_q, s_{t+1} ~ q)``.

    Args:
        hidden_dim: width of the hidden layer.
        state_dim: size of the stochastic state.
        scale_lb: lower bound of the standard deviation.
        rnn_hidden_dim, obs_embed_dim: input sizes; when either is ``None`` the first layer
            is lazy (sized at the first call).

    Shapes: ``belief (*B, R)``, ``obs_embedding (*B, E)`` -> ``posterior_mean,
    posterior_std, state (*B, S)``; ``noise`` as in :class:`RSSMPrior`.

    Examples:
        >>> import torch
        >>> post = RSSMPosterior(hidden_dim=16, state_dim=4, rnn_hidden_dim=24, obs_embed_dim=8)
        >>> [t.shape[-1] for t in post(torch.zeros(5, 24), torch.zeros(5, 8))]
        [4, 4, 4]
    """

    def __init__(
        self,
        hidden_dim: int = 200,
        state_dim: int = 30,
        scale_lb: float = 0.1,
        rnn_hidden_dim: int | None = None,
        obs_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.state_dim, self.scale_lb = state_dim, scale_lb
        first = (nn.Linear(rnn_hidden_dim + obs_embed_dim, hidden_dim)
                 if rnn_hidden_dim is not None and obs_embed_dim is not None
                 else nn.LazyLinear(hidden_dim))
        self.obs_rnn_to_post_projector = nn.Sequential(
            first, nn.ELU(), nn.Linear(hidden_dim, 2 * state_dim))

    def forward(self, belief: Tensor, obs_embedding: Tensor, noise: Tensor | None = None):
        x = torch.cat([belief, obs_embedding.to(belief.dtype)], -1)
        return _gaussian(self.obs_rnn_to_post_projector(x), self.scale_lb, noise)

    def mode(self, belief: Tensor, obs_embedding: Tensor) -> Tensor:
        """The most likely state: the posterior mean ``mu_q`` ``(*B, S)``."""
        return self(belief, obs_embedding, noise=torch.zeros(()))[0]


def _inner(module, name: str) -> nn.Module:
    if not isinstance(module, TensorDictModule):
        raise TypeError(
            f"RSSMRollout: {name} must be a TensorDictModule wrapping RSSM{name[5:].title()} "
            f"(got {type(module).__name__}).")
    return module.module


class RSSMRollout(TensorDictModuleBase):
    """Roll the RSSM over the time dim of a ``[*B, T]`` tensordict (posterior filtering).

    For t = 0..T-1, with ``(s_0, h_0)`` read at t = 0 (zeros, the RSSM's initial latent,
    when the tensordict has none)::

        mu_p, sigma_p, _, h_{t+1} = prior(s_t, h_t, a_t)
        mu_q, sigma_q, s_{t+1}    = posterior(h_{t+1}, e_t)
        (s_t, h_t) <- (0, 0)  first, where is_init[t] is set (an episode starts at t)

    Keys come from the two modules: the prior's ``in_keys`` name ``(state, belief,
    action)`` and its ``out_keys`` ``(prior_mean, prior_std, <unused>, belief)``; the
    posterior's ``in_keys`` ``(belief, embedding)`` and ``out_keys`` ``(posterior_mean,
    posterior_std, state)``. Every output is written ``[*B, T, ...]``. When the outputs
    live elsewhere than the inputs (e.g. ``("next", "state")`` vs ``"state"``), the input
    keys are filled with the latent *entering* each step, so ``td["state"][:, t + 1] ==
    td["next", "state"][:, t]``. Optional ``is_init`` (root, ``[*B, T, 1]`` bool) resets
    the latent entering step t to zeros at episode starts.

    The execution modes give the same numbers and gradients (the sampling noise is drawn
    up front, ``[T, *B, S]``, then consumed step by step):

    * default: a Python loop over a tensor step function;
    * ``use_scan=True``: ``torch._higher_order_ops.scan`` (the published one fails in eager
      mode). For :class:`RSSMPrior` and :class:`RSSMPosterior` themselves it runs
      :func:`reverie.modules.rssm_scan.rssm_scan`: a forward scan without autograd that
      keeps the step's activations, and a reverse scan of the step's hand-derived
      vector-Jacobian product; the layers outside the recurrence (the prior head, the
      embedding's and action's halves of the input layers) run on all steps at once.
      0.89-0.95x the plain loop over seven benchmark runs. For other modules (subclasses)
      it falls back to torch's scan autograd, which re-traces and re-partitions the step
      at every call (about 7x slower than the loop);
    * ``compile_step=True``: the loop over a ``torch.compile``-d step function;
    * ``use_scan=True, compile_step=True``: the scan rollout compiled whole with Inductor
      on the first call (Inductor turns each scan into a ``while_loop``): 0.79-0.94x the
      plain loop. The fallback for other modules compiles torch's scan autograd, saving
      only the carries and recomputing the step in the backward (about 1.6x).
      See ``docs/results/benchmarks/dreamer.md``.

    Args:
        rssm_prior: ``TensorDictModule`` wrapping :class:`RSSMPrior`.
        rssm_posterior: ``TensorDictModule`` wrapping :class:`RSSMPosterior`.
        use_scan: roll out with ``scan``.
        compile_step: compile the step function (Inductor); with ``use_scan``, compile the
            scan rollout.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> prior = TensorDictModule(
        ...     RSSMPrior(action_dim=1, hidden_dim=8, rnn_hidden_dim=8, state_dim=3),
        ...     in_keys=["state", "belief", "action"],
        ...     out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")])
        >>> post = TensorDictModule(
        ...     RSSMPosterior(hidden_dim=8, state_dim=3, rnn_hidden_dim=8, obs_embed_dim=5),
        ...     in_keys=[("next", "belief"), ("next", "encoded_latents")],
        ...     out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")])
        >>> td = TensorDict({"action": torch.randn(4, 10, 1),
        ...                  ("next", "encoded_latents"): torch.randn(4, 10, 5)}, [4, 10])
        >>> out = RSSMRollout(prior, post)(td)
        >>> out["next", "state"].shape, out["belief"].shape
        (torch.Size([4, 10, 3]), torch.Size([4, 10, 8]))
        >>> bool((out["state"][:, 1:] == out["next", "state"][:, :-1]).all())
        True
    """

    def __init__(
        self,
        rssm_prior: TensorDictModule,
        rssm_posterior: TensorDictModule,
        use_scan: bool = False,
        compile_step: bool = False,
    ) -> None:
        super().__init__()
        self.rssm_prior, self.rssm_posterior = rssm_prior, rssm_posterior
        prior = _inner(rssm_prior, "rssm_prior")
        _inner(rssm_posterior, "rssm_posterior")
        if len(rssm_prior.in_keys) != 3 or len(rssm_prior.out_keys) != 4:
            raise ValueError(
                "RSSMRollout: rssm_prior needs in_keys (state, belief, action) and out_keys "
                f"(prior_mean, prior_std, state, belief); got {rssm_prior.in_keys} -> "
                f"{rssm_prior.out_keys}.")
        if len(rssm_posterior.in_keys) != 2 or len(rssm_posterior.out_keys) != 3:
            raise ValueError(
                "RSSMRollout: rssm_posterior needs in_keys (belief, obs_embedding) and "
                "out_keys (posterior_mean, posterior_std, state); got "
                f"{rssm_posterior.in_keys} -> {rssm_posterior.out_keys}.")
        self.state_key, self.belief_key, self.action_key = map(unravel_key, rssm_prior.in_keys)
        self.embed_key = unravel_key(rssm_posterior.in_keys[1])
        pm, ps, _, self.next_belief_key = map(unravel_key, rssm_prior.out_keys)
        qm, qs, self.next_state_key = map(unravel_key, rssm_posterior.out_keys)
        self.stat_keys = [pm, ps, qm, qs]
        self.in_keys = [self.state_key, self.belief_key, self.action_key, self.embed_key]
        self.out_keys = [*self.stat_keys, self.next_state_key, self.next_belief_key]
        self.state_dim, self.belief_dim = prior.state_dim, prior.rnn_hidden_dim
        self.use_scan, self.compile_step = use_scan, compile_step
        self._compiled = self._compiled_scan = None

    # ------------------------------------------------------------------ tensor step
    def step(self, state, belief, action, embedding, noise, reset):
        """One filtering step on tensors (all ``(*B, .)``; ``reset (*B, 1)`` bool or ``None``).

        Returns ``(prior_mean, prior_std, posterior_mean, posterior_std, state, belief,
        entering state, entering belief)``; the entering latent is the given one, zeroed
        where ``reset``.
        """
        prior, post = self.rssm_prior.module, self.rssm_posterior.module
        if reset is not None:
            state, belief = state.masked_fill(reset, 0), belief.masked_fill(reset, 0)
        p_mean, p_std, _, belief1 = prior(state, belief, action, noise=torch.zeros_like(noise))
        q_mean, q_std, state1 = post(belief1, embedding, noise=noise)
        return p_mean, p_std, q_mean, q_std, state1, belief1, state, belief

    def _step_fn(self):
        if not self.compile_step:
            return self.step
        if self._compiled is None:
            self._compiled = torch.compile(self.step, dynamic=False)
        return self._compiled

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.ndim < 1:
            raise ValueError("RSSMRollout: the tensordict needs a time dim, batch [*B, T].")
        for key in (self.action_key, self.embed_key):
            if key not in tensordict.keys(True, True):
                raise KeyError(
                    f"RSSMRollout: missing input {key!r} ([*B, T, .]) in the tensordict with "
                    f"keys {sorted(map(str, tensordict.keys(True, True)))}.")
        *lead, T = tensordict.batch_size
        action = tensordict.get(self.action_key)
        embedding = tensordict.get(self.embed_key)
        self._check_inputs(action, embedding, tensordict.get("is_init", None), (*lead, T))
        ref = embedding if embedding.is_floating_point() else action
        state0 = self._initial(tensordict, self.state_key, self.state_dim, lead, ref)
        belief0 = self._initial(tensordict, self.belief_key, self.belief_dim, lead, ref)
        is_init = tensordict.get("is_init", None)
        # no is_init: no resets (None: the step skips them)
        reset = None if is_init is None else is_init.reshape(*lead, T, -1)[..., :1].bool()
        t_dim = len(lead)
        # time first: (T, *B, .)
        xs = [None if x is None else x.movedim(t_dim, 0) for x in (action, embedding, reset)]
        noise = torch.randn((T, *lead, self.state_dim), dtype=ref.dtype, device=ref.device)
        if self.use_scan:
            outs, entering = self._scan(state0, belief0, xs, noise)
        else:
            outs, entering = self._loop(state0, belief0, xs, noise)
        for key, value in zip([*self.stat_keys, self.next_state_key, self.next_belief_key], outs,
                              strict=True):
            tensordict.set(key, value.movedim(0, t_dim))
        if self.state_key != self.next_state_key:
            tensordict.set(self.state_key, entering[0].movedim(0, t_dim))
        if self.belief_key != self.next_belief_key:
            tensordict.set(self.belief_key, entering[1].movedim(0, t_dim))
        return tensordict

    def _check_inputs(self, action: Tensor, embedding: Tensor, is_init, batch: tuple) -> None:
        """Shapes of the action, the embedding and ``is_init`` against ``[*B, T]`` and the
        sizes the prior and posterior were built for, before any step runs."""
        prior, posterior = self.rssm_prior.module, self.rssm_posterior.module
        first = posterior.obs_rnn_to_post_projector[0]
        embed_dim = (first.in_features - self.belief_dim
                     if isinstance(first, torch.nn.Linear)
                     and not isinstance(first, torch.nn.modules.lazy.LazyModuleMixin) else None)
        for key, value, width in ((self.action_key, action, prior.action_dim),
                                  (self.embed_key, embedding, embed_dim)):
            if value.ndim < 1 or tuple(value.shape[:-1]) != batch or (
                    width is not None and value.shape[-1] != width):
                raise ValueError(
                    f"RSSMRollout: {key!r} has shape {tuple(value.shape)}; expected "
                    f"[*B, T, {width if width is not None else 'E'}] = "
                    f"{(*batch, width if width is not None else 'E')} (batch [*B, T] = {batch}"
                    f"{'' if width is None else f', width {width} as the module was built for'}).")
        if is_init is not None and tuple(is_init.shape) not in (batch, (*batch, 1)):
            raise ValueError(
                f"RSSMRollout: 'is_init' has shape {tuple(is_init.shape)}; expected {batch} or "
                f"{(*batch, 1)} (one flag per step, as torchrl's InitTracker writes it).")

    def _initial(self, td, key, dim, lead, ref) -> Tensor:
        value = td.get(key, None)
        if value is None:
            return torch.zeros((*lead, dim), dtype=ref.dtype, device=ref.device)
        if value.shape[-1] != dim:
            raise ValueError(
                f"RSSMRollout: {key!r} has shape {tuple(value.shape)}; expected [*B, T, {dim}].")
        return value.select(len(lead), 0).contiguous()  # scan wants its carry's layout

    def _loop(self, state, belief, xs, noise):
        step = self._step_fn()
        outs = [[] for _ in range(8)]  # the step's outputs, then the entering latent
        # unbind once: indexing x[t] per step would make backward write T full-size zero
        # gradients (one per step) into each input
        actions, embeddings, resets = xs
        resets = [None] * len(noise) if resets is None else resets.unbind(0)
        for action, embedding, reset, eps in zip(actions.unbind(0), embeddings.unbind(0), resets,
                                                  noise.unbind(0), strict=True):
            res = step(state, belief, action, embedding, eps, reset)
            for store, value in zip(outs, res, strict=True):
                store.append(value)
            state, belief = res[4], res[5]
        stacked = [torch.stack(o) for o in outs]
        return stacked[:6], stacked[6:]

    def _scan(self, state, belief, xs, noise):
        fast = supports_rssm_scan(self.rssm_prior.module, self.rssm_posterior.module)
        if not self.compile_step:
            return (self._scan_fast if fast else self._scan_eager)(state, belief, xs, noise)
        import torch._dynamo.config
        import torch._functorch.config

        if self._compiled_scan is None:
            self._compiled_scan = torch.compile(self._scan_fast if fast else self._scan_eager,
                                                dynamic=False)
        # Inductor lowers scan to a while_loop whose body reads the loop index with .item()
        # (torch 2.13); without captured scalar outputs that lowering fails with
        # DataDependentOutputException. Under torch's own scan autograd (the fallback), an
        # activation budget of 0 makes it save only the carries and recompute the step in
        # the backward; otherwise it saves a per-step copy of every (transposed) weight.
        budget = {} if fast else {"activation_memory_budget": 0.0}
        with torch._dynamo.config.patch(capture_scalar_outputs=True), \
                torch._functorch.config.patch(**budget):
            return self._compiled_scan(state, belief, xs, noise)

    def _scan_fast(self, state, belief, xs, noise):
        outs = rssm_scan(self.rssm_prior.module, self.rssm_posterior.module, state, belief, *xs,
                         noise)
        return list(outs[:6]), list(outs[6:])

    def _scan_eager(self, state, belief, xs, noise):
        from torch._higher_order_ops.scan import scan

        step = self.step

        def combine(carry, x):
            state, belief = carry
            action, embedding, eps, *reset = x
            res = step(state, belief, action, embedding, eps, reset[0] if reset else None)
            # scan's outputs may not alias each other (chunk views) or the carry
            return (res[4].clone(), res[5].clone()), tuple(y.clone() for y in res)

        action, embedding, reset = xs
        _, ys = scan(combine, (state, belief),
                     (action, embedding, noise, *([] if reset is None else [reset])))
        return list(ys[:6]), list(ys[6:])

