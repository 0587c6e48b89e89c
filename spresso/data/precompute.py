"""Run a model over clips with Ray Data and fill a :class:`~spresso.data.zarr_cache.ClipCache`.

The shape of every cache-filling stage (x0 from audio, z from x0, ...)::

    missing blocks ──▶ actor pool: read the block's rows ▶ model ▶ write the block ──▶ driver: (start, stop, rows)

- A *source* turns one block ``(start, stop)`` of cache rows into input columns (a dict of
  NumPy arrays with one entry per row, ``"row"`` included): the tar or cache block is read once.
- A *mapper* is a callable class constructed once per actor (it loads the model there) and
  called on batches of ``batch_size`` rows; it returns the cache's arrays plus ``"row"``.
  The pool is what the config says (:class:`~spresso.config.scaling.ActorPoolSettings`):
  ``actors`` actors of ``cpus_per_actor`` CPUs (default ``runtime.actor_cpus``, fractional) and
  ``gpus_per_actor`` GPUs, on ``label`` nodes with ``accelerator``. GPUs are asked of the cluster,
  never inferred from what it holds now: on a cluster that scales from zero the autoscaler starts
  GPU nodes for them.
- Each actor writes the blocks it computed (:class:`FillBlocks`): a block is the cache's chunk and
  shard unit, so no two writers share a chunk, and ``done`` is set after the data. The driver
  receives seven numbers per block (which rows; when, where and with how much CPU they ran), so its
  memory does not grow with the data (460 GB of x0 at the paper's scale); a killed job loses only
  blocks in flight and a rerun computes only the missing ones.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from spresso.config.runtime import RuntimeConfig
from spresso.config.scaling import ActorPoolSettings
from spresso.core.errors import SpressoError
from spresso.data.zarr_cache import ClipCache
from spresso.runtime import actor_cpus, assigned_cpus, init_ray
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
    busy_seconds: float = 0.0  # summed over actors: reading, computing and writing blocks (not waiting)
    cpu_seconds: float = 0.0  # the actors' CPU time for those blocks

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0


class FillBlocks:
    """Ray Data actor: whole cache blocks in, block descriptors out.

    For each block ``[start, stop)`` it reads the source's rows, runs the mapper (built once per
    actor: the model loads here) over them in batches of ``batch_size``, writes the block to the
    cache and returns only ``start, stop, rows`` and ``began, ended, cpu, pid`` (how long, how much
    CPU and which process: what tells a starved actor from a busy one). Blocks are the cache's chunk/shard unit, so no two
    actors ever write the same chunk; ``done`` is set after the data, so a block is either whole or
    missing. Nothing the model computes travels back to the driver.

    In a Ray actor, torch gets as many intra-op threads as the actor has CPUs: Ray sets
    ``OMP_NUM_THREADS`` only when the driver's environment has none, so an exported value (or
    torch's default of one thread per core of the node) would have every actor oversubscribe the
    cores the others hold.
    """

    def __init__(self, cache_path: str, source: BlockSource, mapper: type, mapper_kwargs: Mapping[str, Any],
                 batch_size: int):
        cpus = assigned_cpus()
        if cpus is not None:
            torch.set_num_threads(max(1, int(cpus)))
        self.cache = ClipCache.open(cache_path, mode="r+")
        self.source, self.batch_size = source, int(batch_size)
        self.mapper = mapper(**dict(mapper_kwargs))

    def fill(self, start: int, stop: int) -> int:
        rows = self.source(start, stop)
        got = np.asarray(rows.get(ROW, []))
        if not np.array_equal(got, np.arange(start, stop)):
            raise SpressoError(f"source returned {got.shape} rows for block [{start}, {stop})")
        columns: dict[str, list] = {}
        for a in range(0, stop - start, self.batch_size):
            out = self.mapper({k: np.asarray(v)[a:a + self.batch_size] for k, v in rows.items()})
            missing = [n for n in (ROW, *self.cache.array_names) if n not in out]
            if missing:
                raise SpressoError(f"mapper output lacks {missing}")
            if not np.array_equal(np.asarray(out[ROW]), got[a:a + self.batch_size]):
                raise SpressoError(f"mapper returned other rows than it was given in block [{start}, {stop})")
            for name in self.cache.array_names:
                columns.setdefault(name, []).append(np.asarray(out[name]))
        self.cache.write_block(start, stop, **{k: np.concatenate(v) for k, v in columns.items()})
        return stop - start

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, began, ended, cpu = [], [], [], []
        for a, b in zip(batch["start"], batch["stop"]):
            began.append(time.time())
            c0 = time.process_time()
            rows.append(self.fill(int(a), int(b)))
            cpu.append(time.process_time() - c0)
            ended.append(time.time())
        # A few numbers per block: when it ran (wall clock, to tell busy from idle actors), the
        # process's CPU seconds for it (below the wall time: waiting for I/O or for a core) and where.
        return {"start": np.asarray(batch["start"]), "stop": np.asarray(batch["stop"]), "rows": np.asarray(rows),
                "began": np.asarray(began), "ended": np.asarray(ended), "cpu": np.asarray(cpu),
                "pid": np.full(len(rows), os.getpid())}


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
    ds = ds.map_batches(
        FillBlocks,
        fn_constructor_kwargs={"cache_path": cache.path, "source": source, "mapper": mapper,
                               "mapper_kwargs": dict(mapper_kwargs or {}), "batch_size": int(batch_size)},
        batch_size=1,  # one block per call: a block is written as soon as it is computed
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        **actor,
    )

    written_blocks = written_rows = 0
    busy = cpu = 0.0
    bar = tqdm(total=sum(b - a for a, b in blocks), unit="clip", desc=desc, disable=not progress)
    for done in ds.iter_batches(batch_size=None, batch_format="numpy"):  # block descriptors only
        written_blocks += len(done["rows"])
        written_rows += int(np.sum(done["rows"]))
        busy += float(np.sum(done["ended"] - done["began"]))
        cpu += float(np.sum(done["cpu"]))
        bar.update(int(np.sum(done["rows"])))
    bar.close()
    if written_blocks != len(blocks):
        raise SpressoError(f"{desc}: {written_blocks} of {len(blocks)} blocks were written")
    report = FillReport(total, written_blocks, written_rows, time.perf_counter() - t0, n_actors, bool(use_gpu), busy, cpu)
    log.info("%s: wrote %d blocks (%d rows) in %.1f s; actors busy %.1f s of %.1f s, %.1f CPU-s", desc,
             written_blocks, written_rows, report.seconds, busy, n_actors * report.seconds, cpu)
    return report
