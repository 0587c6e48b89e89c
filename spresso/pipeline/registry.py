"""The real stages: declarations (reads, writes, resources, key inputs) and thin adapters.

Each adapter maps a :class:`StageContext` onto the stage's library function, imported lazily
so declaring the DAG costs no torch import. Stages whose library function is not built yet are
declared with a ``fn`` naming an adapter of this module that does not exist yet: the DAG, the
dry run and the picture include them (marked "not built"), and running one fails that stage
only, with a one-line reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.pipeline import StageResources
from ..errors import SpressoError
from .stage import Stage, StageContext, StageResult


def _abs(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def _run_that_wrote(ctx: StageContext, cfg, kind: str, output: str, location: str) -> str | None:
    """The run behind an adapter call: the child run it opened, else the finished run that had
    already written ``location`` (the stage's own cache reused it without a new run)."""
    from ..runtime.tracking import TAG_STAGE, _client, ensure_experiment, tracking_uri

    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    exp = ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir)
    client = _client(uri)
    for flt in (f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.`{TAG_STAGE}` = '{kind}'",
                f"tags.`{TAG_STAGE}` = '{kind}' and attributes.status = 'FINISHED'"):
        for run in client.search_runs([exp], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=20):
            if _abs(run.data.tags.get(f"spresso.output.{output}.uri", "")) == _abs(location):
                return run.info.run_id
    return None


# ----------------------------------------------------------------------------- adapters
def shard_stage(cfg, ctx: StageContext) -> dict[str, Any]:
    from ..data.shard import shard

    inputs = [p for p in ctx.inputs["audio"].uri.split(",") if p]
    if not inputs:
        raise SpressoError("pipeline.inputs lists no audio folders to shard")
    result = shard(inputs, cfg, output=ctx.outputs["shards"], progress=False, track=False)
    ctx.run.log_metrics({"clips": result.clips, "hours": result.hours, "rejects": result.rejects})
    return {"shards": (result.out, result.digest)}


def train_audioae_stage(cfg, ctx: StageContext) -> StageResult:
    from ..train.audioae import train_audioae

    final = str(train_audioae(cfg, parent_run_id=ctx.parent_run_id, force=ctx.force))
    return StageResult({}, _run_that_wrote(ctx, cfg, "train_audioae", "checkpoint", final))


def precompute_latents_stage(cfg, ctx: StageContext) -> StageResult:
    from ..data.latents import precompute_latents

    path = precompute_latents(cfg, ctx.inputs["audioae"].uri, ctx.inputs["shards"].uri,
                              parent_run_id=ctx.parent_run_id, progress=False)
    return StageResult({}, _run_that_wrote(ctx, cfg, "precompute_latents", "x0_cache", path))


def train_dit_stage(cfg, ctx: StageContext) -> StageResult:
    from ..train.dit import train_dit

    final = str(train_dit(cfg, parent_run_id=ctx.parent_run_id, force=ctx.force, progress=False))
    return StageResult({}, _run_that_wrote(ctx, cfg, "train_dit", "checkpoint", final))


def qinco2_stage(cfg, ctx: StageContext) -> StageResult:
    from ..train.qinco2 import train_qinco2

    # The branch's codebook size; the stage trains qinco2.M codebooks (>= the point's m).
    q = cfg.qinco2.model_copy(update={"K": ctx.point.K, "M": max(cfg.qinco2.M, ctx.point.m),
                                      "checkpoint_dir": ctx.outputs["checkpoint"].rsplit("/final", 1)[0]})
    bcfg = cfg.model_copy(update={"qinco2": q})
    out = train_qinco2(bcfg, vectors=ctx.inputs["z"].uri,
                       upstream={k: a.run_id for k, a in ctx.inputs.items() if a.run_id})
    return StageResult({}, out["run_id"])


# ----------------------------------------------------------------------------- declarations
def _shards(cfg, point) -> str:
    return cfg.path(cfg.data.shards_dir)


def _audioae_final(cfg, point) -> str:
    return cfg.path(cfg.audioae.checkpoint_dir) + "/final"


def _x0(cfg, point) -> str:
    return cfg.path(cfg.audioae.latents_path)


def _dit_final(cfg, point) -> str:
    return cfg.path(cfg.dit.checkpoint_dir) + "/final"


def _inputs(cfg, point) -> list[str]:
    return [str(Path(cfg.path(p)).resolve()) if "://" not in cfg.path(p) else cfg.path(p) for p in cfg.pipeline.inputs]


def registry() -> dict[str, Stage]:
    """Every stage kind the pipeline knows, by name."""
    here = __name__
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
        Stage("train_dit", train_dit_stage, reads={"x0_cache": "precompute_latents.x0_cache"},
              writes={"checkpoint": _dit_final}, config_keys=("dit",), opens_run=True, uses_ray=True,
              resources=StageResources(cpus=1, workers=1), description="text-to-audio MMDiT (EDM2)"),
        # Branch stages: one instance per operating point.
        Stage("stage1", f"{here}:stage1_stage", reads={"x0_cache": "precompute_latents.x0_cache", "dit": "train_dit.checkpoint"},
              writes={"checkpoint": "dae/{point}/stage1/final"}, config_keys=("dae",), point_keys=("t",),
              opens_run=True, uses_ray=True, resources=StageResources(cpus=1, workers=1),
              description="g_psi + f_phi + LoRA"),
        Stage("precompute_z", f"{here}:precompute_z_stage",
              reads={"x0_cache": "precompute_latents.x0_cache", "stage1": "stage1.checkpoint"},
              writes={"z_cache": "dae/{point}/z.zarr"}, config_keys=("dae",), point_keys=("t",),
              opens_run=True, uses_ray=True, resources=StageResources(cpus=1, workers=1), description="z Zarr cache"),
        Stage("qinco2", qinco2_stage, reads={"z": "precompute_z.z_cache"},
              writes={"checkpoint": "qinco2/{point}/final"}, config_keys=("qinco2",), point_keys=("t", "K", "m"),
              discrete_only=True, opens_run=True, uses_ray=True, resources=StageResources(cpus=1),
              description="QINCo2 on frozen z (stage 2)"),
        Stage("stage3", f"{here}:stage3_stage",
              reads={"x0_cache": "precompute_latents.x0_cache", "stage1": "stage1.checkpoint",
                     "quantizer": "qinco2.checkpoint"},
              writes={"checkpoint": "dae/{point}/stage3/final"}, config_keys=("dae",), point_keys=("t", "K", "m"),
              discrete_only=True, opens_run=True, uses_ray=True, resources=StageResources(cpus=1, workers=1),
              description="f_phi + LoRA finetuned on z_q"),
        Stage("export", f"{here}:export_stage",
              reads={"audioae": "train_audioae.checkpoint", "dit": "train_dit.checkpoint", "stage1": "stage1.checkpoint",
                     "quantizer": "qinco2.checkpoint?", "stage3": "stage3.checkpoint?"},
              writes={"bundle": "bundles/{point}"}, point_keys=("t", "K", "m", "continuous"),
              resources=StageResources(cpus=1), description="codec bundle"),
        Stage("evaluate", f"{here}:evaluate_stage", reads={"bundle": "export.bundle", "shards": "shard.shards"},
              writes={"report": "eval/{point}"}, config_keys=("eval",), uses_ray=True,
              resources=StageResources(cpus=1), description="FAD / KAD / CLAP / SI-SDR"),
    ]
    return {s.name: s for s in stages}
