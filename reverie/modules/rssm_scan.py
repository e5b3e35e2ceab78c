"""The RSSM filter as a pair of scans with a hand-written backward (``RSSMRollout(use_scan=True)``).

torch's own scan autograd re-traces and re-partitions the step at every eager call and,
compiled, either saves a per-step copy of every weight matrix or recomputes the step in the
backward. Here the forward is one ``scan`` run without autograd that also emits the step's
activations ``(T, *B, .)``, and the backward is a reverse ``scan`` of the step's
vector-Jacobian product. Weight gradients are then one matmul over all ``T * B`` rows, as in
cuDNN's RNN backward.

The step, with reset ``r`` (episode start), ``[.,.]`` concatenation and ``W`` acting on the
last dim::

    s <- 0, h <- 0 where r
    x1 = ELU(W1 [s, a] + b1)
    (i_r, i_z, i_n) = Wih x1 + bih          (h_r, h_z, h_n) = Whh h + bhh
    r_ = sigmoid(i_r + h_r)   z = sigmoid(i_z + h_z)   n = tanh(i_n + r_ * h_n)
    h' = n + z * (h - n)                                   (GRUCell)
    (mu_p, rho_p) = W3 ELU(W2 h' + b2) + b3         sigma_p = softplus(rho_p) + lb_p
    (mu_q, rho_q) = W5 ELU(W4 [h', e] + b4) + b5    sigma_q = softplus(rho_q) + lb_q
    s' = mu_q + sigma_q * eps

Its derivatives: ``ELU'(u) = 1 if ELU(u) > 0 else ELU(u) + 1``, ``softplus' = sigmoid``,
``dh'/dn = 1 - z``, ``dh'/dz = h - n``, ``dh'/dh = z``, ``dn/da_n = 1 - n^2`` with
``a_n = i_n + r_ * h_n``, ``dsigmoid(v)/dv = sigmoid(v) (1 - sigmoid(v))``.

Only :class:`~reverie.modules.RSSMPrior` and :class:`~reverie.modules.RSSMPosterior`
themselves (not subclasses) with materialised weights are supported
(:func:`supports_rssm_scan`); ``RSSMRollout`` falls back to torch's scan autograd otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F  # noqa: N812
from torch.nn.parameter import UninitializedParameter

__all__ = ["rssm_scan", "supports_rssm_scan"]


def _weights(prior, posterior) -> tuple[Tensor, ...]:
    """``(W1, b1, Wih, bih, Whh, bhh, W2, b2, W3, b3, W4, b4, W5, b5)``, as in the step."""
    l1, rnn = prior.action_state_projector[0], prior.rnn
    l2, l3 = prior.rnn_to_prior_projector[0], prior.rnn_to_prior_projector[2]
    l4, l5 = posterior.obs_rnn_to_post_projector[0], posterior.obs_rnn_to_post_projector[2]
    return (l1.weight, l1.bias, rnn.weight_ih, rnn.bias_ih, rnn.weight_hh, rnn.bias_hh,
            l2.weight, l2.bias, l3.weight, l3.bias, l4.weight, l4.bias, l5.weight, l5.bias)


def supports_rssm_scan(prior: nn.Module, posterior: nn.Module) -> bool:
    """Whether :func:`rssm_scan` computes exactly what ``prior`` and ``posterior`` do."""
    from reverie.modules.rssm import RSSMPosterior, RSSMPrior

    if type(prior) is not RSSMPrior or type(posterior) is not RSSMPosterior:
        return False
    elus = [prior.action_state_projector[1], prior.rnn_to_prior_projector[1],
            posterior.obs_rnn_to_post_projector[1]]
    if any(type(m) is not nn.ELU or m.alpha != 1.0 for m in elus):
        return False
    if prior.rnn.bias_ih is None:
        return False
    return not any(isinstance(w, UninitializedParameter) for w in _weights(prior, posterior))


def _elu_grad(y: Tensor) -> Tensor:
    """``ELU'(u)`` from ``y = ELU(u)`` (alpha 1): 1 where ``y > 0``, else ``y + 1 = exp(u)``."""
    return y.clamp(max=0) + 1


def _act_sizes(n_s: int, n_r: int, n_h: int) -> list[int]:
    """Widths of the packed per-step output ``(s, h, qm, qs, s', h', x1, r, z, n, h_n, x4, rho_q)``."""
    return [n_s, n_r, n_s, n_s, n_s, n_r, n_h, n_r, n_r, n_r, n_r, n_h, n_s]


