"""QINCo2's training step, schedule, dead-codeword re-seeding and metrics (plain PyTorch).

Each batch is encoded with the beam under no_grad, then re-decoded with gradients through the
chosen codes. The loss sums the MSE of every partial reconstruction x_hat_1..x_hat_M (so every
prefix is a good code, which variable bitrate needs) plus the pre-selection codebooks' MSE to
the residuals they should predict.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from spresso.quant.beam import encode_normalized


@dataclass
class TrainSettings:
    lr: float = 8e-4
    weight_decay: float = 0.1
    grad_clip: float = 0.1
    warmup_steps: int = 100
    total_steps: int = 1000
    min_lr_ratio: float = 0.01
    beam: int = 32
    candidates: int = 16


def qinco2_loss(model, xn: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over steps of the partial-reconstruction MSE, plus the pre-selection codebooks' MSE."""
    recon, pre, step_mse = model(xn, codes)
    return recon + pre, {"loss_recon": float(recon.detach()), "loss_preselect": float(pre.detach()), "train_mse": float(step_mse[-1])}


def lr_factor(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    if step < s.warmup_steps:
        return (step + 1) / max(1, s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, s: TrainSettings) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    # Codebooks are data points, not weights to shrink: no weight decay on them.
    books = [p for n, p in model.named_parameters() if n.endswith("codebook") or n.endswith("codebook0") or n.endswith("preselect")]
    ids = {id(p) for p in books}
    nets = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": nets, "weight_decay": s.weight_decay}, {"params": books, "weight_decay": 0.0}], lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, s))
    return opt, sched


def train_step(model, opt, sched, xn: torch.Tensor, s: TrainSettings, autocast=None,
               usage: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """One optimisation step on a normalised batch: (metrics, the batch's codes [N, M]).

    Adds the codes' counts to ``usage`` [M, K] when given."""
    core = getattr(model, "module", model)  # the QINCo2 inside a DDP wrapper
    core.eval()
    codes = encode_normalized(core, xn, core.M, beam=s.beam, candidates=s.candidates)
    if usage is not None:
        for m in range(core.M):
            usage[m] += torch.bincount(codes[:, m], minlength=core.spec.K).to(usage)
    model.train()
    with autocast or contextlib.nullcontext():
        loss, info = qinco2_loss(model, xn, codes)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    info["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip))
    opt.step()
    sched.step()
    info["lr"] = sched.get_last_lr()[0]
    return info, codes


@torch.no_grad()
def reseed_unused(model, opt, usage: torch.Tensor, xn: torch.Tensor, codes: torch.Tensor,
                  generator: torch.Generator | None = None) -> int:
    """Replace codewords no vector used this epoch by residuals of random training vectors.

    The residual a step sees is x - x_hat_{m-1}; a dead codeword moved onto one of them gets
    chosen again. The optimiser's moments for the moved rows are cleared so stale momentum does
    not drag them back.
    """
    partials = model.decode_normalized(codes, partials=True)
    moved = 0
    for m in range(model.M):
        dead = (usage[m] == 0).nonzero().flatten()
        if dead.numel() == 0:
            continue
        residual = xn if m == 0 else xn - partials[m - 1]
        pick = torch.randint(0, residual.shape[0], (dead.numel(),), generator=generator).to(residual.device)
        params = [model.codebook0] if m == 0 else [model.steps[m - 1].codebook, model.steps[m - 1].preselect]
        for p in params:
            p[dead] = residual[pick]
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0
        moved += dead.numel()
    return moved


def usage_entropy(codes: np.ndarray | torch.Tensor, K: int) -> list[float]:
    """Entropy in bits of each step's codeword distribution (log2 K = all codewords equally used)."""
    codes = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes).long().cpu()
    out = []
    for m in range(codes.shape[1]):
        p = torch.bincount(codes[:, m], minlength=K).double()
        p = p[p > 0] / p.sum()
        out.append(float(-(p * p.log2()).sum()))
    return out


def relative_mse(x: np.ndarray | torch.Tensor, x_hat: np.ndarray | torch.Tensor) -> float:
    """MSE divided by the data's variance (total over dims): 1.0 = predicting the mean."""
    x = np.asarray(x, np.float64)
    x_hat = np.asarray(x_hat, np.float64)
    return float(((x - x_hat) ** 2).sum(1).mean() / ((x - x.mean(0)) ** 2).sum(1).mean())


@torch.no_grad()
def mse_per_m(encode, decode, x: np.ndarray, ms) -> dict[int, float]:
    """Relative MSE of decode(encode(x, m)) for each m (truncated encoding at every m)."""
    return {m: relative_mse(x, decode(encode(x, m))) for m in ms}
