"""``GPWorldModel``: one exact GP per state dimension with moment-matching prediction (PILCO)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor

from reverie.modules.moment_matching import (
    gp_point_posterior,
    joint_input_belief,
    next_state_belief,
    psd_cholesky,
    se_basis_moments,
    trig_moments,
)
from reverie.validation import check_finite

__all__ = ["GPWorldModel"]

_BUFFERS = ("train_inputs", "train_targets", "lengthscales", "signal_var", "noise_var", "beta", "inv_gram")


class GPWorldModel(TensorDictModuleBase):
    """Gaussian-process dynamics ``[x, u] -> Delta = x' - x`` (Deisenroth & Rasmussen, 2011).

    One independent GP per state dimension ``a`` with a zero prior mean and an ARD
    squared-exponential kernel ``k_a(x~, x~') = alpha_a^2 exp(-1/2 (x~ - x~')^T Lambda_a^{-1}
    (x~ - x~'))``, ``Lambda_a = diag(l_a^2)``, and Gaussian noise ``s_a^2``. :meth:`fit`
    maximises the marginal likelihood with gpytorch/botorch (extra ``reverie[gp]``); the
    fitted model is plain buffers (training inputs, hyper-parameters, ``beta_a``,
    ``(K_a + s_a^2 I)^{-1}``), so prediction needs only torch and survives ``state_dict``
    round trips.

    ``forward(td)``:

    * belief input (``("observation", "var")`` present): exact moment matching (PILCO
      eqs. 10-23, :func:`~reverie.modules.moment_matching.se_basis_moments`) of the joint
      belief over ``[x, u]`` built from ``("observation", "mean"/"var")`` and
      ``("action", "mean"/"var"/"cross_covariance")`` (``cov[x, u]``, shape ``(*B, D, F)``;
      missing action variance / cross-covariance mean a deterministic action). A zero
      covariance gives the plain GP posterior exactly.
    * point input (no ``("observation", "var")``): the plain GP posterior (eqs. 7-8) at
      ``("observation", "mean")`` - or a plain ``"observation"`` tensor - and
      ``("action", "mean")`` or a plain ``"action"`` tensor; the variance is diagonal.

    Writes ``("next", "observation", "mean")`` ``(*B, D)`` and ``("next", "observation",
    "var")`` ``(*B, D, D)``. Predictions include the observation noise ``s_a^2``. Gradients
    flow to the inputs on both paths. Inputs are cast to the model's dtype (float64 by
    default: moment matching subtracts nearly equal second moments).

    Args:
        obs_dim: ``D``. action_dim: ``F``.
        in_keys: ``[obs mean, obs var, action mean, action var, cross covariance]``.
        out_keys: ``[next mean, next var]``.
        dtype: dtype of the fitted buffers and of the predictions.
        max_snr: after :meth:`fit`, the noise variance is raised to at least
            ``alpha_a^2 / max_snr^2`` (signal-to-noise ratio ``alpha_a / s_a <= max_snr``).
            Noise-free simulators drive the fitted noise to ~0; ``(K + s^2 I)^{-1} y`` then has
            huge alternating weights and moment-matched predictions (and policy gradients)
            become numerically chaotic. PILCO penalises SNR > 500 for the same reason.
            ``None`` keeps the maximum-likelihood noise.
        angle_dims: ``{angle: (sin, cos)}``: observation ``angle`` is an (unwrapped) angle
            whose sine and cosine are observations ``sin`` and ``cos`` (PILCO's trigonometric
            augmentation). The GPs then read the sine and cosine instead of the angle
            (periodic inputs), predict ``Delta`` of every observation except the sines and
            cosines (the angle's change is smooth where its sine's is not), and the next
            belief's sines and cosines are moment-matched from the predicted Gaussian
            (:func:`~reverie.modules.moment_matching.trig_moments`).

    Example:
        >>> from tensordict import TensorDict
        >>> model = GPWorldModel(obs_dim=2, action_dim=1)
        >>> data = TensorDict({"observation": torch.randn(30, 2), "action": torch.randn(30, 1)}, [30])
        >>> data["next", "observation"] = data["observation"] + 0.1 * data["action"]
        >>> model.fit(data)["n"]  # marginal likelihood with gpytorch/botorch (reverie[gp])
        30
        >>> model.set_data(data, lengthscales=torch.ones(2, 3), signal_var=torch.ones(2),
        ...                noise_var=torch.full((2,), 1e-4))  # or set hyper-parameters by hand
        >>> belief = TensorDict({("observation", "mean"): torch.zeros(4, 2),
        ...     ("observation", "var"): 0.01 * torch.eye(2).expand(4, 2, 2),
        ...     ("action", "mean"): torch.zeros(4, 1), ("action", "var"): torch.zeros(4, 1, 1),
        ...     ("action", "cross_covariance"): torch.zeros(4, 2, 1)}, [4])
        >>> model(belief)["next", "observation", "var"].shape
        torch.Size([4, 2, 2])
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        max_snr: float | None = 200.0,
        angle_dims: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.max_snr = max_snr
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        angle_dims = {int(k): (int(v[0]), int(v[1])) for k, v in (angle_dims or {}).items()}
        used = [*angle_dims, *(d for pair in angle_dims.values() for d in pair)]
        if len(set(used)) != len(used) or any(not 0 <= d < self.obs_dim for d in used):
            raise ValueError(
                f"GPWorldModel: angle_dims={angle_dims} must map distinct observation indices in "
                f"[0, {self.obs_dim}) to distinct (sin, cos) indices."
            )
        self.angle_dims = angle_dims
        derived = [p[0] for p in angle_dims.values()] + [p[1] for p in angle_dims.values()]
        #: observations the GPs read (angles enter through their sine and cosine)
        self.input_obs = [d for d in range(self.obs_dim) if d not in angle_dims]
        #: observations whose change the GPs predict (all but the sines and cosines)
        self.target_obs = [d for d in range(self.obs_dim) if d not in derived]
        self._angle_pos = [self.target_obs.index(a) for a in angle_dims]  # within target_obs
        order = self.target_obs + derived  # next belief = [targets, sin, cos] permuted back
        self._unpermute = [order.index(d) for d in range(self.obs_dim)]
        if in_keys is None:
            in_keys = [
                ("observation", "mean"), ("observation", "var"),
                ("action", "mean"), ("action", "var"), ("action", "cross_covariance"),
            ]
        if out_keys is None:
            out_keys = [("next", "observation", "mean"), ("next", "observation", "var")]
        if len(in_keys) != 5 or len(out_keys) != 2:
            raise ValueError(
                "GPWorldModel: in_keys must list [obs mean, obs var, action mean, action var, "
                f"cross covariance] (got {len(in_keys)}) and out_keys [next mean, next var] "
                f"(got {len(out_keys)})."
            )
        self.in_keys = [unravel_key(k) for k in in_keys]
        self.out_keys = [unravel_key(k) for k in out_keys]
        d_in = len(self.input_obs) + self.action_dim
        D = len(self.target_obs)
        self.register_buffer("train_inputs", torch.zeros(0, d_in, dtype=dtype))
        self.register_buffer("train_targets", torch.zeros(D, 0, dtype=dtype))
        self.register_buffer("lengthscales", torch.ones(D, d_in, dtype=dtype))
        self.register_buffer("signal_var", torch.ones(D, dtype=dtype))
        self.register_buffer("noise_var", torch.ones(D, dtype=dtype))
        self.register_buffer("beta", torch.zeros(D, 0, dtype=dtype))
        self.register_buffer("inv_gram", torch.zeros(D, 0, 0, dtype=dtype))

    # ------------------------------------------------------------------ fitting
    @property
    def is_fitted(self) -> bool:
        return self.train_inputs.shape[0] > 0

    def _dataset_tensors(self, dataset: TensorDictBase) -> tuple[Tensor, Tensor]:
        if not isinstance(dataset, TensorDictBase):
            raise TypeError(f"GPWorldModel.fit: expected a TensorDict, got {type(dataset).__name__}.")
        count = math.prod(dataset.batch_size)
        if count < 2:
            raise ValueError(
                f"GPWorldModel.fit: need at least 2 transitions, got {count} (batch size "
                f"{list(dataset.batch_size)}).")
        data = dataset.reshape(-1)
        tensors = []
        for key, dim in (("observation", self.obs_dim), ("action", self.action_dim),
                         (("next", "observation"), self.obs_dim)):
            value = data.get(key, None)
            if not isinstance(value, Tensor):
                raise KeyError(
                    f"GPWorldModel.fit: the dataset needs a tensor at {key!r} (flat transitions "
                    f"'observation', 'action', ('next', 'observation')); it has "
                    f"{sorted(map(str, data.keys(True, True)))}."
                )
            if value.shape[-1] != dim:
                raise ValueError(
                    f"GPWorldModel.fit: {key!r} has shape {tuple(value.shape)}; expected last "
                    f"dim {dim} (obs_dim={self.obs_dim}, action_dim={self.action_dim})."
                )
            tensors.append(value.to(self.train_inputs))
        obs, act, nxt = tensors
        check_finite("GPWorldModel.fit", data, ["observation", "action", ("next", "observation")],
                     "Drop or repair those transitions; nothing was fitted.")
        inputs = torch.cat([obs[:, self.input_obs], act], -1)  # (n, d_in)
        return inputs, (nxt - obs)[:, self.target_obs].T.contiguous()  # (E, n)

    def set_data(
        self,
        dataset: TensorDictBase,
        *,
        lengthscales: Tensor,
        signal_var: Tensor,
        noise_var: Tensor,
    ) -> None:
        """Condition on ``dataset`` with given hyper-parameters (no optimisation).

        ``lengthscales (E, d_in)``, ``signal_var (E,)``, ``noise_var (E,)`` with ``E`` the
        predicted observations and ``d_in`` the GP inputs (``E = D``, ``d_in = D + F``
        without ``angle_dims``). Computes
        ``beta_a = (K_a + s_a^2 I)^{-1} y_a`` and ``(K_a + s_a^2 I)^{-1}`` by Cholesky
        (with jitter retry).
        """
        inputs, targets = self._dataset_tensors(dataset)
        self._condition(inputs, targets, lengthscales, signal_var, noise_var)

    def _condition(self, inputs, targets, lengthscales, signal_var, noise_var) -> None:
        ref = self.train_inputs
        n_out = len(self.target_obs)
        ls, sv, nv = (t.detach().to(ref).reshape(s) for t, s in (
            (lengthscales, self.lengthscales.shape), (signal_var, (n_out,)),
            (noise_var, (n_out,))))
        scaled = inputs / ls[:, None, :]  # (D, n, d)
        sq = (scaled[:, :, None] - scaled[:, None]).square().sum(-1)  # (D, n, n)
        eye = torch.eye(inputs.shape[0], dtype=ref.dtype, device=ref.device)
        gram = sv[:, None, None] * torch.exp(-0.5 * sq) + nv[:, None, None] * eye
        chol = psd_cholesky(gram)
        self.train_inputs, self.train_targets = inputs, targets
        self.lengthscales, self.signal_var, self.noise_var = ls, sv, nv
        self.beta = torch.cholesky_solve(targets[..., None], chol)[..., 0]  # (D, n)
        self.inv_gram = torch.cholesky_inverse(chol)  # (D, n, n)

    def fit(self, dataset: TensorDictBase, *, warm_start: bool = True, max_iter: int = 500) -> dict:
        """Fit the hyper-parameters by marginal likelihood (gpytorch + botorch L-BFGS-B).

        Args:
            dataset: flat (or reshapeable) transitions with ``"observation"`` ``(n, D)``,
                ``"action"`` ``(n, F)`` and ``("next", "observation")`` ``(n, D)``.
            warm_start: start from the current hyper-parameters when already fitted (else
                from the data: ``l = std(x~)``, ``alpha^2 = var(Delta)``, ``s^2 = alpha^2/100``).
            max_iter: L-BFGS-B iteration cap.

        Returns:
            ``{"mll": marginal log-likelihood per point (mean over outputs, before the SNR
            bound), "n": n}``.
        """
        try:
            import botorch.fit  # noqa: F401
            import gpytorch  # noqa: F401
        except ImportError as err:  # pragma: no cover - exercised without the extra
            raise ImportError(
                "GPWorldModel.fit needs gpytorch and botorch: pip install 'reverie[gp]'"
            ) from err
        inputs, targets = self._dataset_tensors(dataset)
        D, n = targets.shape
        warm = warm_start and self.is_fitted
        # noise floor: the SNR bound relative to the target variance (noise-free data would
        # otherwise drive the noise to ~0 and the Gram matrix to singular)
        rel = 1.0 / self.max_snr**2 if self.max_snr is not None else 1e-8
        # the targets' scale: their variance, or their second moment for an output whose
        # targets are (numerically) constant -- with the variance, the zero-mean GP would
        # explain a constant c != 0 as noise of variance c^2 and predict 0 instead of c
        spread, second = targets.var(-1), targets.pow(2).mean(-1)  # (D,)
        scale = torch.where(spread <= 1e-10 * second, second, spread)
        target_var = scale.clamp_min(1e-12)  # (D,)
        data_init = (inputs.std(0).clamp_min(1e-3).expand(D, -1),  # (D, E)
                     scale.clamp_min(1e-6), scale.clamp_min(1e-6) / 100.0)
        # one L-BFGS-B per output: each GP stops at its own convergence (a joint optimisation
        # of the D independent likelihoods runs until the slowest one has converged)
        ls, sv, nv, values = [], [], [], []
        for a in range(D):
            starts = []
            if warm:
                starts.append((self.lengthscales[a], self.signal_var[a], self.noise_var[a]))
            starts.append(tuple(t[a] for t in data_init))
            failure = None
            for init in starts:  # a warm start can fail where the data-based one fits
                try:
                    out = _fit_one_gp(inputs, targets[a], init, target_var[a],
                                      float((target_var[a] * rel).clamp_min(1e-10)), max_iter)
                    break
                except Exception as err:  # botorch's ModelFittingError / linear-algebra error
                    failure = err
            else:
                raise RuntimeError(
                    f"GPWorldModel.fit: marginal-likelihood fit of output {a} failed on {n} "
                    f"transitions ({type(failure).__name__}: {failure}); check the data for "
                    "duplicates or extreme values."
                ) from failure
            for store, v in zip((ls, sv, nv, values), out, strict=True):
                store.append(v)
        signal, noise = torch.stack(sv), torch.stack(nv)
        if self.max_snr is not None:  # bound the signal-to-noise ratio (numerical stability)
            noise = torch.maximum(noise, signal / self.max_snr**2)
        self._condition(inputs, targets, torch.stack(ls), signal, noise)
        return {"mll": sum(values) / D, "n": n}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in _BUFFERS:  # fitted buffers change size with the data
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("GPWorldModel: call fit(dataset) (or set_data) before predicting.")

    def predict(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Plain GP posterior of the next state at points (eqs. 7-8).

        ``observation (*B, D)``, ``action (*B, F)`` -> mean ``(*B, D)``, variance ``(*B, D)``.
        With ``angle_dims``, the sines and cosines are the moments of the sine and cosine of
        the predicted (Gaussian) angle.
        """
        self._check_fitted()
        obs = observation.to(self.beta)
        x = torch.cat([obs[..., self.input_obs], action.to(self.beta)], -1)
        mean, var = gp_point_posterior(
            x, self.train_inputs, self.lengthscales, self.signal_var, self.beta,
            self.inv_gram, self.noise_var,
        )  # (*B, E), (*B, E)
        mean = obs[..., self.target_obs] + mean
        if not self.angle_dims:
            return mean, var
        t_mean, t_var, _ = trig_moments(mean, torch.diag_embed(var), self._angle_pos)
        perm = self._unpermute
        return (torch.cat([mean, t_mean], -1)[..., perm],
                torch.cat([var, t_var.diagonal(dim1=-2, dim2=-1)], -1)[..., perm])

    def propagate(
        self,
        obs_mean: Tensor,
        obs_var: Tensor,
        act_mean: Tensor,
        act_var: Tensor,
        cross_cov: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Moment-matched next-state belief (eqs. 10-23).

        ``(*B, D)``, ``(*B, D, D)``, ``(*B, F)``, ``(*B, F, F)``, ``cov[x, u] (*B, D, F)`` ->
        mean ``(*B, D)``, covariance ``(*B, D, D)``.
        """
        self._check_fitted()
        ref = self.beta
        obs_mean, obs_var, act_mean, act_var, cross_cov = (
            t.to(ref) for t in (obs_mean, obs_var, act_mean, act_var, cross_cov))
        mean, cov = joint_input_belief(obs_mean, obs_var, act_mean, act_var, cross_cov)
        if not self.angle_dims:
            d_mean, d_var, d_cio = se_basis_moments(
                mean, cov, self.train_inputs, self.lengthscales, self.signal_var, self.beta,
                self.inv_gram,
            )
            d_var = d_var + torch.diag_embed(self.noise_var.expand_as(d_mean))
            return next_state_belief(obs_mean, obs_var, d_mean, d_var, d_cio)
        D = self.obs_dim
        inp = torch.tensor(self.input_obs + list(range(D, D + self.action_dim)), device=ref.device)
        tgt = torch.tensor(self.target_obs, device=ref.device)
        d_mean, d_var, c = se_basis_moments(  # c = cov[x_t, Delta] (*B, E, E)
            mean[..., inp], cov[..., inp[:, None], inp], self.train_inputs, self.lengthscales,
            self.signal_var, self.beta, self.inv_gram, cross=cov[..., tgt[:, None], inp],
        )
        d_var = d_var + torch.diag_embed(self.noise_var.expand_as(d_mean))
        t_mean, t_var = next_state_belief(  # (*B, E), (*B, E, E): the non-derived observations
            obs_mean[..., tgt], obs_var[..., tgt[:, None], tgt], d_mean, d_var, c)
        s_mean, s_var, s_cross = trig_moments(t_mean, t_var, self._angle_pos)  # [sin, cos]
        full_mean = torch.cat([t_mean, s_mean], -1)  # (*B, D) in the order [targets, sin, cos]
        full_var = torch.cat([torch.cat([t_var, s_cross], -1),
                              torch.cat([s_cross.transpose(-1, -2), s_var], -1)], -2)
        perm = torch.tensor(self._unpermute, device=ref.device)
        return full_mean[..., perm], full_var[..., perm[:, None], perm]

    @staticmethod
    def _get(td: TensorDictBase, key: tuple):
        """``td.get(key, None)`` that is also ``None`` when a parent of ``key`` is a tensor."""
        for depth in range(1, len(key)):
            if not isinstance(td.get(key[:depth], None), TensorDictBase):
                return None
        return td.get(key, None)

    def _point(self, td: TensorDictBase, key: tuple) -> Tensor:
        value = self._get(td, key)
        if value is None and len(key) > 1:
            value = self._get(td, key[:-1])
        if not isinstance(value, Tensor):
            raise KeyError(
                f"GPWorldModel: no input at {key!r} (nor a plain tensor at {key[:-1]!r}); the "
                f"tensordict has {sorted(map(str, td.keys(True, True)))}."
            )
        return value

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs_m, obs_v, act_m, act_v, cross = self.in_keys
        obs_var = self._get(tensordict, obs_v)
        if obs_var is None:
            obs = self._point(tensordict, obs_m)
            mean, var = self.predict(obs, self._point(tensordict, act_m))
            var = torch.diag_embed(var)
        else:
            obs_mean = self._get(tensordict, obs_m)
            if obs_mean is None:
                raise KeyError(f"GPWorldModel: {obs_v!r} is present but {obs_m!r} is missing.")
            if obs_var.shape[-2:] != (self.obs_dim, self.obs_dim):
                raise ValueError(
                    f"GPWorldModel: {obs_v!r} has shape {tuple(obs_var.shape)}; expected "
                    f"(..., {self.obs_dim}, {self.obs_dim}) (a full covariance; use "
                    "torch.diag_embed for per-dimension variances)."
                )
            act_mean = self._point(tensordict, act_m)
            lead = obs_mean.shape[:-1]
            act_var = self._get(tensordict, act_v)
            if act_var is None:
                act_var = act_mean.new_zeros(*lead, self.action_dim, self.action_dim)
            cross_cov = self._get(tensordict, cross)
            if cross_cov is None:
                cross_cov = act_mean.new_zeros(*lead, self.obs_dim, self.action_dim)
            mean, var = self.propagate(obs_mean, obs_var, act_mean, act_var, cross_cov)
        tensordict.set(self.out_keys[0], mean)
        tensordict.set(self.out_keys[1], var)
        return tensordict


def _fit_one_gp(inputs: Tensor, target: Tensor, init: tuple, target_var: Tensor, floor: float,
                max_iter: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """Marginal-likelihood fit of one SE-ARD GP (gpytorch model, botorch L-BFGS-B).

    ``inputs (n, E)``, ``target (n,)``, ``init = (lengthscales (E,), signal var, noise var)``
    -> fitted ``(lengthscales (E,), signal var (), noise var (), mll per point)``.
    """
    import gpytorch
    from botorch.fit import fit_gpytorch_mll

    class _GP(gpytorch.models.ExactGP):
        def __init__(self, likelihood):
            super().__init__(inputs, target, likelihood)
            self.mean_module = gpytorch.means.ZeroMean()
            # a (near-)linear target pushes alpha^2 and the length-scales to infinity
            # (an ill-conditioned Gram matrix): alpha^2 <= 1e3 var(Delta_a)
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(ard_num_dims=inputs.shape[-1]),
                outputscale_constraint=gpytorch.constraints.Interval(
                    1e-12, 1e3 * float(target_var)))

        def transform_inputs(self, X, input_transform=None):  # botorch's closure calls it
            return X

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(z), self.covar_module(z))

    likelihood = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(floor))
    model = _GP(likelihood).to(inputs)
    ls, sv, nv = init
    model.covar_module.base_kernel.lengthscale = ls[None, :]
    model.covar_module.outputscale = torch.minimum(sv, 5e2 * target_var)
    likelihood.noise = torch.clamp_min(nv, 2 * floor)[None]
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()
    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": max_iter}})
    mll.train()  # botorch leaves the model in eval mode: score the marginal likelihood
    with torch.no_grad():
        value = mll(model(inputs), target).item()
    return (model.covar_module.base_kernel.lengthscale.detach().reshape(-1),
            model.covar_module.outputscale.detach().reshape(()),
            likelihood.noise.detach().reshape(()), value)
