"""The real stages, as a table: one row per stage kind (reads, writes, resources, what its key hashes,
the config section ``pipeline.resources.<kind>`` sizes: :mod:`spresso.pipeline.resources`).

Every training stage is one generic :class:`TrainingAdapter` over its driver declaration
(:class:`spresso.train.driver.TrainingStage`, named ``"module:NAME"`` and imported when the stage
runs, so declaring the DAG costs no torch import); the other stages (shard, the caches, export,
evaluate) keep a small adapter each. Branch stages run with :func:`point_config` (the branch's
t, K, M, m and its own output folders). Each stage opens its own MLflow run as a child of the
pipeline's run; the adapter hands back that run's id (or, when the stage reused an identical
earlier run, the run that wrote its output).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from spresso.config.layout import dae_dir, point_config, qinco2_dir
from spresso.config.pipeline import StageResources
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute
from spresso.pipeline.stage import Stage, StageContext, StageResult
from spresso.runtime.tracking import (
    TAG_STAGE,
    ensure_experiment,
    mlflow_client,
    tracking_uri,
)


def run_that_wrote(ctx: StageContext, cfg, kind: str, output: str, location: str) -> str | None:
    """The run behind an adapter call: the child run it opened, else the finished run that had
    already written ``location`` (the stage's own cache reused it without a new run)."""
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    exp = ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir)
    client = mlflow_client(uri)
    for flt in (f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.`{TAG_STAGE}` = '{kind}'",
                f"tags.`{TAG_STAGE}` = '{kind}' and attributes.status = 'FINISHED'"):
        for run in client.search_runs([exp], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=20):
            if absolute(run.data.tags.get(f"spresso.output.{output}.uri", "")) == absolute(location):
                return run.info.run_id
    return None


def stage_config(cfg, ctx: StageContext):
    """The config a node runs with: its branch's (:func:`point_config`) or, for a shared stage, the pipeline's."""
    return point_config(cfg, ctx.point) if ctx.point is not None else cfg


def upstream_runs(ctx: StageContext) -> dict[str, str]:
    return {k: a.run_id for k, a in ctx.inputs.items() if a.run_id}


# ----------------------------------------------------------------------------- adapters
@dataclass(frozen=True)
class TrainingAdapter:
    """Runs one training stage's declaration for a DAG node (the same for every training stage).

    ``declaration``: ``"module:NAME"`` of its :class:`~spresso.train.driver.TrainingStage`;
    ``options(ctx)``: extra keyword arguments for its ``find_inputs`` taken from the node (e.g. the
    vectors QINCo2 reads); every stage gets ``progress=False``.
    """

    declaration: str
    options: Callable[[StageContext], dict] = field(default=lambda ctx: {})

    def resolve(self):
        module, _, name = self.declaration.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, cfg, ctx: StageContext) -> StageResult:
        stage = self.resolve()
        out = stage.run(stage_config(cfg, ctx), parent_run_id=ctx.parent_run_id, force=ctx.force, progress=False,
                        **self.options(ctx))
        run_id = run_that_wrote(ctx, cfg, stage.name, "checkpoint", str(out.final)) if out.reused else out.run_id
        return StageResult({}, run_id)


def shard_stage(cfg, ctx: StageContext) -> dict[str, Any]:
    # lazy: declaring the DAG imports no Ray Data
    from spresso.data.shard import shard

    inputs = [p for p in ctx.inputs["audio"].uri.split(",") if p]
    if not inputs:
        raise SpressoError("pipeline.inputs lists no audio folders to shard")
    result = shard(inputs, cfg, output=ctx.outputs["shards"], progress=False, track=False)
    ctx.run.log_metrics({"clips": result.clips, "hours": result.hours, "rejects": result.rejects})
    return {"shards": (result.out, result.digest)}


def precompute_latents_stage(cfg, ctx: StageContext) -> StageResult:
    # lazy: declaring the DAG imports no torch
    from spresso.data.latents import precompute_latents

    # The DAG owns this output: a cache built from an older AudioAE is stale and is rebuilt.
    path = precompute_latents(cfg, ctx.inputs["audioae"].uri, ctx.inputs["shards"].uri,
                              parent_run_id=ctx.parent_run_id, progress=False, replace_stale=True)
    return StageResult({}, run_that_wrote(ctx, cfg, "precompute_latents", "x0_cache", path))


