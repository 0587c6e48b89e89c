"""Run a model over clips with Ray Data and fill a :class:`~spresso.data.zarr_cache.ClipCache`.

The shape of every cache-filling stage (x0 from audio, z from x0, ...)::

    missing blocks ──read tasks──▶ input rows ──actor pool (model)──▶ output rows ──driver──▶ whole blocks

- A *source* turns one block ``(start, stop)`` of cache rows into input columns (a dict of
  NumPy arrays with one entry per row, ``"row"`` included). It runs in Ray Data read tasks with
  fractional CPUs, so decoding audio never competes with the model for a whole core.
- A *mapper* is a callable class constructed once per actor (it loads the model there) and
  called on batches of ``batch_size`` rows; it returns the cache's arrays plus ``"row"``.
  The pool is what the config says (:class:`~spresso.config.scaling.ActorPoolSettings`):
  ``actors`` actors of ``cpus_per_actor`` CPUs (default ``runtime.actor_cpus``: fractional, DESIGN.md
  §4: a pool of whole-CPU actors can take every core and stall the reads) and ``gpus_per_actor``
  GPUs, on ``label`` nodes with ``accelerator``. GPUs are asked of the cluster, never inferred from
  what it holds now: on a cluster that scales from zero the autoscaler starts GPU nodes for them.
- The driver collects output rows into their blocks and writes each block once it is
  complete: every write covers whole chunks and only the driver writes, so no two writers
  ever share a chunk or shard. ``done`` is set by the write, so a killed job loses only
  blocks in flight and a rerun computes only the missing ones.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import ray
from tqdm.auto import tqdm

from spresso.config.runtime import RuntimeConfig
from spresso.config.scaling import ActorPoolSettings
from spresso.core.errors import SpressoError
from spresso.data.zarr_cache import ClipCache
from spresso.runtime import actor_cpus, init_ray
from spresso.runtime.placement import (
    accelerator_resources,
    ray_options,
    require_local_resources,
)

log = logging.getLogger(__name__)

ROW = "row"

BlockSource = Callable[[int, int], Mapping[str, np.ndarray]]


@dataclass
class FillReport:
    """What one fill did."""

    blocks_total: int
    blocks_written: int
    rows_written: int
    seconds: float
    actors: int = 0
    use_gpu: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0


class _ReadBlocks:
    """Ray Data UDF: a batch of block descriptors -> the source's input columns for those rows."""

    def __init__(self, source: BlockSource):
        self.source = source

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [dict(self.source(int(a), int(b))) for a, b in zip(batch["start"], batch["stop"])]
        for (a, b), part in zip(zip(batch["start"], batch["stop"]), parts):
            rows = np.asarray(part.get(ROW, []))
            if rows.shape != (int(b) - int(a),):
                raise SpressoError(f"source returned {rows.shape} rows for block [{a}, {b})")
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


class _BlockAssembler:
    """Collects output rows into their blocks; hands back each block when it is complete."""

    def __init__(self, cache: ClipCache, blocks: list[tuple[int, int]]):
        self.cache = cache
        self.block_of = {}
        self.start_of_row = np.full(cache.n_rows, -1, dtype=np.int64)
        for a, b in blocks:
            self.start_of_row[a:b] = a
            self.block_of[a] = b
        self.buffers: dict[int, dict[str, Any]] = {}
        self.names = cache.array_names

    def _new_buffer(self, start: int) -> dict[str, Any]:
        stop = self.block_of[start]
        columns = {}
        for name in self.names:
            shape, dtype = self.cache.row_spec(name)
            columns[name] = np.empty((stop - start, *shape), dtype=object if dtype == "str" else dtype)
        return {"filled": np.zeros(stop - start, dtype=bool), "columns": columns}

    def add(self, batch: Mapping[str, np.ndarray]):
        """Yield ``(start, stop, columns)`` for every block this batch completes."""
        missing = [n for n in self.names if n not in batch]
        if ROW not in batch or missing:
            raise SpressoError(f"mapper output lacks {([ROW] if ROW not in batch else []) + missing}")
        rows = np.asarray(batch[ROW], dtype=np.int64)
        starts = self.start_of_row[rows]
        if (starts < 0).any():
            raise SpressoError(f"mapper returned row {int(rows[starts < 0][0])}, which is not in a block being filled")
        for start in np.unique(starts):
            sel = np.flatnonzero(starts == start)
            buf = self.buffers.get(int(start)) or self.buffers.setdefault(int(start), self._new_buffer(int(start)))
            local = rows[sel] - start
            for name in self.names:
                buf["columns"][name][local] = np.asarray(batch[name])[sel]
            buf["filled"][local] = True
            if buf["filled"].all():
                del self.buffers[int(start)]
                yield int(start), self.block_of[int(start)], buf["columns"]

    def incomplete(self) -> list[tuple[int, int, int]]:
        return [(a, self.block_of[a], int(buf["filled"].sum())) for a, buf in self.buffers.items()]


