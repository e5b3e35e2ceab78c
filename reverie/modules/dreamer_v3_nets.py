"""DreamerV3's networks (Hafner et al. 2023, https://arxiv.org/abs/2301.04104): MLP, the
64x64 image encoder and decoder, the symexp two-hot head, and the two actors.

Every hidden layer is ``Linear (no bias) -> RMSNorm -> SiLU``
(:class:`~reverie.modules.rssm_v3.LinearNormAct`), initialised as the authors do (truncated
normal scaled by ``1 / sqrt(fan_in)``); output layers carry a bias and an ``outscale``
multiplying their initial weights, as the authors' heads do: 0 for the reward and critic
logits (a fresh head predicts exactly 0), 0.01 for the actor, 1 elsewhere.

Heads and actors read the features ``concat(state (*B, S * C), belief (*B, D))`` (the flat
one-hot stochastic state, then the deterministic belief). The authors concatenate
``[deter, stoch]``: the same network up to a permutation of the first layer's inputs.
Every network here also takes the parts as separate arguments, ``net(state, belief)``, and
then computes its first layer as ``W_z z + W_h h`` (:func:`~reverie.modules.rssm_v3.split_linear`)
without writing the concatenation: equal up to float rounding, and about 5% faster on a
DreamerV3 update on the CPU (the ``(N, S * C + D)`` copies of the heads on every imagined
latent go away).

Vector observations: the authors encode ``symlog(obs)`` with an MLP (3 layers of ``units``
in their current code); use :class:`DreamerV3MLP` with ``out_features=None`` on
:func:`~reverie.objectives.dreamer_v3_math.symlog` of the observation.

Sizes (paper): ``hidden`` XS 256, S 512, M 640, L 768, XL 1024 units; ``layers`` XS 1,
S 2, M 3, L 4, XL 5; CNN ``depth`` XS 24, S 32, M 48, L 64, XL 96 (see
:mod:`reverie.modules.rssm_v3`). The MLP defaults are the paper's XL (1024 units, 5 layers).
"""

from __future__ import annotations

import torch
from torch import Tensor, distributions, nn
from torch.nn import functional as F  # noqa: N812

from reverie.modules.rssm_v3 import (
    NORM_EPS,
    BlockLinear,
    LinearNormAct,
    gumbel_from_uniform,
    linear,
    rms_norm,
    sample_one_hot,
    split_linear,
    trunc_normal_,
)
from reverie.objectives.dreamer_v3_math import symexp_bins, two_hot_decode, unimix_logits

__all__ = ["ClippedNormal", "DreamerV3ContinuousActor", "DreamerV3DiscreteActor",
           "DreamerV3ImageDecoder", "DreamerV3ImageEncoder", "DreamerV3MLP", "SymExpTwoHot"]


class DreamerV3MLP(nn.Module):
    """``layers x (Linear without bias -> RMSNorm -> SiLU)``, then an optional output Linear.

    Args:
        in_features: input size.
        out_features: output size of the final ``Linear`` (with bias); ``None``: no output
            layer, the MLP returns its last hidden layer (``hidden`` units).
        hidden: units per hidden layer.
        layers: hidden layers (0: the output layer alone).
        outscale: init scale of the output layer's weights (0: zeros, the output starts at
            exactly its bias, 0).

    Attributes:
        out_features: the output size.

    ``forward(*inputs)``: one ``(*B, in_features)`` tensor, or several ``(*B, d_i)`` parts
    that act as their concatenation (``sum d_i == in_features``).

    Examples:
        >>> import torch
        >>> mlp = DreamerV3MLP(10, 3, hidden=16, layers=2)
        >>> mlp(torch.randn(4, 5, 10)).shape
        torch.Size([4, 5, 3])
        >>> z, h = torch.randn(4, 6), torch.randn(4, 4)
        >>> torch.allclose(mlp(z, h), mlp(torch.cat([z, h], -1)), atol=1e-6)
        True
        >>> DreamerV3MLP(10, 3, hidden=16, layers=2, outscale=0.0)(torch.randn(2, 10))
        tensor([[0., 0., 0.],
                [0., 0., 0.]], grad_fn=<AddmmBackward0>)
    """

    def __init__(self, in_features: int, out_features: int | None = None, hidden: int = 1024,
                 layers: int = 5, outscale: float = 1.0) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            *[LinearNormAct(in_features if i == 0 else hidden, hidden) for i in range(layers)])
        width = hidden if layers else in_features
        self.out = None if out_features is None else linear(width, out_features, outscale=outscale)
        self.out_features = width if out_features is None else out_features

    def forward(self, *inputs: Tensor) -> Tensor:
        if not self.hidden:
            if self.out is None:
                return inputs[0] if len(inputs) == 1 else torch.cat(inputs, -1)
            return split_linear(inputs, self.out)
        x = self.hidden[0](*inputs)
        for layer in self.hidden[1:]:
            x = layer(x)
        return x if self.out is None else self.out(x)