def _wide_pad(like: Tensor, width: int) -> Tensor | None:
    """Zero columns that make a ``(*B, width)`` row a whole number of ``complex128``.

    Eager ``scan`` stores each output of each step with ``scatter_`` through an int64 index
    as large as the output, at a cost per element; so the step's packed output travels as
    16-byte elements (4 float32; :func:`_packed`), which makes that about 6x cheaper.
    ``None`` (no reinterpretation) under ``torch.compile``, which has no such cost.
    """
    if torch.compiler.is_compiling():
        return None
    return like.new_zeros(*like.shape[:-1], -width % (16 // like.element_size()))


def _packed(parts: list[Tensor], pad: Tensor | None) -> Tensor:
    """``parts`` concatenated on the last dim, as ``complex128`` after ``pad`` if given."""
    return torch.cat(parts, -1) if pad is None else torch.cat([*parts, pad], -1).view(
        torch.complex128)


def _from_wide(y: Tensor, dtype: torch.dtype, width: int) -> Tensor:
    """Inverse of :func:`_packed`: the first ``width`` columns of ``y`` as ``dtype``."""
    return y if y.dtype == dtype else y.view(dtype)[..., :width]


def _reversed(x: Tensor) -> Tensor:
    """``x`` in reverse order along dim 0 (``index_select`` copies rows; ``flip`` is ~4x slower)."""
    return x.index_select(0, torch.arange(x.shape[0] - 1, -1, -1, device=x.device))


def _batch_major(x: Tensor) -> bool:
    """Whether ``x (T, B, ...)`` is a time-first view of a contiguous ``(B, T, ...)`` tensor.

    ``RSSMRollout`` hands over such views of ``[B, T]`` TensorDict entries; the big ones
    (the embedding) are then used in their memory order rather than copied.
    """
    return x.dim() > 2 and not x.is_contiguous() and x.transpose(0, 1).is_contiguous()


def _matmul(x: Tensor, w: Tensor, b: Tensor | None = None, like: Tensor | None = None) -> Tensor:
    """``x @ w.T + b`` over ``(T, *B, .)`` rows, laid out as ``like`` (default ``x``) is."""
    if _batch_major(x if like is None else like):
        return F.linear(x.transpose(0, 1), w, b).transpose(0, 1)
    return F.linear(x, w, b)


def _mm_sum(g: Tensor, x: Tensor) -> Tensor:
    """``sum over rows of g^T x``: ``g (..., O)``, ``x (..., I)`` -> ``(O, I)``."""
    if _batch_major(x):  # rows in x's memory order: copy g, not x
        g, x = g.transpose(0, 1), x.transpose(0, 1)
    return g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


def _optional_sum(*terms: Tensor | None) -> Tensor | None:
    terms = [t for t in terms if t is not None]
    return None if not terms else sum(terms[1:], terms[0])


class _RSSMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, state0, belief0, action, embedding, reset, noise, lb_p, lb_q, *w):
        from torch._higher_order_ops.scan import scan

        w1, b1, wih, bih, whh, bhh, w2, b2, w3, b3, w4, b4, w5, b5 = w
        n_s, n_r = state0.shape[-1], belief0.shape[-1]
        w1_s, w4_h = w1[:, :n_s], w4[:, :n_r]
        # the non-recurrent halves of the two input layers, for all steps at once: (T, *B, H)
        pre1 = _matmul(action.to(state0.dtype), w1[:, n_s:], b1)
        pre4 = _matmul(embedding.to(state0.dtype), w4[:, n_r:], b4)
        sizes = _act_sizes(n_s, n_r, w1.shape[0])
        pad = _wide_pad(state0, sum(sizes))  # (scan traces the step: decided out here)

        def step(carry, x):
            s, h = carry  # the latent entering the step, reset already applied
            p1, p4, eps, *rs_next = x  # rs_next: [reset of the next step] or [] (no resets)
            x1 = F.elu(F.linear(s, w1_s) + p1)  # (*B, H)
            i_r, i_z, i_n = F.linear(x1, wih, bih).chunk(3, -1)  # (*B, R) each
            h_r, h_z, h_n = F.linear(h, whh, bhh).chunk(3, -1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h1 = n + z * (h - n)  # (*B, R)
            x4 = F.elu(F.linear(h1, w4_h) + p4)
            qm, qraw = F.linear(x4, w5, b5).chunk(2, -1)  # (*B, S) each
            qs = F.softplus(qraw) + lb_q
            s1 = qm + qs * eps
            carry = (s1, h1) if not rs_next else (s1.masked_fill(rs_next[0], 0),
                                                   h1.masked_fill(rs_next[0], 0))
            # one packed output per step: scan stores each output of each step separately
            return carry, _packed([s, h, qm, qs, s1, h1, x1, r, z, n, h_n, x4, qraw], pad)

        xs, s0, h0 = [pre1, pre4, noise], state0, belief0
        if reset is not None:  # the reset of step t + 1 is applied to the carry leaving step t
            xs.append(torch.cat([reset[1:], torch.zeros_like(reset[:1])]))
            s0, h0 = state0.masked_fill(reset[0], 0), belief0.masked_fill(reset[0], 0)
        _, packed_w = scan(step, (s0, h0), xs)
        s_in, h_in, qm, qs, s1, h1, *_ = _from_wide(packed_w, s0.dtype, sum(sizes)).split(sizes, -1)
        # the prior head is not part of the recurrence: all steps at once
        x2 = F.elu(F.linear(h1, w2, b2))
        pm, praw = F.linear(x2, w3, b3).chunk(2, -1)
        ctx.save_for_backward(action, embedding, reset, noise, packed_w, x2, praw, *w)
        ctx.set_materialize_grads(False)
        return pm, F.softplus(praw) + lb_p, qm, qs, s1, h1, s_in, h_in

    @staticmethod
    @once_differentiable
    def backward(ctx, g_pm, g_ps, g_qm, g_qs, g_s1, g_h1, g_sin, g_hin):
        from torch._higher_order_ops.scan import scan

        action, embedding, reset, noise, packed_w, x2, praw, *w = ctx.saved_tensors
        w1, b1, wih, bih, whh, bhh, w2, b2, w3, b3, w4, b4, w5, b5 = w
        n_s, n_r, n_h = praw.shape[-1], whh.shape[-1], w1.shape[0]
        dtype, sizes = praw.dtype, _act_sizes(n_s, n_r, n_h)
        s_in, h_in, _, _, _, h1, x1, *_, x4, _ = _from_wide(packed_w, dtype, sum(sizes)).split(
            sizes, -1)  # (T, *B, .)
        w1_s, w4_h = w1[:, :n_s], w4[:, :n_r]
        # the prior head, outside the recurrence: its gradient reaching h' for all steps
        g_p = g_u2 = None
        if g_pm is not None or g_ps is not None:
            g_p = torch.cat([torch.zeros_like(praw) if g_pm is None else g_pm,
                             torch.zeros_like(praw) if g_ps is None else g_ps * torch.sigmoid(praw)],
                            -1)  # (T, *B, 2S)
            g_u2 = (g_p @ w3) * _elu_grad(x2)
        g_h1 = _optional_sum(g_h1, None if g_u2 is None else g_u2 @ w2)
        # the per-step gradients that were given, as scan inputs
        given = {k: g for k, g in dict(qm=g_qm, qs=g_qs, s1=g_s1, h1=g_h1, sin=g_sin,
                                          hin=g_hin).items() if g is not None}
        keys, g_sizes = list(given), [g.shape[-1] for g in given.values()]
        g_packed = torch.cat(list(given.values()), -1) if given else torch.zeros_like(noise)

        def step(carry, x):
            g_s_next, g_h_next = carry  # gradients w.r.t. the latent leaving this step
            g_step, eps, t, *rs = x
            acts = packed_w.index_select(0, t).squeeze(0)  # step t's row: (*B, W)
            g = dict(zip(keys, g_step.split(g_sizes, -1), strict=True)) if keys else {}
            _, hin, *_, x1_, r_, z_, n_, hn_, x4_, qraw_ = _from_wide(acts, dtype, sum(sizes)).split(
                sizes, -1)
            gs = _optional_sum(g.get("s1"), g_s_next)
            gh = _optional_sum(g.get("h1"), g_h_next)
            # posterior head: s' = mu_q + sigma_q * eps
            g_qm_ = _optional_sum(g.get("qm"), gs)
            g_qs_ = _optional_sum(g.get("qs"), gs * eps)
            g_q = torch.cat([g_qm_, g_qs_ * torch.sigmoid(qraw_)], -1)  # (*B, 2S)
            g_u4 = (g_q @ w5) * _elu_grad(x4_)  # (*B, H)
            gh = gh + g_u4 @ w4_h  # the embedding's part is taken after the scan
            # GRU cell
            g_an = gh * (1 - z_) * (1 - n_ * n_)
            g_ar = g_an * hn_ * r_ * (1 - r_)
            g_az = gh * (hin - n_) * z_ * (1 - z_)
            g_gi = torch.cat([g_ar, g_az, g_an], -1)  # (*B, 3R)
            g_hn = g_an * r_
            g_h = _optional_sum(gh * z_ + torch.cat([g_ar, g_az, g_hn], -1) @ whh, g.get("hin"))
            g_u1 = (g_gi @ wih) * _elu_grad(x1_)
            g_s = _optional_sum(g_u1 @ w1_s, g.get("sin"))  # the action's part: after the scan
            carry = (g_s, g_h) if not rs else (g_s.masked_fill(rs[0], 0), g_h.masked_fill(rs[0], 0))
            return carry, _packed([g_q, g_u4, g_gi, g_hn, g_u1], pad)  # one output

        out_sizes = [2 * n_s, n_h, 3 * n_r, n_r, n_h]
        pad = _wide_pad(praw[0], sum(out_sizes))
        zeros = (torch.zeros_like(s_in[0]), torch.zeros_like(h_in[0]))
        # a forward scan over reversed inputs (scan's reverse=True flips them, more slowly);
        # the big activations are read a row per step rather than copied reversed in one go
        t_rev = torch.arange(len(noise) - 1, -1, -1, device=noise.device)
        xs = [_reversed(g_packed), _reversed(noise), t_rev[:, None],
              *([] if reset is None else [_reversed(reset)])]
        (g_state0, g_belief0), ys = scan(step, zeros, xs)
        ys = _from_wide(_reversed(ys), dtype, sum(out_sizes))  # time order
        g_q, g_u4, g_gi, g_hn, g_u1 = ys.split(out_sizes, -1)
        g_gh = torch.cat([g_gi[..., :2 * n_r], g_hn], -1)
        need = ctx.needs_input_grad
        # (layer's output gradient, its input in parts) for W1, Wih, Whh, W2, W3, W4, W5
        layers = [(g_u1, (s_in, action)), (g_gi, (x1,)), (g_gh, (h_in,)), (g_u2, (h1,)),
                  (g_p, (x2,)), (g_u4, (h1, embedding)), (g_q, (x4,))]
        grads_w = []
        for i, (g_out, x_parts) in enumerate(layers):  # each summed over all T * B rows
            need_w, need_b = need[8 + 2 * i], need[9 + 2 * i]
            grads_w.append(torch.cat([_mm_sum(g_out, x.to(g_out.dtype)) for x in x_parts], -1)
                           if need_w and g_out is not None else None)
            grads_w.append(g_out.flatten(0, -2).sum(0) if need_b and g_out is not None else None)
        return (g_state0 if need[0] else None, g_belief0 if need[1] else None,
                _matmul(g_u1, w1[:, n_s:].t(), like=action).to(action.dtype) if need[2] else None,
                _matmul(g_u4, w4[:, n_r:].t(), like=embedding).to(embedding.dtype)
                if need[3] else None,
                None, None, None, None, *grads_w)


def rssm_scan(prior, posterior, state0: Tensor, belief0: Tensor, action: Tensor,
              embedding: Tensor, reset: Tensor | None, noise: Tensor) -> tuple[Tensor, ...]:
    """Filter ``T`` steps with a forward and a reverse ``scan`` (see the module docstring).

    Args:
        prior, posterior: :class:`RSSMPrior` and :class:`RSSMPosterior` (checked by
            :func:`supports_rssm_scan`).
        state0 ``(*B, S)``, belief0 ``(*B, R)``: the latent entering step 0.
        action ``(T, *B, A)``, embedding ``(T, *B, E)``, reset ``(T, *B, 1)`` bool (the
        latent entering step ``t`` is zeroed where ``reset[t]``; ``None``: no resets), noise
        ``(T, *B, S)``: time first.

    Returns:
        ``(prior_mean, prior_std, posterior_mean, posterior_std, state, belief, entering
        state, entering belief)``, each ``(T, *B, .)``, differentiable w.r.t. the latent at
        step 0, the actions, the embeddings and both modules' parameters.

    Examples:
        >>> import torch
        >>> from reverie.modules import RSSMPosterior, RSSMPrior
        >>> prior = RSSMPrior(action_dim=1, hidden_dim=8, rnn_hidden_dim=6, state_dim=3)
        >>> post = RSSMPosterior(hidden_dim=8, state_dim=3, rnn_hidden_dim=6, obs_embed_dim=5)
        >>> T, B = 10, 4
        >>> emb = torch.randn(T, B, 5, requires_grad=True)
        >>> outs = rssm_scan(prior, post, torch.zeros(B, 3), torch.zeros(B, 6),
        ...                  torch.randn(T, B, 1), emb, torch.zeros(T, B, 1, dtype=torch.bool),
        ...                  torch.randn(T, B, 3))
        >>> [tuple(o.shape) for o in outs[4:6]]  # posterior sample and belief
        [(10, 4, 3), (10, 4, 6)]
        >>> outs[4].sum().backward()
        >>> emb.grad.shape
        torch.Size([10, 4, 5])
    """
    return _RSSMScan.apply(state0, belief0, action, embedding, reset, noise, prior.scale_lb,
                           posterior.scale_lb, *_weights(prior, posterior))
