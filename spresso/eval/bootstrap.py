"""Seeded bootstrap confidence intervals for per-clip means, FAD and KAD.

Clips are the resampling unit (frames of one clip are not independent). For FAD and KAD the
reference and candidate sets are paired (original i and its reconstruction i), so one draw of
clip indices resamples both sets alike: the comparison stays against the same clips. Intervals
are percentile intervals around the full-sample point estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spresso.core.errors import SpressoError
from spresso.eval.embedset import EmbeddingSet, check_comparable
from spresso.eval.fad import FADReference, frechet_distance, gaussian_stats
from spresso.eval.kad import KAD_SCALE, KADReference


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 0

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level, "n_boot": self.n_boot}


def _counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """[n_boot, n] multiplicities of each clip in each resample."""
    idx = rng.integers(0, n, size=(n_boot, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx])


def _interval(value: float, draws: np.ndarray, level: float, n_boot: int) -> Interval:
    if not 0 < level < 1:
        raise SpressoError(f"confidence level must be in (0, 1), got {level}")
    a = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [a, 1.0 - a])
    return Interval(float(value), float(low), float(high), level, n_boot)


def bootstrap_mean(values: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of per-clip values (SI-SDR, cosine, mel distance) with a bootstrap interval."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise SpressoError("no finite values to average")
    rng = np.random.default_rng(seed)
    draws = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    return _interval(v.mean(), draws, level, n_boot)


def _paired(reference: Any, candidate: Any, metric: str) -> tuple[EmbeddingSet, EmbeddingSet]:
    ref = EmbeddingSet.of(reference, "reference embeddings")
    cand = EmbeddingSet.of(candidate, "candidate embeddings")
    check_comparable(ref, cand, metric)
    return ref, cand


def bootstrap_fad(reference: Any, candidate: Any, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Interval:
    """FAD (frame-level) with a paired clip bootstrap. Each draw costs two D x D eigendecompositions."""
    ref, cand = _paired(reference, candidate, "FAD")
    value = FADReference(ref).score(cand).value
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b, w in enumerate(_counts(rng, ref.n_clips, n_boot)):
        draws[b] = frechet_distance(gaussian_stats(ref.frames, w[ref.owner]), gaussian_stats(cand.frames, w[cand.owner]))
    return _interval(value, draws, level, n_boot)


def _block_sums(k: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """S[c, d] = sum of k over frames of clip c (rows) and clip d (cols)."""
    r = np.zeros((n, k.shape[0]))
    r[rows, np.arange(k.shape[0])] = 1.0
    c = np.zeros((k.shape[1], n))
    c[np.arange(k.shape[1]), cols] = 1.0
    return r @ k @ c


def _within(k: np.ndarray, owner: np.ndarray, n: int, frames_per_clip: np.ndarray):
    s = _block_sums(k, owner, owner, n)
    # pairs of distinct frames inside one clip (the U-statistic's i != j)
    diag_frames = np.bincount(owner, weights=np.diag(k), minlength=n)
    inner = np.diag(s) - diag_frames
    return s, inner


def bootstrap_kad(
    reference: Any, candidate: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
    bandwidth: float | None = None, scale: float = KAD_SCALE,
) -> Interval:
    """KAD (x ``scale``) with a paired clip bootstrap; bandwidth fixed from the full reference set.

    A resample with multiplicities w_c is scored with the same unbiased estimator, stratified by
    kind of pair: pairs between two copies of one clip are left out like the i = j diagonal (they
    would add k = 1 terms), and so are cross pairs between one copy's original and another copy's
    reconstruction; pairs inside one clip (and, across the sets, a clip's original with its own
    reconstruction) keep the share of all pairs they have in the full sample. Without that, a
    close codec's near-duplicate pairs were over-counted and every draw fell below the estimate.
    With w = 1 it equals the point estimate.
    """
    ref, cand = _paired(reference, candidate, "KAD")
    kr = KADReference(ref, bandwidth, scale)
    kyy, kxy = kr.kernels(cand)
    value = kr.score(cand).value
    n = ref.n_clips
    fx, fy = ref.clip_counts().astype(float), cand.clip_counts().astype(float)
    sxx, ixx = _within(kr.kxx, ref.owner, n, fx)
    syy, iyy = _within(kyy, cand.owner, n, fy)
    sxy = _block_sums(kxy, ref.owner, cand.owner, n)
    w = _counts(np.random.default_rng(seed), n, n_boot).astype(float)  # [n_boot, n]

    def mix(share, total_a, pairs_a, total_b, pairs_b):
        # Each kind of pair averaged over the resample, then weighted by its share of the full
        # sample's pairs: duplicated clips change how often a kind occurs, not its weight.
        a = np.divide(total_a, pairs_a, out=np.zeros_like(total_a), where=pairs_a > 0)
        return share * a + (1.0 - share) * total_b / pairs_b

    def within(s, inner, f):
        # pairs of frames of one clip (one copy's own, i != j) and of two different clips; the
        # pairs between two copies of one clip are left out like the i = j diagonal
        inner_share = (f * (f - 1.0)).sum() / (f.sum() ** 2 - f.sum())
        between = np.einsum("bi,ij,bj->b", w, s, w) - (w * w) @ np.diag(s)
        return mix(inner_share, w @ inner, w @ (f * (f - 1.0)), between, (w @ f) ** 2 - (w * w) @ (f * f))

    # cross pairs: a copy's original with its own reconstruction, and clips with other clips (never
    # one copy's original with another copy's reconstruction: for a close codec a near-duplicate)
    same_share = (fx * fy).sum() / (fx.sum() * fy.sum())
    diff = np.einsum("bi,ij,bj->b", w, sxy, w) - (w * w) @ np.diag(sxy)
    cross = mix(same_share, w @ np.diag(sxy), w @ (fx * fy), diff, (w @ fx) * (w @ fy) - (w * w) @ (fx * fy))
    draws = (within(sxx, ixx, fx) + within(syy, iyy, fy) - 2.0 * cross) * scale
    return _interval(value, draws, level, n_boot)