def precompute_z_stage(cfg, ctx: StageContext) -> StageResult:
    # lazy: declaring the DAG imports no torch
    from spresso.data.z_latents import precompute_z

    path = precompute_z(stage_config(cfg, ctx), ctx.inputs["stage1"].uri, parent_run_id=ctx.parent_run_id,
                        progress=False, replace_stale=True)
    return StageResult({}, run_that_wrote(ctx, cfg, "precompute_z", "z_cache", path))


def export_stage(cfg, ctx: StageContext) -> StageResult:
    # lazy: declaring the DAG imports no torch
    from spresso.train.export import export

    stage = ctx.inputs["stage1" if ctx.point.continuous else "stage3"].uri
    quantizer = None if ctx.point.continuous else ctx.inputs["quantizer"].uri
    out = export(stage_config(cfg, ctx), ctx.outputs["bundle"], audioae=ctx.inputs["audioae"].uri, stage=stage,
                 quantizer=quantizer, continuous=ctx.point.continuous, parent_run_id=ctx.parent_run_id, m=ctx.point.m)
    return StageResult({}, out["run_id"])


def evaluate_stage(cfg, ctx: StageContext) -> StageResult:
    # lazy: declaring the DAG imports no torch
    from spresso.eval.baselines import bundle_rows  # lazy: as above
    from spresso.eval.harness import run_evaluation  # lazy: as above

    # The point's bundle (a row per eval.samplers entry, the first primary) next to the AudioAE alone
    # (its upper bound), on the shards' eval split.
    # eval.baselines add their rows (e.g. Opus at 6/8/12 kbps), eval.floors the silent output's.
    codecs = {**bundle_rows(ctx.point.name, ctx.inputs["bundle"].uri, cfg.eval),
              "audioae": f"audioae:{ctx.inputs['audioae'].uri}", **cfg.eval.baselines,
              **({"silence": "silence:"} if cfg.eval.floors else {})}
    _, run_id = run_evaluation(cfg, codecs, out_dir=ctx.outputs["report"], parent_run_id=ctx.parent_run_id,
                               progress=False)
    return StageResult({}, run_id)


# ----------------------------------------------------------------------------- locations
def _shards(cfg, point) -> str:
    return cfg.path(cfg.data.shards_dir)


def _audioae_final(cfg, point) -> str:
    return cfg.path(cfg.audioae.checkpoint_dir) + "/final"


def _x0(cfg, point) -> str:
    return cfg.path(cfg.audioae.latents_path)


def _dit_final(cfg, point) -> str:
    return cfg.path(cfg.dit.checkpoint_dir) + "/final"


def _captions(cfg, point) -> str:
    return cfg.path(cfg.dit.captions_path)


def _stage_final(stage: str):
    def location(cfg, point) -> str:
        return cfg.path(f"{dae_dir(cfg, point)}/{stage}/final")

    location.__name__ = f"_{stage}_final"
    return location


def _z_cache(cfg, point) -> str:
    return cfg.path(f"{dae_dir(cfg, point)}/z.zarr")


def _quantizer_final(cfg, point) -> str:
    return cfg.path(f"{qinco2_dir(cfg, point)}/final")


def _inputs(cfg, point) -> list[str]:
    return [input_folder(cfg, p) for p in cfg.pipeline.inputs]


def input_folder(cfg, entry: str) -> str:
    """A raw-audio input: URLs and absolute paths as given; a relative one against the workdir when
    it is there (the demo's synthesised ``corpus``), else against the current directory (a folder
    named on the command line, e.g. ``--set 'pipeline.inputs=[../shared/data/sfx-dev]'``)."""
    resolved = cfg.path(entry)  # absolute entries come back unchanged
    if "://" in resolved:
        return resolved
    if not Path(resolved).exists() and Path(entry).exists():
        return str(Path(entry).resolve())
    return str(Path(resolved).resolve())  # a missing one fails in the shard stage, under the workdir's name


# ----------------------------------------------------------------------------- the table
# What a DAE stage's result depends on besides its own training section (the paths are per branch).
DAE_KEYS = ("dae.encoder", "dae.lora", "dae.audio_down_init", "dit.diffusion")
X0 = {"x0_cache": "precompute_latents.x0_cache"}
DIT = {"dit": "train_dit.checkpoint", "captions": "train_dit.captions"}
ONE = StageResources(cpus=1)  # one Ray task
TRAINER = StageResources(cpus=1, workers=1)  # a light driver and its Ray Train worker(s)


def training(name: str, declaration: str, *, reads: Mapping[str, str], writes: Mapping[str, Any],
             options: Callable[[StageContext], dict] | None = None, resources: StageResources = TRAINER, **row) -> Stage:
    """A training stage's row: its driver declaration behind the generic adapter."""
    adapter = TrainingAdapter(declaration, options) if options is not None else TrainingAdapter(declaration)
    return Stage(name, adapter, reads=reads, writes=writes, resources=resources, opens_run=True, uses_ray=True, **row)


