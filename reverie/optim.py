"""DreamerV3's optimiser: LaProp with adaptive gradient clipping.

* :class:`LaProp` (Ziyin et al. 2020, https://arxiv.org/abs/2002.04839): RMSProp-normalise the
  gradient, then average the normalised gradient with momentum (Adam averages the raw gradient
  and normalises afterwards). Both moments are bias-corrected.
* :func:`adaptive_clip_grad_`: per-tensor adaptive gradient clipping as in DreamerV3 (Hafner et
  al. 2023, https://arxiv.org/abs/2301.04104), applied to the gradients before the step.

DreamerV3's settings (paper, v2 hyperparameter table, and the authors' ``configs.yaml``
``agent.opt``, which agree): learning rate ``4e-5``, LaProp ``eps = 1e-20``, AGC ``clip = 0.3``
with the parameter-norm floor ``1e-3``. The betas ``0.9`` / ``0.999`` come from the authors'
code. The authors also ramp the learning rate linearly from 0 over the first 1000 updates; that
is a schedule, not part of the optimiser (e.g. ``torch.optim.lr_scheduler.LambdaLR(opt, lambda
n: min(1.0, n / 1000))``).

Examples:
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = LaProp(net.parameters())
    >>> net(torch.ones(2, 3)).pow(2).sum().backward()
    >>> factors = adaptive_clip_grad_(net.parameters())  # one factor per tensor, <= 1
    >>> opt.step()
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["LaProp", "adaptive_clip_grad_"]


def adaptive_clip_grad_(parameters: Tensor | Iterable[Tensor], clip: float = 0.3,
                        eps: float = 1e-3) -> Tensor:
    """Clip each parameter's gradient, in place, to at most ``clip`` times the parameter norm.

    Per tensor (not per unit, unlike Brock et al. 2021's AGC; as DreamerV3's paper and code)::

        g <- g / max(1, ||g|| / (clip * max(eps, ||p||)))

    with Frobenius norms over the whole tensor. ``eps`` (the authors' ``pmin``) keeps freshly
    zero-initialised tensors (biases, zero output layers) trainable. Parameters without a
    gradient are skipped. Nothing is read back to the host.

    Args:
        parameters: a tensor or an iterable of tensors whose ``.grad`` is clipped.
        clip: the largest gradient-to-parameter norm ratio (0.3).
        eps: the floor of the parameter norm (1e-3).

    Returns:
        ``(N,)`` float32 clipping factors in ``(0, 1]``, one per parameter with a gradient (in
        order; ``1`` means unclipped), on the first gradient's device: e.g. log
        ``(factors < 1).float().mean()``.

    Examples:
        >>> p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||p|| = 5, threshold 1.5
        >>> p.grad = torch.tensor([0.0, 3.0])  # ||g|| = 3: halved
        >>> adaptive_clip_grad_([p])
        tensor([0.5000])
        >>> p.grad
        tensor([0.0000, 1.5000])
    """
    if clip <= 0.0 or eps < 0.0:
        raise ValueError(
            f"adaptive_clip_grad_: clip={clip}, eps={eps}; need clip > 0 and eps >= 0 "
            "(DreamerV3: clip=0.3, eps=1e-3).")
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(0)
    with torch.no_grad():
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise ValueError("adaptive_clip_grad_: sparse gradients are not supported.")
        grad_norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        param_norms = torch._foreach_norm([p.detach() for p in params], 2, dtype=torch.float32)
        torch._foreach_clamp_min_(param_norms, eps)
        torch._foreach_mul_(param_norms, clip)  # the thresholds
        ratios = torch._foreach_div(grad_norms, param_norms)
        torch._foreach_clamp_min_(ratios, 1.0)
        factors = torch._foreach_reciprocal(ratios)
        torch._foreach_mul_(grads, [f.to(g.dtype)
                                    for f, g in zip(factors, grads, strict=True)])
        device = grads[0].device
        return torch.stack([f.to(device) for f in factors])


class LaProp(torch.optim.Optimizer):
    """LaProp (Ziyin et al. 2020), DreamerV3's optimiser, with its defaults.

    For each parameter, at step ``t`` (from 1) with gradient ``g``::

        nu <- beta2 nu + (1 - beta2) g^2
        mu <- beta1 mu + (1 - beta1) g / (sqrt(nu / (1 - beta2^t)) + eps)
        p  <- p - lr (mu / (1 - beta1^t) + weight_decay p)

    ``weight_decay`` is decoupled (AdamW-style, as ``optax.add_decayed_weights`` after the
    momentum in the authors' chain; 0 in DreamerV3). The moments are kept in float32 for
    float16/bfloat16 parameters (``eps = 1e-20`` underflows in half precision), in the
    parameter's dtype otherwise. The step count is a CPU tensor (as in ``torch.optim.Adam``),
    so the bias corrections need no device sync. State dicts round-trip through
    ``torch.optim.Optimizer``'s ``state_dict`` / ``load_state_dict``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (4e-5).
        betas: ``(beta1, beta2)``, momentum and RMS decay (0.9, 0.999).
        eps: added to the RMS (1e-20).
        weight_decay: decoupled weight decay (0).

    Examples:
        >>> p = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = LaProp([p], lr=0.1)
        >>> p.grad = torch.tensor([-4.0])
        >>> opt.step()  # the first step moves by lr * sign(g)
        >>> p
        Parameter containing:
        tensor([1.1000], requires_grad=True)
    """

    def __init__(self, params, lr: float = 4e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-20, weight_decay: float = 0.0):
        if lr < 0.0:
            raise ValueError(f"LaProp: lr={lr}; need lr >= 0 (DreamerV3: 4e-5).")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LaProp: betas={betas}; need each in [0, 1) (0.9, 0.999).")
        if eps < 0.0:
            raise ValueError(f"LaProp: eps={eps}; need eps >= 0 (DreamerV3: 1e-20).")
        if weight_decay < 0.0:
            raise ValueError(f"LaProp: weight_decay={weight_decay}; need weight_decay >= 0.")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype,
                                                memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype,
                                                   memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params, grads, exp_avgs, exp_avg_sqs, bc1, bc2 = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LaProp: sparse gradients are not supported.")
                if torch.is_complex(p):
                    raise RuntimeError("LaProp: complex parameters are not supported.")
                state = self._init_state(p)
                state["step"] += 1
                t = float(state["step"])  # a CPU tensor: no device sync
                params.append(p)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                grads.append(p.grad.to(state["exp_avg"].dtype))
                bc1.append(1.0 - beta1 ** t)
                bc2.append(1.0 - beta2 ** t)
            if not params:
                continue
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            denom = torch._foreach_div(exp_avg_sqs, bc2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            normed = torch._foreach_div(grads, denom)
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, normed, alpha=1.0 - beta1)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            updates = torch._foreach_mul(exp_avgs, [-group["lr"] / b for b in bc1])
            torch._foreach_add_(params, [u.to(q.dtype)
                                         for u, q in zip(updates, params, strict=True)])
        return loss
