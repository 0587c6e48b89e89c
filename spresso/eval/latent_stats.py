"""How many of z's channels a latent actually uses: principal-direction energy and per-channel variance.

A diffusion autoencoder's z has no prior pulling it to a spread distribution, so it can collapse
onto a few directions (a 64-channel 1 Hz z carrying ~4 numbers a second) while the loss still
improves. :func:`effective_dimensionality` measures that on a set of z vectors (one per frame):

- ``energy_top<k>``: fraction of the (centred) variance in the top k principal directions;
- ``dims_90`` / ``dims_98``: directions needed for 90% / 98% of it;
- ``participation_ratio``: (sum lambda)^2 / sum lambda^2 (1 for a line, C for an isotropic cloud);
- ``channel_var_min/median/max`` and ``channels_below_1pct``: per-channel variance, and how many
  channels have under 1% of the largest channel's variance.
"""
from __future__ import annotations

import numpy as np

TOP_K = (1, 2, 4, 8)


def frame_vectors(z: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """z [N, C, T'] (plus ``valid`` [N] real frames per clip) -> [n, C] vectors of the real frames only.

    Padding frames all encode the same silence, so keeping them would add one spurious direction.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"expected z [N, C, T'], got shape {z.shape}")
    frames = z.transpose(0, 2, 1)  # [N, T', C]
    if valid is None:
        return frames.reshape(-1, z.shape[1])
    keep = np.arange(z.shape[2])[None, :] < np.asarray(valid).reshape(-1, 1)
    return frames[keep]


def effective_dimensionality(vectors: np.ndarray, top_k=TOP_K) -> dict[str, float]:
    """The metrics of the module docstring for ``vectors`` [n, C] (n >= 2 frames)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 vectors [n, C], got shape {x.shape}")
    x = x - x.mean(0, keepdims=True)
    channel_var = (x ** 2).mean(0)
    eig = np.clip(np.linalg.eigvalsh(x.T @ x / x.shape[0])[::-1], 0.0, None)
    total = float(eig.sum())
    out: dict[str, float] = {"channels": float(x.shape[1]), "frames": float(x.shape[0]), "total_variance": total}
    if total <= 0.0:  # every vector identical: fully collapsed
        frac = np.zeros_like(eig)
        frac[0] = 1.0
    else:
        frac = eig / total
    cum = np.cumsum(frac)
    for k in top_k:
        out[f"energy_top{k}"] = float(cum[min(k, len(cum)) - 1])
    for level in (90, 98):
        out[f"dims_{level}"] = float(min(int(np.searchsorted(cum, level / 100 - 1e-12)) + 1, len(cum)))
    out["participation_ratio"] = float(total ** 2 / (eig ** 2).sum()) if total > 0 else 1.0
    vmax = float(channel_var.max())
    out.update({"channel_var_min": float(channel_var.min()), "channel_var_median": float(np.median(channel_var)),
                "channel_var_max": vmax, "channels_below_1pct": float((channel_var < 0.01 * vmax).sum()) if vmax > 0
                else float(x.shape[1])})
    return out
