"""The training clock: a stage's progress through its steps or through its time limit, whichever is further.

With a time limit (``time_limit_minutes`` or a share of ``budget_hours``), a stage stops when the
limit is spent, and the schedules that depend on how far training has got (the AudioAE's lr decay
and GAN start, QINCo2's cosine) read :meth:`TrainClock.schedule_step` instead of the step:

    progress = max(step / total, elapsed / limit)        schedule_step = progress x total

so a run that is cut to a quarter of its steps by the clock still goes through its whole schedule
(as Cramming sizes BERT training by a time budget). Without a limit, ``schedule_step == step``:
every schedule is exactly the step-based one.

Elapsed time is wall clock from the loop's first step, including validation and checkpoints, and
it is saved with every checkpoint (``clock.json``) so a resumed run continues the same schedule and
stops at the same total. Under DDP the ranks agree on one elapsed time (the largest) every step, so
they use the same learning rate and stop at the same step.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

CLOCK_FILE = "clock.json"


class TrainClock:
    def __init__(self, limit_seconds: float | None = None, total_steps: int = 1, elapsed: float = 0.0):
        self.limit = limit_seconds
        self.total = max(1, int(total_steps))
        self.resumed = float(elapsed)  # seconds trained before this attempt
        self._t0: float | None = None
        self._synced = float(elapsed)

    # -- time ----------------------------------------------------------------------------
    def start(self) -> TrainClock:
        self._t0 = time.monotonic()
        return self

    def local_elapsed(self) -> float:
        return self.resumed + (time.monotonic() - self._t0 if self._t0 is not None else 0.0)

    def elapsed(self) -> float:
        """Seconds trained so far, as last agreed between the ranks (:meth:`tick`)."""
        return self._synced

    def tick(self, device: torch.device | str = "cpu") -> float:
        """Read the time once per step; under DDP all ranks take the largest reading (a collective)."""
        seconds = self.local_elapsed()
        if self.limit is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([seconds], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            seconds = float(t.item())
        self._synced = seconds
        return seconds

    # -- progress --------------------------------------------------------------------------
    @property
    def limited(self) -> bool:
        return self.limit is not None

    def time_fraction(self) -> float:
        return min(1.0, self._synced / self.limit) if self.limit else 0.0

    def progress(self, step: int) -> float:
        """How far training is, in [0, 1]: the step's share of the total, or the time's, whichever is larger."""
        return min(1.0, max(step / self.total, self.time_fraction()))

    def schedule_step(self, step: int) -> float:
        """The step a step-based schedule should read: ``step`` itself without a limit."""
        if not self.limited:
            return float(step)
        return max(float(step), self.progress(step) * self.total)

    def spent(self) -> bool:
        return self.limit is not None and self._synced >= self.limit

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        (Path(folder) / CLOCK_FILE).write_text(json.dumps({"elapsed_seconds": self.local_elapsed(),
                                                           "limit_seconds": self.limit}))

    @staticmethod
    def saved_elapsed(folder: Path | None) -> float:
        """Seconds trained when the checkpoint in ``folder`` was written (0 for checkpoints without a clock)."""
        if folder is None or not (Path(folder) / CLOCK_FILE).is_file():
            return 0.0
        return float(json.loads((Path(folder) / CLOCK_FILE).read_text())["elapsed_seconds"])
