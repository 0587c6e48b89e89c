"""The real stages: declarations (reads, writes, resources, key inputs) and thin adapters.

Each adapter maps a :class:`StageContext` onto the stage's library function, imported lazily
so declaring the DAG costs no torch import. Branch stages run their library function with
:func:`point_config` (the branch's t, K, M, m and its own output folders). Each library
function opens its own MLflow run as a child of the pipeline's run; the adapter hands back
that run's id (or, when the library reused an identical earlier run, that run's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spresso.config.layout import dae_dir as _dae_dir
from spresso.config.layout import point_config
from spresso.config.layout import qinco2_dir as _qinco2_dir
from spresso.config.pipeline import StageResources
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute as _abs
from spresso.pipeline.stage import Stage, StageContext, StageResult


def _run_that_wrote(ctx: StageContext, cfg, kind: str, output: str, location: str) -> str | None:
    """The run behind an adapter call: the child run it opened, else the finished run that had
    already written ``location`` (the stage's own cache reused it without a new run)."""
    from spresso.runtime.tracking import (
        TAG_STAGE,
        ensure_experiment,
        mlflow_client,
        tracking_uri,
    )

    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    exp = ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir)
    client = mlflow_client(uri)
    for flt in (f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.`{TAG_STAGE}` = '{kind}'",
                f"tags.`{TAG_STAGE}` = '{kind}' and attributes.status = 'FINISHED'"):
        for run in client.search_runs([exp], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=20):
            if _abs(run.data.tags.get(f"spresso.output.{output}.uri", "")) == _abs(location):
                return run.info.run_id
    return None


# ----------------------------------------------------------------------------- adapters
def shard_stage(cfg, ctx: StageContext) -> dict[str, Any]:
    from spresso.data.shard import shard

    inputs = [p for p in ctx.inputs["audio"].uri.split(",") if p]
    if not inputs:
        raise SpressoError("pipeline.inputs lists no audio folders to shard")
    result = shard(inputs, cfg, output=ctx.outputs["shards"], progress=False, track=False)
    ctx.run.log_metrics({"clips": result.clips, "hours": result.hours, "rejects": result.rejects})
    return {"shards": (result.out, result.digest)}


def train_audioae_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.train.audioae import train_audioae

    final = str(train_audioae(cfg, parent_run_id=ctx.parent_run_id, force=ctx.force))
    return StageResult({}, _run_that_wrote(ctx, cfg, "train_audioae", "checkpoint", final))


def precompute_latents_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.data.latents import precompute_latents

    # The DAG owns this output: a cache built from an older AudioAE is stale and is rebuilt.
    path = precompute_latents(cfg, ctx.inputs["audioae"].uri, ctx.inputs["shards"].uri,
                              parent_run_id=ctx.parent_run_id, progress=False, replace_stale=True)
    return StageResult({}, _run_that_wrote(ctx, cfg, "precompute_latents", "x0_cache", path))


def train_dit_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.train.dit import train_dit

    final = str(train_dit(cfg, parent_run_id=ctx.parent_run_id, force=ctx.force, progress=False))
    return StageResult({}, _run_that_wrote(ctx, cfg, "train_dit", "checkpoint", final))


def _upstream_runs(ctx: StageContext) -> dict[str, str]:
    return {k: a.run_id for k, a in ctx.inputs.items() if a.run_id}


def stage1_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.train.stage1 import train_stage1

    pcfg = point_config(cfg, ctx.point)
    final = str(train_stage1(pcfg, parent_run_id=ctx.parent_run_id, force=ctx.force, progress=False))
    return StageResult({}, _run_that_wrote(ctx, cfg, "train_stage1", "checkpoint", final))


def precompute_z_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.data.z_latents import precompute_z

    pcfg = point_config(cfg, ctx.point)
    path = precompute_z(pcfg, ctx.inputs["stage1"].uri, parent_run_id=ctx.parent_run_id, progress=False, replace_stale=True)
    return StageResult({}, _run_that_wrote(ctx, cfg, "precompute_z", "z_cache", path))


