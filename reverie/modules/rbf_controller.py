"""``RBFController``: a radial-basis-function policy on Gaussian state beliefs (PILCO)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie.modules.moment_matching import se_basis_moments, sin_squash_moments

__all__ = ["PseudoTargetRBFController", "RBFController"]


@torch.no_grad()
def _normal_(param: Tensor, scale: float, generator: torch.Generator | None) -> None:
    """Fill ``param`` with ``N(0, scale^2)`` draws from ``generator`` (a CPU generator), else
    from torch's global one (``normal_``, as before generators were accepted)."""
    if generator is None:
        param.normal_(0.0, scale)
    else:
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        param.copy_(scale * noise.to(param.device))


class RBFController(nn.Module):
    """``u = max_action * sin(u~)``, ``u~_k(x) = sum_i w_ki exp(-1/2 (x - c_i)^T Lambda_k^{-1} (x - c_i))``.

    The PILCO controller (Deisenroth & Rasmussen, 2011, sec. 3.1 and 3.2): an RBF network
    with ``n_basis`` centres ``c_i``, ARD length-scales ``Lambda_k = diag(l_k^2)`` per
    output, weights ``w``, squashed by a sine into ``[-max_action, max_action]``. For a
    Gaussian state belief ``N(m, S)`` it returns the moments of the action by exact moment
    matching of the RBF network (:func:`~reverie.modules.moment_matching.se_basis_moments`)
    followed by the sine squash (:func:`~reverie.modules.moment_matching.sin_squash_moments`;
    the joint belief of ``(x, u~)`` is treated as Gaussian there, as in PILCO). A point input
    (``S = 0``) gives the exact deterministic action.

    Args:
        input_dim: state dimension ``D``. output_dim: action dimension ``F``.
        max_action: ``a`` (scalar or ``(F,)``); ``None`` disables the squash.
        n_basis: number of centres.
        input_dims: the state coordinates the network reads (default: all ``D``), e.g. the
            sine and cosine of an angle but not the angle itself. The cross-covariance is
            still ``cov[x, u]`` over all ``D`` coordinates (exact for a Gaussian belief:
            ``cov[x, u~] = cov[x, x_I] (S_II + Lambda)^{-1} sum_i w_i q_i nu_i``).

    ``forward(mean (*B, D), cov (*B, D, D))`` returns action mean ``(*B, F)``, action
    covariance ``(*B, F, F)`` and the input-output cross-covariance ``cov[x, u]``
    ``(*B, D, F)``.

    Example:
        >>> ctrl = RBFController(input_dim=4, output_dim=2, max_action=10.0, n_basis=5)
        >>> m, S = torch.zeros(3, 4), 0.1 * torch.eye(4).expand(3, 4, 4)
        >>> [t.shape for t in ctrl(m, S)]
        [torch.Size([3, 2]), torch.Size([3, 2, 2]), torch.Size([3, 4, 2])]
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        max_action: float | Tensor | None,
        n_basis: int = 10,
        *,
        input_dims: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.input_dim, self.output_dim, self.n_basis = int(input_dim), int(output_dim), int(n_basis)
        self.input_dims = list(range(self.input_dim)) if input_dims is None else [int(d) for d in input_dims]
        if not self.input_dims or any(not 0 <= d < self.input_dim for d in self.input_dims) \
                or len(set(self.input_dims)) != len(self.input_dims):
            raise ValueError(
                f"RBFController: input_dims={input_dims} must be distinct indices in [0, {self.input_dim})."
            )
        d = len(self.input_dims)
        self.centers = nn.Parameter(0.5 * torch.randn(n_basis, d))
        self.weights = nn.Parameter(0.1 * torch.randn(output_dim, n_basis))
        self.log_lengthscales = nn.Parameter(torch.zeros(output_dim, d))
        if max_action is None:
            self.max_action = None
        else:
            amp = torch.as_tensor(max_action, dtype=torch.get_default_dtype()).reshape(-1)
            amp = amp.expand(output_dim).clone() if amp.numel() == 1 else amp
            if amp.shape != (output_dim,):
                raise ValueError(
                    f"RBFController: max_action has {amp.numel()} entries; expected 1 or "
                    f"output_dim={output_dim}."
                )
            self.register_buffer("max_action", amp)

    @torch.no_grad()
    def initialize(
        self, states: Tensor, lengthscale: float | Tensor | None = None, weight_scale: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> RBFController:
        """Centres at random ``states (N, D)`` plus ``N(0, 0.1^2)`` noise, weights
        ``N(0, weight_scale^2)``, length-scales ``lengthscale`` (scalar or ``(len(input_dims),)``; default
        ``std(states)``). PILCO starts centres around the start state with unit-scale
        length-scales: the controller must act where the state will go, not only at the
        start. Draws come from ``generator`` (a CPU generator) when given, else from torch's
        global one. Returns ``self``."""
        states = states.reshape(-1, self.input_dim).to(self.centers)[:, self.input_dims]
        if generator is None:
            idx = torch.randint(states.shape[0], (self.n_basis,))
            self.centers.copy_(states[idx] + 0.1 * torch.randn_like(self.centers))
        else:
            idx = torch.randint(states.shape[0], (self.n_basis,), generator=generator)
            noise = torch.randn(self.centers.shape, generator=generator, dtype=self.centers.dtype)
            self.centers.copy_(states[idx.to(states.device)] + 0.1 * noise.to(self.centers.device))
        if lengthscale is None:
            lengthscale = states.std(0).clamp_min(1e-2) if states.shape[0] > 1 else 1.0
        ell = torch.as_tensor(lengthscale, dtype=self.centers.dtype)
        self.log_lengthscales.copy_(ell.log().expand_as(self.log_lengthscales))
        self._initialize_output(weight_scale, generator)
        return self

    def _initialize_output(self, scale: float, generator: torch.Generator | None) -> None:
        """Weights ``N(0, scale^2)``."""
        _normal_(self.weights, scale, generator)

    def forward(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if mean.shape[-1] != self.input_dim or cov.shape[-2:] != (self.input_dim, self.input_dim):
            raise ValueError(
                f"RBFController: expected mean (..., {self.input_dim}) and covariance (..., "
                f"{self.input_dim}, {self.input_dim}); got {tuple(mean.shape)} and "
                f"{tuple(cov.shape)}."
            )
        ref = self.centers
        mean, cov = mean.to(ref), cov.to(ref)
        ones = torch.ones(self.output_dim, dtype=ref.dtype, device=ref.device)
        sel = torch.tensor(self.input_dims, device=ref.device)
        u_mean, u_cov, cio = se_basis_moments(  # cio = cov[x, u~] (*B, D, F)
            mean[..., sel], cov[..., sel[:, None], sel], self.centers, self.log_lengthscales.exp(),
            ones, self.weights, cross=cov[..., sel])
        if self.max_action is None:
            return u_mean, u_cov, cio
        a_mean, a_cov, factor = sin_squash_moments(u_mean, u_cov, self.max_action.to(ref))
        return a_mean, a_cov, cio @ factor


class PseudoTargetRBFController(RBFController):
    """The RBF controller parameterised as PILCO's MATLAB code does (``congp``): by the
    pseudo-targets ``t`` of a GP mean through the centres, not by the weights.

    ``w_k = (K_k + sigma_k^2 I)^{-1} t_k``, ``K_k[i, j] = exp(-1/2 (c_i - c_j)^T Lambda_k^{-1}
    (c_i - c_j))``, so ``u~_k(c_i) ~= t_ki``: each parameter sets the controller's output
    near one centre. The functions are those of :class:`RBFController`; the policy search
    sees another geometry. Centres drawn around a concentrated start state give a nearly
    singular ``K``: one weight then moves the output everywhere at once, while one
    pseudo-target moves it near its centre only. The noise ratio ``sigma_k^2`` (relative to
    a unit signal variance) is learned with the rest, from PILCO's ``0.01^2``.

    ``initialize`` draws pseudo-targets ``N(0, 0.1^2)`` (PILCO's ``0.1 * randn``).

    Example:
        >>> ctrl = PseudoTargetRBFController(input_dim=4, output_dim=1, max_action=10.0, n_basis=5)
        >>> _ = ctrl.initialize(torch.zeros(20, 4), lengthscale=1.0)
        >>> torch.allclose(ctrl.weights, torch.linalg.solve(
        ...     ctrl.gram() + 1e-4 * torch.eye(5), ctrl.targets[..., None])[..., 0], atol=1e-6)
        True
    """

    def __init__(self, *args, noise: float = 0.01, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        del self._parameters["weights"]
        self.targets = nn.Parameter(0.1 * torch.randn(self.output_dim, self.n_basis))
        self.log_noise = nn.Parameter(torch.full((self.output_dim,), float(noise)).log())

    def gram(self) -> Tensor:
        """``K`` per output, ``(F, N, N)``, at the current centres and length-scales."""
        diff = (self.centers[:, None, :] - self.centers[None, :, :])[None] / self.log_lengthscales.exp()[:, None, None]
        return torch.exp(-0.5 * diff.pow(2).sum(-1))

    @property
    def weights(self) -> Tensor:  # (F, N)
        noise = (2 * self.log_noise).exp()[:, None, None] * torch.eye(self.n_basis, dtype=self.centers.dtype,
                                                                       device=self.centers.device)
        return torch.linalg.solve(self.gram() + noise, self.targets[..., None])[..., 0]

    def _initialize_output(self, scale: float, generator: torch.Generator | None) -> None:
        """Pseudo-targets ``N(0, scale^2)``."""
        _normal_(self.targets, scale, generator)
