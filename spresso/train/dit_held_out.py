"""The DiT's held-out report: denoising error on valid clips at fixed noise levels, against the trivial denoiser."""
from __future__ import annotations

import numpy as np
import torch

from spresso.data.latent_batches import LatentCaptionDataset, collate_rows, split_rows
from spresso.diffusion.edm2 import preconditioning
from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.text_encoder import TextEmbedding

HELD_OUT_SIGMAS = (0.02, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)  # at least one per SigmaBuckets bucket


@torch.no_grad()
def held_out_sigma_report(model: torch.nn.Module, normalizer: LatentNormalizer, x0_path: str, captions_path: str, *,
                          sigma_data: float = 0.5, sigmas=HELD_OUT_SIGMAS, max_clips: int = 64, batch: int = 8,
                          seed: int = 0) -> dict[str, float]:
    """Denoising MSE of the EMA model on valid clips at fixed sigmas, against the trivial denoiser.

    Same clips, same seeded noise for both: ``ratio = E|D(y + s n) - y|^2 / E|c_skip(s) (y + s n) - y|^2``.
    The trivial error is measured on these clips, not taken as c_out^2, so a ratio below 1 is a
    real gain on unseen data even when its variance is not exactly sigma_data^2. Captions are given
    (no dropout). Returns ``valid_mse_ratio/sigma_<s>`` and ``valid_mse/sigma_<s>`` per sigma.
    """
    rows = split_rows(x0_path, "valid")
    if rows.size == 0:
        return {}
    rows = rows[:max_clips]
    model.eval()
    device = next(model.parameters()).device
    data = LatentCaptionDataset(x0_path, captions_path, rows)
    net_err = np.zeros(len(sigmas))
    triv_err = np.zeros(len(sigmas))
    g = torch.Generator().manual_seed(seed)
    for start in range(0, len(rows), batch):
        b = collate_rows(data.__getitems__(list(range(start, min(start + batch, len(rows))))))
        y = normalizer.normalize(b["x0"].to(device)).float()
        text = TextEmbedding(b["text"].to(device).float(), b["text_mask"].to(device).bool(), b["pooled"].to(device).float())
        for i, s in enumerate(sigmas):
            noise = torch.randn(y.shape, generator=g).to(device)
            sigma = torch.full((y.shape[0],), float(s), device=device)
            x = y + noise * s
            c_skip = preconditioning(sigma, sigma_data)[0].view(-1, 1, 1)
            net_err[i] += float(((model(x, sigma, text=text).float() - y) ** 2).sum())
            triv_err[i] += float(((c_skip * x - y) ** 2).sum())
    n = len(rows) * int(np.prod(y.shape[1:]))
    out = {}
    for i, s in enumerate(sigmas):
        out[f"valid_mse/sigma_{s:g}"] = net_err[i] / n
        out[f"valid_mse_ratio/sigma_{s:g}"] = net_err[i] / max(triv_err[i], 1e-12)
    return out
