"""Stage 1's z report: the effective dimensionality of g_psi's z on held-out clips, logged as ``z/<metric>``.

A collapsed z (a few principal directions holding nearly all its energy) trains a DAE whose loss still
falls, so it is invisible in the loss curves; this puts it next to them in MLflow at every checkpoint.
Clips: the x0 cache's valid split; when that gives fewer than ``min_frames`` z frames (tiny corpora at
1 Hz), train clips top it up, and ``z/held_out_frames`` says how many of the frames were held out.
"""
from __future__ import annotations

import numpy as np
import torch

from spresso.data.latent_batches import split_rows
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.padding import frame_mask
from spresso.eval.latent_stats import effective_dimensionality, frame_vectors


def z_stat_rows(x0_path: str, t: int, *, max_clips: int, min_frames: int) -> tuple[np.ndarray, int]:
    """(rows to encode, how many of them are held out): valid rows, topped up with train rows if too few frames."""
    cache = ClipCache.open(x0_path, mode="r")
    valid = split_rows(x0_path, "valid")[:max_clips]
    frames = int((-(-cache.read("valid_frames", valid).astype(np.int64) // t)).sum()) if valid.size else 0
    rows = valid
    if frames < min_frames and len(valid) < max_clips:
        rows = np.concatenate([valid, split_rows(x0_path, "train")[: max_clips - len(valid)]])
    return rows.astype(np.int64), len(valid)


@torch.no_grad()
def encode_rows(encoder: torch.nn.Module, normalizer: LatentNormalizer, x0_path: str, rows: np.ndarray, *,
                batch: int = 16, mask_padding: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(z [N, C, T'], real z frames per clip [N]) of the given x0-cache rows, encoder in eval mode
    (``mask_padding``: hiding each clip's padding frames, as a model trained with it does)."""
    cache = ClipCache.open(x0_path, mode="r")
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    zs, valid = [], []
    for start in range(0, len(rows), batch):
        idx = rows[start:start + batch]
        x0 = torch.from_numpy(cache.read("x0", idx).astype(np.float32))
        frames = cache.read("valid_frames", idx).astype(np.int64)
        mask = frame_mask(torch.from_numpy(frames), x0.shape[-1]).to(device) if mask_padding else None
        zs.append(encoder(normalizer.normalize(x0.to(device)), mask).float().cpu().numpy())
        valid.append(-(-frames // encoder.t))
    encoder.train(was_training)
    return np.concatenate(zs), np.concatenate(valid)


def z_stats_metrics(encoder: torch.nn.Module, normalizer: LatentNormalizer, x0_path: str, *, max_clips: int = 256,
                    min_frames: int = 256, mask_padding: bool = False) -> dict[str, float]:
    """``z/<metric>`` of :func:`~spresso.eval.latent_stats.effective_dimensionality` over the report's clips."""
    rows, held_out = z_stat_rows(x0_path, encoder.t, max_clips=max_clips, min_frames=min_frames)
    if rows.size == 0:
        return {}
    z, valid = encode_rows(encoder, normalizer, x0_path, rows, mask_padding=mask_padding)
    vectors = frame_vectors(z, valid)
    if vectors.shape[0] < 2:
        return {}
    out = {f"z/{k}": v for k, v in effective_dimensionality(vectors).items()}
    out["z/held_out_frames"] = float(valid[:held_out].sum())
    return out
