"""The step loop every Ray Train stage runs, in one shape (as EDM2's ``training_loop``):

    context -> model/trainer -> restore -> for step in start+1..total: batch, train step,
    running means logged every ``log_every``, the stage's extras (validation, samples),
    checkpoint every ``checkpoint_every`` and at the last step

A stage's ``train_loop(loop_config)`` builds its :class:`~spresso.train.harness.TrainContext`
(:func:`worker_setup`), its trainer, restores, and hands its own pieces to :func:`run_steps`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from spresso.config import SpressoConfig, config_from_dict
from spresso.train.clock import TrainClock
from spresso.train.harness import TrainContext

log = logging.getLogger(__name__)


def worker_setup(loop_config: dict, seed: Callable[[SpressoConfig], int]) -> tuple[TrainContext, SpressoConfig]:
    """The worker's context and config; torch threads from the scaling, seeded by ``seed(cfg) + rank``."""
    ctx = TrainContext(loop_config)
    cfg = config_from_dict(loop_config["cfg"], "checkpointed config")
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    torch.manual_seed(seed(cfg) + ctx.rank)
    return ctx, cfg


@dataclass
class StepResult:
    """One training step's outcome: scalars to average between logs, and work done (for throughput)."""

    scalars: dict[str, float]
    units: float  # samples (or audio seconds) processed by this rank in the step
    detail: Any = None  # the loss output, for the stage's own use


def run_steps(ctx: TrainContext, *, desc: str, start: int, total: int, log_every: int, checkpoint_every: int,
              step: Callable[[int], StepResult], checkpoint: Callable[[int, StepResult, dict], tuple[dict, Callable[[Path], Any]]],
              throughput: str = "samples_per_second", window: Optional[Any] = None,
              after_step: Optional[Callable[[int, bool], dict]] = None, postfix: tuple[str, str] = ("loss", "loss")) -> None:
    """Steps ``start+1 .. total``: the loop body every stage shares. With a time limit
    (``ctx.clock``, see :mod:`spresso.train.clock`) it stops earlier, once the limit is spent; that
    step is the last one (logged, checkpointed) as ``total`` would be.

    - ``step(i) -> StepResult``: fetch a batch and take one optimiser step;
    - ``window``: running metrics with ``metrics()`` and ``reset()`` (e.g. per-sigma losses), logged with the means;
    - ``after_step(i, last) -> metrics``: the stage's extras (validation, generated examples), their
      metrics go into the checkpoint's report;
    - ``checkpoint(i, result, extra) -> (report metrics, save(folder))``: called on every rank (a
      gather under FSDP is collective); rank 0 writes the checkpoint.
    """
    clock = ctx.clock or ctx.make_clock(total)
    clock.start()
    sums: dict[str, float] = {}
    count, units, t0 = 0, 0.0, time.time()
    bar = _progress_bar(ctx, desc, start, total, clock)
    i = start
    while i < total and not clock.spent():
        i += 1
        result = step(i)
        for k, v in result.scalars.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        units += result.units
        clock.tick(ctx.device)  # one reading for every rank: they stop at the same step
        bar.update(min(int(clock.elapsed()), bar.total) - bar.n if clock.limited else 1)  # whole seconds
        last = i == total or clock.spent()
        if i % log_every == 0 or last:
            metrics = {k: v / count for k, v in sums.items()}
            if window is not None:
                metrics.update(window.metrics())
                window.reset()
            metrics[throughput] = units * ctx.world_size / max(time.time() - t0, 1e-9)
            if clock.limited:
                metrics["train/elapsed_minutes"] = clock.elapsed() / 60
                metrics["train/progress"] = clock.progress(i)
            ctx.log_metrics(metrics, i)
            bar.set_postfix({postfix[0]: f"{metrics[postfix[1]]:.3f}", **({"step": i} if clock.limited else {})})
            sums, count, units, t0 = {}, 0, 0.0, time.time()
        extra = after_step(i, last) if after_step is not None else {}
        if i % checkpoint_every == 0 or last:
            report, save = checkpoint(i, result, extra)
            ctx.report(report, i, save=save)
    bar.close()
    if clock.limited and ctx.is_main:
        why = "its time limit" if clock.spent() else "its step cap"
        log.info("%s: stopped at step %d of at most %d by %s (%.1f of %.1f minutes)", desc, i, total, why,
                 clock.elapsed() / 60, clock.limit / 60)


def _progress_bar(ctx: TrainContext, desc: str, start: int, total: int, clock: TrainClock) -> tqdm:
    """Steps out of ``total``; with a time limit, training seconds out of the limit (the steps are not known)."""
    if clock.limited:
        return tqdm(total=round(clock.limit), initial=min(round(clock.resumed), round(clock.limit)), unit="s",
                    desc=f"{desc} (time limit)", disable=not ctx.is_main, mininterval=10)
    return tqdm(total=total, initial=start, desc=desc, disable=not ctx.is_main, mininterval=10)
