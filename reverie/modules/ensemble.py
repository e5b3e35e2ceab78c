"""Probabilistic ensemble dynamics (PETS / MBPO): batched linear layers, Gaussian heads, elites.

Three layers of abstraction:

* :class:`EnsembleLinear`: ``M`` independent linear maps applied with one batched matmul.
* :class:`GaussianEnsemble`: ``M`` MLPs with a Gaussian head (mean and soft-bounded
  log-variance), fitted input normalisation, elite members and particle propagation.
* :class:`EnsembleDynamics`: the dynamics *component* of a
  :class:`~reverie.modules.WorldModel`: ``(latent, action) -> next latent`` through a
  normalised delta, sampled per particle (PETS) or taken at its mean.

References:
    Chua, Calandra, McAllister, Levine (2018), "Deep Reinforcement Learning in a Handful of
    Trials using Probabilistic Dynamics Models" (PETS), https://arxiv.org/abs/1805.12114.
    Janner, Fu, Zhang, Levine (2019), "When to Trust Your Model: Model-Based Policy
    Optimization" (MBPO), https://arxiv.org/abs/1906.08253.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EnsembleLinear",
    "GaussianEnsemble",
    "EnsembleDynamics",
    "soft_bound_logvar",
    "PROPAGATIONS",
]

Propagation = Literal["fixed", "random", "mean"]
PROPAGATIONS = ("fixed", "random", "mean")


def soft_bound_logvar(
    raw: torch.Tensor, min_logvar: torch.Tensor, max_logvar: torch.Tensor
) -> torch.Tensor:
    """Softly bound a raw log-variance to ``[min_logvar, max_logvar]`` (PETS, appendix A.1).

    .. math::

        \\ell &= \\ell_{max} - \\operatorname{softplus}(\\ell_{max} - \\ell_{raw}) \\\\
        \\ell &= \\ell_{min} + \\operatorname{softplus}(\\ell - \\ell_{min})

    Both steps are smooth, so gradients reach ``raw`` and the (learnable) bounds. The
    output is ``> min_logvar`` always and ``< max_logvar + log 2`` (it equals ``max`` up
    to ``softplus(min - max)``, negligible when the bounds are a few nats apart).

    Args:
        raw: ``(*S, D)`` unbounded log-variances.
        min_logvar: ``(D,)`` lower bounds.
        max_logvar: ``(D,)`` upper bounds.

    Returns:
        ``(*S, D)`` bounded log-variances.

    Examples:
        >>> raw = torch.tensor([-1e4, 0.0, 1e4])
        >>> soft_bound_logvar(raw, torch.full((3,), -10.0), torch.full((3,), 0.5))
        tensor([-10.0000,  -0.4740,   0.5000])
    """
    logvar = max_logvar - F.softplus(max_logvar - raw)
    return min_logvar + F.softplus(logvar - min_logvar)


def _check_members(members: torch.Tensor | None, num_members: int) -> None:
    if members is not None and (members.ndim != 1 or members.dtype != torch.long):
        raise ValueError(
            f"members must be a 1-D long tensor of member indices in [0, {num_members}), "
            f"got dtype {members.dtype} and shape {tuple(members.shape)}."
        )


class EnsembleLinear(nn.Module):
    """``M`` independent linear layers applied with one batched matmul.

    .. math:: y_m = x_m W_m + b_m, \\qquad m = 1, \\dots, M

    with ``W`` of shape ``(M, in, out)`` and ``b`` of shape ``(M, out)``. Each member is
    initialised like :class:`torch.nn.Linear`: ``W_m, b_m ~ U(-1/sqrt(in), 1/sqrt(in))``.

    Args:
        in_features: input size.
        out_features: output size.
        num_members: number of members ``M``.

    Keyword Args:
        bias: learn the biases ``b``. Default ``True``.
        device, dtype: of the parameters.

    Shapes (forward):
        ``x``: ``(K, B, in)``; member ``members[k]`` (or ``k`` when ``members`` is
        ``None``, then ``K == M``) maps batch ``k``. Returns ``(K, B, out)``.

    Examples:
        >>> layer = EnsembleLinear(3, 2, num_members=4)
        >>> layer(torch.randn(4, 10, 3)).shape
        torch.Size([4, 10, 2])
        >>> layer(torch.randn(2, 10, 3), members=torch.tensor([3, 1])).shape
        torch.Size([2, 10, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_members: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.num_members = num_members
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(num_members, out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every member's weights and biases as :class:`torch.nn.Linear` does."""
        # nn.Linear: kaiming_uniform(a=sqrt(5)) on (out, in) == U(-1/sqrt(in), 1/sqrt(in))
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """Apply member ``members[k]`` to ``x[k]`` (all members in order when ``None``)."""
        _check_members(members, self.num_members)
        k = self.num_members if members is None else members.shape[0]
        if x.ndim != 3 or x.shape[0] != k or x.shape[-1] != self.in_features:
            raise ValueError(
                f"EnsembleLinear expects x of shape (K={k}, B, in={self.in_features}), one "
                f"batch per selected member; got {tuple(x.shape)}."
            )
        weight = self.weight if members is None else self.weight.index_select(0, members)
        if self.bias is None:
            return torch.bmm(x, weight)  # (K, B, out)
        bias = self.bias if members is None else self.bias.index_select(0, members)
        return torch.baddbmm(bias.unsqueeze(1), x, weight)  # (K, B, out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_members={self.num_members}, bias={self.bias is not None}"
        )


class GaussianEnsemble(nn.Module):
    """An ensemble of ``M`` MLPs with Gaussian heads: ``x -> (mean, logvar)`` per member.

    Member ``m`` computes, on the normalised input ``z = (x - mu_x) / sigma_x``,

    .. math::

        h = \\phi(L_{depth}(\\dots \\phi(L_1(z)))), \\quad
        (\\mu_m, \\ell_{raw}) = L_{out}(h), \\quad
        \\log \\sigma^2_m = \\text{soft\\_bound}(\\ell_{raw}, \\ell_{min}, \\ell_{max})

    where ``soft_bound`` is :func:`soft_bound_logvar` (PETS appendix A.1) and the bounds
    ``min_logvar``/``max_logvar`` (shape ``(out_dim,)``) are *learned* parameters (a loss
    term such as ``EnsembleNLLLoss``'s ``loss_logvar_bounds`` keeps them tight). The
    input statistics ``mu_x``, ``sigma_x`` are buffers set by :meth:`fit_input_stats`.

    Training uses :meth:`forward_members` (member ``m`` on its own bootstrap batch ``m``).
    Imagination uses :meth:`forward`, which flattens the batch to ``R`` rows and propagates
    them through the ``K`` *elite* members (buffer ``elite_idx``, all members until
    :meth:`set_elites` is called) according to :attr:`propagation`:

    * ``"fixed"`` (PETS TS-inf): row ``i`` uses member ``elite_idx[i % K]``. A row keeps
      its member from step to step as long as the batch layout is unchanged; with
      particles innermost (``(..., P, D)``, ``P`` a multiple of ``K``) every candidate's
      particles cover all elites equally.
    * ``"random"`` (PETS TS-1): a fresh balanced assignment at every call: the rows are
      permuted, assigned as in ``"fixed"`` and un-permuted.
    * ``"mean"``: every row goes through all elites and gets the moments of the mixture,
      ``mu = mean_k mu_k`` and ``sigma^2 = mean_k sigma^2_k + var_k mu_k`` (law of total
      variance; ``var`` is the population variance over the elites).

    Rows are grouped per member with a reshape (padding ``R`` up to a multiple of ``K``)
    and all members run in one batched matmul chain: no Python loop over members.

    Args:
        in_dim: input size.
        out_dim: output size (of the mean and of the log-variance).
        num_members: ensemble size ``M``.
        hidden: width of the hidden layers.
        depth: number of hidden layers (``depth + 1`` linear layers in all).
        activation: activation class, instantiated once (default :class:`torch.nn.SiLU`).
        num_elites: how many members :meth:`set_elites` keeps (default: all ``M``).
        init_min_logvar, init_max_logvar: initial values of the log-variance bounds.

    Keyword Args:
        propagation: ``"fixed"`` (default), ``"random"`` or ``"mean"`` (see above).
        min_std: input dimensions whose fitted std is below this get std 1 (they are
            only centred, never blown up by a near-zero divisor).
        generator: optional :class:`torch.Generator` for the ``"random"`` assignment
            (the global RNG when ``None``); also settable as ``.generator``.

    Examples:
        >>> ens = GaussianEnsemble(3, 2, num_members=5, hidden=16, depth=2, num_elites=3)
        >>> ens.fit_input_stats(torch.randn(100, 3))
        >>> mean, logvar = ens.forward_members(torch.randn(5, 8, 3))  # training
        >>> mean.shape, logvar.shape
        (torch.Size([5, 8, 2]), torch.Size([5, 8, 2]))
        >>> ens.set_elites(torch.tensor([0.3, 0.1, 0.5, 0.2, 0.4]))
        >>> ens.elite_idx
        tensor([0, 1, 3])
        >>> mean, logvar = ens(torch.randn(4, 6, 3))  # imagination: rows -> elites
        >>> mean.shape
        torch.Size([4, 6, 2])
        >>> bool(((logvar > ens.min_logvar) & (logvar < ens.max_logvar + math.log(2))).all())
        True
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_members: int = 5,
        hidden: int = 200,
        depth: int = 4,
        activation: type[nn.Module] = nn.SiLU,
        num_elites: int | None = None,
        init_min_logvar: float = -10.0,
        init_max_logvar: float = 0.5,
        *,
        propagation: Propagation = "fixed",
        min_std: float = 1e-6,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_members < 1 or depth < 1 or hidden < 1:
            raise ValueError(
                f"GaussianEnsemble needs num_members, depth and hidden >= 1; got "
                f"num_members={num_members}, depth={depth}, hidden={hidden}."
            )
        num_elites = num_members if num_elites is None else int(num_elites)
        if not 1 <= num_elites <= num_members:
            raise ValueError(
                f"num_elites must be in [1, num_members={num_members}], got {num_elites}."
            )
        if init_min_logvar >= init_max_logvar:
            raise ValueError(
                f"init_min_logvar ({init_min_logvar}) must be below init_max_logvar "
                f"({init_max_logvar})."
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_members = num_members
        self.num_elites = num_elites
        self.min_std = min_std
        self.propagation = propagation
        self.generator = generator
        sizes = [in_dim] + [hidden] * depth
        self.layers = nn.ModuleList(
            EnsembleLinear(i, o, num_members) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = EnsembleLinear(hidden, 2 * out_dim, num_members)
        self.activation = activation()
        self.max_logvar = nn.Parameter(torch.full((out_dim,), float(init_max_logvar)))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), float(init_min_logvar)))
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("elite_idx", torch.arange(num_members))

    # ------------------------------------------------------------------ configuration
    @property
    def propagation(self) -> str:
        """How :meth:`forward` assigns rows to elite members: fixed | random | mean."""
        return self._propagation

    @propagation.setter
    def propagation(self, value: str) -> None:
        if value not in PROPAGATIONS:
            raise ValueError(f"Unknown propagation {value!r}; choose one of {list(PROPAGATIONS)}.")
        self._propagation = value

    @torch.no_grad()
    def fit_input_stats(self, x: torch.Tensor) -> None:
        """Set the input normalisation from data ``x`` of shape ``(*N, in_dim)``.

        ``input_mean`` is the mean and ``input_std`` the (population) std over all rows; a
        dimension whose std is below ``min_std`` gets std 1.
        """
        if x.shape[-1] != self.in_dim or x.numel() == 0:
            raise ValueError(
                f"fit_input_stats expects non-empty x of shape (*N, in_dim={self.in_dim}), "
                f"got {tuple(x.shape)}."
            )
        x = x.reshape(-1, self.in_dim).to(self.input_mean)
        std = x.std(0, unbiased=False)
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(torch.where(std < self.min_std, torch.ones_like(std), std))

    @torch.no_grad()
    def set_elites(self, scores: torch.Tensor) -> None:
        """Keep the ``num_elites`` members with the lowest ``scores`` (e.g. holdout MSE).

        Args:
            scores: ``(M,)`` validation scores, lower is better. ``elite_idx`` becomes the
                chosen member indices in increasing order.
        """
        scores = torch.as_tensor(scores)
        if scores.shape != (self.num_members,):
            raise ValueError(
                f"set_elites expects one score per member, shape ({self.num_members},); got "
                f"{tuple(scores.shape)}."
            )
        best = torch.topk(scores.detach().float().cpu(), self.num_elites, largest=False).indices
        self.elite_idx = best.sort().values.to(self.elite_idx.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the elite buffer has num_members entries until set_elites keeps num_elites
        saved = state_dict.get(prefix + "elite_idx")
        if saved is not None and saved.shape != self.elite_idx.shape:
            self.elite_idx = torch.empty_like(saved, device=self.elite_idx.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ computation
    def _members(
        self, x: torch.Tensor, members: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (K, B, in) -> (mean, logvar)`` each ``(K, B, out)``, member ``members[k]`` on ``x[k]``."""
        h = (x - self.input_mean) / self.input_std
        if torch.is_grad_enabled() or type(self.activation) is not nn.SiLU:
            for layer in self.layers:
                h = self.activation(layer(h, members))  # (K, B, hidden)
        else:  # inference (planning): same ops, no per-layer checks, activations in place
            for layer in self.layers:
                weight, bias = layer.weight, layer.bias
                if members is not None:
                    weight, bias = weight.index_select(0, members), bias.index_select(0, members)
                h = torch.nn.functional.silu(torch.baddbmm(bias.unsqueeze(1), h, weight), inplace=True)
        mean, raw = self.head(h, members).chunk(2, dim=-1)  # (K, B, out) each
        return mean, soft_bound_logvar(raw, self.min_logvar, self.max_logvar)

    def forward_members(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run member ``m`` on batch ``x[m]`` (training on per-member bootstrap batches).

        Args:
            x: ``(M, B, in_dim)``.

        Returns:
            ``(mean, logvar)``, each ``(M, B, out_dim)``.
        """
        if x.ndim != 3 or x.shape[0] != self.num_members or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"forward_members expects x of shape (M={self.num_members}, B, "
                f"in_dim={self.in_dim}), one batch per member; got {tuple(x.shape)}."
            )
        return self._members(x, None)

    def _fixed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``x (R, in)``: row ``i`` through elite ``elite_idx[i % K]``."""
        rows = x.shape[0]
        k = self.elite_idx.shape[0]
        groups = -(-rows // k)  # ceil(R / K)
        pad = groups * k - rows
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[-1])])
        x = x.reshape(groups, k, -1).transpose(0, 1)  # (K, G, in): column k -> elite k
        # elite_idx is sorted, so K == M means every member in order: no weight gather
        members = None if k == self.num_members else self.elite_idx
        mean, logvar = self._members(x, members)  # (K, G, out)
        mean = mean.transpose(0, 1).reshape(groups * k, -1)[:rows]  # (R, out)
        logvar = logvar.transpose(0, 1).reshape(groups * k, -1)[:rows]
        return mean, logvar

    def forward(
        self, x: torch.Tensor, propagation: Propagation | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict ``(mean, logvar)`` for a batch of inputs through the elite members.

        Args:
            x: ``(*B, in_dim)``.
            propagation: overrides :attr:`propagation` for this call.

        Returns:
            ``(mean, logvar)``, each ``(*B, out_dim)``.
        """
        propagation = self.propagation if propagation is None else propagation
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"GaussianEnsemble expects inputs of shape (*B, in_dim={self.in_dim}), got "
                f"{tuple(x.shape)}."
            )
        batch = x.shape[:-1]
        flat = x.reshape(-1, self.in_dim)  # (R, in)
        rows = flat.shape[0]
        if propagation == "fixed":
            mean, logvar = self._fixed(flat)
        elif propagation == "random":
            perm = _randperm(rows, self.generator, x.device)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(rows, device=x.device)
            mean, logvar = self._fixed(flat[perm])  # row perm[j] -> elite elite_idx[j % K]
            mean, logvar = mean[inverse], logvar[inverse]
        elif propagation == "mean":
            k = self.elite_idx.shape[0]
            means, logvars = self._members(flat.expand(k, rows, self.in_dim), self.elite_idx)
            mean = means.mean(0)  # (R, out)
            var = logvars.exp().mean(0) + means.var(0, unbiased=False)
            logvar = var.log()
        else:
            raise ValueError(
                f"Unknown propagation {propagation!r}; choose one of {list(PROPAGATIONS)}."
            )
        return mean.reshape(*batch, self.out_dim), logvar.reshape(*batch, self.out_dim)


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    out = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return out.to(like.device)


class EnsembleDynamics(nn.Module):
    """Probabilistic ensemble dynamics, the PETS/MBPO model, as a world-model component.

    Predicts the normalised change of the state (and, with ``learn_reward``, the reward):

    .. math::

        (\\mu, \\log \\sigma^2) = f_\\theta([s, a]), \\qquad
        \\delta = \\mu + \\sigma \\odot \\epsilon, \\ \\epsilon \\sim \\mathcal{N}(0, I)
        \\ (\\text{or } \\delta = \\mu \\text{ when } sample=False), \\\\
        [s' - s, r] = \\delta \\odot \\sigma_y + \\mu_y

    where ``f`` is a :class:`GaussianEnsemble` (``self.model``) and ``mu_y``, ``sigma_y``
    are target statistics fitted by :meth:`fit_output_stats`. The row-to-member assignment
    follows ``propagation`` (see :class:`GaussianEnsemble`); with ``sample=True`` each
    particle also draws its own noise (PETS particle sampling).

    Plug it in as any dynamics module::

        TensorDictModule(dyn, in_keys=["latent", "action"], out_keys=[("next", "latent")])

    (add ``("next", "reward")`` to ``out_keys`` with ``learn_reward=True``). Such a plain
    ``TensorDictModule`` takes :class:`~reverie.envs.WorldModelEnv`'s fast rollout path.

    Args:
        obs_dim: state (latent) size ``D``.
        action_dim: action size ``A``.

    Keyword Args:
        num_members, hidden, depth, num_elites, activation, init_min_logvar,
        init_max_logvar, min_std: passed to :class:`GaussianEnsemble`.
        propagation: ``"fixed"``, ``"random"`` or ``"mean"``.
        sample: draw ``delta`` from the predicted Gaussian (default) or use its mean.
        learn_reward: also predict the reward; :meth:`forward` then returns
            ``(next_latent, reward)`` with reward ``(*B, 1)``.
        generator: optional :class:`torch.Generator` for sampling and ``"random"``
            propagation (global RNG when ``None``); also settable as ``.generator``.

    Examples:
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> dyn = EnsembleDynamics(3, 1, num_members=4, hidden=16, depth=2, sample=False)
        >>> obs, action = torch.randn(64, 3), torch.randn(64, 1)
        >>> dyn.fit_input_stats(obs, action)
        >>> dyn.fit_output_stats(obs, obs + 0.1 * action)
        >>> module = TensorDictModule(dyn, ["latent", "action"], [("next", "latent")])
        >>> td = module(TensorDict({"latent": obs[:8], "action": action[:8]}, [8]))
        >>> td["next", "latent"].shape
        torch.Size([8, 3])
        >>> mean, logvar = dyn.predict_members(obs.expand(4, 64, 3), action.expand(4, 64, 1))
        >>> mean.shape, dyn.normalise_targets(obs, obs + 0.1 * action).shape
        (torch.Size([4, 64, 3]), torch.Size([64, 3]))
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        num_members: int = 5,
        hidden: int = 200,
        depth: int = 4,
        num_elites: int | None = None,
        propagation: Propagation = "fixed",
        sample: bool = True,
        learn_reward: bool = False,
        activation: type[nn.Module] = nn.SiLU,
        init_min_logvar: float = -10.0,
        init_max_logvar: float = 0.5,
        min_std: float = 1e-6,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.learn_reward = bool(learn_reward)
        self.sample = bool(sample)
        self.target_dim = obs_dim + int(self.learn_reward)
        self.min_std = min_std
        self.model = GaussianEnsemble(
            obs_dim + action_dim,
            self.target_dim,
            num_members=num_members,
            hidden=hidden,
            depth=depth,
            activation=activation,
            num_elites=num_elites,
            init_min_logvar=init_min_logvar,
            init_max_logvar=init_max_logvar,
            propagation=propagation,
            min_std=min_std,
            generator=generator,
        )
        self.register_buffer("target_mean", torch.zeros(self.target_dim))
        self.register_buffer("target_std", torch.ones(self.target_dim))

    # ------------------------------------------------------------------ delegation
    @property
    def num_members(self) -> int:
        return self.model.num_members

    @property
    def propagation(self) -> str:
        """Row-to-member assignment of :meth:`forward` (see :class:`GaussianEnsemble`)."""
        return self.model.propagation

    @propagation.setter
    def propagation(self, value: str) -> None:
        self.model.propagation = value

    @property
    def generator(self) -> torch.Generator | None:
        """Generator for sampling and random propagation (``None``: the global RNG)."""
        return self.model.generator

    @generator.setter
    def generator(self, value: torch.Generator | None) -> None:
        self.model.generator = value

    def set_elites(self, scores: torch.Tensor) -> None:
        """Keep the members with the lowest ``scores`` (see :meth:`GaussianEnsemble.set_elites`)."""
        self.model.set_elites(scores)

    # ------------------------------------------------------------------ statistics
    def _check(self, name: str, value: torch.Tensor, dim: int, lead: tuple | None = None):
        if value.shape[-1] != dim or (lead is not None and tuple(value.shape[:-1]) != lead):
            want = f"({', '.join(map(str, lead))}, {dim})" if lead is not None else f"(*B, {dim})"
            raise ValueError(
                f"EnsembleDynamics: {name} must have shape {want}, got {tuple(value.shape)}."
            )

    def fit_input_stats(self, obs: torch.Tensor, action: torch.Tensor) -> None:
        """Fit the input normalisation on observations ``(*N, D)`` and actions ``(*N, A)``."""
        self._check("obs", obs, self.obs_dim)
        self._check("action", action, self.action_dim, tuple(obs.shape[:-1]))
        self.model.fit_input_stats(torch.cat([obs, action], dim=-1))

    def _raw_targets(self, obs, next_obs, reward) -> torch.Tensor:
        self._check("obs", obs, self.obs_dim)
        self._check("next_obs", next_obs, self.obs_dim, tuple(obs.shape[:-1]))
        target = next_obs - obs  # (*N, D)
        if self.learn_reward:
            if reward is None:
                raise ValueError("EnsembleDynamics(learn_reward=True) needs the reward targets.")
            self._check("reward", reward, 1, tuple(obs.shape[:-1]))
            target = torch.cat([target, reward.to(target.dtype)], dim=-1)  # (*N, D + 1)
        return target

    @torch.no_grad()
    def fit_output_stats(
        self, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor | None = None
    ) -> None:
        """Fit the target normalisation on ``next_obs - obs`` (and ``reward``).

        Args:
            obs, next_obs: ``(*N, D)``.
            reward: ``(*N, 1)``, required when ``learn_reward``.
        """
        target = self._raw_targets(obs, next_obs, reward).reshape(-1, self.target_dim)
        std = target.std(0, unbiased=False)
        self.target_mean.copy_(target.mean(0))
        self.target_std.copy_(torch.where(std < self.min_std, torch.ones_like(std), std))

    def normalise_targets(
        self, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The regression targets: ``([next_obs - obs, reward] - mu_y) / sigma_y``.

        Args:
            obs, next_obs: ``(*N, D)``.
            reward: ``(*N, 1)``, required (and used) only when ``learn_reward``.

        Returns:
            ``(*N, D)``, or ``(*N, D + 1)`` with ``learn_reward``.
        """
        return (self._raw_targets(obs, next_obs, reward) - self.target_mean) / self.target_std

    # ------------------------------------------------------------------ prediction
    def predict_members(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member on its own batch, in normalised target space (used for training).

        Args:
            obs: ``(M, B, D)``.
            action: ``(M, B, A)``.

        Returns:
            ``(mean, logvar)``, each ``(M, B, D)`` (``(M, B, D + 1)`` with ``learn_reward``).
        """
        self._check("obs", obs, self.obs_dim)
        self._check("action", action, self.action_dim, tuple(obs.shape[:-1]))
        return self.model.forward_members(torch.cat([obs, action], dim=-1))

    def forward(
        self, latent: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One imagined step ``(latent (*B, D), action (*B, A)) -> next latent (*B, D)``.

        Returns ``(next_latent, reward (*B, 1))`` when ``learn_reward``.
        """
        self._check("latent", latent, self.obs_dim)
        self._check("action", action, self.action_dim, tuple(latent.shape[:-1]))
        mean, logvar = self.model(torch.cat([latent, action.to(latent.dtype)], dim=-1))
        if self.sample:
            mean = mean + (0.5 * logvar).exp() * _randn(mean.shape, self.generator, mean)
        delta = mean * self.target_std + self.target_mean  # (*B, D [+ 1])
        next_latent = latent + delta[..., : self.obs_dim]
        if self.learn_reward:
            return next_latent, delta[..., self.obs_dim :]
        return next_latent
