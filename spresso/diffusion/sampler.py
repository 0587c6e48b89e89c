"""EDM (Karras et al. 2022, Algorithm 2) Heun sampler with the rho-schedule and CFG.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  sigma_N = 0

Each of the N steps takes an Euler step of dx/dsigma = (x - D(x; sigma)) / sigma and, except
the last (which lands on sigma = 0), corrects it with the trapezoidal (Heun) rule: 2N - 1
network evaluations (64 steps -> 127). ``S_churn > 0`` adds EDM's stochastic churn: noise is
re-injected to raise sigma by a factor (1 + gamma) before each step inside [S_min, S_max].
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma [B]) -> D(x; sigma)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device=None) -> torch.Tensor:
    """The N + 1 noise levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min > sigma_N = 0 (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    i = torch.arange(steps, dtype=torch.float64, device=device)
    ramp = i / max(steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64, device=device)])


def guided(denoiser: Callable, guidance: float = 1.0, **cond) -> DenoiseFn:
    """Classifier-free guidance: D = D_uncond + w (D_cond - D_uncond), both in one batched call.

    ``denoiser(x, sigma, drop=..., **cond)`` is a :class:`~spresso.diffusion.edm2.Denoiser`
    whose net understands ``drop`` (the null caption); w = 1 is plain conditional sampling.
    """
    if guidance == 1.0:
        return lambda x, sigma: denoiser(x, sigma, **cond)

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x.device)
        doubled = {k: _repeat(v) for k, v in cond.items()}
        D = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), drop=drop, **doubled)
        D_cond, D_uncond = D[:B], D[B:]
        return D_uncond + guidance * (D_cond - D_uncond)

    return fn


def _repeat(v):
    if torch.is_tensor(v):
        return torch.cat([v, v])
    if hasattr(v, "tokens"):  # TextEmbedding
        from spresso.models.text_encoder import TextEmbedding

        return TextEmbedding.cat([v, v])
    return v


@torch.no_grad()
def heun_sample(denoise: DenoiseFn, shape: tuple[int, ...] | None = None, *, noise: torch.Tensor | None = None,
                steps: int = 64, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                generator: torch.Generator | None = None, device=None, progress: bool = False) -> torch.Tensor:
    """Integrate from pure noise at sigma_max to sigma = 0; returns x0 samples (float32).

    Give ``noise`` (unit Gaussian) or ``shape`` (+ ``generator`` for reproducibility).
    """
    if noise is None:
        if shape is None:
            raise ValueError("heun_sample needs a shape or a noise tensor")
        noise = torch.randn(shape, generator=generator, device=device or (generator.device if generator else None))
    device = noise.device
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=device)
    x = noise.double() * sigmas[0]
    B = x.shape[0]
    gamma_max = min(S_churn / steps, math.sqrt(2) - 1)

    def D(x_: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return denoise(x_.float(), s.float().expand(B)).double()

    for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if S_churn > 0 and S_min <= float(s_cur) <= S_max else 0.0
        s_hat = s_cur * (1 + gamma)
        x_hat = x
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).double()
            x_hat = x + (s_hat ** 2 - s_cur ** 2).sqrt() * S_noise * eps
        d_cur = (x_hat - D(x_hat, s_hat)) / s_hat
        x = x_hat + (s_next - s_hat) * d_cur
        if s_next > 0:
            d_next = (x - D(x, s_next)) / s_next
            x = x_hat + (s_next - s_hat) * (0.5 * d_cur + 0.5 * d_next)
    return x.float()


def evaluations(steps: int) -> int:
    """Network evaluations of a deterministic Heun run (without CFG's batch doubling)."""
    return 2 * steps - 1
