"""QINCo2's training step, schedule, dead-codeword re-seeding and metrics (plain PyTorch).

Each batch is encoded with the beam under no_grad, then re-decoded with gradients through the
chosen codes. The loss sums the MSE of every partial reconstruction x_hat_1..x_hat_M (so every
prefix is a good code, which variable bitrate needs) plus the pre-selection codebooks' MSE to
the residuals they should predict.

Recipe choices that differ from the QINCo2 paper's are settings (:class:`TrainSettings`), each
with both options: gradient clipping by global norm or per value, a warm-up counted in steps
then a half cosine or counted in epochs then a quarter cosine, dead codewords re-seeded from the
last batch's residuals or drawn from running residual statistics (:class:`ResidualStats`), and
the learning rate scaled for the batch size (:func:`scaled_lr`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from spresso.quant.beam import encode_normalized

CLIP_MODES = ("norm", "value")
SCHEDULES = ("steps", "epochs")
RESEEDS = ("last_batch", "running_stats")
LR_SCALINGS = ("none", "sqrt", "linear")


@dataclass
class TrainSettings:
    lr: float = 8e-4
    weight_decay: float = 0.1
    grad_clip: float = 0.1
    clip_mode: str = "norm"  # "norm": global gradient norm <= grad_clip; "value": every element in [-grad_clip, grad_clip]
    warmup_steps: int = 100
    total_steps: int = 1000
    min_lr_ratio: float = 0.01
    schedule: str = "steps"  # see lr_factor
    warmup_epochs: float = 1.0  # schedule "epochs" only
    steps_per_epoch: int = 1  # schedule "epochs" only
    reseed: str = "last_batch"  # see reseed_unused
    beam: int = 32
    candidates: int = 16

    def __post_init__(self):
        for name, value, allowed in (("clip_mode", self.clip_mode, CLIP_MODES), ("schedule", self.schedule, SCHEDULES),
                                     ("reseed", self.reseed, RESEEDS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def scaled_lr(lr: float, batch: int, reference_batch: int, rule: str) -> float:
    """``lr`` tuned at ``reference_batch`` vectors per step, for ``batch``: unchanged, or times the
    square root or the ratio of the batch sizes."""
    if rule not in LR_SCALINGS:
        raise ValueError(f"lr scaling must be one of {LR_SCALINGS}, got {rule!r}")
    ratio = batch / reference_batch
    return lr * {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


class ResidualStats:
    """Running per-dimension mean and standard deviation of the residual each step quantizes.

    Updated on every training batch (exponential moving average), so a dead codeword re-seeded
    from them lands where the residuals of many recent batches lie, not on one batch's points.
    """

    def __init__(self, M: int, d: int, momentum: float = 0.1, device=None):
        self.momentum = momentum
        self.mean = torch.zeros(M, d, device=device)
        self.std = torch.ones(M, d, device=device)
        self.updates = 0

    @torch.no_grad()
    def update(self, xn: torch.Tensor, partials: list[torch.Tensor]) -> None:
        """Fold in one batch: ``partials[k]`` is x_hat after step k (step k+1 sees xn - partials[k])."""
        res = torch.stack([xn] + [xn - p for p in partials[: self.mean.shape[0] - 1]])  # [M, N, d]
        mean, std = res.mean(1).to(self.mean), res.std(1).to(self.std)
        a = 1.0 if self.updates == 0 else self.momentum
        self.mean.mul_(1 - a).add_(a * mean)
        self.std.mul_(1 - a).add_(a * std)
        self.updates += 1

    def draw(self, m: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` vectors [n, d] from N(mean_m, std_m^2) of step m's residual."""
        noise = torch.randn(n, self.mean.shape[1], generator=generator).to(self.mean)
        return self.mean[m] + noise * self.std[m]

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std, "updates": self.updates}


