"""Diffusion-autoencoder checkpoints: a fresh one around a pretrained DiT, or a trained one (strict)."""
from __future__ import annotations

from pathlib import Path

from spresso.config import SpressoConfig, config_from_dict
from spresso.config.dit import DiTConfig
from spresso.core.checkpoint import load_strict, load_weights
from spresso.core.errors import SpressoError
from spresso.models.conditioned_dit import DiffusionAutoencoder, build_dae
from spresso.models.dit import build_denoiser, load_dit

CHECKPOINT_KIND = "dae"


def dae_from_dit(cfg: SpressoConfig, dit_dir: str | Path, map_location="cpu") -> tuple[DiffusionAutoencoder, dict]:
    """A fresh diffusion autoencoder around the pretrained DiT at ``dit_dir``; and the DiT's checkpoint info."""

    if not Path(dit_dir).is_dir():
        raise SpressoError(f"no DiT checkpoint at {dit_dir}: run `spresso train dit` first (or set dae.dit_dir)")
    denoiser, info = load_dit(dit_dir, map_location=map_location)
    d = cfg.dae
    model = build_dae(denoiser.train(), d.encoder, d.t, d.lora, d.audio_down_init)
    return model.to(map_location), info


def load_dae(checkpoint_dir: str | Path, map_location="cpu") -> tuple[DiffusionAutoencoder, dict]:
    """A stage-1 or stage-3 checkpoint (strict), built from its own stored config; and its info."""
    from spresso.core.checkpoint import CheckpointError, read_checkpoint_config
    info = read_checkpoint_config(checkpoint_dir, kind=CHECKPOINT_KIND)
    meta = info.get("meta", {})
    try:
        cfg = config_from_dict(info["config"], f"{checkpoint_dir}/config.json")
        token_dim, pooled_dim = (int(v) for v in meta["text_dims"])
        t = int(meta["t"])
    except Exception as err:
        raise CheckpointError(f"{checkpoint_dir}: not a valid dae checkpoint ({str(err).splitlines()[0]})") from None
    cfg.dae.t = t
    # The DiT as it was pretrained (its own stored settings), not whatever the current preset says.

    dit_cfg = DiTConfig.model_validate(meta["dit_config"]) if meta.get("dit_config") else cfg.dit
    denoiser = build_denoiser(dit_cfg, token_dim, pooled_dim)
    model = build_dae(denoiser, cfg.dae.encoder, t, cfg.dae.lora, cfg.dae.audio_down_init)
    load_strict(model, load_weights(checkpoint_dir), what=f"dae checkpoint {checkpoint_dir}")
    return model.to(map_location).eval(), info


# -- the trainer ----------------------------------------------------------------------------------
