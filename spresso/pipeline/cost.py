"""How much GPU work each stage will do, from the settings it will run with.

Steps, epochs, batches and workers come from the stage's own config (``node.run_cfg``: branch
overrides and ``pipeline.resources`` applied), through the functions the stages use themselves
(stage 3's and QINCo2's epoch arithmetic). Dataset sizes come from ``pipeline.corpus_hours`` cut
into ``data.clip_seconds`` clips with the ``data.splits`` train fraction. Per stage:

===================  ==========================================  =========================  ============
stage                units per worker                            workers x GPUs             unit
===================  ==========================================  =========================  ============
train_audioae        audioae.steps                               audioae.train.scaling      step
train_dit            dit.train.steps                             dit.train.scaling          step
stage1               dae.stage1.steps                            dae.stage1.scaling         step
stage3               epochs x train clips / global batch (cap)   dae.stage3.scaling         step
qinco2               epochs x train z frames / (batch x workers)  qinco2.scaling            step
precompute_*         clips / batch_size / actors                 the cache's actor pool     batch
evaluate             eval.num_clips x decodings per clip          eval.gpus_per_task        clip
===================  ==========================================  =========================  ============

GPU-seconds = units x seconds per unit (:mod:`spresso.pipeline.cost_table`) x workers x GPUs per
worker: a data-parallel step costs every worker the single-GPU step time (communication not counted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from spresso.config import SpressoConfig
from spresso.config.eval import EvalConfig
from spresso.config.layout import point_config
from spresso.config.scaling import ActorPoolSettings, ScalingSettings
from spresso.core.rates import frame_rate
from spresso.pipeline.graph import StageNode
from spresso.pipeline.resources import section_at
from spresso.train.qinco2 import epoch_steps
from spresso.train.stage3 import total_steps as stage3_steps


@dataclass(frozen=True)
class Work:
    units: Optional[int]  # per worker; None: unknown (needs pipeline.corpus_hours)
    workers: int
    gpus: float  # per worker
    unit: str = "steps"

    def gpu_seconds(self, seconds_per_unit: float) -> float:
        return (self.units or 0) * seconds_per_unit * self.workers * self.gpus


def corpus_clips(cfg: SpressoConfig) -> tuple[int, int]:
    """(all clips, train clips) of the configured corpus; (0, 0) when pipeline.corpus_hours is unset."""
    clips = int(cfg.pipeline.corpus_hours * 3600 / cfg.data.clip_seconds)
    return clips, int(clips * cfg.data.splits.train)


def _placement(section) -> tuple[int, float]:
    """(workers, GPUs per worker) the section runs with."""
    if isinstance(section, ScalingSettings):
        return max(1, section.workers), 1.0 if section.use_gpu else 0.0
    if isinstance(section, ActorPoolSettings):
        return section.actors, section.gpus_per_actor
    if isinstance(section, EvalConfig):
        return 1, section.gpus_per_task
    return 1, 0.0


def _cache_batches(pool: ActorPoolSettings, clips: int) -> Optional[int]:
    return math.ceil(clips / pool.batch_size / pool.actors) if clips else None


def _qinco2(cfg: SpressoConfig, train: int, workers: int) -> Optional[int]:
    frames = math.ceil(cfg.data.clip_seconds * frame_rate(cfg.dae.t))
    return epoch_steps(cfg.qinco2, train * frames, workers)[1] if train else None


def eval_decodings(cfg: SpressoConfig) -> int:
    return len(cfg.eval.samplers) if cfg.eval.samplers else 1


# stage kind -> (unit, (config, train clips, all clips, workers) -> units per worker)
UNITS: dict[str, tuple[str, Callable[[SpressoConfig, int, int, int], Optional[int]]]] = {
    "train_audioae": ("steps", lambda c, tr, n, w: c.audioae.steps),
    "train_dit": ("steps", lambda c, tr, n, w: c.dit.train.steps),
    "stage1": ("steps", lambda c, tr, n, w: c.dae.stage1.steps),
    "stage3": ("steps", lambda c, tr, n, w: stage3_steps(c.dae.stage3, tr) if tr else None),
    "qinco2": ("steps", lambda c, tr, n, w: _qinco2(c, tr, w)),
    "precompute_latents": ("batches", lambda c, tr, n, w: _cache_batches(c.audioae.cache, n)),
    "precompute_z": ("batches", lambda c, tr, n, w: _cache_batches(c.dae.zcache, n)),
    "evaluate": ("clips", lambda c, tr, n, w: c.eval.num_clips * eval_decodings(c)),
}


def stage_work(node: StageNode) -> Optional[Work]:
    """The node's work from its run config; None for a stage without a work model (its resources' steps then)."""
    kind = node.stage.name
    cfg = node.run_cfg or node.cfg
    if node.point is not None:
        cfg = point_config(cfg, node.point)  # as the branch's stage runs: its t, K, M
    if kind in UNITS and node.stage.scales:
        workers, gpus = _placement(section_at(cfg, node.stage.scales))
        unit, units = UNITS[kind]
        clips, train = corpus_clips(cfg)
        return Work(units(cfg, train, clips, workers), workers, gpus, unit)
    r = node.resources
    return Work(r.steps, max(r.workers, 1), r.gpus) if r.steps else None