def qinco2_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.train.qinco2 import train_qinco2

    pcfg = point_config(cfg, ctx.point)
    # train_qinco2 takes no parent run: the engine adopts the fresh run as this stage's child.
    out = train_qinco2(pcfg, vectors=ctx.inputs["z"].uri, upstream=_upstream_runs(ctx))
    return StageResult({}, out["run_id"])


def stage3_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.train.stage3 import train_stage3

    pcfg = point_config(cfg, ctx.point)
    final = str(train_stage3(pcfg, parent_run_id=ctx.parent_run_id, force=ctx.force, progress=False))
    return StageResult({}, _run_that_wrote(ctx, cfg, "train_stage3", "checkpoint", final))


def export_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.train.export import export

    pcfg = point_config(cfg, ctx.point)
    stage = ctx.inputs["stage1" if ctx.point.continuous else "stage3"].uri
    quantizer = None if ctx.point.continuous else ctx.inputs["quantizer"].uri
    out = export(pcfg, ctx.outputs["bundle"], audioae=ctx.inputs["audioae"].uri, stage=stage, quantizer=quantizer,
                 continuous=ctx.point.continuous, parent_run_id=ctx.parent_run_id, m=ctx.point.m)
    return StageResult({}, out["run_id"])


def evaluate_stage(cfg, ctx: StageContext) -> StageResult:
    from spresso.eval.harness import run_evaluation

    # The point's bundle next to the AudioAE alone (its upper bound), on the shards' eval split.
    codecs = {ctx.point.name: f"spresso:{ctx.inputs['bundle'].uri},steps={cfg.eval.diffusion_steps}",
              "audioae": f"audioae:{ctx.inputs['audioae'].uri}"}
    _, run_id = run_evaluation(cfg, codecs, out_dir=ctx.outputs["report"], parent_run_id=ctx.parent_run_id,
                               progress=False)
    return StageResult({}, run_id)


# ----------------------------------------------------------------------------- declarations
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
        return cfg.path(f"{_dae_dir(cfg, point)}/{stage}/final")

    location.__name__ = f"_{stage}_final"
    return location


def _z_cache(cfg, point) -> str:
    return cfg.path(f"{_dae_dir(cfg, point)}/z.zarr")


def _quantizer_final(cfg, point) -> str:
    return cfg.path(f"{_qinco2_dir(cfg, point)}/final")


# What a DAE stage's result depends on besides its own training section (the paths are per branch).
_DAE_KEYS = ("dae.encoder", "dae.lora", "dae.audio_down_init", "dit.diffusion")


def _inputs(cfg, point) -> list[str]:
    return [_input_folder(cfg, p) for p in cfg.pipeline.inputs]


def _input_folder(cfg, entry: str) -> str:
    """A raw-audio input: URLs and absolute paths as given; a relative one against the workdir when
    it is there (the demo's synthesised ``corpus``), else against the current directory (a folder
    named on the command line, e.g. ``--set 'pipeline.inputs=[../shared/data/sfx-dev]'``)."""
    resolved = cfg.path(entry)  # absolute entries come back unchanged
    if "://" in resolved:
        return resolved
    if not Path(resolved).exists() and Path(entry).exists():
        return str(Path(entry).resolve())
    return str(Path(resolved).resolve())  # a missing one fails in the shard stage, under the workdir's name


