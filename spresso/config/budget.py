"""A time budget for the whole DAG (``budget_hours``), spread over the training stages by shares.

    budget_hours: 4            # or --set budget_hours=4
    budget: {audioae: 0.45, dit: 0.15, stage1: 0.15, qinco2: 0.05, stage3: 0.10}

The rule: a training stage of kind k trains for ``budget_hours x share_k / n_k`` hours of wall
clock, where n_k is how many runs of it the pipeline makes (stage 1: one per distinct stage-1 model,
i.e. per t unless a point overrides its training; QINCo2 and stage 3: one per discrete point). What the shares leave (here 10%) is for the stages that
are not trained (shards, latent caches, export, evaluation), which are not limited. Shares are of
wall-clock time with stages run one after another (the workstation preset sets
``pipeline.max_parallel: 1``); stages running side by side each still get their own share.

A section's own ``time_limit_minutes`` (e.g. ``audioae.train.time_limit_minutes=120`` for one stage
run alone) wins over its share. A stage with a time limit stops at the first of its step cap and its
limit, and its schedules run on the training clock (:mod:`spresso.train.clock`), so a shorter budget
compresses the schedule instead of cutting it off.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from spresso.config.base import Section

if TYPE_CHECKING:
    from spresso.config import SpressoConfig

ShareName = Literal["audioae", "dit", "stage1", "qinco2", "stage3"]


class BudgetShares(Section):
    # Fractions of budget_hours. The AudioAE bounds every operating point's quality, so it gets most.
    audioae: float = Field(0.45, ge=0, le=1)
    dit: float = Field(0.15, ge=0, le=1)
    stage1: float = Field(0.15, ge=0, le=1)
    qinco2: float = Field(0.05, ge=0, le=1)
    stage3: float = Field(0.10, ge=0, le=1)

    @model_validator(mode="after")
    def _at_most_one(self) -> BudgetShares:
        total = self.audioae + self.dit + self.stage1 + self.qinco2 + self.stage3
        if total > 1 + 1e-9:
            raise ValueError(f"budget shares add up to {total:.3f}: they are fractions of budget_hours, at most 1 in all")
        return self


def instances(cfg: SpressoConfig, share: ShareName) -> int:
    """How many runs of this kind the pipeline makes (each gets an equal part of the share). Points
    with the same t and no stage-1 overrides of their own share one stage-1 model (the second reuses
    the first's run), so stage 1 counts distinct models, not points."""
    points = cfg.pipeline.points
    if share == "stage1":
        upstream = ("dae.", "dit.", "audioae.", "data.")  # what a branch's stage-1 model depends on
        models = {(p.t, repr(sorted((k, v) for k, v in p.overrides.items() if k.startswith(upstream)))) for p in points}
        return max(1, len(models))
    if share in ("qinco2", "stage3"):
        return max(1, sum(not p.continuous for p in points))
    return 1


def time_limit_seconds(cfg: SpressoConfig, share: ShareName | None, own_minutes: float | None) -> float | None:
    """The stage's training time limit: its section's own ``time_limit_minutes``, else its part of
    ``budget_hours``; None when neither is set (the stage trains to its step count)."""
    if own_minutes is not None:
        return own_minutes * 60.0
    if cfg.budget_hours is None or share is None:
        return None
    return cfg.budget_hours * 3600.0 * getattr(cfg.budget, share) / instances(cfg, share)


# Pipeline stage kind -> (its share, its training section).
STAGE_SHARES = {
    "train_audioae": ("audioae", lambda cfg: cfg.audioae.train),
    "train_dit": ("dit", lambda cfg: cfg.dit.train),
    "stage1": ("stage1", lambda cfg: cfg.dae.stage1),
    "qinco2": ("qinco2", lambda cfg: cfg.qinco2),
    "stage3": ("stage3", lambda cfg: cfg.dae.stage3),
}


def stage_time_limit(cfg: SpressoConfig, kind: str) -> float | None:
    """The time limit (seconds) of a pipeline stage kind, None for stages that are not timed."""
    if kind not in STAGE_SHARES:
        return None
    share, section = STAGE_SHARES[kind]
    return time_limit_seconds(cfg, share, section(cfg).time_limit_minutes)


def budget_lines(cfg: SpressoConfig) -> list[str]:
    """What the plan says about the time budget (nothing without one)."""
    if cfg.budget_hours is None:
        return []
    parts, used = [], 0.0
    for name, minutes, runs in budget_table(cfg):
        parts.append(f"{name} {minutes:.0f} min" + (f" x {runs}" if runs > 1 else ""))
        used += minutes * runs
    left = cfg.budget_hours * 60 - used
    return [f"time budget: {cfg.budget_hours:g} h (budget_hours) for training: {', '.join(parts)}; "
            f"{left:.0f} min left for the untimed stages (shards, caches, export, evaluation); "
            f"a section's time_limit_minutes wins over its share"]


def budget_table(cfg: SpressoConfig) -> list[tuple[str, float, int]]:
    """(share, minutes per run, runs) for every share, as the plan prints them."""
    if cfg.budget_hours is None:
        return []
    names = ("audioae", "dit", "stage1", "qinco2", "stage3")
    return [(n, time_limit_seconds(cfg, n, None) / 60.0, instances(cfg, n)) for n in names]
