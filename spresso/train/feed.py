"""Training batches through Ray Data: the dataset a stage hands to Ray Train, and each worker's stream.

Driver side, :func:`cache_feed` / :func:`vector_feed` build a lazy ``ray.data.Dataset`` over the
Zarr caches (:mod:`spresso.data.zarr_datasource`); nothing is read until a worker iterates, and
the driver only ever reads per-row scalars (``done``, ``split``, ``valid_frames``). Ray Train
splits it between the workers (``streaming_split(equal=True)``: disjoint, equally long shares).

Worker side, :func:`feed_stream` takes the worker's share (``ray.train.get_dataset_shard``; with
``scaling.workers=0`` that is the whole dataset, iterated in the driver's loop) and yields endless
batches with prefetching. Each pass re-executes the dataset (a new seeded block order) and mixes
rows of several blocks through a local shuffle buffer seeded by (seed, rank, start, pass), so the
shuffle is block order x buffer, not a full permutation of the rows: a run resumed at step s
draws fresh batches, as :func:`spresso.data.latent_batches.resumed_stream` does. Equal shares and
dropped last batches keep every rank's batch count equal, so DDP ranks step together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import ray.data
import ray.train
import torch

from spresso.config import SpressoConfig
from spresso.core.errors import SpressoError
from spresso.data.latent_batches import noise_generator, resumed_stream
from spresso.data.ray_passes import endless_batches
from spresso.data.vectors import VectorSource
from spresso.data.zarr_datasource import (
    VECTOR,
    BlockDatasource,
    ZarrCacheDatasource,
    ZarrVectorDatasource,
    finished_rows,
)

FEED = "train"  # the dataset name the stages use in TrainJob.datasets and get_dataset_shard
FEEDS_KEY = "feeds"  # loop_config entry: {dataset name: {"rows": n, "block_rows": n}}, set by the driver
# The local shuffle buffer holds at least this many batches and this many blocks: a block is a run of
# neighbouring manifest rows (often clips of one source file), so a batch must mix several blocks.
SHUFFLE_BATCHES = 4
SHUFFLE_BLOCKS = 4


@dataclass(frozen=True)
class Feed:
    """A stage's training dataset, its row count (for the per-rank batch count) and rows per read block
    (None where the loop does not need them: the AudioAE's crop stream is endless)."""

    dataset: ray.data.Dataset
    rows: Optional[int] = None
    block_rows: Optional[int] = None
    task_cpus: float = 1.0  # what one read/decode task asks for: it must fit beside the training workers

    def summary(self) -> dict[str, int]:
        """What the loop needs to know of it (``loop_config["feeds"][name]``)."""
        return {k: v for k, v in (("rows", self.rows), ("block_rows", self.block_rows)) if v is not None}


def feed_of(source: BlockDatasource) -> Feed:
    """A lazy dataset over ``source`` whose blocks come in the datasource's seeded order."""
    ds = ray.data.read_datasource(source)
    # Completion order would make the sequence depend on task timing; the seeded order is the shuffle.
    ds.context.execution_options.preserve_order = True
    return Feed(ds, source.n_out, -(-source.n_out // len(source.blocks)))


def cache_feed(caches: Mapping[str, Sequence[str]], split: Optional[str], seed: int) -> Feed:
    """The finished ``split`` rows of row-aligned caches (path -> arrays) as a training dataset."""
    return feed_of(ZarrCacheDatasource(caches, finished_rows(list(caches), split), seed=seed))


def vector_feed(path: str, array: str, layout: str, rows: np.ndarray, seed: int) -> Feed:
    """The valid vectors (frames) of ``rows`` of a vector array as a training dataset (column ``x``)."""
    return feed_of(ZarrVectorDatasource(path, array, layout, rows, seed=seed))


def has_feed(loop_config: dict, name: str = FEED) -> bool:
    """True when the driver handed the loop a Ray dataset ``name`` (else it reads with today's readers)."""
    return name in loop_config.get(FEEDS_KEY, {})


def per_rank_batch(rows: int, batch_size: int, world_size: int) -> int:
    """The batch size a rank can fill from its equal share (smaller than asked when the share is)."""
    share = rows // world_size
    if share < 1:
        raise SpressoError(f"{rows} train rows for {world_size} workers")
    return min(batch_size, share)


def feed_stream(source, batch_size: int, *, seed: int, rank: int, start: int, prefetch_batches: int,
                block_rows: int = 1, as_torch: bool = True) -> Iterator[dict]:
    """Endless batches of ``source`` (a worker's ``DataIterator`` or, in the driver, a ``Dataset``).

    Torch tensors on CPU (``as_torch``) or numpy arrays; the last short batch of a pass is dropped.
    """
    buffer = max(SHUFFLE_BATCHES * batch_size, SHUFFLE_BLOCKS * block_rows)
    return endless_batches(source, batch_size, shuffle_buffer=buffer, seed=seed, rank=rank, start=start,
                           prefetch_batches=prefetch_batches, as_torch=as_torch)


def worker_stream(loop_config: dict, batch_size: int, *, seed: int, rank: int, world_size: int, start: int,
                  prefetch_batches: int, as_torch: bool = True, name: str = FEED) -> tuple[Iterator[dict], int]:
    """(endless batches of this worker's share of dataset ``name``, the batch size used)."""
    feed = loop_config[FEEDS_KEY][name]
    size = per_rank_batch(int(feed["rows"]), batch_size, world_size)
    stream = feed_stream(ray.train.get_dataset_shard(name), size, seed=seed, rank=rank, start=start,
                         prefetch_batches=prefetch_batches, block_rows=int(feed["block_rows"]), as_torch=as_torch)
    return stream, size


def latent_batches(loop_config: dict, dataset: Callable[[], torch.utils.data.Dataset], batch_size: int, *, rank: int,
                   world_size: int, seed: int, start: int, loader_workers: int,
                   prefetch_batches: int) -> tuple[Iterator[dict[str, torch.Tensor]], torch.Generator]:
    """(batches, noise generator) of a diffusion run (re)starting at ``start``: this worker's share of the
    Ray dataset when the driver handed one, else today's in-worker reader over ``dataset()``."""
    if not has_feed(loop_config):
        return resumed_stream(dataset(), batch_size, rank=rank, world_size=world_size, seed=seed, start=start,
                              workers=loader_workers)
    stream, _ = worker_stream(loop_config, batch_size, seed=seed, rank=rank, world_size=world_size, start=start,
                              prefetch_batches=prefetch_batches)
    return stream, noise_generator(seed, rank, start)


def latent_feeds(section: Callable[[SpressoConfig], Any],
                 caches: Callable[[dict], Mapping[str, Sequence[str]]]) -> Callable[[SpressoConfig, Any], dict[str, Feed]]:
    """A diffusion stage's ``feeds``: the train rows of ``caches(loop_config)`` when its section's feed is ray_data."""
    def feeds(cfg: SpressoConfig, inputs: Any) -> dict[str, Feed]:
        tc = section(cfg)
        if tc.feed != "ray_data":
            return {}
        return {FEED: cache_feed(caches(inputs.loop_config), "train", tc.seed)}

    return feeds


def vector_feeds(cfg: SpressoConfig, inputs: Any) -> dict[str, Feed]:
    """QINCo2's ``feeds``: the valid frames of its train rows (the split its loop draws, so both agree)."""
    q, lc = cfg.qinco2, inputs.loop_config
    if q.feed != "ray_data":
        return {}
    rows = VectorSource(lc["vectors_path"], lc["vectors_array"], q.layout).split(q.val_fraction, q.seed)[0]
    return {FEED: vector_feed(lc["vectors_path"], lc["vectors_array"], q.layout, rows, q.seed)}


def vector_batches(loop_config: dict, batch_size: int, *, seed: int, rank: int, world_size: int, start: int,
                   prefetch_batches: int) -> Optional[Iterator[np.ndarray]]:
    """This worker's endless vector batches [batch_size, d] float32 from the Ray feed; None without one."""
    if not has_feed(loop_config):
        return None
    stream, size = worker_stream(loop_config, batch_size, seed=seed, rank=rank, world_size=world_size, start=start,
                                 prefetch_batches=prefetch_batches, as_torch=False)
    if size != batch_size:
        raise SpressoError(f"{loop_config[FEEDS_KEY][FEED]['rows']} vectors: fewer than one batch of {batch_size} per worker")
    return (batch[VECTOR] for batch in stream)
