"""Normalise x0 latents to the diffusion's sigma_data with the cache's per-channel statistics.

EDM's preconditioning assumes data of standard deviation sigma_data (0.5): each channel c of x0
is mapped to (x0_c - mean_c) / std_c * sigma_data, and back after sampling.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from spresso.core.errors import SpressoError


class LatentNormalizer:
    def __init__(self, mean: Sequence[float], std: Sequence[float], sigma_data: float = 0.5):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1)
        if self.mean.shape != self.std.shape:
            raise SpressoError(f"x0_mean has {self.mean.numel()} channels but x0_std has {self.std.numel()}")
        if not torch.all(self.std > 0):
            raise SpressoError("x0_std must be positive in every channel")
        self.sigma_data = float(sigma_data)

    @classmethod
    def from_attrs(cls, attrs: Mapping, sigma_data: float = 0.5) -> "LatentNormalizer":
        if "x0_mean" not in attrs or "x0_std" not in attrs:
            raise SpressoError("the x0 cache has no x0_mean/x0_std attrs (was precompute_latents finished?)")
        return cls(attrs["x0_mean"], attrs["x0_std"], sigma_data)

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    def normalize(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 [..., C, T] -> unit-sigma_data latents (float32)."""
        return (x0.float() - self.mean.to(x0.device)) / self.std.to(x0.device) * self.sigma_data

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y.float() / self.sigma_data * self.std.to(y.device) + self.mean.to(y.device)

    def to_meta(self) -> dict:
        return {"x0_mean": self.mean.flatten().tolist(), "x0_std": self.std.flatten().tolist()}
