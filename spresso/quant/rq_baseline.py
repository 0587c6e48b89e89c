"""The baseline: faiss ResidualQuantizer with beam search, at QINCo2's d, M and K.

faiss trains RQ codebooks one step at a time on beam-searched residuals, so the first m
codebooks of an M-step RQ are those an m-step RQ would learn. ``encode(x, m)`` therefore builds
an m-step quantizer from them and beam-searches it: the baseline gets the same "truncated
encode" treatment as QINCo2. Data are normalised like QINCo2's (per-dim mean, one global std).
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from spresso.quant.kmeans import warn_if_few_vectors
from spresso.quant.rq import ResidualQuantizer

TRAIN_TYPES = {"default": 0, "progressive_dim": 1}  # faiss's ResidualQuantizer.train_type flags


class FaissRQ:
    """``train_type``: "progressive_dim" (faiss's default, slower to train, a little better) or
    "default" (plain beam-searched residual k-means)."""

    def __init__(self, d: int, M: int, K: int, beam: int = 32, train_type: str = "progressive_dim"):
        if K & (K - 1):
            raise ValueError(f"faiss RQ needs K a power of two, got {K}")
        self.d, self.M, self.K, self.beam = d, M, K, beam
        self.nbits = int(math.log2(K))
        self.rq = faiss.ResidualQuantizer(d, M, self.nbits)
        self.rq.max_beam_size = beam
        if train_type not in TRAIN_TYPES:
            raise ValueError(f"train_type must be one of {sorted(TRAIN_TYPES)}, got {train_type!r}")
        self.rq.train_type = TRAIN_TYPES[train_type]
        self.train_type = train_type
        self.mean = np.zeros(d, np.float32)
        self.std = 1.0
        self._truncated: dict[int, object] = {M: self.rq}

    def _norm(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((np.asarray(x, np.float32) - self.mean) / self.std, dtype=np.float32)

    def train(self, x: np.ndarray) -> "FaissRQ":
        x = np.asarray(x, np.float32)
        if warn_if_few_vectors(x.shape[0], self.K, "faiss RQ"):
            self.rq.cp.min_points_per_centroid = 1  # its per-step warning is replaced by ours
        self.mean = x.mean(0).astype(np.float32)
        self.std = float(np.sqrt(((x - self.mean) ** 2).mean())) or 1.0
        self.rq.train(self._norm(x))
        self._truncated = {self.M: self.rq}
        return self

    def set_trained(self, codebooks: np.ndarray, mean: np.ndarray, std: float) -> "FaissRQ":
        """Load trained codebooks [M, K, d] and the normalisation (a saved RQ), as :meth:`train` would leave them."""
        codebooks = np.asarray(codebooks, np.float32)
        if codebooks.shape != (self.M, self.K, self.d):
            raise ValueError(f"codebooks of shape {codebooks.shape}, expected {(self.M, self.K, self.d)}")
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks).ravel(), self.rq.codebooks)
        self.rq.is_trained = True
        self.mean, self.std = np.asarray(mean, np.float32), float(std)
        self._truncated = {self.M: self.rq}  # truncations of the old codebooks are stale
        return self

    def to_module(self) -> ResidualQuantizer:
        """The trained codebooks as our own :class:`ResidualQuantizer` (torch; what a bundle ships), same beam."""
        return ResidualQuantizer.from_arrays(self.codebooks(), self.mean, self.std, beam=self.beam)

    def codebooks(self) -> np.ndarray:
        return faiss.vector_to_array(self.rq.codebooks).reshape(self.M, self.K, self.d)

    def quantizer(self, m: int):
        """An m-step ResidualQuantizer made of the first m trained codebooks (built once, then cached)."""
        if not 1 <= m <= self.M:
            raise ValueError(f"m must be in [1, {self.M}], got {m}")
        if m not in self._truncated:
            q = faiss.ResidualQuantizer(self.d, m, self.nbits)
            q.max_beam_size = self.beam
            faiss.copy_array_to_vector(np.ascontiguousarray(self.codebooks()[:m]).ravel(), q.codebooks)
            q.is_trained = True
            self._truncated[m] = q
        return self._truncated[m]

    def encode(self, x: np.ndarray, m: int | None = None) -> np.ndarray:
        """Vectors [N, d] -> unpacked integer codes [N, m] (int32)."""
        m = m or self.M
        packed = self.quantizer(m).compute_codes(self._norm(x))
        return faiss.unpack_bitstrings(packed, m, self.nbits).astype(np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [N, m] (any prefix length) -> vectors [N, d]."""
        codes = np.asarray(codes)
        m = codes.shape[1]
        packed = faiss.pack_bitstrings(np.ascontiguousarray(codes, dtype=np.int32), self.nbits)
        return self.quantizer(m).decode(packed) * self.std + self.mean
