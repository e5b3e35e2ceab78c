"""DreamerV3's recurrent state-space model (Hafner et al. 2023, https://arxiv.org/abs/2301.04104).

The latent at time t is a deterministic belief ``h_t`` (``D`` units, a block GRU) and a
stochastic state ``z_t``: ``S`` categorical variables of ``C`` classes each, held as a flat
one-hot ``(*B, S * C)`` vector::

    core       h_{t+1} = blockGRU(h_t, z_t, a_t)
    prior      p(z_{t+1} | h_{t+1})            = Cat(unimix(MLP(h_{t+1})))
    posterior  q(z_{t+1} | h_{t+1}, e_{t+1})   = Cat(unimix(MLP([h_{t+1}, e_{t+1}])))

with ``unimix`` the 1% uniform mixture (paper, "Robustness") and samples drawn one-hot with
straight-through gradients. The layer layout follows the authors' current code
(``dreamerv3/rssm.py``): every hidden layer is ``Linear -> RMSNorm -> SiLU``; the core embeds
``h``, ``z`` and ``a`` separately (one such layer each), concatenates the three embeddings to
each of ``G`` blocks of ``h``, applies ``dyn_layers`` block-diagonal layers and a
block-diagonal GRU gate layer::

    a   <- a / sg(max(1, |a|))                         (elementwise)
    x   = [SiLU(RMS(W_h h)), SiLU(RMS(W_z z)), SiLU(RMS(W_a a))]          (*B, 3H)
    u   = [h_g, x]_g  for each block g = 1..G                             (*B, G, D/G + 3H)
    u   = SiLU(RMS(BlockLinear(u)))        (dyn_layers times)              (*B, D)
    r, c, v = BlockLinear(u)               (each block's output split in 3)
    h'  = sigmoid(v - 1) * tanh(sigmoid(r) * c) + (1 - sigmoid(v - 1)) * h

The concatenation ``u`` is never built: per block ``W_g [h_g; x] = W_g^h h_g + W_g^x x``, so
the shared part is one dense product of ``x`` with the blocks' ``x``-rows side by side and
the belief part a block-diagonal product (:func:`block_gru_step`; the parameters keep the
layout above, so checkpoints are unchanged).

Linear layers followed by a norm carry no bias (as the paper-era code; the current code
keeps a bias there); the RMSNorm has a learned scale and ``eps = 1e-4``. Weights start
from the authors' ``trunc_normal_in``: a standard normal truncated to ``[-2, 2]`` times
``1.1368 / sqrt(fan_in)`` (for a :class:`BlockLinear` the fan-in is the *whole* input width,
as the authors compute it), biases at 0, the logit layers scaled by ``outscale`` (1).

Sizes (paper, table of model sizes; stoch 32 x 32; ``blocks = 8`` is the current code's):

====  ===============  ===============  =============  ==========
size  GRU ``deter``    ``hidden``       CNN ``depth``  MLP layers
====  ===============  ===============  =============  ==========
XS    256              256              24             1
S     512              512              32             2
M     1024             640              48             3
L     2048             768              64             4
XL    4096             1024             96             5
====  ===============  ===============  =============  ==========

The defaults are the paper's XL model (``deter=4096, hidden=1024``), which is also the
paper-era code's default configuration. (The current code's sizes are named by parameter
count instead, e.g. ``size50m``: deter 4096, hidden 512, classes 32; its default
``size200m``: deter 8192, hidden 1024, classes 64.)

In TorchRL's transition layout the root of ``td[t]`` holds ``(z_t, h_t, a_t)`` and
``("next", ...)`` what step t produces: ``h_{t+1}``, the prior and posterior of ``z_{t+1}``
(from the embedding of ``("next", obs)``).
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import unravel_key
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from reverie.objectives.dreamer_v3_math import unimix_logits

__all__ = ["BlockLinear", "RSSMPosteriorV3", "RSSMPriorV3", "RSSMRolloutV3"]

NORM_EPS = 1e-4  # the authors' RMSNorm epsilon


def trunc_normal_(weight: Tensor, fan_in: int, outscale: float = 1.0) -> Tensor:
    """The authors' ``trunc_normal_in`` initialiser, in place: ``N(0, 1)`` truncated to
    ``[-2, 2]``, times ``1.1368 / sqrt(fan_in) * outscale`` (``outscale = 0``: zeros)."""
    with torch.no_grad():
        if outscale == 0.0:
            return weight.zero_()
        nn.init.trunc_normal_(weight, 0.0, 1.0, -2.0, 2.0)
        return weight.mul_(outscale * 1.1368 / math.sqrt(fan_in))


def linear(in_features: int, out_features: int, bias: bool = True,
           outscale: float = 1.0) -> nn.Linear:
    """An ``nn.Linear`` initialised as the authors do (:func:`trunc_normal_`, zero bias)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    trunc_normal_(layer.weight, in_features, outscale)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class BlockLinear(nn.Module):
    """Block-diagonal linear layer: ``G`` independent linear maps on ``G`` equal slices.

    The input's last dim is split into ``blocks`` groups of ``in_features / blocks``; group
    ``g`` maps to output slice ``g`` (``out_features / blocks`` units) with its own weight,
    all in one batched matmul. Equal to ``x @ block_diag(W_1, ..., W_G) + b``
    (:meth:`dense_weight`) with ``G`` times fewer weights and multiply-adds.

    Args:
        in_features, out_features: total sizes, both divisible by ``blocks``.
        blocks: the number of groups ``G``.
        bias: add a learned bias ``(out_features,)`` (zeros at init).
        outscale: the init scale of the weight (see :func:`trunc_normal_`; fan-in is
            ``in_features``, as the authors compute it for their block kernels).

    Shapes: ``(*B, in_features)`` -> ``(*B, out_features)``; ``weight`` is
    ``(G, in_features / G, out_features / G)``.

    Examples:
        >>> import torch
        >>> layer = BlockLinear(8, 6, blocks=2)
        >>> x = torch.randn(4, 3, 8)
        >>> layer(x).shape, layer.weight.shape
        (torch.Size([4, 3, 6]), torch.Size([2, 4, 3]))
        >>> torch.allclose(layer(x), x @ layer.dense_weight() + layer.bias, atol=1e-6)
        True
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True,
                 outscale: float = 1.0) -> None:
        super().__init__()
        if blocks < 1 or in_features % blocks or out_features % blocks:
            raise ValueError(
                f"BlockLinear: in_features={in_features} and out_features={out_features} "
                f"must both be divisible by blocks={blocks}.")
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        self.weight = nn.Parameter(
            torch.empty(blocks, in_features // blocks, out_features // blocks))
        trunc_normal_(self.weight, in_features, outscale)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        G = self.blocks
        x = x.reshape(-1, G, self.in_features // G).transpose(0, 1)  # (G, N, I/G)
        if self.bias is None:
            y = torch.bmm(x, self.weight)
        else:
            y = torch.baddbmm(self.bias.view(G, 1, -1), x, self.weight)  # (G, N, O/G)
        return y.transpose(0, 1).reshape(*lead, self.out_features)

    def dense_weight(self) -> Tensor:
        """The equivalent dense ``(in_features, out_features)`` block-diagonal matrix."""
        return torch.block_diag(*self.weight.unbind(0))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"blocks={self.blocks}, bias={self.bias is not None}")


class _RMSNormFunction(torch.autograd.Function):
    """``x * rsqrt(mean(x^2) + eps) * w`` over the last dim with a short hand-derived backward
    (``n = x r``: ``dx = r (dn - n mean(dn n))``, ``dn = dy w``, ``dw = sum dy n``), about
    1.4x faster forward + backward on the CPU than autograd's, which differentiates
    :func:`torch.nn.functional.rms_norm`'s decomposition op by op. A lower-precision ``x``
    (bfloat16 under autocast) is normalised in the scale's precision and the result cast
    back, as torch does. The backward is made of torch ops on the saved input (``r``
    recomputed from it under ``create_graph``), so second derivatives are correct too."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        ctx.in_dtype = x.dtype
        x = x.to(weight.dtype)
        r = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))  # (*B, 1)
        n = x * r
        ctx.save_for_backward(x, n, weight, r)
        ctx.eps = eps
        return (n * weight).to(ctx.in_dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, n, weight, r = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        if torch.is_grad_enabled():  # create_graph: the statistics as functions of x
            r = torch.rsqrt(x.square().mean(-1, keepdim=True) + ctx.eps)
            n = x * r
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * n).reshape(-1, n.shape[-1]).sum(0)
        if ctx.needs_input_grad[0]:
            grad_n = grad * weight
            grad_x = (grad_n - n * (grad_n * n).mean(-1, keepdim=True)).mul_(r).to(ctx.in_dtype)
        return grad_x, grad_weight, None


