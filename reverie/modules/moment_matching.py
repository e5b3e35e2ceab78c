"""Exact moment matching of Gaussian beliefs (PILCO, Deisenroth & Rasmussen 2011).

Pure functions, batched over any leading dims ``*B``. Notation follows the paper:
an input belief ``x ~ N(m, S)`` of dimension ``d``; ``E`` outputs; ``n`` basis centres
(GP training inputs or RBF centres) ``c_i``; per-output squared-exponential (SE) kernels
``k_a(x, c) = alpha_a^2 exp(-1/2 (x - c)^T Lambda_a^{-1} (x - c))`` with
``Lambda_a = diag(l_a^2)``.

* :func:`se_basis_moments` - mean, covariance and input-output covariance of
  ``f_a(x) = sum_i beta_ai k_a(x, c_i)`` (eqs. 14-22), optionally with the GP's expected
  predictive variance (eq. 23). Memory ``O(B * E * n^2)`` or less: the ``E x E`` second
  moments are built in blocks of output pairs (recomputed in the backward pass when there
  is more than one block, so autograd keeps no ``O(E^2 n^2)`` activations).
* :func:`gp_point_posterior` - the plain GP posterior at a point (eqs. 7-8).
* :func:`sin_squash_moments` - moments of ``a * sin(u)`` for Gaussian ``u``.
* :func:`trig_moments` - moments of ``[sin, cos]`` of Gaussian angles (PILCO's
  trigonometric augmentation).
* :func:`expected_saturating_cost` - ``E[1 - exp(-1/2 (x-t)^T W (x-t))]`` (eqs. 24-25).
* :func:`joint_input_belief` / :func:`next_state_belief` - eqs. 10-12 glue.
* :func:`psd_cholesky` - Cholesky factorisation with jitter retry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "expected_saturating_cost",
    "gp_point_posterior",
    "joint_input_belief",
    "next_state_belief",
    "psd_cholesky",
    "se_basis_moments",
    "sin_squash_moments",
    "trig_moments",
]


def psd_cholesky(matrix: Tensor, *, max_tries: int = 6) -> Tensor:
    """Cholesky factor of a symmetric PSD ``matrix (*B, k, k)``, adding jitter if needed.

    Tries ``L L^T = A`` first; where it fails, retries with ``A + eps I`` for
    ``eps = 1e-9, 1e-8, ...`` times the mean diagonal (at most ``max_tries`` times), then
    raises ``torch.linalg.LinAlgError`` naming the largest jitter tried.
    One host sync (the success check) per call.

    Example:
        >>> A = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # singular
        >>> L = psd_cholesky(A)
        >>> torch.allclose(L @ L.T, A, atol=1e-6)
        True
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    if not bool((info > 0).any()):
        return chol
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    scale = matrix.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(1e-12)[..., None, None]
    jitter = 1e-9
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(matrix + jitter * scale * eye)
        if not bool((info > 0).any()):
            return chol
        jitter *= 10.0
    raise torch.linalg.LinAlgError(
        f"psd_cholesky: matrix of shape {tuple(matrix.shape)} is not positive definite even "
        f"with jitter {jitter / 10:g} x its mean diagonal; check for NaNs or a negative "
        "variance in the inputs."
    )


