"""Ray Data datasources over Zarr caches: training rows read by Ray tasks, block by block.

- :class:`ZarrCacheDatasource`: rows of one or several row-aligned :class:`ClipCache` s (x0 with its
  caption embeddings, z, z_q ...), one output row per cache row, a ``row`` column naming it;
- :class:`ZarrVectorDatasource`: the valid frames of a vector array (the z cache) as rows ``x`` [d]
  (QINCo2), padding frames dropped through :class:`~spresso.data.vectors.VectorSource`.

Both read whole chunk-aligned row blocks (one Zarr chunk / shard of the first cache), so a block's
bytes are fetched once and by one task; only the given rows (finished rows of a split) come out.
Paths may be local folders or fsspec URLs (s3://...): the tasks reopen them, nothing opened travels.

The blocks come out in a seeded order that changes with every execution of the dataset (every
training epoch re-executes it), the way Ray's own file datasources shuffle their files: the
permutation is drawn from (seed, execution index). Set ``preserve_order`` on the dataset's context
(:func:`spresso.train.feed` does) for the order to be the tasks' order rather than completion order.
"""
from __future__ import annotations

import functools
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.context import DataContext
from ray.data.datasource import Datasource, ReadTask

from spresso.core.errors import SpressoError
from spresso.data.vectors import VectorSource
from spresso.data.zarr_cache import ClipCache

ROW = "row"  # the cache row index of every output row (which clip it is; shards can be checked with it)
VECTOR = "x"


def finished_rows(caches: Sequence[str], split: Optional[str]) -> np.ndarray:
    """Rows finished in every cache (and in ``split`` of the first cache's ``split`` array, when given).

    Reads per-row scalars only (``done``, ``split``), never a clip's arrays.
    """
    first = ClipCache.open(caches[0], mode="r")
    rows = first.rows_where("split", split) if split is not None else np.flatnonzero(first.done())
    for path in caches[1:]:
        other = ClipCache.open(path, mode="r")
        if other.n_rows != first.n_rows:
            raise SpressoError(f"{path} has {other.n_rows} rows, {caches[0]} {first.n_rows}: not row-aligned")
        rows = rows[other.done()[rows]]
    return rows


def row_blocks(rows: np.ndarray, chunk_rows: int) -> list[np.ndarray]:
    """``rows`` grouped by the chunk-aligned block (``row // chunk_rows``) that holds them, in row order."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if rows.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(rows // chunk_rows)) + 1
    return np.split(rows, cuts)


def execution_order(n: int, seed: int, execution: int) -> np.ndarray:
    """The blocks' order in one execution (epoch) of the dataset: a permutation drawn from (seed, execution)."""
    return np.random.default_rng([seed, execution]).permutation(n)


def current_execution(data_context: Optional[DataContext]) -> int:
    # Ray counts a dataset's executions in its context (its Parquet and file datasources shuffle
    # files with it); no public accessor exists, so fall back to 0 (one fixed order) without it.
    return int(getattr(data_context, "_execution_idx", 0) or 0) if data_context is not None else 0


def read_cache_block(caches: Mapping[str, Sequence[str]], rows: np.ndarray) -> Block:
    """One output block: the arrays of ``rows`` (one chunk-aligned block) from every cache."""
    start, stop = int(rows[0]), int(rows[-1]) + 1
    pick = rows - start
    columns: dict[str, np.ndarray] = {ROW: rows.astype(np.int64)}
    for path, arrays in caches.items():
        cache = ClipCache.open(path, mode="r")
        for name in arrays:
            # A slice over the block then a pick: Zarr fetches each shard once.
            columns[name] = cache.read(name, slice(start, stop))[pick]
    return BlockAccessor.batch_to_block(columns)


def read_vector_block(path: str, array: str, layout: str, rows: np.ndarray) -> Block:
    """One output block: the valid frames of ``rows`` as vectors ``x`` [n, d] float32."""
    return BlockAccessor.batch_to_block({VECTOR: VectorSource(path, array, layout).read_rows(rows)})


