"""The ODE samplers: EDM's Heun (Karras et al. 2022, Algorithm 2) and DPM-Solver++(2M), on the rho-schedule, with CFG.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  sigma_N = 0

Each of the N steps takes an Euler step of dx/dsigma = (x - D(x; sigma)) / sigma and, except
the last (which lands on sigma = 0), corrects it with the trapezoidal (Heun) rule: 2N - 1
network evaluations (64 steps -> 127). ``S_churn > 0`` adds EDM's stochastic churn: noise is
re-injected to raise sigma by a factor (1 + gamma) before each step inside [S_min, S_max].

:func:`dpmpp_2m_sample`: DPM-Solver++(2M) (Lu et al. 2022) on the EDM parameterisation
x = y + sigma n, in log-SNR time lambda = -ln sigma. One network evaluation per step (Heun
needs two) and second order from the previous step's denoised estimate:

    h_i = lambda_{i+1} - lambda_i,  r_i = h_{i-1} / h_i
    D'_i = (1 + 1 / (2 r_i)) D_i - 1 / (2 r_i) D_{i-1}          (D'_0 = D_0; last step first order)
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) D'_i

The schedule's defaults (sigma_min, sigma_max, rho) are :class:`~spresso.config.dit.SamplerConfig`'s.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from spresso.config.dit import RHO, SIGMA_MAX, SIGMA_MIN
from spresso.diffusion.edm2 import seeded_randn
from spresso.models.text_encoder import TextEmbedding

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma [B]) -> D(x; sigma)
SOLVERS = ("dpmpp2m", "heun")


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO,
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
    if isinstance(v, TextEmbedding):
        return TextEmbedding.cat([v, v])
    return v


@torch.no_grad()
def heun_sample(denoise: DenoiseFn, shape: tuple[int, ...] | None = None, *, noise: torch.Tensor | None = None,
                steps: int = 64, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO,
                S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                generator: torch.Generator | None = None, device=None, progress: bool = False) -> torch.Tensor:
    """Integrate from pure noise at sigma_max to sigma = 0; returns x0 samples (float32).

    Give ``noise`` (unit Gaussian) or ``shape`` (+ ``generator`` for reproducibility).
    """
    if noise is None:
        if shape is None:
            raise ValueError("heun_sample needs a shape or a noise tensor")
        noise = seeded_randn(shape, generator, device)
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
            eps = seeded_randn(x.shape, generator, device).double()
            x_hat = x + (s_hat ** 2 - s_cur ** 2).sqrt() * S_noise * eps
        d_cur = (x_hat - D(x_hat, s_hat)) / s_hat
        x = x_hat + (s_next - s_hat) * d_cur
        if s_next > 0:
            d_next = (x - D(x, s_next)) / s_next
            x = x_hat + (s_next - s_hat) * (0.5 * d_cur + 0.5 * d_next)
    return x.float()


@torch.no_grad()
def dpmpp_2m_sample(denoise: DenoiseFn, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Integrate from ``noise * sigmas[0]`` down to sigma = 0 with DPM-Solver++(2M); returns float32."""
    x = noise.double() * sigmas[0]
    B = x.shape[0]
    old = None
    h_prev = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        D = denoise(x.float(), s.float().expand(B)).double()
        if s_next == 0:
            x = D  # sigma -> 0: the ODE's solution is the denoised estimate
            break
        h = torch.log(s) - torch.log(s_next)
        if old is None or h_prev is None:
            D_hat = D
        else:
            r = h_prev / h
            D_hat = (1 + 1 / (2 * r)) * D - (1 / (2 * r)) * old
        ratio = s_next / s
        x = ratio * x + (1 - ratio) * D_hat
        old, h_prev = D, h
    return x.float()


def sample(denoise: DenoiseFn, noise: torch.Tensor, *, steps: int, solver: str = "dpmpp2m", sigma_min: float = SIGMA_MIN,
           sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """x0 samples (normalised units) from unit ``noise`` with the chosen solver (one of :data:`SOLVERS`)."""
    if solver == "heun":
        return heun_sample(denoise, noise=noise, steps=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    if solver == "dpmpp2m":
        return dpmpp_2m_sample(denoise, noise, karras_sigmas(steps, sigma_min, sigma_max, rho, device=noise.device))
    raise ValueError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")


def evaluations(steps: int, solver: str = "heun") -> int:
    """Network evaluations of a deterministic run (without CFG's batch doubling): Heun 2N - 1, DPM-Solver++(2M) N."""
    return 2 * steps - 1 if solver == "heun" else steps
