"""Fréchet Audio Distance between a reference set and a candidate set of embeddings.

FAD = ||mu_r - mu_c||^2 + tr(S_r) + tr(S_c) - 2 tr((S_r S_c)^{1/2}).

Computed robustly: everything in float64, and tr((S_r S_c)^{1/2}) from the eigenvalues of the
symmetric PSD matrix S_r^{1/2} S_c S_r^{1/2} (same spectrum as S_r S_c), so there is no
complex-valued ``sqrtm`` and no imaginary residue to discard. Negative eigenvalues from
round-off are clipped to zero. With fewer clips than embedding dimensions a clip-level
covariance is singular; pass frame-level embeddings ([N, F, D] or a list of [F_i, D]) so the
covariance is estimated from all frames. FAD is biased by sample size, so a candidate is only
scored against a reference of the same number of clips, and every result carries the
reference set's digest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from spresso.core.errors import SpressoError
from spresso.eval.embedset import EmbeddingSet, check_comparable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64
    n: int  # frames used


def gaussian_stats(frames: np.ndarray, weights: np.ndarray | None = None) -> GaussianStats:
    """Mean and (unbiased) covariance of frames [N, D] in float64, optionally with integer frame weights."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SpressoError(f"FAD needs at least two embedding frames, got shape {x.shape}")
    if weights is None:
        return GaussianStats(x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]), x.shape[0])
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    mu = (w[:, None] * x).sum(axis=0) / total
    xc = x - mu
    sigma = (xc * w[:, None]).T @ xc / (total - 1.0)
    return GaussianStats(mu, sigma, int(total))


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((a + a.T) * 0.5)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) = sum sqrt(eig(S1^{1/2} S2 S1^{1/2})), real and non-negative by construction."""
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    vals = np.linalg.eigvalsh((m + m.T) * 0.5)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    diff = a.mu - b.mu
    value = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_sqrt_product(a.sigma, b.sigma))
    return max(value, 0.0)  # round-off can leave a tiny negative for identical sets


@dataclass(frozen=True)
class FADResult:
    value: float
    n_clips: int
    frames_reference: int
    frames_candidate: int
    reference_digest: str


class FADReference:
    """A fixed reference set: its statistics are computed once and every candidate is checked
    to have the same number of clips."""

    def __init__(self, reference: Any, pool: str = "frames"):
        if pool not in ("frames", "clips"):
            raise SpressoError(f"FAD pool must be 'frames' or 'clips', got {pool!r}")
        self.pool = pool
        self.set = _pooled(EmbeddingSet.of(reference, "reference embeddings"), pool)
        if self.set.frames.shape[0] <= self.set.dim:
            log.warning("FAD from %d frames of %d-dim embeddings: the covariance is singular and FAD is biased; "
                        "use more clips or an embedding with more frames per clip", self.set.frames.shape[0], self.set.dim)
        self.stats = gaussian_stats(self.set.frames)
        self.digest = self.set.digest()

    def score(self, candidate: Any) -> FADResult:
        cand = _pooled(EmbeddingSet.of(candidate, "candidate embeddings"), self.pool)
        check_comparable(self.set, cand, "FAD")
        value = frechet_distance(self.stats, gaussian_stats(cand.frames))
        return FADResult(value, cand.n_clips, self.stats.n, cand.frames.shape[0], self.digest)


def _pooled(s: EmbeddingSet, pool: str) -> EmbeddingSet:
    if pool == "frames":
        return s
    # clip-level: mean of each clip's frames; singular when clips <= D, so say so.
    counts = s.clip_counts()
    means = np.zeros((s.n_clips, s.dim))
    np.add.at(means, s.owner, s.frames)
    means /= counts[:, None]
    if s.n_clips <= s.dim:
        raise SpressoError(
            f"clip-level FAD with {s.n_clips} clips and {s.dim}-dim embeddings has a singular covariance; "
            "use frame-level embeddings (pool='frames') or more clips"
        )
    return EmbeddingSet(means, np.arange(s.n_clips), s.n_clips)


def fad(reference: Any, candidate: Any, pool: str = "frames") -> FADResult:
    """FAD between a reference set and a candidate set of the same number of clips."""
    return FADReference(reference, pool).score(candidate)
