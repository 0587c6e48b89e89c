"""Vector frames for QINCo2, streamed from a Zarr array (the z cache; any vector array works).

An array is read as N C T (clip, channel, frame: the latent caches' layout), N T C, or N C (flat
vectors). Clip caches bring ``valid_frames`` (padding frames are dropped), ``done`` (unfinished
rows are skipped) and ``split`` (train / valid rows); without a split a fixed, seeded fraction
of the rows is held out. Batches are streamed block by block through a shuffle buffer, so the
whole array never sits in memory; with several workers, rank r reads every world-th block.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr

from spresso.core.errors import SpressoError

ROWS_PER_READ = {"NCT": 64, "NTC": 64, "NC": 65536}


class VectorSource:
    """One Zarr array of vectors read as ``layout``: its finished rows, split, count and batches."""

    def __init__(self, path: str, array: str, layout: str = "NCT"):
        self.path, self.name, self.layout = str(path), array, layout
        try:
            node = zarr.open(self.path, mode="r")
        except Exception as err:  # zarr raises several types for a missing or foreign path
            raise SpressoError(f"cannot open Zarr vectors at {path}: {err}") from None
        if isinstance(node, zarr.Array):
            self.group, self.array = None, node
        else:
            if array not in node:
                raise SpressoError(f"{path}: no array '{array}' (has {sorted(node.array_keys())})")
            self.group, self.array = node, node[array]
        want = 2 if layout == "NC" else 3
        if self.array.ndim != want:
            raise SpressoError(f"{path}/{array}: layout {layout} needs a {want}-d array, got shape {self.array.shape}")
        self.d = int(self.array.shape[1] if layout in ("NCT", "NC") else self.array.shape[2])
        self.n_rows = int(self.array.shape[0])
        self.frames = 1 if layout == "NC" else int(self.array.shape[2] if layout == "NCT" else self.array.shape[1])
        self.valid = self._per_row("valid_frames")
        done = self._per_row("done")
        self.usable = np.flatnonzero(done.astype(bool)) if done is not None else np.arange(self.n_rows)
        if self.usable.size == 0:
            raise SpressoError(f"{path}: no finished rows to read")

    def _per_row(self, name: str):
        if self.group is None or self.layout == "NC" or name not in self.group:
            return None
        return np.asarray(self.group[name][:])

    @property
    def uri(self) -> str:
        return str(Path(self.path).resolve()) if "://" not in self.path else self.path

    # -- splits -------------------------------------------------------------------------------
    def split(self, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, validation rows): the cache's split array when it has one, else a seeded draw."""
        split = self._per_row("split")
        if split is not None:
            split = np.array([str(s) for s in split])  # zarr 3 str arrays read as StringDType: no astype(str)
            train = np.intersect1d(self.usable, np.flatnonzero(split == "train"))
            val = np.intersect1d(self.usable, np.flatnonzero(split == "valid"))
            if train.size and val.size:
                return train, val
        rows = np.random.default_rng(seed).permutation(self.usable)
        n_val = max(1, int(round(len(rows) * val_fraction)))
        if len(rows) - n_val < 1:
            raise SpressoError(f"{self.path}: too few rows ({len(rows)}) to hold out a validation set")
        return np.sort(rows[n_val:]), np.sort(rows[:n_val])

    def held_out_rows(self, train_rows: np.ndarray, val_rows: np.ndarray) -> np.ndarray:
        """Rows for the final, held-out comparison: the cache's valid and test rows that are not training
        rows; ``val_rows`` when the cache has no split array (or no such rows)."""
        split = self._per_row("split")
        if split is not None:
            split = np.array([str(s) for s in split])
            rows = np.intersect1d(self.usable, np.flatnonzero(np.isin(split, ("valid", "test"))))
            rows = np.setdiff1d(rows, train_rows)
            if rows.size:
                return rows
        return val_rows

    def count(self, rows: np.ndarray) -> int:
        """Number of (valid) vectors in these rows."""
        if self.valid is None:
            return len(rows) * self.frames
        return int(np.minimum(self.valid[rows], self.frames).clip(min=0).sum())

    # -- reading ------------------------------------------------------------------------------
    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The valid vectors of the given rows, [n, d] float32."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        if rows.size == 0:
            return np.zeros((0, self.d), np.float32)
        if rows[-1] - rows[0] + 1 == rows.size:
            block = np.asarray(self.array[int(rows[0]) : int(rows[-1]) + 1])
        else:
            block = np.asarray(self.array.oindex[rows])
        if self.layout == "NC":
            return block.astype(np.float32)
        frames = block.transpose(0, 2, 1) if self.layout == "NCT" else block  # [n, T, d]
        if self.valid is None:
            return frames.reshape(-1, self.d).astype(np.float32)
        keep = np.arange(self.frames)[None, :] < self.valid[rows][:, None]
        return frames[keep].astype(np.float32)

    def sample(self, rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
        """About n vectors from random rows (all of them when the rows hold fewer)."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(rows)
        per_row = max(1, self.count(rows) // max(1, len(rows)))
        take = order[: max(1, -(-n // per_row))]
        x = self.read_rows(take)
        if len(x) > n:
            x = x[rng.choice(len(x), n, replace=False)]
        return x

    def epoch_batches(self, rows: np.ndarray, batch_size: int, n: int, *, seed: int = 0, rank: int = 0,
                      world_size: int = 1) -> Iterator[np.ndarray]:
        """Exactly ``n`` batches for this rank: under DDP every rank must step the same number of times.

        Ranks read disjoint shares of ``rows``; a rank whose share runs out goes round it again
        (reshuffled), and a rank whose share holds less than one batch draws from all rows with a
        seed of its own (a share can be empty when there are fewer read blocks than ranks).
        """
        produced, lap = 0, 0
        while produced < n:
            lap_seed = seed + 7919 * lap
            batches = self.iter_batches(rows, batch_size, seed=lap_seed, rank=rank, world_size=world_size)
            first = next(batches, None)
            if first is None:  # this rank's share holds less than one batch: draw from all rows
                batches = self.iter_batches(rows, batch_size, seed=lap_seed + 104729 * (rank + 1))
                first = next(batches, None)
                if first is None:
                    raise SpressoError(f"{self.path}: fewer than {batch_size} vectors to make one batch")
            for batch in itertools.chain([first], batches):
                yield batch
                produced += 1
                if produced == n:
                    return
            lap += 1

    def iter_batches(self, rows: np.ndarray, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                     buffer_batches: int = 4) -> Iterator[np.ndarray]:
        """Shuffled batches [batch_size, d] over one pass of this rank's share of ``rows``."""
        rng = np.random.default_rng(seed)
        step = ROWS_PER_READ[self.layout]
        blocks = [rows[i : i + step] for i in range(0, len(rows), step)][rank::world_size]
        buffer: list[np.ndarray] = []
        held = 0
        for b in rng.permutation(len(blocks)):
            x = self.read_rows(blocks[b])
            buffer.append(x)
            held += len(x)
            if held >= buffer_batches * batch_size:
                pool = np.concatenate(buffer)
                pool = pool[rng.permutation(len(pool))]
                n_full = len(pool) // batch_size
                keep_from = max(1, n_full - 1) * batch_size  # keep some back to mix with the next blocks
                for i in range(0, keep_from, batch_size):
                    yield pool[i : i + batch_size]
                buffer, held = [pool[keep_from:]], len(pool) - keep_from
        if held:
            pool = np.concatenate(buffer)
            pool = pool[rng.permutation(len(pool))]
            for i in range(0, len(pool) - batch_size + 1, batch_size):
                yield pool[i : i + batch_size]
