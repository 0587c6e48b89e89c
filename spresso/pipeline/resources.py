"""``pipeline.resources.<stage>`` onto the config section the stage scales, and its own task's options.

Each registry row names the section its stage scales (``Stage.scales``). When the pipeline config
gives ``resources.<stage>``, that entry wins over the section: the stage runs with the section
rewritten as below (unset entry keys take :class:`StageResources`' defaults, not the section's).
A stage run on its own (``spresso train dit``, ``pipelines/train_dit.py``) uses the section as is.

=====================  ==========================  =====================  ===============  ===============  ==================
section type           stages                      workers                cpus             gpus             label, accelerator
=====================  ==========================  =====================  ===============  ===============  ==================
ScalingSettings        train_audioae, train_dit,   workers (0: trains in  cpus_per_worker  use_gpu (0 or 1  label, accelerator
                       stage1, stage3, qinco2      the stage's task)                       per worker)
ActorPoolSettings      precompute_latents,         actors (>= 1)          cpus_per_actor   gpus_per_actor   label, accelerator
                       precompute_z
EvalConfig             evaluate                    max_tasks (0: no cap)  cpus_per_task    gpus_per_task    label, accelerator
DataConfig             shard                       (not used)             worker_cpus      (not used)       worker_label
=====================  ==========================  =====================  ===============  ===============  ==================

A stage that scales no section (export) is one Ray task holding the entry's cpus/gpus.
"""
from __future__ import annotations

from typing import Any

from spresso.config import SpressoConfig, config_from_dict
from spresso.config.base import Section
from spresso.config.data import DataConfig
from spresso.config.eval import EvalConfig
from spresso.config.pipeline import StageResources
from spresso.config.scaling import ActorPoolSettings, ScalingSettings
from spresso.core.errors import SpressoError
from spresso.pipeline.stage import Stage
from spresso.runtime.placement import ray_options

DRIVER_CPUS = 0.25  # what a stage's task holds when it only drives Ray workers that ask for the rest


def section_at(cfg: SpressoConfig, dotted: str) -> Section:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def section_update(section: Section, res: StageResources, stage: str) -> dict[str, Any]:
    """The fields of ``section`` that ``res`` sets (one-line errors for what cannot apply)."""
    where = f"pipeline.resources.{stage}"
    placement = {"label": res.label, "accelerator": res.accelerator}
    if isinstance(section, ScalingSettings):
        if res.gpus not in (0, 1):
            raise SpressoError(f"{where}.gpus: a training worker has 0 or 1 GPU (got {res.gpus:g}); scale with workers")
        return {"workers": res.workers, "cpus_per_worker": res.cpus, "use_gpu": res.gpus > 0, **placement}
    if isinstance(section, ActorPoolSettings):
        if res.workers < 1:
            raise SpressoError(f"{where}.workers: {stage} runs a pool of actors; give workers >= 1")
        return {"actors": res.workers, "cpus_per_actor": res.cpus, "gpus_per_actor": res.gpus, **placement}
    if isinstance(section, EvalConfig):
        return {"max_tasks": res.workers or None, "cpus_per_task": res.cpus, "gpus_per_task": res.gpus, **placement}
    if isinstance(section, DataConfig):
        unused = [k for k in ("workers", "gpus", "accelerator") if getattr(res, k)]
        if unused:
            raise SpressoError(f"{where}: {', '.join(unused)} do not apply ({stage} runs CPU tasks: give cpus and label)")
        return {"worker_cpus": res.cpus, "worker_label": res.label}
    raise SpressoError(f"{where}: stage {stage} scales {type(section).__name__}, which resources cannot size")


def apply_resources(cfg: SpressoConfig, stage: Stage) -> SpressoConfig:
    """``cfg`` with ``pipeline.resources.<stage>`` written onto the section the stage scales (if both exist)."""
    res = cfg.pipeline.resources.get(stage.name)
    if res is None or not stage.scales:
        return cfg
    update = section_update(section_at(cfg, stage.scales), res, stage.name)
    tree = cfg.to_dict()
    node = tree
    for part in stage.scales.split("."):
        node = node[part]
    node.update(update)
    return config_from_dict(tree, f"pipeline.resources.{stage.name}")


def task_options(cfg: SpressoConfig, stage: Stage, res: StageResources) -> dict[str, Any]:
    """Options of the stage's own Ray task (ray executor), from ``cfg`` with the resources applied.

    A stage whose work runs in Ray workers it starts is a light driver on ``pipeline.driver_label``
    nodes; a stage that does the work itself (training with ``workers: 0``, export) holds what it
    needs. Either way Ray retries it ``pipeline.driver_retries`` times when its node or process dies.
    """
    pc = cfg.pipeline
    section = section_at(cfg, stage.scales) if stage.scales else None
    if isinstance(section, ScalingSettings) and not section.workers:
        need = ray_options(cpus=section.cpus_per_worker, gpus=1.0 if section.use_gpu else 0.0,
                           label=section.label, accelerator=section.accelerator)
    elif section is not None or res.workers:
        need = ray_options(cpus=DRIVER_CPUS, label=pc.driver_label)
    else:
        need = ray_options(cpus=res.cpus, gpus=res.gpus, label=res.label, accelerator=res.accelerator)
    return {**need, "max_retries": pc.driver_retries}
