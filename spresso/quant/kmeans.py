"""Residual k-means initialisation of QINCo2's codebooks (faiss k-means; GPU when faiss-gpu is present)."""
from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)
# faiss's own advice: fewer points per centroid than this and the centroids are poorly estimated.
FAISS_MIN_POINTS_PER_CENTROID = 39
_warned: set[tuple[str, int, int]] = set()


def warn_if_few_vectors(n: int, K: int, what: str) -> bool:
    """Whether ``n`` vectors are too few for ``K`` centroids by faiss's advice; if so, say it once per (what, n, K).

    Callers then set faiss's ``min_points_per_centroid = 1``: faiss would otherwise print its own
    warning for every k-means of every residual step (132 lines of a demo log).
    """
    few = n < FAISS_MIN_POINTS_PER_CENTROID * K
    if few and (what, n, K) not in _warned:
        _warned.add((what, n, K))
        log.warning("%s: %d vectors for %d centroids (faiss advises at least %d); the codebooks may be poorly estimated",
                    what, n, K, FAISS_MIN_POINTS_PER_CENTROID * K)
    return few


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def kmeans(x: np.ndarray, K: int, *, niter: int = 20, seed: int = 0, gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means: centroids [K, d] and the assignment [N] of each row of x."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] < K:
        raise ValueError(f"k-means needs at least K={K} vectors, got {x.shape[0]}")
    gpu = faiss_has_gpu() if gpu is None else gpu
    warn_if_few_vectors(x.shape[0], K, "k-means")
    km = faiss.Kmeans(x.shape[1], K, niter=niter, seed=seed, gpu=bool(gpu), verbose=False,
                      max_points_per_centroid=1 << 20,  # use every given vector, no silent subsampling
                      min_points_per_centroid=1)  # its warning is ours (warn_if_few_vectors)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0]


@torch.no_grad()
def residual_kmeans_init(model, xn: np.ndarray, *, niter: int = 20, seed: int = 0, gpu: bool | None = None) -> list[float]:
    """Fill every step's base and pre-selection codebooks by k-means on the greedy residuals.

    The networks start as the identity on the codeword (out_proj is zero), so the result is
    exactly greedy residual quantization: RQ quality before any training. Returns the relative
    MSE (w.r.t. the normalised data's energy) after each step.
    """
    residual = np.ascontiguousarray(xn, dtype=np.float32).copy()
    energy = float((residual ** 2).mean()) or 1.0
    curve = []
    for m in range(model.M):
        cents, assign = kmeans(residual, model.spec.K, niter=niter, seed=seed + m, gpu=gpu)
        book = torch.from_numpy(cents).to(model.codebook0)
        if m == 0:
            model.codebook0.copy_(book)
        else:
            model.steps[m - 1].codebook.copy_(book)
            model.steps[m - 1].preselect.copy_(book)
        residual -= cents[assign]
        curve.append(float((residual ** 2).mean()) / energy)
        log.info("residual k-means step %d/%d: relative MSE %.4f", m + 1, model.M, curve[-1])
    return curve
