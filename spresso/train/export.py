"""`spresso export`: trained checkpoints -> codec bundle, logged to MLflow and optionally registered.

The bundle (:mod:`spresso.codec.bundle`) is logged as the artifact folder ``bundle/`` of an
``export`` run whose tags link it to every upstream run (``spresso.upstream.<stage>``: read from
the checkpoints' meta ``mlflow_run_id``, else from the run whose ``spresso.output.checkpoint.uri``
tag names the checkpoint folder). ``register=NAME`` creates a model version of registered model
NAME from that artifact and points ``alias`` (default "champion") at it, so
``spresso.load("models:/NAME@champion")`` finds it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from spresso import __version__
from spresso.config import SpressoConfig
from spresso.config.dit import RHO, SIGMA_MAX, SIGMA_MIN
from spresso.config.layout import quantizer_dir, stage_output
from spresso.core import storage
from spresso.core.bundle_io import (
    AUDIOAE_FILE,
    DAE_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    QUANTIZER_FILE,
    compute_model_id,
    read_bundle_manifest,
    save_tensors,
    sha256_file,
)
from spresso.core.checkpoint import has_checkpoint, read_checkpoint_config
from spresso.core.digest import digest_tree
from spresso.core.errors import SpressoError
from spresso.core.rates import frame_rate
from spresso.core.storage import absolute as _abs
from spresso.diffusion.checkpoints import load_dae
from spresso.models.audioae import load_audioae
from spresso.models.conditioned_dit import merge_lora
from spresso.quant import load_quantizer
from spresso.runtime import stage_run, tracking_uri
from spresso.runtime.tracking import BUNDLE_ARTIFACT, mlflow_client

log = logging.getLogger(__name__)
STAGE = "export"
ARTIFACT = BUNDLE_ARTIFACT




def upstream_run(uri: str, checkpoint_dir: str | Path | None, meta_run_id: str | None = None) -> str | None:
    """The MLflow run that produced a checkpoint folder (its meta's run id, or the run whose output tag names it)."""
    if meta_run_id:
        return meta_run_id
    if checkpoint_dir is None:
        return None
    client = mlflow_client(uri)
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
    ae = audioae or _abs(cfg.path(cfg.audioae.checkpoint_dir)) + "/final"
    if stage is None:
        s3 = stage_output(cfg, "stage3")
        stage = stage_output(cfg, "stage1") if continuous or not has_checkpoint(s3) else s3
        if not continuous and not has_checkpoint(s3):
            raise SpressoError(f"no stage-3 checkpoint at {s3}: train it, or export a continuous bundle (--continuous)")
    if not continuous and quantizer is None:
        quantizer = quantizer_dir(cfg)
    for what, path in (("AudioAE", ae), ("stage", stage), ("quantizer", quantizer)):
        if path is not None and not has_checkpoint(path):
            raise SpressoError(f"no {what} checkpoint at {path}")
    return ae, stage, None if continuous else quantizer


def export(cfg: SpressoConfig, out_dir: str | Path, *, audioae: str | None = None, stage: str | None = None,
           quantizer: str | None = None, continuous: bool = False, register: str | None = None, alias: str = "champion",
           parent_run_id: str | None = None, m: int | None = None) -> dict:
    """Export a bundle, log it to MLflow (lineage tags) and optionally register it; returns a summary."""
    ae, stage_dir, qdir = resolve_inputs(cfg, audioae, stage, quantizer, continuous)
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    metas = {k: read_checkpoint_config(p).get("meta", {}) for k, p in (("audioae", ae), ("stage", stage_dir)) if p}
    stage_kind = metas["stage"].get("stage", "stage1")
    upstream = {"train_audioae": upstream_run(uri, ae, metas["audioae"].get("mlflow_run_id")),
                f"train_{stage_kind}": upstream_run(uri, stage_dir, metas["stage"].get("mlflow_run_id")),
                "train_qinco2": upstream_run(uri, qdir) if qdir else None}
    upstream = {k: v for k, v in upstream.items() if v}
    lineage = {"upstream_runs": upstream}
    with storage.staged(out_dir, replace=True) as out:
        export_bundle(ae, stage_dir, qdir, out, lineage=lineage, m=m)
        manifest = read_bundle_manifest(out)
        model_id = manifest["model_id"]
        with stage_run(STAGE, cfg, key=model_id, upstream=upstream, parent_run_id=parent_run_id,
                   extra_tags={"spresso.model_id": model_id, "spresso.bundle.mode": manifest["mode"],
                                   "spresso.dae.t": str(manifest["t"])}) as run:
            for name, path in (("audioae", ae), ("stage", stage_dir), ("quantizer", qdir)):
                if path:
                    run.log_input(name, _abs(path), digest_tree(path), context="model")
            run.client.log_artifacts(run.run_id, str(out), ARTIFACT)
            run.log_output("bundle", _abs(out_dir), model_id)
            version = None
            if register:
                version = register_bundle(uri, register, run.run_id, model_id, alias)
    log.info("exported %s (model id %s) in run %s%s", out_dir, model_id[:16], run.run_id,
             f", registered {register} v{version} @{alias}" if version else "")
    return {"bundle": _abs(out_dir), "model_id": model_id, "run_id": run.run_id, "registered": register, "version": version,
            "alias": alias if register else None, "upstream": upstream}


def register_bundle(uri: str, name: str, run_id: str, model_id: str, alias: str | None = "champion") -> str:
    """A new version of registered model ``name`` from the run's ``bundle/`` artifact; ``alias`` points at it."""
    client = mlflow_client(uri)
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


def export_bundle(audioae_dir: str | Path, stage_dir: str | Path, qinco2_dir: str | Path | None = None,
                  out_dir: str | Path | None = None, *, lineage: dict | None = None, m: int | None = None) -> Path:
    """Build a bundle from trained checkpoints; returns ``out_dir``.

    ``stage_dir``: a stage-3 checkpoint (discrete, with ``qinco2_dir``) or a stage-1 checkpoint
    (continuous when ``qinco2_dir`` is None; discrete with a quantizer if given). ``m``: the default
    number of codebooks (None: the operating point's m from the stage config, clamped to the quantizer's M).
    """
    if out_dir is None:
        raise SpressoError("export_bundle needs an output folder")
    if storage.is_url(out_dir):  # built in a local folder, then published whole
        with storage.staged(out_dir, replace=True) as local:
            export_bundle(audioae_dir, stage_dir, qinco2_dir, local, lineage=lineage, m=m)
        return out_dir
    out = Path(out_dir)
    audioae = load_audioae(audioae_dir)
    ae_info = read_checkpoint_config(audioae_dir, kind="audioae")
    dae, info = load_dae(stage_dir)
    meta = info.get("meta", {})
    cfg = info["config"]
    t = int(meta["t"])
    if dae.net.dit.config.in_channels != audioae.latent_dim:
        raise SpressoError(f"the DiT works on {dae.net.dit.config.in_channels} latent channels, the AudioAE has {audioae.latent_dim}")
    merge_lora(dae)  # W + alpha/r B A: plain layers, names of a DiT built without peft
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "mode": "continuous" if qinco2_dir is None else "discrete",
        "t": t, "frame_rate": frame_rate(t), "sample_rate": audioae.sample_rate,
        "stage": meta.get("stage"),
        "text_dims": [int(v) for v in meta["text_dims"]],
        "configs": {
            "audioae": audioae.config.model_dump(mode="json"),
            # The DiT as it computes (model, diffusion, sampler, text encoder), not how it was trained:
            # the model id then ignores run knobs such as the Ray Train scaling.
            "dit": {k: v for k, v in (meta.get("dit_config") or cfg["dit"]).items() if k != "train"},
            "encoder": cfg["dae"]["encoder"],
            "audio_down_init": cfg["dae"].get("audio_down_init", "audio"),
        },
        "normalizer": {"x0_mean": [float(v) for v in meta["x0_mean"]], "x0_std": [float(v) for v in meta["x0_std"]],
                       "sigma_data": float(dae.denoiser.sigma_data)},
        "sampler": {"steps": int(cfg["dae"].get("decode_steps", 32)), "solver": cfg["dae"].get("decode_solver", "dpmpp2m"), "rho": RHO,
                    "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX},
    }
    out.mkdir(parents=True, exist_ok=True)
    for stale in (AUDIOAE_FILE, DAE_FILE, QUANTIZER_FILE, MANIFEST):
        (out / stale).unlink(missing_ok=True)
    save_tensors(audioae.state_dict(), out / AUDIOAE_FILE)
    save_tensors(dae.state_dict(), out / DAE_FILE)
    files = [AUDIOAE_FILE, DAE_FILE]
    if qinco2_dir is not None:
        q = load_quantizer(qinco2_dir)  # QINCo2, or the RQ the qinco2 stage shipped instead
        point_m = m
        if point_m is None:
            points = {int(p["t"]): p for p in cfg["dae"].get("points", [])}
            point_m = int(points[t]["m"]) if t in points else q.M
        if not 1 <= point_m <= q.M:
            raise SpressoError(f"default codebooks m={point_m} outside 1..{q.M} (the quantizer's M)")
        if q.spec.d != dae.encoder.z_channels:
            raise SpressoError(f"the quantizer codes {q.spec.d}-dim vectors, the latent encoder makes {dae.encoder.z_channels}")
        manifest["configs"]["quantizer"] = q.spec.to_dict()
        manifest.update(K=int(q.spec.K), M=int(q.M), m=int(point_m))
        save_tensors(q.state_dict(), out / QUANTIZER_FILE)
        files.append(QUANTIZER_FILE)
    digests = {name: sha256_file(out / name) for name in files}
    manifest["files"] = digests
    manifest["model_id"] = compute_model_id(manifest, digests)
    manifest["lineage"] = {"audioae": {"path": str(audioae_dir), "run_id": ae_info.get("meta", {}).get("mlflow_run_id")},
                           "stage": {"path": str(stage_dir), "run_id": meta.get("mlflow_run_id")},
                           **({"quantizer": {"path": str(qinco2_dir)}} if qinco2_dir else {}), **(lineage or {})}
    manifest["exported_with"] = __version__
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


