"""`spresso export`: trained checkpoints -> codec bundle, logged to MLflow and optionally registered.

The bundle (:mod:`spresso.codec.bundle`) is logged as the artifact folder ``bundle/`` of an
``export`` run whose tags link it to every upstream run (``spresso.upstream.<stage>``: read from
the checkpoints' meta ``mlflow_run_id``, else from the run whose ``spresso.output.checkpoint.uri``
tag names the checkpoint folder). ``register=NAME`` creates a model version of registered model
NAME from that artifact and points ``alias`` (default "champion") at it, so
``spresso.load("models:/NAME@champion")`` finds it.
"""
from __future__ import annotations

from ..runtime.paths import absolute as _abs

import logging
import tempfile
from pathlib import Path

from ..config import SpressoConfig
from ..errors import SpressoError

log = logging.getLogger(__name__)
STAGE = "export"
ARTIFACT = "bundle"




def upstream_run(uri: str, checkpoint_dir: str | Path | None, meta_run_id: str | None = None) -> str | None:
    """The MLflow run that produced a checkpoint folder (its meta's run id, or the run whose output tag names it)."""
    if meta_run_id:
        return meta_run_id
    if checkpoint_dir is None:
        return None
    from ..runtime.tracking import _client

    client = _client(uri)
    want = _abs(checkpoint_dir)
    try:
        exps = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(exps, filter_string=f"tags.`spresso.output.checkpoint.uri` = '{want}'",
                                      order_by=["attributes.start_time DESC"], max_results=1):
            return run.info.run_id
    except Exception as err:  # lineage is best effort: a store without those runs must not block exporting
        log.debug("no upstream run for %s: %s", want, err)
    return None


def resolve_inputs(cfg: SpressoConfig, audioae: str | None = None, stage: str | None = None, quantizer: str | None = None,
                   continuous: bool = False) -> tuple[str, str, str | None]:
    """(audioae dir, stage dir, quantizer dir or None) from explicit paths or the config's stage outputs."""
    from .stage1 import stage_output
    from .stage3 import quantizer_dir

    ae = audioae or _abs(cfg.path(cfg.audioae.checkpoint_dir)) + "/final"
    if stage is None:
        s3 = stage_output(cfg, "stage3")
        stage = str(stage_output(cfg, "stage1") if continuous or not s3.is_dir() else s3)
        if not continuous and not s3.is_dir():
            raise SpressoError(f"no stage-3 checkpoint at {s3}: train it, or export a continuous bundle (--continuous)")
    if not continuous and quantizer is None:
        quantizer = quantizer_dir(cfg)
    for what, path in (("AudioAE", ae), ("stage", stage), ("quantizer", quantizer)):
        if path is not None and not (Path(path) / "config.json").is_file():
            raise SpressoError(f"no {what} checkpoint at {path}")
    return ae, stage, None if continuous else quantizer


def export(cfg: SpressoConfig, out_dir: str | Path, *, audioae: str | None = None, stage: str | None = None,
           quantizer: str | None = None, continuous: bool = False, register: str | None = None, alias: str = "champion",
           parent_run_id: str | None = None, m: int | None = None) -> dict:
    """Export a bundle, log it to MLflow (lineage tags) and optionally register it; returns a summary."""
    from ..codec.bundle import export_bundle, read_manifest
    from ..runtime import digest_tree, stage_run, tracking_uri
    from .checkpoint import read_checkpoint_config

    ae, stage_dir, qdir = resolve_inputs(cfg, audioae, stage, quantizer, continuous)
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    metas = {k: read_checkpoint_config(p).get("meta", {}) for k, p in (("audioae", ae), ("stage", stage_dir)) if p}
    stage_kind = metas["stage"].get("stage", "stage1")
    upstream = {"train_audioae": upstream_run(uri, ae, metas["audioae"].get("mlflow_run_id")),
                f"train_{stage_kind}": upstream_run(uri, stage_dir, metas["stage"].get("mlflow_run_id")),
                "train_qinco2": upstream_run(uri, qdir) if qdir else None}
    upstream = {k: v for k, v in upstream.items() if v}
    lineage = {"upstream_runs": upstream}
    out = export_bundle(ae, stage_dir, qdir, out_dir, lineage=lineage, m=m)
    manifest = read_manifest(out)
    model_id = manifest["model_id"]
    with stage_run(STAGE, cfg, key=model_id, upstream=upstream, parent_run_id=parent_run_id,
                   extra_tags={"spresso.model_id": model_id, "spresso.bundle.mode": manifest["mode"],
                               "spresso.dae.t": str(manifest["t"])}) as run:
        for name, path in (("audioae", ae), ("stage", stage_dir), ("quantizer", qdir)):
            if path:
                run.log_input(name, _abs(path), digest_tree(path), context="model")
        run.client.log_artifacts(run.run_id, str(out), ARTIFACT)
        run.log_output("bundle", _abs(out), model_id)
        version = None
        if register:
            version = register_bundle(uri, register, run.run_id, model_id, alias)
    log.info("exported %s (model id %s) in run %s%s", out, model_id[:16], run.run_id,
             f", registered {register} v{version} @{alias}" if version else "")
    return {"bundle": str(out), "model_id": model_id, "run_id": run.run_id, "registered": register, "version": version,
            "alias": alias if register else None, "upstream": upstream}


def register_bundle(uri: str, name: str, run_id: str, model_id: str, alias: str | None = "champion") -> str:
    """A new version of registered model ``name`` from the run's ``bundle/`` artifact; ``alias`` points at it."""
    from ..runtime.tracking import _client

    client = _client(uri)
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, tags={"spresso.kind": "codec-bundle"})
    run = client.get_run(run_id)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/{ARTIFACT}", run_id=run_id,
                                     tags={"spresso.model_id": model_id}, description=f"spresso codec bundle {model_id[:16]}")
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def download_bundle(uri: str, dst: str | Path | None = None) -> str:
    """A local copy of the bundle behind ``models:/NAME@alias``, ``models:/NAME/<version>`` or ``runs:/<id>/<path>``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    dst = str(dst or tempfile.mkdtemp(prefix="spresso-bundle-"))
    try:
        if uri.startswith("models:/"):
            ref = uri[len("models:/"):].strip("/")
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            elif "/" in ref:
                name, version = ref.rsplit("/", 1)
                mv = client.get_model_version(name, version)
            else:
                raise SpressoError(f"{uri}: give a version or an alias (models:/NAME/3 or models:/NAME@champion)")
            if mv.run_id:
                return mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=ARTIFACT, dst_path=dst)
            return mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=dst)
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst)
    except SpressoError:
        raise
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpressoError(f"{uri}: cannot fetch the bundle from MLflow ({msg[:300]})") from None
