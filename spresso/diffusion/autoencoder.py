"""The diffusion autoencoder: g_psi (latent encoder) + the EDM2-preconditioned conditioned DiT.

- :func:`build_denoiser`: D_theta around a fresh DiT (what DiT pretraining trains).
- :func:`build_dae`: a pretrained DiT denoiser -> :class:`DiffusionAutoencoder` (LoRA, audio-down stream, g_psi).
- :class:`DiffusionAutoencoder`: ``encode`` and ``forward(x_noisy, sigma, text, z)``; every tensor is in
  normalised latent units.
- :func:`set_trainable`: which parameters a stage trains.

The networks themselves (DiT, ConditionedDiT, LoRA helpers, the latent encoder) are plain modules in
:mod:`spresso.models`; this module adds what makes them a diffusion model.
"""
from __future__ import annotations

import torch
from torch import nn

from spresso.config.dit import DiTConfig
from spresso.diffusion.edm2 import Denoiser
from spresso.diffusion.padding import frame_mask, token_mask
from spresso.models.conditioned_dit import (
    AUDIO_DOWN,
    ConditionedDiT,
    add_audio_down,
    add_lora,
)
from spresso.models.dit import DiT
from spresso.models.latent_encoder import LatentEncoder, build_latent_encoder
from spresso.models.text_encoder import TextEmbedding

STAGES = ("stage1", "stage3")


def build_denoiser(cfg: DiTConfig, text_token_dim: int, text_pooled_dim: int) -> Denoiser:
    """The preconditioned D_theta around a fresh DiT."""
    net = DiT(cfg.model, text_token_dim, text_pooled_dim)
    return Denoiser(net, cfg.diffusion.sigma_data, cfg.diffusion.logvar_channels)


