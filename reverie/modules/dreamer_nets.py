"""Dreamer's networks: the 64x64 convolutional encoder and decoder, and the actor head.

Sizes follow Hafner et al. (2019), appendix A: four stride-2 4x4 convolutions with
``channels * (1, 2, 4, 8)`` filters (a 1024-d embedding for 64x64 RGB at ``channels=32``),
and the mirrored decoder (a dense layer to ``32 * channels``, then transposed convolutions
with kernels 5, 5, 6, 6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

__all__ = ["DreamerActor", "ObsDecoder", "ObsEncoder"]


def _flat_images(x: Tensor, what: str) -> tuple[Tensor, torch.Size]:
    if x.ndim < 3:
        raise ValueError(f"{what}: expected images (*B, C, H, W); got shape {tuple(x.shape)}.")
    lead = x.shape[:-3]
    return x.reshape(-1, *x.shape[-3:]), lead


class ObsEncoder(nn.Module):
    """Pixels ``(*B, C, 64, 64)`` -> embedding ``(*B, 8 * channels * 2 * 2)`` (1024 at 32).

    Args:
        channels: filters of the first convolution (doubled at each layer).
        num_layers: stride-2 convolutions (kernel 4).
        in_channels: image channels (``None``: inferred at the first call).
        channels_last: run the convolutions on channels-last (NHWC) images, which oneDNN
            runs about 1.5x faster on the CPU than NCHW (forward and backward, 64x64 RGB;
            untested here on GPUs, where PyTorch advises it with Tensor Cores). The output
            does not depend on it.

    Attributes:
        out_features: the embedding size for 64x64 frames.

    Examples:
        >>> import torch
        >>> ObsEncoder()(torch.rand(2, 5, 3, 64, 64)).shape
        torch.Size([2, 5, 1024])
        >>> ObsEncoder(16).out_features
        512
    """

    def __init__(self, channels: int = 32, num_layers: int = 4, in_channels: int | None = None,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.channels_last = channels_last
        layers: list[nn.Module] = []
        for i in range(num_layers):
            out = channels * 2**i
            if i == 0:
                conv = (nn.Conv2d(in_channels, out, 4, stride=2) if in_channels is not None
                        else nn.LazyConv2d(out, 4, stride=2))
            else:
                conv = nn.Conv2d(channels * 2 ** (i - 1), out, 4, stride=2)
            layers += [conv, nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        side = 64
        for _ in range(num_layers):
            side = (side - 4) // 2 + 1  # 64 -> 31 -> 14 -> 6 -> 2
        self.out_features = channels * 2 ** (num_layers - 1) * side * side

    def forward(self, observation: Tensor) -> Tensor:
        x, lead = _flat_images(observation, "ObsEncoder")  # (N, C, 64, 64)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x).reshape(*lead, -1)


class ObsDecoder(nn.Module):
    """Latent ``(state (*B, S), belief (*B, R))`` -> pixels ``(*B, out_channels, 64, 64)``.

    Args:
        channels: filters of the last hidden transposed convolution (the dense layer has
            ``32 * channels`` units, the transposed convolutions ``4c, 2c, c``).
        num_layers: transposed convolutions; 4 (kernels 5, 5, 6, 6) gives 64x64 pixels.
        latent_dim: ``S + R`` (``None``: inferred at the first call).
        out_channels: image channels.
        channels_last: run the transposed convolutions channels-last (NHWC; their weights
            are stored so), as :class:`ObsEncoder` does; the output is returned in the
            default (NCHW) layout either way.

    Examples:
        >>> import torch
        >>> ObsDecoder()(torch.zeros(2, 30), torch.zeros(2, 200)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, channels: int = 32, num_layers: int = 4, latent_dim: int | None = None,
                 out_channels: int = 3, channels_last: bool = True) -> None:
        super().__init__()
        if num_layers != 4:
            raise ValueError(
                f"ObsDecoder: num_layers={num_layers}; the 64x64 decoder has 4 transposed "
                "convolutions (kernels 5, 5, 6, 6). Use num_layers=4.")
        width = 32 * channels
        self.state_to_latent = (nn.Linear(latent_dim, width) if latent_dim is not None
                                else nn.LazyLinear(width))
        sizes = [width, 4 * channels, 2 * channels, channels]
        layers: list[nn.Module] = []
        for i, k in enumerate((5, 5, 6, 6)):
            out = sizes[i + 1] if i < 3 else out_channels
            layers.append(nn.ConvTranspose2d(sizes[i], out, k, stride=2))
            if i < 3:
                layers.append(nn.ReLU())
        self.decoder = nn.Sequential(*layers)
        if channels_last:  # a (N, C, 1, 1) input has no layout: the weights choose it
            self.decoder.to(memory_format=torch.channels_last)

    def forward(self, state: Tensor, belief: Tensor) -> Tensor:
        x = self.state_to_latent(torch.cat([state, belief], -1))  # (*B, 32c)
        lead = x.shape[:-1]
        x = self.decoder(x.reshape(-1, x.shape[-1], 1, 1)).contiguous()  # (N, C, 64, 64)
        return x.reshape(*lead, *x.shape[-3:])


class DreamerActor(nn.Module):
    """Action head: latent ``(state, belief)`` -> ``(loc, scale)`` of a tanh-Gaussian.

    ``loc`` is unbounded (pair it with ``TanhNormal(upscale=5, tanh_loc=True)`` for Dreamer's
    ``5 tanh(mu / 5)``); ``scale = softplus(x + softplus^-1(std_bias)) + std_min_val`` starts
    near ``std_bias`` (Dreamer's ``init_std = 5``).

    Args:
        out_features: action size.
        depth: hidden layers.
        num_cells: units per hidden layer.
        activation_class: hidden activation.
        std_bias: initial standard deviation.
        std_min_val: lower bound of the standard deviation.
        in_features: ``S + R`` (``None``: inferred at the first call).

    Examples:
        >>> import torch
        >>> loc, scale = DreamerActor(2, num_cells=16)(torch.zeros(3, 4), torch.zeros(3, 8))
        >>> loc.shape, bool((scale > 4).all())
        (torch.Size([3, 2]), True)
    """

    def __init__(self, out_features: int, depth: int = 4, num_cells: int = 200,
                 activation_class: type[nn.Module] = nn.ELU, std_bias: float = 5.0,
                 std_min_val: float = 1e-4, in_features: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            first = i == 0
            layers.append(nn.LazyLinear(num_cells) if first and in_features is None
                          else nn.Linear(in_features if first else num_cells, num_cells))
            layers.append(activation_class())
        layers.append(nn.Linear(num_cells, 2 * out_features))
        self.backbone = nn.Sequential(*layers)
        self.std_raw_bias = math.log(math.expm1(std_bias))
        self.std_min_val = std_min_val

    def forward(self, state: Tensor, belief: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.backbone(torch.cat([state, belief], -1)).chunk(2, -1)
        return loc, F.softplus(raw + self.std_raw_bias) + self.std_min_val
