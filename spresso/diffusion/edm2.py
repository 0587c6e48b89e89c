"""EDM2 diffusion: preconditioning, log-normal noise levels and the uncertainty-weighted loss.

Karras et al. 2022 (EDM) / 2024 (EDM2). With sigma_data the data std (latents are normalised
to it, see :mod:`spresso.diffusion.normalize`):

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

Training draws ln sigma ~ N(P_mean, P_std^2) and minimises, per element,

    lambda(sigma) / exp(u(sigma)) * (D(y + n; sigma) - y)^2 + u(sigma),
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,

where u is a small learned function of sigma (the log-variance of the loss at that noise level):
it balances the noise levels automatically instead of a hand-tuned weighting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from spresso.models.fourier import FourierFeatures


def preconditioning(sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
    sigma = torch.as_tensor(sigma)
    if not sigma.is_floating_point():
        sigma = sigma.float()
    s2, sd2 = sigma ** 2, sigma_data ** 2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / (s2 + sd2).sqrt()
    c_in = 1 / (s2 + sd2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """lambda(sigma) = 1 / c_out^2: makes the effective training target F unit-variance."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


class LogVariance(nn.Module):
    """u(sigma): a linear map of Fourier features of c_noise to one scalar per sample."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.fourier = FourierFeatures(channels, seed=1)
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)  # start at u = 0: plain lambda(sigma) weighting
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.linear(self.fourier(c_noise)).squeeze(-1)


class Denoiser(nn.Module):
    """D_theta(x; sigma, cond): the EDM2-preconditioned wrapper around a raw network F.

    ``net(x_in, c_noise, **cond)`` returns F with the shape of x. ``logvar`` is u(sigma); it
    lives here so one state dict (and one EMA) covers everything training learns.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, logvar_channels: int = 128):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.logvar = LogVariance(logvar_channels)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, return_logvar: bool = False, **cond):
        return self.precondition(lambda x_in, c_noise: self.net(x_in, c_noise, **cond), x, sigma, return_logvar)

    def precondition(self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                     sigma: torch.Tensor, return_logvar: bool = False):
        """D(x; sigma) around ``net(x_in, c_noise) -> F``: :attr:`net` itself, or a variant of it that
        caches step-invariant conditioning (the codec's decoder). The one place D(x) is written.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = x.float()
        F_x = net(x * c_in.view(shape), c_noise)
        D_x = c_skip.view(shape) * x + c_out.view(shape) * F_x.float()
        if return_logvar:
            return D_x, self.logvar(c_noise)
        return D_x


def seeded_randn(shape, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit Gaussian noise of ``shape`` on ``device``, drawn from ``generator`` where it lives.

    A generator belongs to one device: CUDA refuses a CPU generator (and the reverse), so the draw
    happens on the generator's device and the result moves. Same numbers on every device.
    """
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device or where)


def sample_sigma(n: int, P_mean: float = -0.4, P_std: float = 1.0, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """ln sigma ~ N(P_mean, P_std^2)."""
    return (seeded_randn(n, generator, device) * P_std + P_mean).exp()


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to minimise
    per_sample: torch.Tensor  # [B] the weighted loss of each sample (for per-sigma logging)
    mse: torch.Tensor  # [B] unweighted mean squared denoising error (normalised latent units)
    sigma: torch.Tensor  # [B]


class EDM2Loss:
    """The EDM2 training objective for a :class:`Denoiser`."""

    def __init__(self, P_mean: float = -0.4, P_std: float = 1.0, sigma_data: float = 0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def __call__(self, denoiser: nn.Module, y: torch.Tensor, sigma: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 frame_mask: torch.Tensor | None = None, **cond) -> LossOutput:
        """``frame_mask`` [B, T] (True = real frame): the loss averages over those frames only."""
        B = y.shape[0]
        if sigma is None:
            sigma = sample_sigma(B, self.P_mean, self.P_std, device=y.device, generator=generator)
        if noise is None:
            noise = seeded_randn(y.shape, generator, y.device)
        shape = (-1,) + (1,) * (y.dim() - 1)
        y = y.float()
        D_yn, logvar = denoiser(y + noise * sigma.view(shape), sigma, return_logvar=True, **cond)
        sq = (D_yn.float() - y) ** 2
        weight = loss_weight(sigma, self.sigma_data).view(shape)
        elem = weight / logvar.float().exp().view(shape) * sq + logvar.float().view(shape)
        if frame_mask is None:
            per_sample, mse = elem.flatten(1).mean(1), sq.detach().flatten(1).mean(1)
        else:  # the mean over real frames (and every channel) of each clip
            m = frame_mask.to(elem.dtype)[:, None, :].expand_as(elem)
            count = m.flatten(1).sum(1).clamp(min=1.0)
            per_sample, mse = (elem * m).flatten(1).sum(1) / count, (sq.detach() * m).flatten(1).sum(1) / count
        return LossOutput(per_sample.mean(), per_sample.detach(), mse, sigma.detach())
