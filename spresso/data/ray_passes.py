"""Endless, seeded passes over a Ray dataset: the one iteration rule of every Ray Data training feed.

Each pass is one ``iter_batches`` over the worker's shard (a ``DataIterator``, or the ``Dataset``
itself when the loop runs in the driver) with full batches only, so every rank steps equally, and a
local shuffle seeded by (seed, rank, resume step, pass): a resumed run draws fresh batches.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np

from spresso.core.errors import SpressoError


def shuffle_seed(seed: int, rank: int, start: int, epoch: int) -> int:
    """The local shuffle seed of one pass: distinct per (seed, rank, resume step, pass)."""
    return int(np.random.SeedSequence([seed, rank, start, epoch]).generate_state(1)[0])


def endless_batches(source: Any, batch_size: int, *, shuffle_buffer: int, seed: int, rank: int, start: int,
                    prefetch_batches: int, as_torch: bool = True) -> Iterator[dict]:
    """Batches of ``source`` pass after pass: torch tensors on CPU (``as_torch``) or numpy arrays; the
    last short batch of a pass is dropped, and a pass without one full batch is an error."""
    for epoch in itertools.count():
        options = dict(batch_size=batch_size, drop_last=True, prefetch_batches=prefetch_batches,
                       local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=shuffle_seed(seed, rank, start, epoch))
        batches = (source.iter_torch_batches(device="cpu", **options) if as_torch
                   else source.iter_batches(batch_format="numpy", **options))
        produced = 0
        for batch in batches:
            produced += 1
            yield batch
        if not produced:
            raise SpressoError(f"a pass over the training data gave rank {rank} no full batch of {batch_size} rows")