class DiffusionAutoencoder(nn.Module):
    """g_psi (encoder) + D_theta(x; sigma, text, z) (EDM2-preconditioned conditioned DiT).

    Every tensor is in normalised latent units (x0 mapped to sigma_data by
    :class:`~spresso.diffusion.normalize.LatentNormalizer`): the encoder reads the same
    normalised x0 the diffusion reconstructs.
    """

    def __init__(self, encoder: LatentEncoder, denoiser: Denoiser, mask_padding: bool = False):
        super().__init__()
        if not isinstance(denoiser.net, ConditionedDiT):
            raise ValueError("the denoiser must wrap a ConditionedDiT")
        self.encoder = encoder
        self.denoiser = denoiser
        # LatentEncoderConfig.mask_padding: given a clip's valid frames, its padding is hidden (spresso.diffusion.padding)
        self.mask_padding = bool(mask_padding)

    @property
    def t(self) -> int:
        return self.encoder.t

    @property
    def net(self) -> ConditionedDiT:
        return self.denoiser.net

    def encode(self, x0: torch.Tensor, valid_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised x0 [B, C, T] -> z [B, z_channels, ceil(T / t)]; ``valid_frames`` [B] counts only
        when the model masks padding (else every frame is seen, as it was trained)."""
        mask = frame_mask(valid_frames.to(x0.device), x0.shape[-1]) if self.masks(valid_frames, x0.shape[-1]) else None
        return self.encoder(x0, mask)

    def masks(self, valid_frames, T: int) -> bool:
        """Whether to mask: the model does, and some clip is padded (no mask at all lets SDPA use its fused kernels)."""
        return self.mask_padding and valid_frames is not None and bool((valid_frames < T).any())

    def forward(self, x_noisy: torch.Tensor, sigma: torch.Tensor, text: TextEmbedding, z: torch.Tensor | None = None,
                drop: torch.Tensor | None = None, return_logvar: bool = False, z_from: torch.Tensor | None = None,
                valid_frames: torch.Tensor | None = None):
        """D(x_noisy; sigma, text, z); ``z=None`` withholds the conditioning.

        ``z_from`` (clean normalised x0) encodes z inside this call instead, so that under DDP the
        encoder runs within the wrapped forward and its gradients are synchronised (stage 1).
        ``valid_frames`` [B]: real frames per clip; a ``mask_padding`` model hides the rest as keys.
        """
        if z_from is not None:
            z = self.encode(z_from, valid_frames)
        masks = {}
        if self.masks(valid_frames, x_noisy.shape[-1]):
            T, valid = x_noisy.shape[-1], valid_frames.to(x_noisy.device)
            masks = {"audio_mask": token_mask(valid, T, self.net.dit.patch), "z_mask": token_mask(valid, T, self.t)}
        return self.denoiser(x_noisy, sigma, return_logvar=return_logvar, text=text, drop=drop, z=z, **masks)

    # -- trainable parameters per stage --------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names by role: encoder, f_phi, audio_down, lora, logvar, base (the frozen DiT)."""
        groups: dict[str, list[str]] = {k: [] for k in ("encoder", "f_phi", "audio_down", "lora", "logvar", "base")}
        for name, _ in self.named_parameters():
            if name.startswith("encoder."):
                groups["encoder"].append(name)
            elif name.startswith("denoiser.net.f_phi."):
                groups["f_phi"].append(name)
            elif f".streams.{AUDIO_DOWN}." in name:
                groups["audio_down"].append(name)
            elif ".lora_" in name:
                groups["lora"].append(name)
            elif name.startswith("denoiser.logvar."):
                groups["logvar"].append(name)
            else:
                groups["base"].append(name)
        return groups


def stage_roles(stage: str, train_audio_down: bool = False) -> tuple[str, ...]:
    """Stage 1: g_psi, f_phi, audio-down, LoRA (and u(sigma)); stage 3: f_phi + LoRA (+ audio-down, u(sigma)).

    u(sigma) (the EDM2 loss's learned log-variance, 128 + 1 weights) is trained in both: it only
    reweights noise levels, and the conditioned task's error profile differs from the DiT's.
    """
    if stage == "stage1":
        return ("encoder", "f_phi", "audio_down", "lora", "logvar")
    if stage == "stage3":
        return ("f_phi", "lora", "logvar") + (("audio_down",) if train_audio_down else ())
    raise ValueError(f"unknown stage {stage!r} (one of {STAGES})")


def set_trainable(model: DiffusionAutoencoder, stage: str, train_audio_down: bool = False) -> list[nn.Parameter]:
    """Freeze everything except the roles the stage trains; return the trainable parameters."""
    roles = stage_roles(stage, train_audio_down)
    groups = model.parameter_groups()
    train = {n for role in roles for n in groups[role]}
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in train)
        if name in train:
            params.append(p)
    return params


def build_dae(denoiser: Denoiser, encoder_cfg, t: int, lora_cfg, audio_down_init: str = "audio") -> DiffusionAutoencoder:
    """Turn a pretrained DiT denoiser (from :func:`~spresso.diffusion.checkpoints.load_dit`) into a diffusion autoencoder.

    Order matters: LoRA goes onto the pretrained layers first, then the audio-down stream is
    added (and copied from the audio stream's *base* weights), so the new stream never gets adapters.
    """
    dit = denoiser.net
    if not isinstance(dit, DiT):
        raise ValueError("expected a Denoiser around a plain DiT")
    dit = add_lora(dit, lora_cfg.rank, lora_cfg.alpha, lora_cfg.dropout, lora_cfg.targets, lora_cfg.streams, lora_cfg.extra)
    add_audio_down(dit, audio_down_init)
    denoiser.net = ConditionedDiT(dit, encoder_cfg.z_channels, t, encoder_cfg.z_key_bias(t, dit.patch))
    encoder = build_latent_encoder(encoder_cfg, t, dit.config.in_channels)
    ref = next(dit.parameters())
    return DiffusionAutoencoder(encoder.to(ref.device), denoiser, encoder_cfg.mask_padding)
