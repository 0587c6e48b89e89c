"""Per-dimension mean and one global standard deviation, as QINCo2 normalises its inputs.

A single std (not one per dimension) keeps the relative scale of the dimensions, so the MSE the
quantizer minimises in normalised space is the data-space MSE up to one constant factor.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(()))

    @torch.no_grad()
    def fit(self, x: np.ndarray | torch.Tensor) -> "Normalizer":
        x = torch.as_tensor(np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x.double())
        mean = x.mean(0)
        # One global std: the root mean squared deviation over every dimension.
        std = (x - mean).pow(2).mean().sqrt().clamp_min(1e-8)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std + self.mean
