"""AudioAE: the 48 kHz audio autoencoder whose latent x0 (128 x 100 Hz) S-PRESSO works in.

Vocos-style on both sides, with "same" STFT framing (n_fft 960, hop 480): exactly one latent
frame per 480 samples, and exactly ``T * 480`` samples back.

- Encoder: complex STFT -> power-law compressed real/imag channels -> ConvNeXt-1D backbone ->
  Linear to C = 128.
- Decoder: Conv1d from C = 128 -> ConvNeXt-1D backbone -> Linear head predicting log-magnitude
  and phase per bin -> ISTFT.

    ae = AudioAE.from_config(cfg.audioae.model)
    x0 = ae.encode(wave)        # [B, n] -> [B, 128, n // 480]
    wave_hat = ae.decode(x0)    # -> [B, T * 480]
    ae = load_audioae("work/demo/audioae/final")   # strict
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spresso.config.audioae import AudioAEModelConfig
from spresso.core.checkpoint import (
    CheckpointError,
    load_strict,
    load_weights,
    read_checkpoint_config,
)
from spresso.core.errors import SpressoError
from spresso.models.convnext import ConvNeXtBackbone
from spresso.models.stft import ISTFT, STFT

CHECKPOINT_KIND = "audioae"
# Power-law magnitude compression of the encoder's input spectrum: raw STFT values span ~100 dB,
# |X|^0.3 brings quiet and loud bins to a similar scale while keeping the phase (the complex
# direction) intact - the usual trick of complex-spectrum speech models.
SPEC_COMPRESSION = 0.3
# exp() of the predicted log-magnitude is capped (Vocos): an early large logit must not blow up the ISTFT.
# The cap must stay above what real audio needs: a full-scale signal (|x| <= 1) reaches sum(window) = 480
# with Hann 960, and loud low-frequency SFX do reach ~430. Vocos' 1e2 clipped such bins (a third of the
# sfx-dev train clips have one), so the decoder could not reproduce them and got no gradient there.
MAX_MAGNITUDE = 1e3


class AudioEncoder(nn.Module):
    """``wave [B, n] -> x0 [B, C, n // hop]``."""

    def __init__(self, cfg: AudioAEModelConfig):
        super().__init__()
        bins = cfg.n_fft // 2 + 1
        self.stft = STFT(cfg.n_fft, cfg.hop)
        self.backbone = ConvNeXtBackbone(2 * bins, cfg.width, cfg.intermediate, cfg.blocks, cfg.kernel_size)
        self.proj = nn.Linear(cfg.width, cfg.latent_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.stft(wave)  # complex [B, F, T], float32
        mag = spec.abs()
        spec = spec * (mag.clamp_min(1e-7) ** (SPEC_COMPRESSION - 1.0))
        feats = torch.cat([spec.real, spec.imag], dim=1)
        return self.proj(self.backbone(feats)).transpose(1, 2)


class AudioDecoder(nn.Module):
    """``x0 [B, C, T] -> wave [B, T * hop]`` through an ISTFT head (log-magnitude and phase)."""

    def __init__(self, cfg: AudioAEModelConfig):
        super().__init__()
        self.bins = cfg.n_fft // 2 + 1
        self.backbone = ConvNeXtBackbone(cfg.latent_dim, cfg.width, cfg.intermediate, cfg.blocks, cfg.kernel_size)
        self.head = nn.Linear(cfg.width, 2 * self.bins)
        self.istft = ISTFT(cfg.n_fft, cfg.hop)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        h = self.head(self.backbone(x0)).transpose(1, 2).float()  # [B, 2F, T]
        log_mag, phase = h[:, : self.bins], h[:, self.bins :]
        mag = torch.exp(log_mag).clamp_max(MAX_MAGNITUDE)
        # cos/sin of an unconstrained phase logit: no wrapping discontinuity to learn.
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        return self.istft(spec)


class AudioAE(nn.Module):
    def __init__(self, cfg: AudioAEModelConfig):
        super().__init__()
        if cfg.n_fft < cfg.hop or (cfg.n_fft - cfg.hop) % 2:
            raise SpressoError(f"audioae: n_fft {cfg.n_fft} and hop {cfg.hop} do not allow 'same' framing")
        self.config = cfg
        self.encoder = AudioEncoder(cfg)
        self.decoder = AudioDecoder(cfg)

    @classmethod
    def from_config(cls, cfg: AudioAEModelConfig) -> "AudioAE":
        return cls(cfg)

    @property
    def hop(self) -> int:
        return self.config.hop

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def frame_rate(self) -> float:
        return self.config.sample_rate / self.config.hop

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave [B, n]`` (n a multiple of 480) -> ``x0 [B, 128, n // 480]``."""
        return self.encoder(wave)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0 [B, 128, T]`` -> ``wave [B, T * 480]``."""
        if x0.dim() != 3 or x0.shape[1] != self.config.latent_dim:
            raise SpressoError(f"expected latents [B, {self.config.latent_dim}, T], got shape {tuple(x0.shape)}")
        return self.decoder(x0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(wave))


def load_audioae(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu") -> AudioAE:
    """Build the AudioAE stored in a checkpoint folder and load its weights strictly (eval mode)."""
    info = read_checkpoint_config(checkpoint_dir, kind=CHECKPOINT_KIND)
    try:
        model_cfg = AudioAEModelConfig.model_validate(info["config"]["audioae"]["model"])
    except Exception as err:
        raise CheckpointError(f"{checkpoint_dir}: checkpoint config has no valid audioae.model section ({str(err).splitlines()[0]})") from None
    model = AudioAE.from_config(model_cfg)
    weights = {k: v.to(map_location) for k, v in load_weights(checkpoint_dir).items()}
    load_strict(model, weights, what=f"audioae checkpoint {checkpoint_dir}")
    return model.to(map_location).eval()
