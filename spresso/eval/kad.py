"""Kernel Audio Distance: the unbiased MMD^2 estimate between embedding sets (Chung et al., 2025).

MMD_u^2 = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
          - 2/(mn) sum_{i,j} k(x_i, y_j),
with the Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 h^2)) and the bandwidth h = the median
pairwise Euclidean distance of the *reference* set (so every candidate is measured with the
same kernel). Distribution-free, unbiased at any sample size, but can be slightly negative for
identical distributions.

Scale: values are reported multiplied by ``KAD_SCALE = 1000`` (as in the KAD paper), i.e.
``KAD x1000``; :class:`KADResult` carries the factor and the bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spresso.eval.embedset import EmbeddingSet, check_comparable

KAD_SCALE = 1000.0
_CHUNK = 2048


def sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances in float64, clipped at 0 against round-off."""
    aa = (a * a).sum(axis=1)[:, None]
    bb = (b * b).sum(axis=1)[None, :]
    return np.clip(aa + bb - 2.0 * (a @ b.T), 0.0, None)


def median_bandwidth(reference: np.ndarray) -> float:
    """Median of the pairwise distances between distinct reference frames (i < j)."""
    x = np.asarray(reference, dtype=np.float64)
    parts = []
    for start in range(0, x.shape[0], _CHUNK):
        d2 = sq_distances(x[start : start + _CHUNK], x)
        rows = np.arange(start, min(start + _CHUNK, x.shape[0]))[:, None]
        parts.append(np.sqrt(d2[rows < np.arange(x.shape[0])[None, :]]))
    h = float(np.median(np.concatenate(parts)))
    return h if h > 0 else 1.0  # all-identical reference: any bandwidth gives MMD 0


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-sq_distances(a, b) / (2.0 * bandwidth * bandwidth))


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = kxx.shape[0], kyy.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


@dataclass(frozen=True)
class KADResult:
    value: float  # MMD_u^2 x scale
    scale: float
    bandwidth: float
    n_clips: int
    reference_digest: str

    @property
    def label(self) -> str:
        return f"KAD x{self.scale:g}"


class KADReference:
    """A fixed reference set: bandwidth and its kernel matrix are computed once."""

    def __init__(self, reference: Any, bandwidth: float | None = None, scale: float = KAD_SCALE):
        self.set = EmbeddingSet.of(reference, "reference embeddings")
        self.bandwidth = float(bandwidth) if bandwidth else median_bandwidth(self.set.frames)
        self.scale = scale
        self.kxx = gaussian_kernel(self.set.frames, self.set.frames, self.bandwidth)
        self.digest = self.set.digest()

    def kernels(self, candidate: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
        kyy = gaussian_kernel(candidate.frames, candidate.frames, self.bandwidth)
        kxy = gaussian_kernel(self.set.frames, candidate.frames, self.bandwidth)
        return kyy, kxy

    def score(self, candidate: Any) -> KADResult:
        cand = EmbeddingSet.of(candidate, "candidate embeddings")
        check_comparable(self.set, cand, "KAD")
        kyy, kxy = self.kernels(cand)
        value = mmd2_unbiased(self.kxx, kyy, kxy) * self.scale
        return KADResult(value, self.scale, self.bandwidth, cand.n_clips, self.digest)


def kad(reference: Any, candidate: Any, bandwidth: float | None = None, scale: float = KAD_SCALE) -> KADResult:
    """KAD (x ``scale``, default x1000) between a reference set and a candidate set of the same size."""
    return KADReference(reference, bandwidth, scale).score(candidate)
