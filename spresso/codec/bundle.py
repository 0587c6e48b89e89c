"""The codec bundle's models: build them from a bundle's files and load their weights strictly.

The files themselves (manifest, weight files, digests, model id) are :mod:`spresso.core.bundle_io`;
writing a bundle from training checkpoints is :mod:`spresso.train.export`. Plain PyTorch (no MLflow).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from spresso.config.audioae import AudioAEModelConfig
from spresso.config.dae import LatentEncoderConfig
from spresso.config.dit import DiTConfig
from spresso.core.bundle_io import (
    AUDIOAE_FILE,
    DAE_FILE,
    MANIFEST,
    QUANTIZER_FILE,
    compute_model_id,
    load_bundle_weights,
    read_bundle_manifest,
)
from spresso.core.checkpoint import CheckpointError, load_strict
from spresso.core.errors import BundleError
from spresso.core.storage import is_url
from spresso.diffusion.autoencoder import DiffusionAutoencoder, build_denoiser
from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.audioae import AudioAE
from spresso.models.conditioned_dit import ConditionedDiT, add_audio_down
from spresso.models.latent_encoder import build_latent_encoder
from spresso.quant.checkpoint import build_quantizer


@dataclass
class BundleParts:
    """The loaded models of a bundle (eval mode, CPU) and its manifest."""

    manifest: dict
    audioae: torch.nn.Module
    dae: DiffusionAutoencoder  # LoRA merged
    quantizer: torch.nn.Module | None  # QINCo2 or ResidualQuantizer (quantizer_kind says which)
    normalizer: LatentNormalizer
    path: Path

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]


def quantizer_kind(manifest: dict) -> str | None:
    """The bundle's quantizer: ``qinco2`` (also every format-1 bundle) or ``rq``; None for a continuous bundle."""
    if manifest.get("mode") != "discrete":
        return None
    return manifest["configs"]["quantizer"].get("kind", "qinco2")


def dae_from_manifest(manifest: dict) -> DiffusionAutoencoder:
    """The merged diffusion autoencoder's architecture (no peft: LoRA is already folded in)."""
    cfgs = manifest["configs"]
    dit_cfg = DiTConfig.model_validate(cfgs["dit"])
    enc_cfg = LatentEncoderConfig.stored(cfgs["encoder"])
    token_dim, pooled_dim = manifest["text_dims"]
    t = int(manifest["t"])
    denoiser = build_denoiser(dit_cfg, int(token_dim), int(pooled_dim))
    add_audio_down(denoiser.net, "audio")  # weights are overwritten by the strict load below
    denoiser.net = ConditionedDiT(denoiser.net, enc_cfg.z_channels, t, enc_cfg.z_key_bias(t, denoiser.net.patch))
    encoder = build_latent_encoder(enc_cfg, t, dit_cfg.model.in_channels)
    return DiffusionAutoencoder(encoder, denoiser, enc_cfg.mask_padding)


def load_bundle(path: str | Path, *, verify: bool = True) -> BundleParts:
    """Load every model of a bundle strictly; one-line :class:`BundleError` on any problem."""
    root = path if is_url(path) else Path(path)
    manifest = read_bundle_manifest(root)
    try:
        files = {n: manifest["files"][n] for n in manifest["files"]}
        if verify and compute_model_id(manifest, files) != manifest.get("model_id"):
            raise BundleError(f"{root}: corrupt bundle ({MANIFEST} does not match its model id)")
        ae = AudioAE.from_config(AudioAEModelConfig.model_validate(manifest["configs"]["audioae"]))
        load_strict(ae, load_bundle_weights(root, AUDIOAE_FILE, manifest, verify), what=f"{root}/{AUDIOAE_FILE}")
        dae = dae_from_manifest(manifest)
        load_strict(dae, load_bundle_weights(root, DAE_FILE, manifest, verify), what=f"{root}/{DAE_FILE}")
        quantizer = None
        if manifest["mode"] == "discrete":
            quantizer = build_quantizer(manifest["configs"]["quantizer"])
            load_strict(quantizer, load_bundle_weights(root, QUANTIZER_FILE, manifest, verify), what=f"{root}/{QUANTIZER_FILE}")
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
