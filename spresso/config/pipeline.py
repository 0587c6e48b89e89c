"""The stage DAG: which stages are shared, the operating points (one branch each), resources.

    pipeline:
      shared: [shard, train_audioae, precompute_latents, train_dit]
      branch: [stage1, precompute_z, qinco2, stage3, export, evaluate]
      points:
        - {name: c11, t: 9, continuous: true}
        - {name: d1k32, t: 9, K: 1024, m: 12}
      driver_label: driver
      resources:
        train_dit: {gpus: 1, workers: 8, label: a100, accelerator: A100}

A continuous point has no quantizer: its branch leaves out the stages marked discrete-only
(qinco2, stage3). Settings of one branch (sizes, depths) go in ``overrides`` as dotted config
keys, applied to that branch's stages only.

``resources.<stage>``, when given, decides how that stage runs in this pipeline: it replaces the
scaling of the section the stage scales (``dit.train.scaling``, ``audioae.cache`` ...; see
:mod:`spresso.pipeline.resources`). A stage run on its own (``spresso train dit``) uses the section.
"""
from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from spresso.config.base import Section
from spresso.core.rates import bitrate_bps, continuous_bitrate_bps

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,39}$")


class OperatingPoint(Section):
    # Short identifier: names the branch's stages (stage1@<name>) and its output folders.
    name: str
    # Time pooling of the latent encoder: x0 at 100 Hz -> z at 100/t Hz.
    t: int = Field(..., gt=0)
    # Codebook size and codebooks kept (bitrate = m x log2(K) x 100/t); both None when continuous.
    K: Optional[int] = None
    m: Optional[int] = Field(None, ge=1)
    continuous: bool = False
    # Dotted config overrides for this branch only, e.g. {"qinco2.M": 25}.
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "OperatingPoint":
        if not _NAME.match(self.name):
            raise ValueError(f"operating point name '{self.name}' must be 1-40 letters, digits, '_' or '-'")
        if self.continuous:
            if self.K is not None or self.m is not None:
                raise ValueError(f"operating point '{self.name}' is continuous: leave K and m unset")
        else:
            if self.K is None or self.m is None:
                raise ValueError(f"operating point '{self.name}' is discrete: set K and m (or continuous: true)")
            if self.K < 2 or self.K & (self.K - 1):
                raise ValueError(f"operating point '{self.name}': K must be a power of two, got {self.K}")
        return self

    def champion_point(self) -> str | None:
        """The operating point whose bundle is the registry's champion."""
        return self.champion or (self.points[-1].name if self.points else None)

    def bitrate_bps(self, z_channels: int = 64) -> float:
        if self.continuous:
            return continuous_bitrate_bps(z_channels, self.t)
        return bitrate_bps(self.m, self.K, self.t)


class StageResources(Section):
    # What one stage asks of the cluster. workers >= 1: a light driver task (on pipeline.driver_label
    # nodes) starts `workers` Ray workers of cpus/gpus each (Ray Train workers; the actors of a cache
    # pool); workers = 0: the stage is one Ray task holding cpus/gpus (a training stage trains in it).
    # shard and evaluate: cpus/gpus size each Ray task they start; workers caps evaluate's tasks at once.
    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)
    workers: int = Field(0, ge=0)
    # Ray node label `spresso-node` the workers need (e.g. cpu, a100); null: any node.
    label: Optional[str] = None
    # Accelerator type per worker (e.g. A100): asks for the Ray resource accelerator_type:A100, so an
    # autoscaler starts that node type.
    accelerator: Optional[str] = None
    # The dry run's estimate: step_seconds (> 0) replaces the cost table's figure for this stage (flagged
    # as assumed); steps is used only by stages the cost model cannot count (spresso.pipeline.cost).
    steps: int = Field(0, ge=0)
    step_seconds: float = Field(0.0, ge=0)


class PipelineConfig(Section):
    shared: list[str] = Field(default_factory=lambda: ["shard", "train_audioae", "precompute_latents", "train_dit"])
    branch: list[str] = Field(default_factory=lambda: ["stage1", "precompute_z", "qinco2", "stage3", "export", "evaluate"])
    points: list[OperatingPoint] = Field(default_factory=list)
    # Per stage kind (e.g. "train_dit", "stage1"): how the stage runs in a pipeline; wins over the
    # scaling of the section it scales (see spresso.pipeline.resources).
    resources: dict[str, StageResources] = Field(default_factory=dict)
    # Node label (`spresso-node`) of the nodes stage drivers run on (ray executor): an on-demand
    # node type, so a spot reclaim never takes a driver with it. Null: any node.
    driver_label: Optional[str] = None
    # Times a stage driver lost with its node (or process) is started again; it resumes (training
    # from its latest checkpoint, caches and shards from their finished blocks).
    driver_retries: int = Field(2, ge=0)
    # Raw audio folders the shard stage reads (besides any given on the command line).
    inputs: list[str] = Field(default_factory=list)
    # auto: Ray tasks when joining a cluster (RAY_ADDRESS), else driver threads.
    executor: Literal["auto", "local", "ray"] = "auto"
    # Stages running at once on the local executor (each may use Ray inside).
    max_parallel: int = Field(2, ge=1)
    # The dry run's cost estimate (spresso.pipeline.cost): the raw corpus's length in hours (cut into
    # data.clip_seconds clips; 0: unknown, the epoch-based stages and caches are then not estimated),
    # the GPU type whose seconds per step are used (spresso.pipeline.cost_table) and its price.
    corpus_hours: float = Field(0.0, ge=0)
    gpu_type: str = "A100-40GB"
    gpu_hour_usd: float = Field(4.1, ge=0)
    # Registered MLflow model whose versions the export stages' bundles become (null: none). Each
    # version carries its operating point's name as alias; `champion` names the point whose bundle
    # gets the alias "champion" too (null: the last point listed), so
    # spresso.load("models:/<registered_model>@champion") finds it.
    registered_model: Optional[str] = None
    champion: Optional[str] = None

    @model_validator(mode="after")
    def _check(self) -> "PipelineConfig":
        names = [p.name for p in self.points]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"operating point names must be unique: {', '.join(dup)}")
        both = sorted(set(self.shared) & set(self.branch))
        if both:
            raise ValueError(f"stages listed as both shared and branch: {', '.join(both)}")
        if self.champion is not None and self.champion not in names:
            raise ValueError(f"champion '{self.champion}' is not an operating point ({', '.join(names) or 'none'})")
        return self

    def champion_point(self) -> str | None:
        """The operating point whose bundle gets the registry alias "champion"."""
        return self.champion or (self.points[-1].name if self.points else None)