def registry() -> dict[str, Stage]:
    """Every stage kind the pipeline knows, by name."""
    stages = [
        Stage("shard", shard_stage, external={"audio": _inputs}, writes={"shards": _shards},
              config_keys=("data",), uses_ray=True, resources=StageResources(cpus=1),
              description="raw audio -> WebDataset shards + manifest"),
        Stage("train_audioae", train_audioae_stage, reads={"shards": "shard.shards"},
              writes={"checkpoint": _audioae_final}, config_keys=("data", "audioae"), opens_run=True, uses_ray=True,
              resources=StageResources(cpus=1, workers=1), description="Vocos-style AudioAE (DAC recipe)"),
        Stage("precompute_latents", precompute_latents_stage,
              reads={"shards": "shard.shards", "audioae": "train_audioae.checkpoint"}, writes={"x0_cache": _x0},
              config_keys=("audioae.cache", "audioae.latents_path"), opens_run=True, uses_ray=True,
              resources=StageResources(cpus=1, workers=1), description="x0 Zarr cache"),
        # Builds (or reuses) the caption-embedding cache first: the text side of every diffusion stage.
        Stage("train_dit", train_dit_stage, reads={"x0_cache": "precompute_latents.x0_cache"},
              writes={"checkpoint": _dit_final, "captions": _captions}, config_keys=("dit",), opens_run=True,
              uses_ray=True, resources=StageResources(cpus=1, workers=1), description="caption embeddings + text-to-audio MMDiT (EDM2)"),
        # Branch stages: one instance per operating point, outputs under dae/<point>/t<t> and qinco2/<point>.
        Stage("stage1", stage1_stage,
              reads={"x0_cache": "precompute_latents.x0_cache", "dit": "train_dit.checkpoint", "captions": "train_dit.captions"},
              writes={"checkpoint": _stage_final("stage1")}, config_keys=_DAE_KEYS + ("dae.stage1",), point_keys=("t",),
              opens_run=True, uses_ray=True, resources=StageResources(cpus=1, workers=1),
              description="g_psi + f_phi + LoRA"),
        Stage("precompute_z", precompute_z_stage,
              reads={"x0_cache": "precompute_latents.x0_cache", "stage1": "stage1.checkpoint"},
              writes={"z_cache": _z_cache}, config_keys=("dae.zcache",), point_keys=("t",),
              opens_run=True, uses_ray=True, resources=StageResources(cpus=1, workers=1), description="z Zarr cache"),
        Stage("qinco2", qinco2_stage, reads={"z": "precompute_z.z_cache"},
              writes={"checkpoint": _quantizer_final}, config_keys=("qinco2",), point_keys=("t", "K", "m"),
              discrete_only=True, opens_run=True, uses_ray=True, resources=StageResources(cpus=1),
              description="QINCo2 on frozen z (stage 2)"),
        Stage("stage3", stage3_stage,
              reads={"x0_cache": "precompute_latents.x0_cache", "dit": "train_dit.checkpoint", "captions": "train_dit.captions",
                     "stage1": "stage1.checkpoint", "z": "precompute_z.z_cache", "quantizer": "qinco2.checkpoint"},
              writes={"checkpoint": _stage_final("stage3")}, config_keys=_DAE_KEYS + ("dae.stage3",),
              point_keys=("t", "K", "m"), discrete_only=True, opens_run=True, uses_ray=True,
              resources=StageResources(cpus=1, workers=1), description="f_phi + LoRA finetuned on z_q"),
        Stage("export", export_stage,
              reads={"audioae": "train_audioae.checkpoint", "dit": "train_dit.checkpoint", "stage1": "stage1.checkpoint",
                     "quantizer": "qinco2.checkpoint?", "stage3": "stage3.checkpoint?"},
              writes={"bundle": "bundles/{point}"}, point_keys=("t", "K", "m", "continuous"), opens_run=True,
              resources=StageResources(cpus=1), description="codec bundle"),
        Stage("evaluate", evaluate_stage,
              reads={"bundle": "export.bundle", "shards": "shard.shards", "audioae": "train_audioae.checkpoint"},
              writes={"report": "eval/{point}"}, config_keys=("eval",), opens_run=True, uses_ray=True,
              resources=StageResources(cpus=1), description="FAD / KAD / CLAP / SI-SDR"),
    ]
    return {s.name: s for s in stages}
