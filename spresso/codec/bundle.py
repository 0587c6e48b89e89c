"""The codec bundle: one self-contained folder with everything `spresso encode/decode` needs.

    <bundle>/bundle.json          format, format_version, model_id, mode, operating point, configs,
                                  normalisation stats, default sampler, file digests, lineage
    <bundle>/audioae.safetensors  the AudioAE (encoder + decoder)
    <bundle>/dae.safetensors      g_psi (``encoder.*``) + D_theta (``denoiser.*``): the DiT with LoRA
                                  merged into its base weights, its audio-down streams and f_phi
    <bundle>/quantizer.safetensors  QINCo2 (discrete bundles only)

Safetensors + JSON only: loading a bundle never unpickles anything. The model id is the SHA-256
of the weight files' digests and of every field of bundle.json that affects what the models
compute (configs, normalisation, operating point); lineage and paths are left out, so re-exporting
the same weights gives the same id. Streams carry the id's first 4 bytes (docs/bitstream.md).

Plain PyTorch/JSON (no MLflow): logging a bundle to MLflow lives in :mod:`spresso.train.export`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import SpressoError

FORMAT = "spresso-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
AUDIOAE_FILE, DAE_FILE, QUANTIZER_FILE = "audioae.safetensors", "dae.safetensors", "quantizer.safetensors"
# bundle.json fields that do not change the model's function: excluded from the model id.
_NOT_IDENTITY = ("model_id", "lineage", "files", "exported_with")


class BundleError(SpressoError):
    """A bundle that is missing, damaged, or from an incompatible format version (one line)."""


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def compute_model_id(manifest: dict, file_digests: dict[str, str]) -> str:
    identity = {k: v for k, v in manifest.items() if k not in _NOT_IDENTITY}
    blob = json.dumps({"manifest": identity, "files": dict(sorted(file_digests.items()))}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


# ---------------------------------------------------------------------------------------- export
def export_bundle(audioae_dir: str | Path, stage_dir: str | Path, qinco2_dir: str | Path | None = None,
                  out_dir: str | Path | None = None, *, lineage: dict | None = None, m: int | None = None) -> Path:
    """Build a bundle from trained checkpoints; returns ``out_dir``.

    ``stage_dir``: a stage-3 checkpoint (discrete, with ``qinco2_dir``) or a stage-1 checkpoint
    (continuous when ``qinco2_dir`` is None; discrete with a quantizer if given). ``m``: the default
    number of codebooks (None: the operating point's m from the stage config, clamped to the quantizer's M).
    """
    from ..models.audioae import load_audioae
    from ..models.conditioned_dit import merge_lora
    from ..quant import load_qinco2
    from ..train.checkpoint import read_checkpoint_config
    from ..train.stage1 import load_dae

    if out_dir is None:
        raise SpressoError("export_bundle needs an output folder")
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
        "t": t, "frame_rate": 100.0 / t, "sample_rate": audioae.sample_rate,
        "stage": meta.get("stage"),
        "text_dims": [int(v) for v in meta["text_dims"]],
        "configs": {
            "audioae": audioae.config.model_dump(mode="json"),
            "dit": meta.get("dit_config") or cfg["dit"],
            "encoder": cfg["dae"]["encoder"],
            "audio_down_init": cfg["dae"].get("audio_down_init", "audio"),
        },
        "normalizer": {"x0_mean": [float(v) for v in meta["x0_mean"]], "x0_std": [float(v) for v in meta["x0_std"]],
                       "sigma_data": float(dae.denoiser.sigma_data)},
        "sampler": {"steps": int(cfg["dae"].get("decode_steps", 32)), "solver": "dpmpp2m", "rho": 7.0,
                    "sigma_min": 0.002, "sigma_max": 80.0},
    }
    out.mkdir(parents=True, exist_ok=True)
    for stale in (AUDIOAE_FILE, DAE_FILE, QUANTIZER_FILE, MANIFEST):
        (out / stale).unlink(missing_ok=True)
    _save(audioae.state_dict(), out / AUDIOAE_FILE)
    _save(dae.state_dict(), out / DAE_FILE)
    files = [AUDIOAE_FILE, DAE_FILE]
    if qinco2_dir is not None:
        q = load_qinco2(qinco2_dir)
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
        _save(q.state_dict(), out / QUANTIZER_FILE)
        files.append(QUANTIZER_FILE)
    digests = {name: _sha256_file(out / name) for name in files}
    manifest["files"] = digests
    manifest["model_id"] = compute_model_id(manifest, digests)
    manifest["lineage"] = {"audioae": {"path": str(audioae_dir), "run_id": ae_info.get("meta", {}).get("mlflow_run_id")},
                           "stage": {"path": str(stage_dir), "run_id": meta.get("mlflow_run_id")},
                           **({"quantizer": {"path": str(qinco2_dir)}} if qinco2_dir else {}), **(lineage or {})}
    from .. import __version__

    manifest["exported_with"] = __version__
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


# ------------------------------------------------------------------------------------------ load
@dataclass
class BundleParts:
    """The loaded models of a bundle (eval mode, CPU) and its manifest."""

    manifest: dict
    audioae: torch.nn.Module
    dae: torch.nn.Module  # DiffusionAutoencoder, LoRA merged
    quantizer: torch.nn.Module | None
    normalizer: Any
    path: Path

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]


def read_manifest(path: str | Path) -> dict:
    root = Path(path)
    if not root.exists():
        raise BundleError(f"{root}: no such bundle")
    if not root.is_dir():
        raise BundleError(f"{root}: a bundle is a folder (with {MANIFEST}), got a file")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: not a codec bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{mpath}: corrupt bundle manifest (not JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{root}: not a codec bundle ({MANIFEST} has format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{root}: bundle format version {version} is not supported by this spresso (reads version {FORMAT_VERSION}); "
                          "re-export it with a matching spresso")
    return manifest


def _load_weights(root: Path, name: str, manifest: dict, verify: bool) -> dict[str, torch.Tensor]:
    path = root / name
    if not path.is_file():
        raise BundleError(f"{root}: bundle is missing {name}")
    want = manifest.get("files", {}).get(name)
    if verify and want is not None and _sha256_file(path) != want:
        raise BundleError(f"{path}: corrupt bundle file (digest does not match {MANIFEST})")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types on a damaged header
        raise BundleError(f"{path}: unreadable weights ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def build_dae(manifest: dict):
    """The merged diffusion autoencoder's architecture (no peft: LoRA is already folded in)."""
    from ..config.dae import LatentEncoderConfig
    from ..config.dit import DiTConfig
    from ..models.conditioned_dit import ConditionedDiT, DiffusionAutoencoder, add_audio_down
    from ..models.dit import build_denoiser
    from ..models.latent_encoder import build_latent_encoder

    cfgs = manifest["configs"]
    dit_cfg = DiTConfig.model_validate(cfgs["dit"])
    enc_cfg = LatentEncoderConfig.model_validate(cfgs["encoder"])
    token_dim, pooled_dim = manifest["text_dims"]
    t = int(manifest["t"])
    denoiser = build_denoiser(dit_cfg, int(token_dim), int(pooled_dim))
    add_audio_down(denoiser.net, "audio")  # weights are overwritten by the strict load below
    denoiser.net = ConditionedDiT(denoiser.net, enc_cfg.z_channels, t)
    encoder = build_latent_encoder(enc_cfg, t, dit_cfg.model.in_channels)
    return DiffusionAutoencoder(encoder, denoiser)