def rms_norm(x: Tensor, norm: nn.RMSNorm) -> Tensor:
    """``norm(x)`` for an :class:`~torch.nn.RMSNorm` over the last dim with a learned scale:
    the same values as :func:`torch.nn.functional.rms_norm`, with a shorter backward (a
    lower-precision ``x``, e.g. bfloat16 under autocast, is normalised in the scale's
    float32 and cast back, as torch does)."""
    weight = norm.weight
    if (weight is None or len(norm.normalized_shape) != 1
            or x.dtype.itemsize > weight.dtype.itemsize):  # e.g. float64 x, float32 scale
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    eps = torch.finfo(weight.dtype).eps if norm.eps is None else norm.eps
    return _RMSNormFunction.apply(x, weight, eps)


def split_linear(inputs: tuple[Tensor, ...] | list[Tensor], layer: nn.Linear) -> Tensor:
    """``layer(torch.cat(inputs, -1))`` without building the concatenation: one product per
    input with its slice of the weight's columns, accumulated (``addmm``). Equal up to float
    rounding; it saves writing and reading the concatenation, e.g. ``(N, S * C + D)`` for
    the heads on ``(state, belief)``. ``inputs``: ``(*B, d_i)`` with ``sum d_i ==
    in_features`` -> ``(*B, out_features)``."""
    if len(inputs) == 1:
        return layer(inputs[0])
    sizes = [x.shape[-1] for x in inputs]
    if sum(sizes) != layer.in_features or len({x.shape[:-1] for x in inputs}) != 1:
        raise ValueError(
            f"split_linear: inputs of shapes {[tuple(x.shape) for x in inputs]} do not make the "
            f"(*B, {layer.in_features}) concatenation the layer expects.")
    lead = inputs[0].shape[:-1]
    weights = layer.weight.split(sizes, 1)
    y = F.linear(inputs[-1], weights[-1], layer.bias).reshape(-1, layer.out_features)
    for x, w in zip(inputs[:-1], weights[:-1], strict=True):
        y = torch.addmm(y, x.reshape(-1, x.shape[-1]), w.t())
    return y.reshape(*lead, layer.out_features)