def run_blocks(read, blocks: Sequence[np.ndarray]) -> Iterator[Block]:
    for rows in blocks:
        yield read(rows)


class BlockDatasource(Datasource):
    """Chunk-aligned row blocks, read by ``read(rows) -> Block``, in a per-execution seeded order."""

    def __init__(self, rows: np.ndarray, chunk_rows: int, row_bytes: int, seed: int):
        super().__init__()
        self.blocks = row_blocks(rows, chunk_rows)
        if not self.blocks:
            raise SpressoError("no finished rows to read")
        self.n_rows = int(sum(len(b) for b in self.blocks))  # cache rows read
        self.n_out = int(sum(self.rows_out(b) for b in self.blocks))  # dataset rows (vectors for QINCo2)
        self.row_bytes = int(row_bytes)
        self.seed = int(seed)

    def reader(self):
        raise NotImplementedError

    def rows_out(self, rows: np.ndarray) -> int:
        """Output rows of one block (clips here; vectors in :class:`ZarrVectorDatasource`)."""
        return len(rows)

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return self.n_out * self.row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context: Optional[DataContext] = None) -> list[ReadTask]:
        order = execution_order(len(self.blocks), self.seed, current_execution(data_context))
        ordered = [self.blocks[i] for i in order]
        n_tasks = max(1, min(int(parallelism) if parallelism and parallelism > 0 else len(ordered), len(ordered)))
        read = self.reader()
        tasks = []
        for group in np.array_split(np.arange(len(ordered)), n_tasks):
            blocks = [ordered[i] for i in group]
            n = sum(self.rows_out(b) for b in blocks)
            # Each task carries only its own rows, not the datasource (whose row list can be millions long).
            tasks.append(ReadTask(functools.partial(run_blocks, read, blocks),
                                  BlockMetadata(num_rows=n, size_bytes=n * self.row_bytes, input_files=None, exec_stats=None),
                                  per_task_row_limit=per_task_row_limit))
        return tasks


class ZarrCacheDatasource(BlockDatasource):
    """Rows of row-aligned clip caches: ``caches`` maps each cache's path to the arrays to read from it."""

    def __init__(self, caches: Mapping[str, Sequence[str]], rows: np.ndarray, *, seed: int = 0):
        self.caches = {str(p): list(a) for p, a in caches.items()}
        first = ClipCache.open(next(iter(self.caches)), mode="r")
        row_bytes = 8
        for path, arrays in self.caches.items():
            cache = ClipCache.open(path, mode="r")
            for name in arrays:
                shape, dtype = cache.row_spec(name)
                row_bytes += int(np.prod(shape, dtype=np.int64)) * (np.dtype(dtype).itemsize if dtype != "str" else 32)
        super().__init__(rows, first.chunk_rows, row_bytes, seed)

    def reader(self):
        return functools.partial(read_cache_block, self.caches)


class ZarrVectorDatasource(BlockDatasource):
    """The valid frames of ``rows`` of a vector array (layout NCT / NTC / NC) as rows ``x`` [d] float32."""

    def __init__(self, path: str, array: str, layout: str, rows: np.ndarray, *, seed: int = 0):
        src = VectorSource(path, array, layout)
        # Keep plain values only: the datasource travels to Ray's planner, an open Zarr array need not.
        self.path, self.array, self.layout = src.path, src.name, src.layout
        self.frames, self.valid = src.frames, src.valid
        chunk = (getattr(src.array, "shards", None) or src.array.chunks)[0]
        super().__init__(rows, int(chunk), 4 * src.d, seed)

    def rows_out(self, rows: np.ndarray) -> int:
        if self.valid is None:
            return len(rows) * self.frames
        return int(np.minimum(self.valid[rows], self.frames).clip(min=0).sum())

    def reader(self):
        return functools.partial(read_vector_block, self.path, self.array, self.layout)
