"""Ingestion settings: decoding, clipping and sharding audio into WebDataset tars."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from spresso.config.base import Section


class SplitFractions(Section):
    train: float = 0.9
    valid: float = 0.05
    test: float = 0.05

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.valid, self.test) < 0:
            raise ValueError(f"split fractions must be >= 0 and sum to 1 (got {total:g})")
        return self


class DataConfig(Section):
    sample_rate: int = Field(48000, gt=0)
    clip_seconds: float = Field(5.0, gt=0)
    # A short file, or the last remainder of a long one, is kept (zero-padded) when at least this long.
    min_seconds: float = Field(0.25, ge=0)
    # A clip whose peak is below this (dBFS) is digital silence and dropped.
    silence_dbfs: float = -80.0
    loudness_normalize: bool = False
    target_lufs: float = -23.0
    bit_depth: Literal[16, 24] = 16
    splits: SplitFractions = SplitFractions()
    clips_per_shard: int = Field(256, gt=0)
    # Optional CSV (path, caption) used when no sidecar caption exists.
    captions_csv: str | None = None
    # Output folder of `spresso shard`, relative to the workdir unless absolute or a URL.
    shards_dir: str = "shards"
    # CPUs reserved per shard task (one Ray task decodes a group of files and writes one tar).
    # 1.0 = one task per core; fractional values oversubscribe (useful when decoding waits on I/O).
    worker_cpus: float = Field(1.0, gt=0)
    # Node label (`spresso-node`) the shard tasks need, e.g. cpu (null: any node).
    worker_label: Optional[str] = None
    # Ray task retries of a shard task after an I/O error reading a source (network, permissions);
    # a source still unreadable after them is a *failure* that the next run tries again (a file
    # that reads but does not decode is a reject instead, never retried).
    io_retries: int = Field(3, ge=0)
