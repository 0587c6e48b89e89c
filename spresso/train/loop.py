"""The step loop every Ray Train stage runs, in one shape (as EDM2's ``training_loop``):

    context -> model/trainer -> restore -> for step in start+1..total: batch, train step,
    running means logged every ``log_every``, the stage's extras (validation, samples),
    checkpoint every ``checkpoint_every`` and at the last step

A stage's ``train_loop(loop_config)`` builds its :class:`~spresso.train.harness.TrainContext`
(:func:`worker_setup`), its trainer, restores, and hands its own pieces to :func:`run_steps`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from spresso.config import SpressoConfig, config_from_dict
from spresso.train.harness import TrainContext


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
    """Steps ``start+1 .. total``: the loop body every stage shares.

    - ``step(i) -> StepResult``: fetch a batch and take one optimiser step;
    - ``window``: running metrics with ``metrics()`` and ``reset()`` (e.g. per-sigma losses), logged with the means;
    - ``after_step(i, last) -> metrics``: the stage's extras (validation, generated examples), their
      metrics go into the checkpoint's report;
    - ``checkpoint(i, result, extra) -> (report metrics, save(folder))``: called on every rank (a
      gather under FSDP is collective); rank 0 writes the checkpoint.
    """
    sums: dict[str, float] = {}
    count, units, t0 = 0, 0.0, time.time()
    bar = tqdm(total=total, initial=start, desc=desc, disable=not ctx.is_main, mininterval=10)
    for i in range(start + 1, total + 1):
        result = step(i)
        for k, v in result.scalars.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        units += result.units
        bar.update(1)
        last = i == total
        if i % log_every == 0 or last:
            metrics = {k: v / count for k, v in sums.items()}
            if window is not None:
                metrics.update(window.metrics())
                window.reset()
            metrics[throughput] = units * ctx.world_size / max(time.time() - t0, 1e-9)
            ctx.log_metrics(metrics, i)
            bar.set_postfix({postfix[0]: f"{metrics[postfix[1]]:.3f}"})
            sums, count, units, t0 = {}, 0, 0.0, time.time()
        extra = after_step(i, last) if after_step is not None else {}
        if i % checkpoint_every == 0 or last:
            report, save = checkpoint(i, result, extra)
            ctx.report(report, i, save=save)
    bar.close()
