"""Loss and denoising error per noise level, against the trivial denoiser (logged by the diffusion stages)."""
from __future__ import annotations

import math

import numpy as np
import torch

from spresso.diffusion.edm2 import preconditioning

# Noise-level buckets for logging (sigma edges); EDM2's training density puts most mass in 0.1..5.
SIGMA_EDGES = (0.1, 0.3, 1.0, 3.0)


class SigmaBuckets:
    """Running loss and denoising MSE per sigma bucket.

    ``mse_ratio`` divides the network's error by that of the trivial denoiser D = c_skip x
    (the best denoiser for i.i.d. data of std sigma_data, i.e. F = 0): its error is c_out^2, so
    a ratio below 1 means the network knows more about x0 than its variance.
    """

    def __init__(self, edges=SIGMA_EDGES, sigma_data: float = 0.5):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.sigma_data = sigma_data
        self.names = [f"{lo:g}-{hi:g}" for lo, hi in zip((0.0, *edges), (*edges, math.inf))]
        self.reset()

    def reset(self) -> None:
        n = len(self.names)
        self.loss, self.mse, self.ratio, self.count = (np.zeros(n) for _ in range(4))

    def add(self, sigma: torch.Tensor, loss: torch.Tensor, mse: torch.Tensor) -> None:
        sigma, loss, mse = (t.detach().double().cpu().numpy() for t in (sigma, loss, mse))
        trivial = preconditioning(torch.from_numpy(sigma), self.sigma_data)[1].numpy() ** 2
        idx = np.searchsorted(self.edges, sigma)
        np.add.at(self.loss, idx, loss)
        np.add.at(self.mse, idx, mse)
        np.add.at(self.ratio, idx, mse / trivial)
        np.add.at(self.count, idx, 1)

    def metrics(self) -> dict[str, float]:
        out = {}
        for i, name in enumerate(self.names):
            if self.count[i]:
                c = self.count[i]
                out[f"loss_sigma/{name}"] = self.loss[i] / c
                out[f"mse_sigma/{name}"] = self.mse[i] / c
                out[f"mse_ratio_sigma/{name}"] = self.ratio[i] / c
        return out
