"""Diffusion checkpoints: a pretrained DiT (EMA denoiser), a fresh DAE around one, or a trained DAE (strict)."""
from __future__ import annotations

from pathlib import Path

import torch

from spresso.config import SpressoConfig, config_from_dict
from spresso.config.dae import LatentEncoderConfig
from spresso.config.dit import DiTConfig
from spresso.core.checkpoint import (
    CheckpointError,
    has_checkpoint,
    load_strict,
    load_weights,
    read_checkpoint_config,
)
from spresso.core.errors import SpressoError
from spresso.diffusion.autoencoder import (
    DiffusionAutoencoder,
    build_dae,
    build_denoiser,
)
from spresso.diffusion.edm2 import Denoiser
from spresso.models.dit import CHECKPOINT_KIND as DIT_CHECKPOINT_KIND

CHECKPOINT_KIND = "dae"


def load_dit(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Denoiser, dict]:
    """The EMA denoiser stored in a DiT checkpoint (strict), and the checkpoint's info.

    ``info["meta"]`` holds what sampling needs besides weights: ``x0_mean``/``x0_std``
    (normalisation), ``text_encoder`` (which embeddings it was trained on), ``frames``.
    """
    info = read_checkpoint_config(checkpoint_dir, kind=DIT_CHECKPOINT_KIND)
    meta = info.get("meta", {})
    try:
        cfg = DiTConfig.model_validate(info["config"]["dit"])
        token_dim, pooled_dim = int(meta["text_encoder"]["token_dim"]), int(meta["text_encoder"]["pooled_dim"])
    except Exception as err:
        raise CheckpointError(f"{checkpoint_dir}: checkpoint has no valid dit config/meta ({str(err).splitlines()[0]})") from None
    denoiser = build_denoiser(cfg, token_dim, pooled_dim)
    load_strict(denoiser, load_weights(checkpoint_dir), what=f"dit checkpoint {checkpoint_dir}")
    return denoiser.to(map_location).eval(), info


def dae_from_dit(cfg: SpressoConfig, dit_dir: str | Path, map_location="cpu") -> tuple[DiffusionAutoencoder, dict]:
    """A fresh diffusion autoencoder around the pretrained DiT at ``dit_dir``; and the DiT's checkpoint info."""
    if not has_checkpoint(dit_dir):
        raise SpressoError(f"no DiT checkpoint at {dit_dir}: run `spresso train dit` first (or set dae.dit_dir)")
    denoiser, info = load_dit(dit_dir, map_location=map_location)
    d = cfg.dae
    model = build_dae(denoiser.train(), d.encoder, d.t, d.lora, d.audio_down_init)
    return model.to(map_location), info


def load_dae(checkpoint_dir: str | Path, map_location="cpu") -> tuple[DiffusionAutoencoder, dict]:
    """A stage-1 or stage-3 checkpoint (strict), built from its own stored config; and its info."""
    info = read_checkpoint_config(checkpoint_dir, kind=CHECKPOINT_KIND)
    meta = info.get("meta", {})
    try:
        cfg = config_from_dict(info["config"], f"{checkpoint_dir}/config.json")
        token_dim, pooled_dim = (int(v) for v in meta["text_dims"])
        t = int(meta["t"])
    except Exception as err:
        raise CheckpointError(f"{checkpoint_dir}: not a valid dae checkpoint ({str(err).splitlines()[0]})") from None
    cfg.dae.t = t
    cfg.dae.encoder = LatentEncoderConfig.stored(info["config"].get("dae", {}).get("encoder", {}))
    # The DiT as it was pretrained (its own stored settings), not whatever the current preset says.
    dit_cfg = DiTConfig.model_validate(meta["dit_config"]) if meta.get("dit_config") else cfg.dit
    denoiser = build_denoiser(dit_cfg, token_dim, pooled_dim)
    model = build_dae(denoiser, cfg.dae.encoder, t, cfg.dae.lora, cfg.dae.audio_down_init)
    load_strict(model, load_weights(checkpoint_dir), what=f"dae checkpoint {checkpoint_dir}")
    return model.to(map_location).eval(), info
