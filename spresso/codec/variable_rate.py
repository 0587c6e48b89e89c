"""Variable bitrate: how many codebooks m to encode with (`--kbps` / `--codebooks`).

A model with M codebooks of size K at pooling t offers M operating points,
m x log2 K x frame rate for m = 1..M (``spresso.rates``). ``--kbps`` picks the nearest one; on a
tie the smaller m (never spend more than asked when two points are equally close). A target must
lie within half a step (one codebook's bitrate) of the model's range; beyond that it is refused
with the range, never clamped (``--kbps 1000`` on a 0.1 kbps model is a mistake, not a wish).
"""
from __future__ import annotations

import math

import numpy as np

from spresso.core import rates
from spresso.core.errors import SpressoError


def operating_points(K: int, t: int, max_m: int) -> list[tuple[int, float]]:
    """(m, kbps) for m = 1..max_m."""
    if max_m < 1:
        raise SpressoError(f"a model needs at least one codebook, got {max_m}")
    return [(m, rates.bitrate_bps(m, K, t) / 1000) for m in range(1, max_m + 1)]


def codebooks_for_kbps(kbps: float, K: int, t: int, max_m: int) -> int:
    """The m whose bitrate is nearest to ``kbps`` (ties: the smaller m)."""
    points = operating_points(K, t, max_m)
    lo, hi = points[0][1], points[-1][1]
    step = lo  # every codebook adds the same bitrate
    if (not isinstance(kbps, (int, float, np.integer, np.floating)) or isinstance(kbps, bool) or not math.isfinite(kbps)
            or not lo - step / 2 <= kbps <= hi + step / 2):
        raise SpressoError(f"--kbps must be within this model's range {lo:.4g}..{hi:.4g} kbps (1..{max_m} codebooks of "
                           f"{step:.4g} kbps each), got {kbps!r}")
    # distances in bps rounded to micro-bits, so 0.035 kbps is an exact tie between 30 and 40 bps
    return min(points, key=lambda p: (round(abs(p[1] - float(kbps)) * 1000, 6), p[0]))[0]


def resolve_codebooks(K: int, t: int, max_m: int, kbps: float | None = None, codebooks: int | None = None) -> int:
    """m from the command line's ``--kbps`` or ``--codebooks`` (at most one); neither: all max_m codebooks."""
    if kbps is not None and codebooks is not None:
        raise SpressoError("give --kbps or --codebooks, not both")
    if codebooks is not None:
        if isinstance(codebooks, bool) or not isinstance(codebooks, (int, np.integer)):
            raise SpressoError(f"--codebooks must be an integer 1..{max_m}, got {codebooks!r} ({type(codebooks).__name__})")
        codebooks = int(codebooks)
        if not 1 <= codebooks <= max_m:
            lo, hi = operating_points(K, t, max_m)[0][1], operating_points(K, t, max_m)[-1][1]
            raise SpressoError(f"--codebooks must be 1..{max_m} for this model ({lo:.4g}..{hi:.4g} kbps), got {codebooks}")
        return codebooks
    if kbps is not None:
        return codebooks_for_kbps(kbps, K, t, max_m)
    return max_m