class LinearNormAct(nn.Module):
    """``SiLU(RMSNorm(W x))``: a linear layer without bias (a :class:`BlockLinear` when
    ``blocks > 1``), an RMSNorm (learned scale, eps 1e-4) and a SiLU: DreamerV3's hidden
    layer. ``(*B, in_features)`` -> ``(*B, out_features)``; several inputs ``(*B, d_i)``
    (dense layers only) act as their concatenation (:func:`split_linear`).

    Examples:
        >>> import torch
        >>> LinearNormAct(5, 4)(torch.randn(2, 5)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, blocks: int = 1) -> None:
        super().__init__()
        self.linear = (linear(in_features, out_features, bias=False) if blocks == 1
                       else BlockLinear(in_features, out_features, blocks, bias=False))
        self.norm = nn.RMSNorm(out_features, eps=NORM_EPS)

    def forward(self, *inputs: Tensor) -> Tensor:
        if len(inputs) > 1 and not isinstance(self.linear, nn.Linear):
            raise ValueError("LinearNormAct: several inputs need a dense layer (blocks=1).")
        return F.silu(rms_norm(split_linear(inputs, self.linear), self.norm))


# ---------------------------------------------------------------- categorical sampling
def gumbel_from_uniform(uniform: Tensor) -> Tensor:
    """Gumbel noise ``-log(-log(u))`` from uniform noise (clamped as in
    :func:`~reverie.objectives.dreamer_v3_math.one_hot_straight_through`)."""
    return -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))


def sample_one_hot(raw_logits: Tensor, unimix: float, gumbel: Tensor) -> Tensor:
    """A one-hot sample of ``Cat((1 - u) softmax(raw_logits) + u / C)`` (Gumbel-max with the
    given noise) with the authors' straight-through gradient ``onehot + p - sg(p)`` of the
    mixed probabilities ``p`` (``(1 - u)`` times the softmax's).

    The forward value is *exactly* one-hot (``onehot + (p - sg(p))`` adds an exact 0).
    ``raw_logits``, ``gumbel``: ``(*B, C)`` -> ``(*B, C)``. :func:`sample_with_logits` also
    returns the mixture's log-probabilities, sharing the softmax.
    """
    return sample_with_logits(raw_logits, unimix, gumbel, logits=False)[1]


def sample_with_logits(raw_logits: Tensor, unimix: float, gumbel: Tensor,
                       logits: bool = True) -> tuple[Tensor | None, Tensor]:
    """``(unimix_logits(raw_logits, unimix), sample_one_hot(raw_logits, unimix, gumbel))`` from
    one softmax: ``p = (1 - u) softmax(raw_logits) + u / C`` is computed once (with
    gradients); the log-probabilities are ``log p`` and the sample is the Gumbel-max one-hot
    of ``log p + gumbel`` plus ``p - sg(p)`` (equal values and gradients to the two separate
    calls, which each recompute the softmax). ``unimix = 0``: the logits are
    ``log_softmax(raw_logits)``, as :func:`~reverie.objectives.dreamer_v3_math.unimix_logits`
    gives. ``logits=False`` skips them (``None``).

    ``raw_logits``, ``gumbel``: ``(*B, C)`` -> ``((*B, C) or None, (*B, C))``, in the logits'
    dtype; with lower-precision logits (bfloat16 under autocast) the Gumbel-max draw itself
    is made in ``gumbel``'s float32.
    """
    probs = torch.softmax(raw_logits, -1)
    if unimix:
        probs = probs * (1.0 - unimix) + unimix / raw_logits.shape[-1]
        log_probs = torch.log(probs)  # every mixed probability is >= u / C > 0
        noisy = log_probs.detach().to(gumbel.dtype) + gumbel
        out = log_probs if logits else None
    else:
        out = torch.log_softmax(raw_logits, -1) if logits else None
        noisy = torch.log(probs.detach()).to(gumbel.dtype).add_(gumbel)
    with torch.no_grad():
        index = noisy.max(-1, keepdim=True)[1]  # faster than argmax
        onehot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return out, onehot + (probs - probs.detach())


def _gumbel(shape, ref: Tensor, uniform: Tensor | None, generator=None) -> Tensor:
    """Gumbel noise of ``shape`` from ``uniform`` (default a fresh draw), in ``ref``'s dtype
    but at least float32 (a bfloat16 draw has 8-bit steps: its Gumbel noise would stop at
    5.5 instead of about 16)."""
    dtype = torch.promote_types(ref.dtype, torch.float32)
    if uniform is None:  # a fresh draw: transformed in place (the same values)
        uniform = torch.rand(shape, generator=generator, dtype=dtype, device=ref.device)
        return uniform.clamp_(1e-20, 1.0 - 1e-7).log_().neg_().log_().neg_()
    if uniform.shape != torch.Size(shape):
        raise ValueError(
            f"uniform noise has shape {tuple(uniform.shape)}; expected {tuple(shape)}.")
    return gumbel_from_uniform(uniform.to(dtype))


# ---------------------------------------------------------------- the block GRU step
def _rms_silu(x: Tensor, norm: nn.RMSNorm) -> Tensor:
    return F.silu(rms_norm(x, norm))


def shared_input_weight(weight: Tensor, block_in: int) -> Tensor:
    """The shared-input rows of a first block layer as one dense matrix.

    ``weight`` ``(G, k + M, k)`` maps each block's input ``[h_g (k), x (M)]`` to its ``k``
    outputs; the result ``(M, G * k)`` holds the blocks' ``x``-rows side by side
    (``result[:, g * k:(g + 1) * k] == weight[g, block_in:]``), so that ``x @ result`` is
    every block's ``W_g^x x`` in one dense product. ``block_in`` is ``k``.
    """
    G, _, k = weight.shape
    return weight[:, block_in:].transpose(0, 1).reshape(-1, G * k)


def block_gru_step(belief: Tensor, shared: Tensor, belief_weight: Tensor, norms,
                   more_weights, gru_weight: Tensor, gru_bias: Tensor) -> Tensor:
    """One block-GRU step from the shared input's share of the first layer (time-major code).

    Per block ``g`` the first layer is ``W_g [h_g; x] = W_g^h h_g + W_g^x x``: ``shared``
    ``(N, D)`` is ``x @`` :func:`shared_input_weight` (computed by the caller, possibly
    for many steps at once) and the belief part is one batched ``(G, N, k) x (G, k, k)``
    product, instead of building the ``(N, G, k + 3H)`` concatenation of every block's
    slice with the same ``x``. Then the norms, the further block layers and the gates::

        u  = SiLU(RMS(shared + [W_g^h h_g]_g))           (dyn_layers block layers)
        r, u', c = BlockLinear(u)  (reordered per block: reset, update, candidate; bias - 1
                                    on the update gate folded into ``gru_bias``)
        h' = lerp(h, tanh(sigmoid(r) c), sigmoid(u'))

    Args:
        belief: ``h`` ``(N, D)``.
        shared: ``(N, D)``, the shared input's contribution to the first block layer.
        belief_weight: ``(G, k, k)``, the belief rows of the first block layer.
        norms: the RMSNorm modules of the ``dyn_layers`` block layers.
        more_weights: the weights ``(G, k, k)`` of block layers 2..dyn_layers.
        gru_weight: ``(G, k, 3k)`` gate weights with each block's outputs ordered
            ``[reset, update, candidate]``.
        gru_bias: ``(G, 1, 3k)`` in the same order, ``-1`` already added to the update gate.

    Returns:
        ``h'`` ``(N, D)``.
    """
    N, D = belief.shape
    G, k = belief_weight.shape[0], D // belief_weight.shape[0]
    blocks = belief.view(N, G, k).transpose(0, 1)  # (G, N, k)
    x = torch.baddbmm(shared.view(N, G, k).transpose(0, 1), blocks, belief_weight)  # (G, N, k)
    x = _rms_silu(x.transpose(0, 1).reshape(N, D), norms[0])
    for w, norm in zip(more_weights, norms[1:], strict=True):
        x = torch.bmm(x.view(N, G, k).transpose(0, 1), w)
        x = _rms_silu(x.transpose(0, 1).reshape(N, D), norm)
    gates = torch.baddbmm(gru_bias, x.view(N, G, k).transpose(0, 1), gru_weight)  # (G, N, 3k)
    reset_update = torch.sigmoid(gates[..., :2 * k])
    cand = torch.tanh(reset_update[..., :k] * gates[..., 2 * k:])
    # h + u (cand - h); under autocast the gates may be bfloat16: the belief keeps its dtype
    belief = torch.lerp(blocks, cand.to(blocks.dtype), reset_update[..., k:].to(blocks.dtype))
    return belief.transpose(0, 1).reshape(N, D)


class RSSMPriorV3(nn.Module):
    """Transition prior: ``(z_t, h_t, a_t) -> (prior logits, z_{t+1} ~ p, h_{t+1})``.

    :meth:`core` is the block GRU (see the module docstring), :meth:`prior_logits` the prior
    head ``img_layers x (Linear, RMSNorm, SiLU)`` then ``Linear(hidden, S * C)`` on
    ``h_{t+1}`` alone, followed by the 1% uniform mix.

    Args:
        action_dim: action size ``A`` (continuous actions in ``[-1, 1]`` or one-hot discrete
            ones; larger magnitudes are scaled by ``sg(max(1, |a|))`` as the authors do).
        deter: belief size ``D`` (the GRU units).
        hidden: width of the core's input embeddings and of the prior head.
        stoch, classes: the stochastic state is ``stoch`` categoricals of ``classes`` classes.
        blocks: blocks ``G`` of the block GRU (divides ``deter``).
        unimix: uniform mixture weight of the categoricals.
        dyn_layers: block-diagonal hidden layers in the core.
        img_layers: hidden layers of the prior head.
        outscale: init scale of the logit layer.

    Defaults: the paper's XL model; XS is ``deter=256, hidden=256``, S ``512, 512``, M
    ``1024, 640``, L ``2048, 768`` (module docstring).

    Shapes: ``state (*B, S * C)`` (one-hot), ``belief (*B, D)``, ``action (*B, A)`` ->
    ``prior_logits (*B, S, C)`` (normalised log-probabilities, unimix applied), ``state
    (*B, S * C)`` (a straight-through one-hot sample), ``belief (*B, D)``. ``uniform``
    (``(*B, S, C)`` in ``(0, 1)``, default a fresh draw) fixes the sample.

    Examples:
        >>> import torch
        >>> prior = RSSMPriorV3(action_dim=2, deter=32, hidden=16, stoch=4, classes=5, blocks=4)
        >>> logits, state, belief = prior(torch.zeros(3, 20), torch.zeros(3, 32), torch.ones(3, 2))
        >>> logits.shape, state.shape, belief.shape
        (torch.Size([3, 4, 5]), torch.Size([3, 20]), torch.Size([3, 32]))
        >>> state.view(3, 4, 5).sum(-1)
        tensor([[1., 1., 1., 1.],
                [1., 1., 1., 1.],
                [1., 1., 1., 1.]], grad_fn=<SumBackward1>)
        >>> bool((logits.exp() >= 0.01 / 5).all())
        True
    """

    def __init__(self, action_dim: int, deter: int = 4096, hidden: int = 1024, stoch: int = 32,
                 classes: int = 32, blocks: int = 8, unimix: float = 0.01, dyn_layers: int = 1,
                 img_layers: int = 2, outscale: float = 1.0) -> None:
        super().__init__()
        if deter % blocks:
            raise ValueError(f"RSSMPriorV3: deter={deter} must be divisible by blocks={blocks}.")
        if dyn_layers < 1:
            raise ValueError(f"RSSMPriorV3: dyn_layers={dyn_layers}; need at least 1.")
        self.action_dim, self.deter, self.hidden = action_dim, deter, hidden
        self.stoch, self.classes, self.blocks, self.unimix = stoch, classes, blocks, unimix
        self.state_dim, self.belief_dim = stoch * classes, deter
        self.dyn_in_belief = LinearNormAct(deter, hidden)
        self.dyn_in_state = LinearNormAct(stoch * classes, hidden)
        self.dyn_in_action = LinearNormAct(action_dim, hidden)
        self.dyn_hidden = nn.ModuleList(
            [LinearNormAct(deter + blocks * 3 * hidden if i == 0 else deter, deter, blocks)
             for i in range(dyn_layers)])
        self.gru = BlockLinear(deter, 3 * deter, blocks)  # per block: [reset, cand, update]
        self.img_hidden = nn.Sequential(
            *[LinearNormAct(deter if i == 0 else hidden, hidden) for i in range(img_layers)])
        self.prior_logit = linear(hidden if img_layers else deter, stoch * classes,
                                  outscale=outscale)

    def core(self, state: Tensor, belief: Tensor, action: Tensor) -> Tensor:
        """The block GRU: ``(z_t (*B, S*C), h_t (*B, D), a_t (*B, A)) -> h_{t+1} (*B, D)``.

        Computed as :func:`block_gru_step`: the embeddings ``x = [x_h, x_z, x_a]`` (*B, 3H)
        enter the first block layer through one dense ``x @ W^x`` (the blocks' ``x``-rows
        side by side, :func:`shared_input_weight`), the belief through the block-diagonal
        rows; equal, up to float rounding, to the layer on the concatenation ``[h_g, x]``
        of every block ``g`` that the module docstring writes.
        """
        if action.shape[-1] != self.action_dim:
            raise ValueError(
                f"RSSMPriorV3: action has {action.shape[-1]} features (shape "
                f"{tuple(action.shape)}) but the prior was built for action_dim={self.action_dim}.")
        action = action.to(belief.dtype)
        action = action / action.abs().clamp_min(1.0).detach()
        x = torch.cat([self.dyn_in_belief(belief), self.dyn_in_state(state),
                       self.dyn_in_action(action)], -1)  # (*B, 3H)
        lead, D, k = belief.shape[:-1], self.deter, self.deter // self.blocks
        first = self.dyn_hidden[0].linear.weight  # (G, k + 3H, k): rows [h_g, x_h, x_z, x_a]
        shared = x.reshape(-1, 3 * self.hidden) @ shared_input_weight(first, k)  # (N, D)
        gru_weight, gru_bias = self.gate_weights()
        out = block_gru_step(belief.reshape(-1, D), shared, first[:, :k],
                             [layer.norm for layer in self.dyn_hidden],
                             [layer.linear.weight for layer in self.dyn_hidden[1:]],
                             gru_weight, gru_bias)
        return out.reshape(*lead, D)

    def gate_weights(self) -> tuple[Tensor, Tensor]:
        """The GRU layer's weight ``(G, k, 3k)`` and bias ``(G, 1, 3k)`` with each block's
        outputs reordered from ``[reset, cand, update]`` to ``[reset, update, cand]`` and the
        update gate's ``-1`` added to its bias (for :func:`block_gru_step`)."""
        G, k = self.blocks, self.deter // self.blocks
        order = [0, 2, 1]
        weight = self.gru.weight.view(G, k, 3, k)[:, :, order].reshape(G, k, 3 * k)
        offset = torch.zeros(3, k, dtype=weight.dtype, device=weight.device)
        offset[1] = -1.0  # the update gate's bias of -1
        bias = (self.gru.bias.view(G, 3, k)[:, order] + offset).reshape(G, 1, 3 * k)
        return weight, bias

    def raw_prior_logits(self, belief: Tensor) -> Tensor:
        """The prior head's logits before the uniform mix: ``(*B, D) -> (*B, S, C)``."""
        return self.prior_logit(self.img_hidden(belief)).unflatten(-1, (self.stoch, self.classes))

    def prior_logits(self, belief: Tensor) -> Tensor:
        """``h (*B, D)`` -> prior log-probabilities ``(*B, S, C)`` with the uniform mix."""
        return unimix_logits(self.raw_prior_logits(belief), self.unimix)

    def forward(self, state: Tensor, belief: Tensor, action: Tensor,
                uniform: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        belief = self.core(state, belief, action)
        raw = self.raw_prior_logits(belief)
        logits, state = sample_with_logits(raw, self.unimix, _gumbel(raw.shape, raw, uniform))
        return logits, state.flatten(-2), belief

    def mode(self, state: Tensor, belief: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """The most likely step: ``(one-hot argmax of every prior categorical (*B, S * C),
        h_{t+1} (*B, D))`` (open-loop diagnostics)."""
        belief = self.core(state, belief, action)
        logits = self.raw_prior_logits(belief)
        index = logits.argmax(-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, index, 1.0).flatten(-2), belief


class RSSMPosteriorV3(nn.Module):
    """Representation model: ``(h_{t+1}, e_{t+1}) -> (posterior logits, z_{t+1} ~ q)``.

    ``obs_layers x (Linear, RMSNorm, SiLU)`` on ``[h, e]``, then ``Linear(hidden, S * C)``
    and the uniform mix (the authors' ``absolute=False``: the posterior sees the belief).

    Args:
        belief_dim: ``D``.
        embed_dim: size ``E`` of the observation embedding.
        hidden: width of the hidden layers.
        stoch, classes, unimix, outscale: as in :class:`RSSMPriorV3`.
        obs_layers: hidden layers (at least 1).

    Shapes: ``belief (*B, D)``, ``embedding (*B, E)`` -> ``posterior_logits (*B, S, C)``
    (normalised, unimix applied), ``state (*B, S * C)`` (straight-through one-hot sample);
    ``uniform`` (``(*B, S, C)``) fixes the sample.

    Examples:
        >>> import torch
        >>> post = RSSMPosteriorV3(belief_dim=32, embed_dim=7, hidden=16, stoch=4, classes=5)
        >>> logits, state = post(torch.zeros(3, 32), torch.randn(3, 7))
        >>> logits.shape, state.shape, bool(((state == 0) | (state == 1)).all())
        (torch.Size([3, 4, 5]), torch.Size([3, 20]), True)
    """

    def __init__(self, belief_dim: int, embed_dim: int, hidden: int = 1024, stoch: int = 32,
                 classes: int = 32, unimix: float = 0.01, obs_layers: int = 1,
                 outscale: float = 1.0) -> None:
        super().__init__()
        if obs_layers < 1:
            raise ValueError(f"RSSMPosteriorV3: obs_layers={obs_layers}; need at least 1.")
        self.belief_dim, self.embed_dim, self.hidden = belief_dim, embed_dim, hidden
        self.stoch, self.classes, self.unimix = stoch, classes, unimix
        self.state_dim = stoch * classes
        self.obs_hidden = nn.Sequential(
            *[LinearNormAct(belief_dim + embed_dim if i == 0 else hidden, hidden)
              for i in range(obs_layers)])
        self.post_logit = linear(hidden, stoch * classes, outscale=outscale)

    def raw_posterior_logits(self, belief: Tensor, embedding: Tensor) -> Tensor:
        """Logits before the uniform mix, ``(*B, S, C)``."""
        x = torch.cat([belief, embedding.to(belief.dtype)], -1)
        return self.post_logit(self.obs_hidden(x)).unflatten(-1, (self.stoch, self.classes))

    def forward(self, belief: Tensor, embedding: Tensor,
                uniform: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if embedding.shape[-1] != self.embed_dim:
            raise ValueError(
                f"RSSMPosteriorV3: embedding has {embedding.shape[-1]} features but the "
                f"posterior was built for embed_dim={self.embed_dim}.")
        raw = self.raw_posterior_logits(belief, embedding)
        logits, state = sample_with_logits(raw, self.unimix, _gumbel(raw.shape, raw, uniform))
        return logits, state.flatten(-2)

    def mode(self, belief: Tensor, embedding: Tensor) -> Tensor:
        """The most likely state: the one-hot argmax of every posterior categorical,
        ``(*B, S * C)``."""
        logits = self.raw_posterior_logits(belief, embedding)
        index = logits.argmax(-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, index, 1.0).flatten(-2)


def _inner(module, name: str, cls: type) -> nn.Module:
    if not isinstance(module, TensorDictModule) or not isinstance(module.module, cls):
        raise TypeError(
            f"RSSMRolloutV3: {name} must be a TensorDictModule wrapping {cls.__name__} "
            f"(got {type(module).__name__}"
            f"{'(' + type(module.module).__name__ + ')' if hasattr(module, 'module') else ''}).")
    return module.module


class RSSMRolloutV3(TensorDictModuleBase):
    """Roll the DreamerV3 RSSM over the time dim of a ``[*B, T]`` tensordict (filtering).

    For t = 0..T-1, with ``(z_0, h_0)`` read at t = 0 (zeros when the tensordict has none)::

        (z_t, h_t, a_t) <- (0, 0, 0)  first, where is_init[t] is set (an episode starts at t)
        h_{t+1}           = prior.core(z_t, h_t, a_t)
        p(z_{t+1})        = prior.prior_logits(h_{t+1})
        q(z_{t+1}), z_{t+1} = posterior(h_{t+1}, e_t)

    At resets the action is zeroed along with the latent, as the authors do (their
    ``_observe`` masks the carry and the previous action); v1's :class:`RSSMRollout` keeps
    the action. (In the authors' layout the masked action is the last one of the previous
    episode; in TorchRL's, ``a_t`` at an ``is_init`` step is the first action of the new
    episode, taken at the first observation, which this rollout does not encode.)

    Keys come from the two modules: the prior's ``in_keys`` name ``(state, belief, action)``
    and its ``out_keys`` ``(prior_logits, <unused>, belief)``; the posterior's ``in_keys``
    ``(belief, embedding)`` and ``out_keys`` ``(posterior_logits, state)``. Written ``[*B, T,
    ...]``: ``prior_logits`` and ``posterior_logits`` ``(S, C)``, ``state`` ``(S * C)``,
    ``belief`` ``(D)``; when the outputs live elsewhere than the inputs (``("next", "state")``
    vs ``"state"``), the input keys are filled with the latent *entering* each step (after
    the reset), so ``td["state"][:, t + 1] == td["next", "state"][:, t]`` within an episode.
    Optional ``is_init``: root, ``[*B, T, 1]`` (or ``[*B, T]``) bool.

    Only the recurrence runs in the time loop, on tensors: the core and the posterior's
    belief-dependent part. The action's input layer and its share of the first block layer,
    the embedding's share of the posterior's first layer, and the sampling noise are
    computed for all T at once before the loop; the prior head and the uniform mix of both
    distributions after it. The result equals the step-by-step loop over ``prior(...)`` and
    ``posterior(...)`` with the same noise, in values and gradients. Forward plus backward
    of the XS model (``deter=256, hidden=256``, 32 x 32 latents, a 256-d embedding) at
    ``B=16, T=64`` takes about 0.2 s on one CPU thread (under 0.1 s forward); with only
    16 rows per step it is bound by per-operation overhead, not arithmetic.

    Args:
        rssm_prior: ``TensorDictModule`` wrapping :class:`RSSMPriorV3`.
        rssm_posterior: ``TensorDictModule`` wrapping :class:`RSSMPosteriorV3`.

    ``forward(tensordict, uniform=None, generator=None)``: ``uniform`` (``[*B, T, S, C]`` in
    ``(0, 1)``) fixes the posterior samples (step t's sample uses ``uniform[..., t, :, :]``
    as the posterior's ``uniform`` argument would); ``generator`` seeds a fresh draw.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> prior = TensorDictModule(
        ...     RSSMPriorV3(action_dim=2, deter=16, hidden=8, stoch=3, classes=4, blocks=4),
        ...     in_keys=["state", "belief", "action"],
        ...     out_keys=[("next", "prior_logits"), "_", ("next", "belief")])
        >>> post = TensorDictModule(
        ...     RSSMPosteriorV3(belief_dim=16, embed_dim=5, hidden=8, stoch=3, classes=4),
        ...     in_keys=[("next", "belief"), ("next", "encoded_latents")],
        ...     out_keys=[("next", "posterior_logits"), ("next", "state")])
        >>> td = TensorDict({"action": torch.randn(4, 10, 2),
        ...                  ("next", "encoded_latents"): torch.randn(4, 10, 5)}, [4, 10])
        >>> out = RSSMRolloutV3(prior, post)(td)
        >>> out["next", "prior_logits"].shape, out["next", "state"].shape, out["belief"].shape
        (torch.Size([4, 10, 3, 4]), torch.Size([4, 10, 12]), torch.Size([4, 10, 16]))
        >>> bool((out["state"][:, 1:] == out["next", "state"][:, :-1]).all())
        True
    """

    def __init__(self, rssm_prior: TensorDictModule, rssm_posterior: TensorDictModule) -> None:
        super().__init__()
        self.rssm_prior, self.rssm_posterior = rssm_prior, rssm_posterior
        prior = _inner(rssm_prior, "rssm_prior", RSSMPriorV3)
        post = _inner(rssm_posterior, "rssm_posterior", RSSMPosteriorV3)
        if len(rssm_prior.in_keys) != 3 or len(rssm_prior.out_keys) != 3:
            raise ValueError(
                "RSSMRolloutV3: rssm_prior needs in_keys (state, belief, action) and out_keys "
                f"(prior_logits, state, belief); got {rssm_prior.in_keys} -> "
                f"{rssm_prior.out_keys}.")
        if len(rssm_posterior.in_keys) != 2 or len(rssm_posterior.out_keys) != 2:
            raise ValueError(
                "RSSMRolloutV3: rssm_posterior needs in_keys (belief, embedding) and out_keys "
                f"(posterior_logits, state); got {rssm_posterior.in_keys} -> "
                f"{rssm_posterior.out_keys}.")
        if (prior.deter, prior.stoch, prior.classes) != (post.belief_dim, post.stoch, post.classes):
            raise ValueError(
                f"RSSMRolloutV3: prior (deter={prior.deter}, stoch={prior.stoch}, "
                f"classes={prior.classes}) and posterior (belief_dim={post.belief_dim}, "
                f"stoch={post.stoch}, classes={post.classes}) do not match.")
        self.state_key, self.belief_key, self.action_key = map(unravel_key, rssm_prior.in_keys)
        self.embed_key = unravel_key(rssm_posterior.in_keys[1])
        self.prior_logits_key, _, self.next_belief_key = map(unravel_key, rssm_prior.out_keys)
        self.posterior_logits_key, self.next_state_key = map(unravel_key,
                                                             rssm_posterior.out_keys)
        self.in_keys = [self.state_key, self.belief_key, self.action_key, self.embed_key]
        self.out_keys = [self.prior_logits_key, self.posterior_logits_key, self.next_state_key,
                         self.next_belief_key]
        self.state_dim, self.belief_dim = prior.state_dim, prior.deter

    def forward(self, tensordict: TensorDictBase, uniform: Tensor | None = None,
                generator: torch.Generator | None = None) -> TensorDictBase:
        if tensordict.ndim < 1:
            raise ValueError("RSSMRolloutV3: the tensordict needs a time dim, batch [*B, T].")
        for key in (self.action_key, self.embed_key):
            if key not in tensordict.keys(True, True):
                raise KeyError(
                    f"RSSMRolloutV3: missing input {key!r} ([*B, T, .]) in the tensordict with "
                    f"keys {sorted(map(str, tensordict.keys(True, True)))}.")
        prior, post = self.rssm_prior.module, self.rssm_posterior.module
        *lead, T = tensordict.batch_size
        t_dim, N = len(lead), math.prod(lead)
        embedding = tensordict.get(self.embed_key)
        action = tensordict.get(self.action_key)
        ref = embedding if embedding.is_floating_point() else prior.prior_logit.weight
        state0 = self._initial(tensordict, self.state_key, self.state_dim, lead, ref)
        belief0 = self._initial(tensordict, self.belief_key, self.belief_dim, lead, ref)
        is_init = tensordict.get("is_init", None)

        def time_major(x: Tensor) -> Tensor:  # [*B, T, ...] -> (T, N, ...)
            return x.movedim(t_dim, 0).reshape(T, N, *x.shape[t_dim + 1:])

        keep = None
        if is_init is not None:
            reset = is_init.reshape(*lead, T, -1)[..., :1].bool()
            keep = time_major((~reset).to(ref.dtype))  # (T, N, 1)
        S, C = prior.stoch, prior.classes
        if uniform is not None:
            if uniform.shape != (*lead, T, S, C):
                raise ValueError(f"RSSMRolloutV3: uniform has shape {tuple(uniform.shape)}; "
                                 f"expected {(*lead, T, S, C)}.")
            uniform = time_major(uniform)
        gumbel = _gumbel((T, N, S, C), ref, uniform, generator)
        outs = _filter(prior, post, state0.reshape(N, -1), belief0.reshape(N, -1),
                       time_major(action).to(ref.dtype), time_major(embedding).to(ref.dtype),
                       keep, gumbel)
        next_state, next_belief, raw_post, enter_state, enter_belief = outs
        prior_logits = prior.prior_logits(next_belief)  # all T at once, (T, N, S, C)
        post_logits = unimix_logits(raw_post, post.unimix)

        def batch_major(x: Tensor) -> Tensor:  # (T, N, ...) -> [*B, T, ...]
            return x.reshape(T, *lead, *x.shape[2:]).movedim(0, t_dim)

        tensordict.set(self.prior_logits_key, batch_major(prior_logits))
        tensordict.set(self.posterior_logits_key, batch_major(post_logits))
        tensordict.set(self.next_state_key, batch_major(next_state))
        tensordict.set(self.next_belief_key, batch_major(next_belief))
        if self.state_key != self.next_state_key:
            tensordict.set(self.state_key, batch_major(enter_state))
        if self.belief_key != self.next_belief_key:
            tensordict.set(self.belief_key, batch_major(enter_belief))
        return tensordict

    def _initial(self, td, key, dim, lead, ref) -> Tensor:
        value = td.get(key, None)
        if value is None:
            return torch.zeros((*lead, dim), dtype=ref.dtype, device=ref.device)
        if value.shape[-1] != dim:
            raise ValueError(
                f"RSSMRolloutV3: {key!r} has shape {tuple(value.shape)}; expected [*B, T, {dim}].")
        return value.select(len(lead), 0).to(ref.dtype)


def _filter(prior: RSSMPriorV3, post: RSSMPosteriorV3, state: Tensor, belief: Tensor,
            action: Tensor, embedding: Tensor, keep: Tensor | None, gumbel: Tensor):
    """The filtering recurrence on time-major tensors: ``state (N, S*C)``, ``belief (N, D)``,
    ``action (T, N, A)``, ``embedding (T, N, E)``, ``keep (T, N, 1)`` (0 at resets) or
    ``None``, ``gumbel (T, N, S, C)``.

    Returns ``(T, N, .)`` stacks of the posterior samples, the beliefs ``h_{t+1}``, the raw
    posterior logits ``(T, N, S, C)`` and the entering (reset) state and belief.
    """
    T, N = action.shape[:2]
    D, H, G, u = prior.deter, prior.hidden, prior.blocks, post.unimix
    k = D // G
    S, C = post.stoch, post.classes
    # ---- everything that does not depend on the recurrence, for all T at once
    action = action / action.abs().clamp_min(1.0).detach()
    if keep is not None:
        action = action * keep
    x_action = prior.dyn_in_action(action)  # (T, N, H)
    first = prior.dyn_hidden[0].linear.weight  # (G, k + 3H, k): rows [h_g, x_h, x_z, x_a]
    w_shared = shared_input_weight(first, k)  # (3H, D): rows [x_h, x_z, x_a]
    w_hz = w_shared[:2 * H]
    pre = x_action @ w_shared[2 * H:]  # (T, N, D): the action's share of the first layer
    w_h = first[:, :k]  # (G, k, k)
    norms = [layer.norm for layer in prior.dyn_hidden]
    more = [layer.linear.weight for layer in prior.dyn_hidden[1:]]
    w_gru, b_gru = prior.gate_weights()
    w_post = post.obs_hidden[0].linear.weight  # (Hq, D + E)
    x_embed = F.linear(embedding, w_post[:, D:])  # (T, N, Hq)
    w_post_belief = w_post[:, :D].t()
    w_belief, w_state = prior.dyn_in_belief.linear.weight.t(), prior.dyn_in_state.linear.weight.t()
    n_belief, n_state = prior.dyn_in_belief.norm, prior.dyn_in_state.norm
    post_rest, post_logit = list(post.obs_hidden)[1:], post.post_logit
    n_post = post.obs_hidden[0].norm

    states, beliefs, raws, enter_states, enter_beliefs = [], [], [], [], []
    keeps = [None] * T if keep is None else keep.unbind(0)
    for pre_t, x_embed_t, gumbel_t, keep_t in zip(pre.unbind(0), x_embed.unbind(0),
                                                  gumbel.unbind(0), keeps, strict=True):
        if keep_t is not None:
            state, belief = state * keep_t, belief * keep_t
        enter_states.append(state)
        enter_beliefs.append(belief)
        x_h = _rms_silu(belief @ w_belief, n_belief)
        x_z = _rms_silu(state @ w_state, n_state)
        shared = torch.addmm(pre_t, torch.cat([x_h, x_z], -1), w_hz)  # (N, D)
        belief = block_gru_step(belief, shared, w_h, norms, more, w_gru, b_gru)
        beliefs.append(belief)
        x = _rms_silu(torch.addmm(x_embed_t, belief, w_post_belief), n_post)
        for layer in post_rest:
            x = layer(x)
        raw = post_logit(x).view(N, S, C)
        raws.append(raw)
        state = sample_one_hot(raw, u, gumbel_t).view(N, S * C)
        states.append(state)
    return tuple(torch.stack(x) for x in (states, beliefs, raws, enter_states, enter_beliefs))
