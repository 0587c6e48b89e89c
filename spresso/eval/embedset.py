"""Sets of per-clip embeddings, flattened to frames for set-level metrics (FAD, KAD).

A set is given as ``[N, D]`` (one embedding per clip), ``[N, F, D]`` (F frames per clip) or a
list of ``[F_i, D]`` arrays. It is flattened to ``frames [sum F_i, D]`` (float64) plus
``owner [sum F_i]`` (the clip each frame came from), so bootstraps resample whole clips.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from spresso.core.errors import SpressoError


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class EmbeddingSet:
    frames: np.ndarray  # [total_frames, D] float64
    owner: np.ndarray  # [total_frames] int, clip index of each frame
    n_clips: int

    @classmethod
    def of(cls, embeddings: "EmbeddingSet | Any | Sequence[Any]", name: str = "embeddings") -> "EmbeddingSet":
        if isinstance(embeddings, EmbeddingSet):
            return embeddings
        if isinstance(embeddings, (list, tuple)):
            parts = [_to_numpy(e) for e in embeddings]
            parts = [p[None, :] if p.ndim == 1 else p for p in parts]
            if not parts or any(p.ndim != 2 or p.shape[0] == 0 for p in parts):
                raise SpressoError(f"{name}: need a non-empty list of [frames, D] arrays")
            if len({p.shape[1] for p in parts}) != 1:
                raise SpressoError(f"{name}: clips have different embedding sizes")
            frames = np.concatenate(parts, axis=0)
            owner = np.repeat(np.arange(len(parts)), [p.shape[0] for p in parts])
            return cls(frames, owner, len(parts))
        arr = _to_numpy(embeddings)
        if arr.ndim == 2:
            return cls(arr, np.arange(arr.shape[0]), arr.shape[0])
        if arr.ndim == 3:
            n, f, d = arr.shape
            return cls(arr.reshape(n * f, d), np.repeat(np.arange(n), f), n)
        raise SpressoError(f"{name}: expected [N, D], [N, F, D] or a list of [F, D], got shape {arr.shape}")

    @property
    def dim(self) -> int:
        return int(self.frames.shape[1])

    def digest(self) -> str:
        """Content hash: results carry it so tables can prove every row used the same reference set."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.frames).tobytes())
        h.update(np.ascontiguousarray(self.owner).tobytes())
        return h.hexdigest()[:16]

    def clip_counts(self) -> np.ndarray:
        return np.bincount(self.owner, minlength=self.n_clips)


def check_comparable(reference: EmbeddingSet, candidate: EmbeddingSet, metric: str) -> None:
    """FAD and KAD are biased by sample count: compare only at the same number of clips and size."""
    if reference.dim != candidate.dim:
        raise SpressoError(f"{metric}: embedding sizes differ ({reference.dim} vs {candidate.dim})")
    if reference.n_clips != candidate.n_clips:
        raise SpressoError(
            f"{metric}: reference has {reference.n_clips} clips but candidate has {candidate.n_clips}; "
            "compare sets of the same size against the same reference set"
        )
