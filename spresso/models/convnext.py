"""ConvNeXt-1D block (Vocos backbone): depthwise conv, LayerNorm, pointwise MLP, layer scale."""
from __future__ import annotations

import torch
from torch import nn


class ConvNeXtBlock1d(nn.Module):
    """``x + gamma * MLP(LN(dwconv(x)))`` on ``[B, C, T]``.

    Layer scale (gamma, initialised small) keeps a deep residual stack close to identity at the
    start of training, which matters for the GAN phase.
    """

    def __init__(self, dim: int, intermediate: int, kernel_size: int = 7, layer_scale: float = 1e-2):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)  # [B, T, C]
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    """Conv1d embedding, LayerNorm, a stack of ConvNeXt blocks, final LayerNorm: ``[B, C_in, T] -> [B, T, dim]``."""

    def __init__(self, in_channels: int, dim: int, intermediate: int, blocks: int, kernel_size: int = 7):
        super().__init__()
        self.embed = nn.Conv1d(in_channels, dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock1d(dim, intermediate, kernel_size, layer_scale=1.0 / max(blocks, 1)) for _ in range(blocks)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x.transpose(1, 2))