def load_bundle(path: str | Path, *, verify: bool = True) -> BundleParts:
    """Load every model of a bundle strictly; one-line :class:`BundleError` on any problem."""
    from ..config.audioae import AudioAEModelConfig
    from ..diffusion.normalize import LatentNormalizer
    from ..models.audioae import AudioAE
    from ..train.checkpoint import CheckpointError, load_strict

    root = Path(path)
    manifest = read_manifest(root)
    try:
        files = {n: manifest["files"][n] for n in manifest["files"]}
        if verify and compute_model_id(manifest, files) != manifest.get("model_id"):
            raise BundleError(f"{root}: corrupt bundle ({MANIFEST} does not match its model id)")
        ae = AudioAE.from_config(AudioAEModelConfig.model_validate(manifest["configs"]["audioae"]))
        load_strict(ae, _load_weights(root, AUDIOAE_FILE, manifest, verify), what=f"{root}/{AUDIOAE_FILE}")
        dae = build_dae(manifest)
        load_strict(dae, _load_weights(root, DAE_FILE, manifest, verify), what=f"{root}/{DAE_FILE}")
        quantizer = None
        if manifest["mode"] == "discrete":
            from ..quant.qinco2 import QINCo2, QINCo2Spec

            quantizer = QINCo2(QINCo2Spec(**manifest["configs"]["quantizer"]))
            load_strict(quantizer, _load_weights(root, QUANTIZER_FILE, manifest, verify), what=f"{root}/{QUANTIZER_FILE}")
            quantizer.eval()
        n = manifest["normalizer"]
        normalizer = LatentNormalizer(n["x0_mean"], n["x0_std"], n["sigma_data"])
    except BundleError:
        raise
    except CheckpointError as err:
        raise BundleError(f"{root}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{root}: corrupt bundle manifest ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return BundleParts(manifest, ae.eval(), dae.eval(), quantizer, normalizer, root)
