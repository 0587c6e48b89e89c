"""What every diffusion trainer (DiT, stages 1 and 3) does first with a batch: warm-up lr, normalised x0, captions."""
from __future__ import annotations

import torch

from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.text_encoder import TextEmbedding


def warmup_lr(tc, step: int) -> float:
    """``tc.lr`` after a linear warm-up over ``tc.warmup_steps`` steps."""
    warm = tc.warmup_steps
    return tc.lr * min(1.0, step / warm) if warm else tc.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def batch_inputs(batch: dict[str, torch.Tensor], normalizer: LatentNormalizer,
                 device: torch.device) -> tuple[torch.Tensor, TextEmbedding]:
    """(normalised x0, caption embedding) of a batch from :mod:`spresso.data.latent_batches`, on ``device``."""
    y = normalizer.normalize(batch["x0"].to(device))
    text = TextEmbedding(batch["text"].to(device).float(), batch["text_mask"].to(device).bool(),
                         batch["pooled"].to(device).float())
    return y, text