def qinco2_loss(model, xn: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over steps of the partial-reconstruction MSE, plus the pre-selection codebooks' MSE."""
    recon, pre, step_mse = model(xn, codes)
    return recon + pre, {"loss_recon": float(recon.detach()), "loss_preselect": float(pre.detach()), "train_mse": float(step_mse[-1])}


def lr_factor(step: int, s: TrainSettings) -> float:
    """Multiplier of the base learning rate at optimisation step ``step``.

    ``schedule="steps"``: linear warm-up over ``warmup_steps``, then a half cosine from 1 to
    ``min_lr_ratio`` at ``total_steps``. ``schedule="epochs"`` (the paper's shape): linear warm-up
    over ``warmup_epochs`` epochs, then cos(pi/2 * t) where t is the time since the warm-up over
    the whole run's length in epochs, floored at ``min_lr_ratio``; it never reaches zero.
    """
    if s.schedule == "epochs":
        epoch = step / max(1, s.steps_per_epoch)
        if epoch < s.warmup_epochs:
            return max((step + 1) / max(1.0, s.warmup_epochs * s.steps_per_epoch), s.min_lr_ratio)
        total_epochs = max(1e-9, s.total_steps / max(1, s.steps_per_epoch))
        t = min(1.0, (epoch - s.warmup_epochs) / total_epochs)
        return max(s.min_lr_ratio, math.cos(0.5 * math.pi * t))
    if step < s.warmup_steps:
        return (step + 1) / max(1, s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, s: TrainSettings, schedule_step=None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and the :func:`lr_factor` schedule; ``schedule_step(step)`` (a training clock) may run the
    schedule ahead of the step count, as a time limit does."""
    # Codebooks are data points, not weights to shrink: no weight decay on them.
    books = [p for n, p in model.named_parameters() if n.endswith("codebook") or n.endswith("codebook0") or n.endswith("preselect")]
    ids = {id(p) for p in books}
    nets = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": nets, "weight_decay": s.weight_decay}, {"params": books, "weight_decay": 0.0}], lr=s.lr)
    clock = schedule_step or float
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(clock(step), s))
    return opt, sched


def clip_gradients(params, s: TrainSettings) -> float:
    """Clip as ``s.clip_mode`` says; returns the global gradient norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if s.clip_mode == "value":
        norm = torch.nn.utils.clip_grad_norm_(params, math.inf)
        torch.nn.utils.clip_grad_value_(params, s.grad_clip)
        return float(norm)
    return float(torch.nn.utils.clip_grad_norm_(params, s.grad_clip))


def train_step(model, opt, sched, xn: torch.Tensor, s: TrainSettings, autocast=None,
               usage: torch.Tensor | None = None, stats: ResidualStats | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """One optimisation step on a normalised batch: (metrics, the batch's codes [N, M]).

    Adds the codes' counts to ``usage`` [M, K] and the batch's residuals to ``stats`` when given."""
    core = getattr(model, "module", model)  # the QINCo2 inside a DDP wrapper
    core.eval()
    codes = encode_normalized(core, xn, core.M, beam=s.beam, candidates=s.candidates)
    if usage is not None:
        for m in range(core.M):
            usage[m] += torch.bincount(codes[:, m], minlength=core.spec.K).to(usage)
    if stats is not None:
        with torch.no_grad():
            stats.update(xn, core.decode_normalized(codes, partials=True))
    model.train()
    with autocast or contextlib.nullcontext():
        loss, info = qinco2_loss(model, xn, codes)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    info["grad_norm"] = clip_gradients(model.parameters(), s)
    opt.step()
    sched.step()
    info["lr"] = sched.get_last_lr()[0]
    return info, codes


@torch.no_grad()
def reseed_unused(model, opt, usage: torch.Tensor, xn: torch.Tensor, codes: torch.Tensor,
                  generator: torch.Generator | None = None, stats: ResidualStats | None = None) -> int:
    """Replace codewords no vector used this epoch.

    Without ``stats``: by residuals of random vectors of the given (last) batch; the residual a
    step sees is x - x_hat_{m-1}, and a dead codeword moved onto one of them gets chosen again.
    With ``stats`` (updated on every batch): by draws from the running residual distribution of
    that step, the paper's choice. The optimiser's moments for the moved rows are cleared so
    stale momentum does not drag them back.
    """
    partials = model.decode_normalized(codes, partials=True) if stats is None else None
    moved = 0
    for m in range(model.M):
        dead = (usage[m] == 0).nonzero().flatten()
        if dead.numel() == 0:
            continue
        if stats is None:
            residual = xn if m == 0 else xn - partials[m - 1]
            pick = torch.randint(0, residual.shape[0], (dead.numel(),), generator=generator).to(residual.device)
            new = residual[pick]
        else:
            new = stats.draw(m, dead.numel(), generator)
        params = [model.codebook0] if m == 0 else [model.steps[m - 1].codebook, model.steps[m - 1].preselect]
        for p in params:
            p[dead] = new.to(p)
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
