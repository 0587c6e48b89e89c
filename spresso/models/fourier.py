"""Random Fourier features of a scalar (EDM2's magnitude-preserving Fourier embedding)."""
from __future__ import annotations

import math

import torch
from torch import nn


class FourierFeatures(nn.Module):
    """cos(2 pi (f x + p)) with fixed random f ~ N(0, 1), p ~ U(0, 1) (EDM2's magnitude-preserving Fourier).

    The frequencies come from a fixed seed and are not persistent: they are part of the
    architecture, not of the weights.
    """

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels, generator=g), persistent=False)
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=g), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float()[..., None] * self.freqs + self.phases).cos() * math.sqrt(2)