def fill_cache(
    cache: ClipCache,
    source: BlockSource,
    mapper: type,
    mapper_kwargs: Mapping[str, Any] | None = None,
    *,
    batch_size: int,
    pool: ActorPoolSettings | None = None,
    runtime: RuntimeConfig | None = None,
    max_blocks: int | None = None,
    progress: bool = True,
    desc: str = "precompute",
) -> FillReport:
    """Fill the missing blocks of ``cache`` with ``mapper`` applied to ``source`` rows.

    ``pool``: the actors and what each asks for (default: one CPU actor). ``max_blocks`` limits
    this call to the first N missing blocks (incremental fills).
    """

    if int(batch_size) != batch_size or batch_size < 1:
        raise SpressoError(f"batch_size must be a positive integer (got {batch_size})")
    t0 = time.perf_counter()
    blocks = cache.missing_blocks()
    total = len(cache.blocks())
    if max_blocks is not None:
        blocks = blocks[: max(0, int(max_blocks))]
    if not blocks:
        log.info("%s: all %d blocks of %s are done; nothing to compute", desc, total, cache.path)
        return FillReport(total, 0, 0, time.perf_counter() - t0)

    runtime = runtime or RuntimeConfig()
    pool = pool or ActorPoolSettings()
    init_ray(runtime)
    n_batches = -(-sum(b - a for a, b in blocks) // int(batch_size))
    n_actors = max(1, min(pool.actors, n_batches))  # idle actors would only hold resources
    cpus = actor_cpus(runtime)
    actor = ray_options(cpus=pool.cpus_per_actor or cpus, gpus=pool.gpus_per_actor, label=pool.label,
                        accelerator=pool.accelerator)
    require_local_resources({"CPU": actor["num_cpus"], "GPU": pool.gpus_per_actor,
                             **accelerator_resources(pool.accelerator)}, f"{desc}: each actor")
    use_gpu = pool.gpus_per_actor > 0
    log.info("%s: %d of %d blocks to fill in %s with %d actor(s) (%s)", desc, len(blocks), total, cache.path,
             n_actors, ", ".join(f"{k}={v}" for k, v in actor.items()))

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own tqdm counts rows written, which is what resumes
    items = [{"start": a, "stop": b} for a, b in blocks]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_ReadBlocks(source), batch_size=1, batch_format="numpy", num_cpus=cpus)
    ds = ds.map_batches(
        mapper,
        fn_constructor_kwargs=dict(mapper_kwargs or {}),
        batch_size=int(batch_size),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        **actor,
    )

    assembler = _BlockAssembler(cache, blocks)
    written_blocks = written_rows = 0
    bar = tqdm(total=sum(b - a for a, b in blocks), unit="clip", desc=desc, disable=not progress)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for start, stop, columns in assembler.add(batch):
            cache.write_block(start, stop, **columns)
            written_blocks += 1
            written_rows += stop - start
            bar.update(stop - start)
    bar.close()
    left = assembler.incomplete()
    if left:
        a, b, got = left[0]
        raise SpressoError(f"{desc}: block [{a}, {b}) received {got} of {b - a} rows; the source or mapper dropped rows")
    report = FillReport(total, written_blocks, written_rows, time.perf_counter() - t0, n_actors, bool(use_gpu))
    log.info("%s: wrote %d blocks (%d rows) in %.1f s", desc, written_blocks, written_rows, report.seconds)
    return report