def gp_point_posterior(
    x: Tensor,
    centers: Tensor,
    lengthscales: Tensor,
    signal_var: Tensor,
    beta: Tensor,
    inv_gram: Tensor | None = None,
    noise_var: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """GP posterior at points (PILCO eqs. 7-8), one independent GP per output ``a``.

    ``m_a(x) = k_a(x, C) beta_a`` with ``beta_a = (K_a + s_a^2 I)^{-1} y_a`` and
    ``v_a(x) = alpha_a^2 - k_a(x, C) (K_a + s_a^2 I)^{-1} k_a(C, x) + s_a^2``.

    Args:
        x: ``(*B, d)`` points.
        centers: ``(n, d)`` training inputs ``C``.
        lengthscales: ``(E, d)`` ARD length-scales ``l_a`` (``Lambda_a = diag(l_a^2)``).
        signal_var: ``(E,)`` ``alpha_a^2``.
        beta: ``(E, n)``.
        inv_gram: ``(E, n, n)`` ``(K_a + s_a^2 I)^{-1}``; without it the variance is ``0``
            (a deterministic basis-function network, e.g. an RBF controller).
        noise_var: ``(E,)`` ``s_a^2`` added to the variance (``None``: not added).

    Returns:
        mean ``(*B, E)`` and variance ``(*B, E)``.
    """
    scaled_x = x[..., None, :] / lengthscales  # (*B, E, d)
    scaled_c = centers / lengthscales[:, None, :]  # (E, n, d)
    sq = (scaled_x[..., :, None, :] - scaled_c).square().sum(-1)  # (*B, E, n)
    k = signal_var[:, None] * torch.exp(-0.5 * sq)  # (*B, E, n)
    mean = (k * beta).sum(-1)  # (*B, E)
    if inv_gram is None:
        return mean, torch.zeros_like(mean)
    quad = torch.einsum("...ai,aij,...aj->...a", k, inv_gram, k)  # (*B, E)
    var = signal_var - quad
    if noise_var is not None:
        var = var + noise_var
    return mean, var


def _pair_second_moments(
    a_idx: Tensor,
    b_idx: Tensor,
    zeta: Tensor,
    half_sq: Tensor,
    cov: Tensor,
    inv_lengthscale_sq: Tensor,
    beta: Tensor,
    signal_var: Tensor,
) -> tuple[Tensor, Tensor]:
    """``beta_a^T Q_ab beta_b`` for the output pairs ``(a_idx[p], b_idx[p])`` (eqs. 21-22).

    Shapes: ``zeta (B, E, n, d) = Lambda^{-1} nu``, ``half_sq (B, E, n) =
    1/2 nu^T Lambda^{-1} nu``, ``cov (B, d, d)``, ``inv_lengthscale_sq (E, d)``; ``a_idx``,
    ``b_idx`` ``(P,)``. Returns ``(B, P)`` and the unscaled ``Q_ab / c_ab`` ``(B, P, n, n)``
    factor's scale ``c_ab = alpha_a^2 alpha_b^2 |R_ab|^{-1/2}`` ``(B, P)`` together with
    ``Q`` itself only through :func:`_pair_trace`.
    """
    d = cov.shape[-1]
    p_diag = inv_lengthscale_sq[a_idx] + inv_lengthscale_sq[b_idx]  # (P, d) Lambda_a^-1 + Lambda_b^-1
    root = p_diag.sqrt()  # (P, d)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    # R~ = P^{1/2} S P^{1/2} + I (symmetric; |R~| = |S P + I| = |R_ab|)
    r_tilde = root[None, :, :, None] * cov[:, None] * root[None, :, None, :] + eye  # (B, P, d, d)
    chol = psd_cholesky(r_tilde)
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (B, P)
    # T = R_ab^{-1} S = P^{-1/2} (I - R~^{-1}) P^{-1/2}
    t_mat = (eye - torch.cholesky_inverse(chol)) / (root[None, :, :, None] * root[None, :, None, :])
    za, zb = zeta[:, a_idx], zeta[:, b_idx]  # (B, P, n, d)
    za_t = za @ t_mat  # (B, P, n, d)
    # exponent_ij = -1/2 nu_i^T A nu_i - 1/2 nu_j^T B nu_j + 1/2 z_ij^T T z_ij, z = za_i + zb_j
    log_a = -half_sq[:, a_idx] + 0.5 * (za_t * za).sum(-1)  # (B, P, n)
    log_b = -half_sq[:, b_idx] + 0.5 * ((zb @ t_mat) * zb).sum(-1)  # (B, P, n)
    # exponent = log_a_i + log_b_j + za_t_i . zb_j as one matmul of augmented rows
    one = torch.ones_like(log_a[..., None])
    left = torch.cat([za_t, log_a[..., None], one], -1)  # (B, P, n, d + 2)
    right = torch.cat([zb, one, log_b[..., None]], -1)  # (B, P, n, d + 2)
    q = torch.exp(left @ right.transpose(-1, -2))  # (B, P, n, n)
    scale = signal_var[a_idx] * signal_var[b_idx] * torch.exp(-0.5 * logdet)  # (B, P)
    bqb = (beta[a_idx][:, None, :] @ q @ beta[b_idx][:, :, None])[..., 0, 0]  # (B, P)
    second = scale * bqb
    return second, scale, q


def _pair_block(a_idx, b_idx, diag_pos, zeta, half_sq, cov, inv_lsq, beta, signal_var, inv_gram):
    """Second moments of a block of pairs ``(B, P)`` and ``tr(K_a^{-1} Q_aa)`` ``(B, P')`` of
    its diagonal pairs (positions ``diag_pos``; empty without ``inv_gram``)."""
    second, scale, q = _pair_second_moments(a_idx, b_idx, zeta, half_sq, cov, inv_lsq, beta, signal_var)
    if inv_gram is None or diag_pos.numel() == 0:
        return second, second.new_zeros(second.shape[0], 0)
    inv = inv_gram.index_select(0, a_idx[diag_pos])  # (P', n, n)
    trace = scale[:, diag_pos] * (inv * q[:, diag_pos]).sum((-1, -2))  # (B, P')
    return second, trace


def se_basis_moments(
    mean: Tensor,
    cov: Tensor,
    centers: Tensor,
    lengthscales: Tensor,
    signal_var: Tensor,
    beta: Tensor,
    inv_gram: Tensor | None = None,
    *,
    cross: Tensor | None = None,
    recompute: bool | None = None,
    max_elements: int = 2**21,
) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of ``f_a(x) = sum_i beta_ai k_a(x, c_i)`` for ``x ~ N(m, S)`` (PILCO eqs. 14-23).

    With ``nu_i = c_i - m``:

    * mean (eqs. 14-16): ``mu_a = beta_a^T q_a``,
      ``q_ai = alpha_a^2 |S Lambda_a^{-1} + I|^{-1/2} exp(-1/2 nu_i^T (S + Lambda_a)^{-1} nu_i)``;
    * input-output covariance: ``cov[x, f_a] = S (S + Lambda_a)^{-1} sum_i beta_ai q_ai nu_i``,
      and for any ``z`` jointly Gaussian with ``x`` (``cross = cov[z, x]``):
      ``cov[z, f_a] = cov[z, x] (S + Lambda_a)^{-1} sum_i beta_ai q_ai nu_i`` (no ``S^{-1}``);
    * covariance (eqs. 17-22): ``cov[f_a, f_b] = beta_a^T Q_ab beta_b - mu_a mu_b`` with
      ``Q_ab,ij = alpha_a^2 alpha_b^2 |R_ab|^{-1/2} exp(-1/2 nu_i^T Lambda_a^{-1} nu_i
      - 1/2 nu_j^T Lambda_b^{-1} nu_j + 1/2 z_ij^T R_ab^{-1} S z_ij)``,
      ``R_ab = S (Lambda_a^{-1} + Lambda_b^{-1}) + I``,
      ``z_ij = Lambda_a^{-1} nu_i + Lambda_b^{-1} nu_j``;
    * with ``inv_gram`` (a GP): the expected posterior variance (eq. 23) is added to the
      diagonal, ``alpha_a^2 - tr((K_a + s_a^2 I)^{-1} Q_aa)`` (noise is the caller's).

    ``S = 0`` gives the plain posterior mean and variance at ``m``.

    Args:
        mean: ``(*B, d)`` belief mean ``m``.
        cov: ``(*B, d, d)`` belief covariance ``S``.
        centers: ``(n, d)``; lengthscales: ``(E, d)``; signal_var: ``(E,)``; beta: ``(E, n)``.
        inv_gram: ``(E, n, n)`` or ``None``.
        cross: ``cov[z, x]`` ``(*B, r, d)``: return ``cov[z, f]`` ``(*B, r, E)`` as the third
            output instead of ``cov[x, f]`` (``cross = S`` gives the default).
        recompute: rebuild each block of second moments in the backward pass instead of
            storing it. Default: when gradients are recorded and the pairs need more than one
            block.
        max_elements: the output pairs ``(a <= b)`` are processed in blocks of at most
            ``max_elements // (B n^2)`` pairs (at least one): peak memory
            ``O(max(max_elements, B n^2))``, within ``O(B E n^2)``; with ``recompute`` the
            backward pass keeps no ``O(E^2 n^2)`` activations either.

    Returns:
        ``mu (*B, E)``, ``sigma (*B, E, E)``, ``input_output_cov (*B, d, E)`` (``(*B, r, E)``
        with ``cross``).

    Example:
        >>> centers = torch.zeros(1, 1, dtype=torch.float64)
        >>> ones = torch.ones(1, 1, dtype=torch.float64)
        >>> mu, sigma, cio = se_basis_moments(
        ...     torch.zeros(1, dtype=torch.float64), 3 * ones, centers, ones,
        ...     torch.ones(1, dtype=torch.float64), ones)
        >>> round(mu.item(), 6)  # E[exp(-x^2/2)], x ~ N(0, 3): 1/sqrt(1 + 3)
        0.5
    """
    batch = mean.shape[:-1]
    d = mean.shape[-1]
    n_out = lengthscales.shape[0]
    m = mean.reshape(-1, d)  # (B, d)
    s = cov.reshape(-1, d, d)  # (B, d, d)
    s = 0.5 * (s + s.transpose(-1, -2))
    lam = lengthscales.square()  # (E, d) diagonal of Lambda_a
    inv_lam = lam.reciprocal()
    nu = centers[None] - m[:, None, :]  # (B, n, d)

    # ---- mean and input-output covariance (eqs. 14-16)
    s_plus_lam = s[:, None] + torch.diag_embed(lam)  # (B, E, d, d)
    chol = psd_cholesky(s_plus_lam)
    nu_e = nu[:, None].expand(-1, n_out, -1, -1)  # (B, E, n, d)
    solved = torch.cholesky_solve(nu_e.transpose(-1, -2), chol)  # (B, E, d, n)
    maha = (nu_e.transpose(-1, -2) * solved).sum(-2)  # (B, E, n)
    # |S Lambda^{-1} + I| = |S + Lambda| / |Lambda|
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1) - lam.log().sum(-1)  # (B, E)
    q = signal_var[:, None] * torch.exp(-0.5 * (maha + logdet[..., None]))  # (B, E, n)
    bq = beta * q  # (B, E, n)
    mu = bq.sum(-1)  # (B, E)
    weighted = (solved * bq[:, :, None, :]).sum(-1)  # (B, E, d) = (S+Lambda)^{-1} sum bq nu
    rows = s if cross is None else cross.reshape(m.shape[0], -1, d)  # (B, r, d)
    cio = rows @ weighted.transpose(-1, -2)  # (B, r, E) = cov[z, f]

    # ---- second moments (eqs. 17-23), one row a at a time, b >= a
    zeta = nu[:, None] * inv_lam[None, :, None, :]  # (B, E, n, d)
    half_sq = 0.5 * (nu[:, None] * zeta).sum(-1)  # (B, E, n)
    pairs = torch.triu_indices(n_out, n_out)  # (2, E(E+1)/2) on the host: a <= b, sorted by a
    n_pairs = pairs.shape[1]
    per_pair = m.shape[0] * centers.shape[0] ** 2
    chunk = max(1, min(n_pairs, max_elements // max(per_pair, 1)))
    if recompute is None:
        recompute = torch.is_grad_enabled() and chunk < n_pairs
    seconds, traces = [], []
    for lo in range(0, n_pairs, chunk):
        a_idx, b_idx = pairs[0, lo:lo + chunk], pairs[1, lo:lo + chunk]
        diag_pos = (a_idx == b_idx).nonzero().flatten()
        args = (a_idx.to(m.device), b_idx.to(m.device), diag_pos.to(m.device), zeta, half_sq, s,
                inv_lam, beta, signal_var, inv_gram)
        if recompute:
            second, trace = checkpoint(_pair_block, *args, use_reentrant=False)
        else:
            second, trace = _pair_block(*args)
        seconds.append(second)
        traces.append(trace)
    second = torch.cat(seconds, -1)  # (B, n_pairs)
    pairs = pairs.to(m.device)
    flat = pairs[0] * n_out + pairs[1]
    full = m.new_zeros(m.shape[0], n_out * n_out).index_copy(1, flat, second).view(-1, n_out, n_out)
    full = full + full.triu(1).transpose(-1, -2)  # (B, E, E)
    sigma = full - mu[:, :, None] * mu[:, None, :]
    if inv_gram is not None:  # eq. 23: E_x[var_f] = alpha^2 - tr(K^{-1} Q_aa)
        sigma = sigma + torch.diag_embed(signal_var - torch.cat(traces, -1))
    sigma = 0.5 * (sigma + sigma.transpose(-1, -2))
    return (
        mu.reshape(*batch, n_out),
        sigma.reshape(*batch, n_out, n_out),
        cio.reshape(*batch, cio.shape[-2], n_out),
    )


def sin_squash_moments(
    mean: Tensor, cov: Tensor, max_action: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of ``y = a * sin(u)`` (element-wise) for ``u ~ N(m, S)``.

    ``E[y_k] = a_k exp(-S_kk / 2) sin m_k``;
    ``E[y_k y_l] = a_k a_l / 2 [exp(-(S_kk + S_ll - 2 S_kl) / 2) cos(m_k - m_l)
    - exp(-(S_kk + S_ll + 2 S_kl) / 2) cos(m_k + m_l)]``;
    ``cov[u, y] = S diag(a exp(-diag(S) / 2) cos m)`` (so for any ``z`` jointly Gaussian with
    ``u``, ``cov[z, y] = cov[z, u] diag(a exp(-diag(S)/2) cos m)``).

    Args:
        mean: ``(*B, K)``; cov: ``(*B, K, K)``; max_action: scalar or ``(K,)`` ``a``.

    Returns:
        mean ``(*B, K)``, covariance ``(*B, K, K)`` and the factor
        ``diag(a exp(-diag(S)/2) cos m)`` as a ``(*B, K, K)`` matrix ``J`` with
        ``cov[z, y] = cov[z, u] J``.

    Example:
        >>> m, S = torch.zeros(1), torch.ones(1, 1)
        >>> y_mean, y_cov, _ = sin_squash_moments(m, S, 2.0)
        >>> round(y_cov.item(), 4)  # 4 * Var[sin u] = 4 * (1 - e^-2) / 2
        1.7293
    """
    amp = torch.as_tensor(max_action, dtype=mean.dtype, device=mean.device)
    amp = amp.expand(mean.shape[-1])
    var = cov.diagonal(dim1=-2, dim2=-1)  # (*B, K)
    damp = torch.exp(-0.5 * var)
    y_mean = amp * damp * torch.sin(mean)
    vsum = var[..., :, None] + var[..., None, :]
    e_minus = torch.exp(-0.5 * (vsum - 2 * cov)) * torch.cos(mean[..., :, None] - mean[..., None, :])
    e_plus = torch.exp(-0.5 * (vsum + 2 * cov)) * torch.cos(mean[..., :, None] + mean[..., None, :])
    second = 0.5 * amp[:, None] * amp[None, :] * (e_minus - e_plus)
    y_cov = second - y_mean[..., :, None] * y_mean[..., None, :]
    y_cov = 0.5 * (y_cov + y_cov.transpose(-1, -2))
    factor = torch.diag_embed(amp * damp * torch.cos(mean))
    return y_mean, y_cov, factor


def trig_moments(mean: Tensor, cov: Tensor, angles: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of ``[sin x_A, cos x_A]`` for the angle coordinates ``A`` of ``x ~ N(m, S)``.

    PILCO's trigonometric augmentation (Deisenroth et al., 2015, "gTrig"): with
    ``cos x = sin(x + pi/2)``, this is :func:`sin_squash_moments` of ``v = [x_A, x_A + pi/2]``
    (``cov[v] = [[S_AA, S_AA], [S_AA, S_AA]]``), so
    ``E[sin x_i] = exp(-S_ii/2) sin m_i``, ``E[cos x_i] = exp(-S_ii/2) cos m_i``,
    ``E[sin x_i sin x_j] = 1/2 [exp(-(S_ii + S_jj - 2 S_ij)/2) cos(m_i - m_j)
    - exp(-(S_ii + S_jj + 2 S_ij)/2) cos(m_i + m_j)]`` (and likewise for the cos pairs), and
    ``cov[x, sin x_i] = S_:i exp(-S_ii/2) cos m_i``,
    ``cov[x, cos x_i] = -S_:i exp(-S_ii/2) sin m_i`` (Stein's lemma).

    Shapes: ``(*B, D)``, ``(*B, D, D)``, ``k = len(angles)`` -> mean ``(*B, 2k)`` ordered
    ``[sin x_A, cos x_A]``, covariance ``(*B, 2k, 2k)`` and ``cov[x, trig] (*B, D, 2k)``.

    Example:
        >>> m, S = torch.tensor([0.0, 1.0]), torch.diag(torch.tensor([1.0, 0.0]))
        >>> t_mean, _, _ = trig_moments(m, S, [1])  # x_1 = 1 exactly
        >>> [round(v, 4) for v in t_mean.tolist()]  # sin 1, cos 1
        [0.8415, 0.5403]
    """
    idx = torch.as_tensor(list(angles), dtype=torch.long, device=mean.device)
    both = torch.cat([idx, idx])  # (2k,)
    shift = torch.cat([torch.zeros_like(idx), torch.ones_like(idx)]).to(mean.dtype) * (0.5 * torch.pi)
    v_mean = mean[..., both] + shift  # (*B, 2k)
    v_cov = cov[..., both[:, None], both[None, :]]  # (*B, 2k, 2k)
    t_mean, t_cov, factor = sin_squash_moments(v_mean, v_cov, 1.0)
    cross = cov[..., both] @ factor  # (*B, D, 2k) = cov[x, v] J
    return t_mean, t_cov, cross


def expected_saturating_cost(
    mean: Tensor, cov: Tensor, target: Tensor, weights: Tensor
) -> Tensor:
    """Expected saturating cost of a Gaussian state (PILCO eqs. 24-25).

    ``c(x) = 1 - exp(-1/2 (x - t)^T W (x - t))`` and, for ``x ~ N(m, S)``,
    ``E[c(x)] = 1 - |I + S W|^{-1/2} exp(-1/2 (m - t)^T W (I + S W)^{-1} (m - t))``.

    Computed in the symmetric form ``W = V V^T`` (eigen-decomposition, ``W`` PSD):
    ``|I + V^T S V|`` by Cholesky and ``W (I + S W)^{-1} = V (I + V^T S V)^{-1} V^T``.

    Args:
        mean: ``(*B, D)``; cov: ``(*B, D, D)``; target: ``(D,)``; weights: ``(D, D)`` ``W``
            (PSD; include the cost width: ``W = A^T A / width^2``).

    Returns:
        ``(*B,)`` expected cost in ``[0, 1]``.

    Example:
        >>> D = 2
        >>> expected_saturating_cost(torch.zeros(D), torch.zeros(D, D), torch.zeros(D), torch.eye(D))
        tensor(0.)
    """
    evals, evecs = torch.linalg.eigh(0.5 * (weights + weights.T))
    v = evecs * evals.clamp_min(0.0).sqrt()  # (D, D), W = V V^T
    diff = (mean - target)[..., None]  # (*B, D, 1)
    eye = torch.eye(v.shape[-1], dtype=mean.dtype, device=mean.device)
    inner = eye + v.T @ cov @ v  # (*B, D, D)
    chol = psd_cholesky(inner)
    vd = v.T @ diff  # (*B, D, 1)
    solved = torch.cholesky_solve(vd, chol)
    quad = (vd * solved).sum((-1, -2))  # (*B,)
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 1.0 - torch.exp(-0.5 * (logdet + quad))


def joint_input_belief(
    obs_mean: Tensor, obs_var: Tensor, act_mean: Tensor, act_var: Tensor, cross_cov: Tensor
) -> tuple[Tensor, Tensor]:
    """Joint belief over ``x~ = [x, u]`` (PILCO sec. 2.2).

    ``mu~ = [m_x; m_u]``, ``S~ = [[S_x, C], [C^T, S_u]]`` with ``C = cov[x, u]``.
    Shapes: ``(*B, D)``, ``(*B, D, D)``, ``(*B, F)``, ``(*B, F, F)``, ``(*B, D, F)`` ->
    ``(*B, D+F)``, ``(*B, D+F, D+F)``.
    """
    mean = torch.cat([obs_mean, act_mean], -1)
    top = torch.cat([obs_var, cross_cov], -1)
    bottom = torch.cat([cross_cov.transpose(-1, -2), act_var], -1)
    return mean, torch.cat([top, bottom], -2)


def next_state_belief(
    obs_mean: Tensor,
    obs_var: Tensor,
    delta_mean: Tensor,
    delta_var: Tensor,
    input_delta_cov: Tensor,
) -> tuple[Tensor, Tensor]:
    """Next-state belief from the predicted change ``Delta`` (PILCO eqs. 10-12).

    ``mu_t = mu_{t-1} + mu_Delta`` (eq. 10);
    ``S_t = S_{t-1} + S_Delta + cov[x_{t-1}, Delta] + cov[Delta, x_{t-1}]`` (eq. 11), where
    ``cov[x_{t-1}, Delta]`` is the state block (first ``D`` rows) of ``cov[x~_{t-1}, Delta]``
    (eq. 12). Shapes ``(*B, D)``, ``(*B, D, D)``, ``(*B, D)``, ``(*B, D, D)``,
    ``(*B, D+F, D)``.
    """
    d = obs_mean.shape[-1]
    c = input_delta_cov[..., :d, :]
    var = obs_var + delta_var + c + c.transpose(-1, -2)
    return obs_mean + delta_mean, 0.5 * (var + var.transpose(-1, -2))
