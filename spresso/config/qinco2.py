"""QINCo2 settings: the offline neural quantizer of z (stage 2), its training and its baseline."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from spresso.config.base import Section
from spresso.config.scaling import ScalingSettings, run_knob, scaling_field


class QINCo2Config(Section):
    # Model: preset S/M/L gives (L, de, dh); any of them can be overridden.
    preset: Literal["S", "M", "L"] = "S"
    K: int = Field(1024, ge=2, le=4096)
    M: int = Field(20, ge=1, le=32)
    d: Optional[int] = Field(64, ge=1)  # expected vector size (z has 64 channels); null = take the data's
    L: Optional[int] = Field(None, ge=0)
    de: Optional[int] = Field(None, ge=1)
    dh: Optional[int] = Field(None, ge=1)
    candidates: int = Field(16, ge=1)  # A: pre-selected candidates per hypothesis
    beam: int = Field(32, ge=1)  # B: beam width when encoding
    # Beam used to encode training batches (null = the encoding beam); a smaller one trains faster.
    train_beam: Optional[int] = Field(None, ge=1)
    train_candidates: Optional[int] = Field(None, ge=1)

    # Input vectors: a Zarr group/array of frames (the z cache of stage 1; any vector array works).
    vectors_path: str = "z/z.zarr"
    vectors_array: str = "z"
    # Axis order of the array: N C T (clip, channel, frame; the caches' layout), N T C, or N C (flat vectors).
    layout: Literal["NCT", "NTC", "NC"] = "NCT"
    val_fraction: float = Field(0.05, gt=0, lt=1)  # held-out clips when the cache has no split array
    max_val_vectors: int = Field(20000, ge=100)

    # Training (the paper's settings by default).
    batch_size: int = Field(8000, ge=2)
    epochs: int = Field(10, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)  # stop earlier than epochs x steps/epoch
    lr: float = Field(8e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(0.1, gt=0)
    warmup_steps: int = Field(200, ge=0)
    valid_every: int = Field(500, ge=1)  # steps between validations (and at each epoch end)
    kmeans_vectors: int = Field(200000, ge=2)
    kmeans_iters: int = Field(20, ge=1)
    seed: int = 0
    # One GPU worker by default; without CUDA in the driver the stage runs on CPU instead.
    scaling: ScalingSettings = scaling_field(use_gpu=True)
    # ray_data: z frames read by Ray Data tasks, batches prefetched in each worker; loader: read in the worker.
    feed: Literal["ray_data", "loader"] = run_knob("ray_data")
    prefetch_batches: int = run_knob(2, ge=0)
    rq_beam: int = Field(32, ge=1)  # faiss ResidualQuantizer baseline beam
    rq_train_vectors: int = Field(100000, ge=2)
    checkpoint_dir: str = "qinco2"
