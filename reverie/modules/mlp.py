"""A plain multilayer perceptron builder shared by recipes."""

from __future__ import annotations

from torch import nn

__all__ = ["mlp"]


def mlp(n_in: int, n_out: int, hidden: int, depth: int = 2, activation=nn.SiLU) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden`` units with ``activation``, then a linear output.

    Shapes: ``(*B, n_in) -> (*B, n_out)``.

    >>> import torch
    >>> mlp(3, 1, 16)(torch.zeros(5, 3)).shape
    torch.Size([5, 1])
    """
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, n_out))
