"""Training batches of the diffusion stages: x0 latents with their caption embeddings (and z, z_q).

- :class:`LatentCaptionDataset`: rows of the x0 cache with their caption embeddings (DiT, stage 1);
  :class:`LatentCaptionZDataset` adds z and z_q of the same rows (stage 3).
- :func:`batch_stream`: endless shuffled batches; DDP ranks get disjoint rows through
  ``DistributedSampler`` and the loops run a fixed number of steps, so every rank steps equally.
- :func:`resumed_stream`: the batches and noise generator of a run (re)starting at a given step.
  (With Ray Data, :mod:`spresso.train.feed` gives the batches and :func:`noise_generator` the noise.)
- :func:`split_rows` / :func:`train_rows`: the finished rows of one split of an x0 cache.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from spresso.core.errors import SpressoError
from spresso.data.zarr_cache import CacheDataset, ClipCache

X0_ARRAYS = ("x0", "valid_frames")  # valid_frames: real (not padding) frames, for dae.encoder.mask_padding
TEXT_ARRAYS = ("text", "text_mask", "pooled")


class LatentCaptionDataset(torch.utils.data.Dataset):
    """Rows of the x0 cache with their caption embeddings (two row-aligned caches)."""

    def __init__(self, x0_path: str, captions_path: str, rows: np.ndarray):
        self.x0 = CacheDataset(x0_path, X0_ARRAYS, rows)
        self.text = CacheDataset(captions_path, TEXT_ARRAYS, rows)

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, i: int) -> dict:
        return {**self.x0[i], **self.text[i]}

    def __getitems__(self, indices) -> list[dict]:
        return [{**a, **b} for a, b in zip(self.x0.__getitems__(indices), self.text.__getitems__(indices))]


class LatentCaptionZDataset(torch.utils.data.Dataset):
    """x0 + caption embeddings + z + z_q of the same rows (four row-aligned caches; stage 3)."""

    def __init__(self, x0_path: str, captions_path: str, z_path: str, zq_path: str, rows: np.ndarray):
        self.base = LatentCaptionDataset(x0_path, captions_path, rows)
        self.z = CacheDataset(z_path, ("z",), rows)
        self.zq = CacheDataset(zq_path, ("zq",), rows)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], **self.z[i], **self.zq[i]}

    def __getitems__(self, indices) -> list[dict]:
        return [{**a, **b, **c} for a, b, c in zip(self.base.__getitems__(indices), self.z.__getitems__(indices),
                                                   self.zq.__getitems__(indices))]


def collate_rows(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the rows' arrays into one tensor per name."""
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


def batch_stream(dataset: torch.utils.data.Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches; a new permutation per pass (seeded by pass and ``seed``)."""
    if len(dataset) < world_size:
        raise SpressoError(f"{len(dataset)} train clips for {world_size} workers")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=len(dataset) >= world_size * batch_size)
    per_rank = len(sampler)
    loader = DataLoader(dataset, batch_size=min(batch_size, per_rank), sampler=sampler, num_workers=workers,
                        collate_fn=collate_rows, drop_last=True, persistent_workers=workers > 0)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def resumed_stream(dataset: torch.utils.data.Dataset, batch_size: int, *, rank: int, world_size: int, seed: int,
                   start: int, workers: int = 0) -> tuple[Iterator[dict[str, torch.Tensor]], torch.Generator]:
    """Batches and noise generator for a run (re)starting at step ``start`` on rank ``rank``.

    Both are seeded by (seed, rank, start): a resumed run draws fresh batches and noise instead of
    replaying those of its first steps, and ranks never share noise.
    """
    stream = batch_stream(dataset, batch_size, rank=rank, world_size=world_size, seed=seed * 1_000_003 + start,
                          workers=workers)
    return stream, noise_generator(seed, rank, start)


def noise_generator(seed: int, rank: int, start: int) -> torch.Generator:
    """The diffusion noise generator of rank ``rank`` (re)starting at step ``start`` (whatever feeds the batches)."""
    return torch.Generator().manual_seed(seed * 7919 + rank * 104729 + start)


def caption_caches(x0_path: str, captions_path: str) -> dict[str, tuple[str, ...]]:
    """The caches (path -> arrays) of :class:`LatentCaptionDataset`'s rows, for a Ray Data feed."""
    return {x0_path: X0_ARRAYS, captions_path: TEXT_ARRAYS}


def split_rows(x0_path: str, split: str) -> np.ndarray:
    """The finished rows of one split (train / valid / test) of an x0 cache."""
    return ClipCache.open(x0_path, mode="r").rows_where("split", split)


def train_rows(x0_path: str) -> np.ndarray:
    """The finished train rows of an x0 cache (a one-line error when there are none)."""
    rows = split_rows(x0_path, "train")
    if rows.size == 0:
        raise SpressoError(f"{x0_path}: no finished train rows")
    return rows