def _flat_images(x: Tensor, what: str) -> tuple[Tensor, torch.Size]:
    if x.ndim < 3:
        raise ValueError(f"{what}: expected images (*B, C, H, W); got shape {tuple(x.shape)}.")
    return x.reshape(-1, *x.shape[-3:]), x.shape[:-3]


def _conv(in_channels: int, out_channels: int, kernel: int, bias: bool,
          outscale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)
    trunc_normal_(conv.weight, in_channels * kernel * kernel, outscale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _norm_silu_channels(x: Tensor, norm: nn.RMSNorm) -> Tensor:
    """RMSNorm over the channels of ``(N, C, H, W)`` images, then SiLU (layout kept)."""
    x = x.permute(0, 2, 3, 1)  # NHWC: a contiguous view for channels-last images
    x = F.silu(rms_norm(x, norm))
    return x.permute(0, 3, 1, 2)


class DreamerV3ImageEncoder(nn.Module):
    """Images ``(*B, C, 64, 64)`` in ``[0, 1]`` -> embedding ``(*B, out_features)``.

    The authors' current layout (``dreamerv3/rssm.py``, ``Encoder``, ``strided=False``): the
    input is shifted to ``[-0.5, 0.5]`` (they feed ``uint8 / 255 - 0.5``; pass ``obs / 255``
    here), then per stage ``i``: a ``kernel x kernel`` stride-1 "same" convolution with
    ``depth * mults[i]`` filters, 2x2 max-pooling (stride 2), RMSNorm over channels, SiLU;
    finally a flatten. 64x64 -> 4x4 after four stages: ``out_features = 16 * depth *
    mults[-1]`` (4096 at the default ``depth=64``). The convolutions carry no bias (a norm
    follows).

    Args:
        depth: channel multiplier (the authors' current default 64; the paper's size table
            gives 24 (XS), 32 (S), 48 (M), 64 (L), 96 (XL) for its older layout of
            ``depth * (1, 2, 4, 8)`` stride-2 convolutions, which ``mults=(1, 2, 4, 8)``,
            ``kernel=5`` approximates).
        mults: channel multipliers, one stage each (each halves the resolution).
        in_channels: image channels.
        kernel: convolution size.
        image_size: input height and width (divisible by ``2 ** len(mults)``).
        channels_last: run the convolutions on channels-last (NHWC) images, which oneDNN
            runs faster on the CPU (as :class:`~reverie.modules.ObsEncoder`); the output
            does not depend on it.

    Attributes:
        out_features: the embedding size.

    Examples:
        >>> import torch
        >>> enc = DreamerV3ImageEncoder(depth=4)
        >>> enc(torch.rand(2, 5, 3, 64, 64)).shape, enc.out_features
        (torch.Size([2, 5, 256]), 256)
    """

    def __init__(self, depth: int = 64, mults: tuple[int, ...] = (2, 3, 4, 4),
                 in_channels: int = 3, kernel: int = 5, image_size: int = 64,
                 channels_last: bool = True) -> None:
        super().__init__()
        if image_size % 2 ** len(mults):
            raise ValueError(f"DreamerV3ImageEncoder: image_size={image_size} is not divisible "
                             f"by 2 ** len(mults) = {2 ** len(mults)}.")
        channels = [in_channels] + [depth * m for m in mults]
        self.convs = nn.ModuleList(
            [_conv(channels[i], channels[i + 1], kernel, bias=False) for i in range(len(mults))])
        self.norms = nn.ModuleList([nn.RMSNorm(c, eps=NORM_EPS) for c in channels[1:]])
        self.in_channels, self.image_size = in_channels, image_size
        self.channels_last = channels_last
        side = image_size // 2 ** len(mults)
        self.out_features = channels[-1] * side * side

    def forward(self, image: Tensor) -> Tensor:
        x, lead = _flat_images(image, "DreamerV3ImageEncoder")  # (N, C, H, W)
        if x.shape[-3:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"DreamerV3ImageEncoder: expected images (*B, {self.in_channels}, "
                f"{self.image_size}, {self.image_size}); got {tuple(image.shape)}.")
        x = x - 0.5
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = _norm_silu_channels(F.max_pool2d(conv(x), 2), norm)
        # flatten in (H, W, C) order, as the authors (a free view for channels-last maps)
        return x.permute(0, 2, 3, 1).reshape(*lead, -1)


class DreamerV3ImageDecoder(nn.Module):
    """Features ``(*B, in_features)`` -> images ``(*B, out_channels, 64, 64)`` in ``(0, 1)``.

    The authors' current layout (``Decoder``, ``strided=False``), mirroring
    :class:`DreamerV3ImageEncoder`: the features become a ``4 x 4 x depth * mults[-1]`` map,
    then per stage (channels ``depth * mults[-2], ..., depth * mults[0]``) a 2x nearest
    upsampling, a ``kernel x kernel`` "same" convolution, RMSNorm over channels and SiLU;
    then a last 2x upsampling, a convolution to ``out_channels`` (with bias, ``outscale``)
    and a sigmoid. The authors' loss is the squared error to ``obs / 255`` summed over
    pixels.

    The first map: with ``belief_dim`` given (the authors' ``bspace = blocks``), the belief
    (the last ``belief_dim`` features) goes through a :class:`BlockLinear` with ``blocks``
    groups, each group filling ``channels / blocks`` of the channels at every position, and
    the state (the first features) through ``Linear -> RMSNorm -> SiLU -> Linear`` (``2 *
    hidden`` units); the sum is normalised and activated. Without ``belief_dim`` one
    ``Linear -> RMSNorm -> SiLU`` maps all features (the authors' ``bspace=0``).

    Args:
        in_features: ``S * C + D``.
        depth, mults, kernel, image_size, channels_last: as in :class:`DreamerV3ImageEncoder`.
        out_channels: image channels.
        belief_dim: ``D``, enabling the block-structured first layer.
        blocks: its groups (divides ``depth * mults[-1]``).
        hidden: the state branch's width is ``2 * hidden`` (the authors' decoder ``units``).
        outscale: init scale of the output convolution.

    Examples:
        >>> import torch
        >>> dec = DreamerV3ImageDecoder(20 + 32, depth=4, belief_dim=32, hidden=8)
        >>> img = dec(torch.randn(2, 5, 52))
        >>> img.shape, bool(((img > 0) & (img < 1)).all())
        (torch.Size([2, 5, 3, 64, 64]), True)
        >>> DreamerV3ImageDecoder(52, depth=4)(torch.randn(3, 52)).shape
        torch.Size([3, 3, 64, 64])
    """

    def __init__(self, in_features: int, depth: int = 64, mults: tuple[int, ...] = (2, 3, 4, 4),
                 out_channels: int = 3, *, belief_dim: int | None = None, blocks: int = 8,
                 hidden: int = 1024, kernel: int = 5, image_size: int = 64,
                 outscale: float = 1.0, channels_last: bool = True) -> None:
        super().__init__()
        if image_size % 2 ** len(mults):
            raise ValueError(f"DreamerV3ImageDecoder: image_size={image_size} is not divisible "
                             f"by 2 ** len(mults) = {2 ** len(mults)}.")
        channels = [depth * m for m in mults]
        self.side = image_size // 2 ** len(mults)
        self.top = channels[-1]
        units = self.side * self.side * self.top
        self.in_features, self.belief_dim, self.blocks = in_features, belief_dim, blocks
        if belief_dim is not None:
            if not 0 < belief_dim < in_features:
                raise ValueError(f"DreamerV3ImageDecoder: belief_dim={belief_dim} must be "
                                 f"between 0 and in_features={in_features}.")
            if self.top % blocks or belief_dim % blocks:
                raise ValueError(f"DreamerV3ImageDecoder: blocks={blocks} must divide "
                                 f"belief_dim={belief_dim} and depth * mults[-1]={self.top}.")
            self.space_belief = BlockLinear(belief_dim, units, blocks, bias=False)
            self.space_state = nn.Sequential(
                LinearNormAct(in_features - belief_dim, 2 * hidden),
                linear(2 * hidden, units, bias=False))
            self.space_norm = nn.RMSNorm(self.top, eps=NORM_EPS)
        else:
            self.space = linear(in_features, units, bias=False)
            self.space_norm = nn.RMSNorm(self.top, eps=NORM_EPS)
        ups = channels[::-1][1:]  # e.g. 4d, 3d, 2d
        sizes = [self.top, *ups]
        self.convs = nn.ModuleList(
            [_conv(sizes[i], sizes[i + 1], kernel, bias=False) for i in range(len(ups))])
        self.norms = nn.ModuleList([nn.RMSNorm(c, eps=NORM_EPS) for c in ups])
        self.out = _conv(sizes[-1], out_channels, kernel, bias=True, outscale=outscale)
        self.channels_last = channels_last

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != self.in_features:
            raise ValueError(f"DreamerV3ImageDecoder: features have {features.shape[-1]} "
                             f"entries; expected in_features={self.in_features}.")
        lead = features.shape[:-1]
        x = features.reshape(-1, self.in_features)
        n, s, c = x.shape[0], self.side, self.top
        if self.belief_dim is not None:
            state, belief = x.split([self.in_features - self.belief_dim, self.belief_dim], -1)
            g = self.blocks
            # each group fills channels [g * c/G, (g + 1) * c/G) at every position (h, w)
            xb = self.space_belief(belief).view(n, g, s, s, c // g).permute(0, 2, 3, 1, 4)
            x = xb.reshape(n, s, s, c) + self.space_state(state).view(n, s, s, c)
        else:
            x = self.space(x).view(n, s, s, c)
        x = F.silu(rms_norm(x, self.space_norm))
        x = x.permute(0, 3, 1, 2)  # NCHW with channels-last strides
        x = x if self.channels_last else x.contiguous()
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = _norm_silu_channels(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), norm)
        x = torch.sigmoid(self.out(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        return x.contiguous().reshape(*lead, *x.shape[1:])


class SymExpTwoHot(nn.Module):
    """Reward / critic head: features ``(*B, in_features)`` -> logits ``(*B, num_bins)`` over
    the symexp bins (:func:`~reverie.objectives.dreamer_v3_math.symexp_bins`), trained with
    :func:`~reverie.objectives.dreamer_v3_math.two_hot_cross_entropy`.

    The output layer starts at zero (the authors' ``outscale: 0.0`` for the reward and value
    heads), so a fresh head gives uniform logits and :meth:`mean` predicts exactly 0.

    Args:
        in_features: features size (``S * C + D``).
        hidden, layers: the MLP (the paper's XL: 1024, 5; the authors' current code: reward
            1 layer, critic 3).
        num_bins: bins (odd: one bin at exactly 0).
        outscale: init scale of the output layer.

    Examples:
        >>> import torch
        >>> head = SymExpTwoHot(12, hidden=16, layers=2)
        >>> logits = head(torch.randn(4, 12))
        >>> logits.shape, head.mean(logits).shape
        (torch.Size([4, 255]), torch.Size([4, 1]))
        >>> head.mean(logits).flatten()
        tensor([0., 0., 0., 0.], grad_fn=<ViewBackward0>)
    """

    def __init__(self, in_features: int, hidden: int = 1024, layers: int = 5,
                 num_bins: int = 255, outscale: float = 0.0) -> None:
        super().__init__()
        self.mlp = DreamerV3MLP(in_features, num_bins, hidden, layers, outscale=outscale)
        self.register_buffer("bins", symexp_bins(num_bins), persistent=False)

    def forward(self, *features: Tensor) -> Tensor:
        return self.mlp(*features)

    def mean(self, logits: Tensor) -> Tensor:
        """The predicted value ``softmax(logits)^T bins``: ``(*B, num_bins) -> (*B, 1)``."""
        return two_hot_decode(logits, self.bins).unsqueeze(-1)


class ClippedNormal(distributions.Independent):
    """``Normal(loc, scale)`` over the last dim whose samples are clipped to ``[low, high]``.

    The authors' bounded-normal actor samples an unbounded ``Normal(tanh(mu), sigma)`` and
    clips the action to the action space where it enters the env (``ClipAction``); their
    learner evaluates ``log_prob`` at the unclipped sample. Here :meth:`sample` returns the
    clipped value, :meth:`rsample` the clipped value with the gradient of the unclipped
    reparameterised sample (straight through the clip), :meth:`log_prob` the normal
    density at the value given (for a clipped sample: at the bound, which differs from the
    authors' for the samples beyond it; for their exact estimator keep the raw sample,
    :meth:`raw_sample`, and clip only for the env), :attr:`mode` / :attr:`mean` ``loc``.

    Examples:
        >>> import torch
        >>> d = ClippedNormal(torch.zeros(1000, 2), torch.ones(1000, 2))
        >>> x = d.sample()
        >>> x.shape, bool((x.abs() <= 1).all()), bool((x.abs() == 1).any())
        (torch.Size([1000, 2]), True, True)
    """

    def __init__(self, loc: Tensor, scale: Tensor, low: float = -1.0, high: float = 1.0,
                 validate_args=None) -> None:
        super().__init__(distributions.Normal(loc, scale), 1, validate_args=validate_args)
        self.low, self.high = low, high

    @property
    def mode(self) -> Tensor:
        return self.base_dist.loc

    def raw_sample(self, sample_shape=()) -> Tensor:
        """An unclipped reparameterised sample (the authors' learner-side action)."""
        return self.base_dist.rsample(sample_shape)

    def sample(self, sample_shape=()) -> Tensor:
        with torch.no_grad():
            return self.base_dist.sample(sample_shape).clamp(self.low, self.high)

    def rsample(self, sample_shape=()) -> Tensor:
        x = self.base_dist.rsample(sample_shape)
        return x + (x.clamp(self.low, self.high) - x).detach()


class DreamerV3ContinuousActor(nn.Module):
    """Continuous actor: features ``(*B, in_features)`` -> ``(loc, scale)``, each ``(*B, A)``,
    of the authors' bounded normal (``heads.py``, ``bounded_normal``)::

        loc   = tanh(mu)                                          in (-1, 1)
        scale = (max_std - min_std) * sigmoid(rho + 2) + min_std   in [min_std, max_std]

    with ``(mu, rho)`` from an MLP whose output layer starts at ``outscale=0.01`` (the
    authors' policy ``outscale``). :meth:`distribution` builds the action distribution:
    by default a :class:`ClippedNormal` whose samples lie in ``[-1, 1]`` (sample, then
    clip, as the authors' env wrapper; no tanh squashing of the sample).

    Args:
        in_features: features size (``S * C + D``).
        action_dim: ``A``.
        hidden, layers: the MLP (the paper's XL 1024, 5; the current code's policy 3 layers).
        min_std, max_std: bounds of the standard deviation.
        outscale: init scale of the output layer.

    Examples:
        >>> import torch
        >>> actor = DreamerV3ContinuousActor(12, 3, hidden=16, layers=2)
        >>> loc, scale = actor(torch.randn(5, 12))
        >>> loc.shape, bool((scale >= 0.1).all() and (scale <= 1.0).all())
        (torch.Size([5, 3]), True)
        >>> a = actor.distribution(loc, scale).sample()
        >>> bool((a.abs() <= 1).all())
        True
    """

    def __init__(self, in_features: int, action_dim: int, hidden: int = 1024, layers: int = 5,
                 min_std: float = 0.1, max_std: float = 1.0, outscale: float = 0.01) -> None:
        super().__init__()
        if not 0 < min_std <= max_std:
            raise ValueError(f"DreamerV3ContinuousActor: need 0 < min_std={min_std} <= "
                             f"max_std={max_std}.")
        self.mlp = DreamerV3MLP(in_features, 2 * action_dim, hidden, layers, outscale=outscale)
        self.action_dim, self.min_std, self.max_std = action_dim, min_std, max_std

    def forward(self, *features: Tensor) -> tuple[Tensor, Tensor]:
        mu, rho = self.mlp(*features).chunk(2, -1)
        scale = (self.max_std - self.min_std) * torch.sigmoid(rho + 2.0) + self.min_std
        return torch.tanh(mu), scale

    @staticmethod
    def distribution(loc: Tensor, scale: Tensor, clip: bool = True) -> distributions.Distribution:
        """``clip=True``: a :class:`ClippedNormal` (samples in ``[-1, 1]``); ``False``: the
        authors' unbounded ``Independent(Normal(loc, scale), 1)``."""
        if clip:
            return ClippedNormal(loc, scale)
        return distributions.Independent(distributions.Normal(loc, scale), 1)


class DreamerV3DiscreteActor(nn.Module):
    """Discrete actor: features ``(*B, in_features)`` -> logits ``(*B, num_actions)`` of
    ``(1 - unimix) softmax(MLP(features)) + unimix / num_actions`` (normalised
    log-probabilities): the paper's categorical actor with a 1% uniform mix (the
    paper-era code's ``onehot`` actor; the current code's ``categorical`` policy head
    leaves its ``unimix`` unused).

    Args:
        in_features: features size (``S * C + D``).
        num_actions: number of actions.
        hidden, layers: the MLP.
        unimix: uniform mixture weight.
        outscale: init scale of the output layer (the authors' policy: 0.01).

    Examples:
        >>> import torch
        >>> actor = DreamerV3DiscreteActor(12, 4, hidden=16, layers=2)
        >>> logits = actor(torch.randn(5, 12))
        >>> a = actor.sample(logits)
        >>> a.shape, a.sum(-1).tolist(), bool((logits.exp() >= 0.01 / 4).all())
        (torch.Size([5, 4]), [1.0, 1.0, 1.0, 1.0, 1.0], True)
        >>> actor.mode(torch.tensor([[0.1, 2.0, -1.0, 0.0]]))
        tensor([[0., 1., 0., 0.]])
    """

    def __init__(self, in_features: int, num_actions: int, hidden: int = 1024, layers: int = 5,
                 unimix: float = 0.01, outscale: float = 0.01) -> None:
        super().__init__()
        self.mlp = DreamerV3MLP(in_features, num_actions, hidden, layers, outscale=outscale)
        self.num_actions, self.unimix = num_actions, unimix

    def forward(self, *features: Tensor) -> Tensor:
        return unimix_logits(self.mlp(*features), self.unimix)

    @staticmethod
    def sample(logits: Tensor, uniform: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """A one-hot action ``(*B, num_actions)`` drawn from ``logits`` (exactly one-hot,
        straight-through gradients; ``uniform`` noise of the logits' shape fixes it)."""
        if uniform is None:
            uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype,
                                 device=logits.device)
        return sample_one_hot(logits, 0.0, gumbel_from_uniform(uniform))

    @staticmethod
    def mode(logits: Tensor) -> Tensor:
        """The most probable action, one-hot."""
        index = logits.argmax(-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, index, 1.0)

    @staticmethod
    def distribution(logits: Tensor) -> distributions.OneHotCategorical:
        """``OneHotCategorical(logits)`` (``log_prob`` and ``entropy`` for REINFORCE)."""
        return distributions.OneHotCategorical(logits=logits)

