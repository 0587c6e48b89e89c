"""Timing GPU work honestly: warm-up calls first, ``torch.cuda.synchronize()`` around the timed region.

CUDA kernels run asynchronously: without a sync the clock stops when the last kernel is *queued*,
and without warm-up the first calls pay for allocator growth, cuDNN autotuning and compilation.
Every benchmark in this folder times device work through :func:`timed` (or :func:`sync`).
"""
from __future__ import annotations

import time
from typing import Callable

import torch


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work (a no-op on CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], *, iters: int, warmup: int = 1, device: torch.device | str | None = None) -> float:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``iters`` timed ones between syncs."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / max(1, iters)


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device | str) -> float | None:
    """Peak allocated CUDA memory since the last reset, GiB (None on CPU: not tracked)."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30