ROWS: tuple[Stage, ...] = (
    Stage("shard", shard_stage, external={"audio": _inputs}, writes={"shards": _shards}, config_keys=("data",),
          uses_ray=True, resources=ONE, scales="data", description="raw audio -> WebDataset shards + manifest"),
    training("train_audioae", "spresso.train.audioae:TRAIN_AUDIOAE", reads={"shards": "shard.shards"},
             writes={"checkpoint": _audioae_final}, config_keys=("data", "audioae"), scales="audioae.train.scaling",
             description="Vocos-style AudioAE (DAC recipe)"),
    Stage("precompute_latents", precompute_latents_stage, reads={"shards": "shard.shards", "audioae": "train_audioae.checkpoint"},
          writes={"x0_cache": _x0}, config_keys=("audioae.cache", "audioae.latents_path"), opens_run=True, uses_ray=True,
          resources=TRAINER, scales="audioae.cache", description="x0 Zarr cache"),
    # Builds (or reuses) the caption-embedding cache first: the text side of every diffusion stage.
    training("train_dit", "spresso.train.dit:TRAIN_DIT", reads=X0, writes={"checkpoint": _dit_final, "captions": _captions},
             config_keys=("dit",), scales="dit.train.scaling", description="caption embeddings + text-to-audio MMDiT (EDM2)"),
    # Branch stages: one instance per operating point, outputs under dae/<point>/t<t> and qinco2/<point>.
    training("stage1", "spresso.train.stage1:TRAIN_STAGE1", reads={**X0, **DIT}, writes={"checkpoint": _stage_final("stage1")},
             config_keys=DAE_KEYS + ("dae.stage1",), point_keys=("t",), scales="dae.stage1.scaling",
             description="g_psi + f_phi + LoRA"),
    Stage("precompute_z", precompute_z_stage, reads={**X0, "stage1": "stage1.checkpoint"}, writes={"z_cache": _z_cache},
          config_keys=("dae.zcache",), point_keys=("t",), opens_run=True, uses_ray=True, resources=TRAINER,
          scales="dae.zcache", description="z Zarr cache"),
    training("qinco2", "spresso.train.qinco2:TRAIN_QINCO2", reads={"z": "precompute_z.z_cache"},
             writes={"checkpoint": _quantizer_final}, config_keys=("qinco2",), point_keys=("t", "K", "m"),
             discrete_only=True, resources=ONE, scales="qinco2.scaling", description="QINCo2 on frozen z (stage 2)",
             options=lambda ctx: {"vectors": ctx.inputs["z"].uri, "upstream": upstream_runs(ctx)}),
    training("stage3", "spresso.train.stage3:TRAIN_STAGE3",
             reads={**X0, **DIT, "stage1": "stage1.checkpoint", "z": "precompute_z.z_cache", "quantizer": "qinco2.checkpoint"},
             writes={"checkpoint": _stage_final("stage3")}, config_keys=DAE_KEYS + ("dae.stage3",),
             point_keys=("t", "K", "m"), discrete_only=True, scales="dae.stage3.scaling",
             description="f_phi + LoRA finetuned on z_q",
             # the DAG's outputs, not this point's folders: a reused stage 1 / z cache lives where its run wrote it
             options=lambda ctx: {"stage1": ctx.inputs["stage1"].uri, "z": ctx.inputs["z"].uri,
                                  "quantizer": ctx.inputs["quantizer"].uri}),
    Stage("export", export_stage,
          reads={"audioae": "train_audioae.checkpoint", "dit": "train_dit.checkpoint", "stage1": "stage1.checkpoint",
                 "quantizer": "qinco2.checkpoint?", "stage3": "stage3.checkpoint?"},
          writes={"bundle": "bundles/{point}"}, point_keys=("t", "K", "m", "continuous"), opens_run=True,
          resources=ONE, description="codec bundle"),
    Stage("evaluate", evaluate_stage,
          reads={"bundle": "export.bundle", "shards": "shard.shards", "audioae": "train_audioae.checkpoint"},
          writes={"report": "eval/{point}"}, config_keys=("eval",), opens_run=True, uses_ray=True,
          resources=ONE, scales="eval", description="FAD / KAD / CLAP / SI-SDR"),
)


def registry() -> dict[str, Stage]:
    """Every stage kind the pipeline knows, by name."""
    return {s.name: s for s in ROWS}
