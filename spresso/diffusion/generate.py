"""Text -> x0 latents -> audio with a trained DiT (and the AudioAE decoder)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from spresso.audio.io import write_audio
from spresso.config.dit import RHO, SIGMA_MAX, SIGMA_MIN, DiTConfig
from spresso.core.checkpoint import has_checkpoint
from spresso.core.errors import SpressoError
from spresso.diffusion.checkpoints import load_dit
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.sampler import evaluations, guided, heun_sample
from spresso.models.audioae import load_audioae
from spresso.models.text_encoder import TextEmbedding, TextEncoder, build_text_encoder

log = logging.getLogger(__name__)


def generate_latents(denoiser: torch.nn.Module, text: TextEmbedding, normalizer: LatentNormalizer, frames: int, *,
                     steps: int = 64, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO,
                     S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                     guidance: float = 1.0, seed: int = 0, device: str | torch.device = "cpu",
                     autocast=None, progress: bool = False) -> torch.Tensor:
    """Sample x0 [B, C, frames] (de-normalised, AudioAE units) for the captions in ``text``."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(int(seed))  # CPU: the same noise for a seed on every device (seeded_randn moves it)
    text = text.to(device)
    B = text.tokens.shape[0]
    fn = guided(denoiser, guidance, text=text)
    ctx = autocast() if autocast is not None else torch.autocast(device.type, enabled=False)
    with ctx:
        y = heun_sample(fn, (B, normalizer.channels, frames), steps=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                        S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, generator=generator,
                        device=device, progress=progress)
    return normalizer.denormalize(y)


def sampler_kwargs(sampler_cfg, **overrides) -> dict:
    kw = sampler_cfg.model_dump()
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return kw


def generate_audio(dit_dir: str | Path, prompts: Sequence[str], out_paths: Sequence[str | Path], *,
                   audioae_dir: str | Path, steps: int | None = None, seed: int = 0, guidance: float | None = None,
                   seconds: float | None = None, device: str | None = None, encoder: TextEncoder | None = None) -> list[Path]:
    """Generate one sound per prompt with the DiT at ``dit_dir``, decode with the AudioAE, write audio files."""
    if len(prompts) != len(out_paths):
        raise SpressoError("give one output path per prompt")
    if not has_checkpoint(audioae_dir):
        raise SpressoError(f"AudioAE checkpoint not found: {audioae_dir} (train it, or pass --audioae)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    denoiser, info = load_dit(dit_dir, map_location=device)
    meta = info["meta"]
    cfg = DiTConfig.model_validate(info["config"]["dit"])
    encoder = encoder or build_text_encoder(cfg.text_encoder)
    if encoder.describe() != meta["text_encoder"]:
        raise SpressoError(f"text encoder {encoder.describe()} differs from the one the DiT was trained with ({meta['text_encoder']})")
    normalizer = LatentNormalizer(meta["x0_mean"], meta["x0_std"], cfg.diffusion.sigma_data)
    audioae = load_audioae(audioae_dir, map_location=device)
    frames = int(meta["frames"]) if seconds is None else max(1, int(round(seconds * audioae.frame_rate)))
    kw = sampler_kwargs(cfg.sampler, steps=steps, guidance=guidance)
    log.info("sampling %d prompt(s): %d steps (%d evaluations), guidance %g", len(prompts), kw["steps"], evaluations(kw["steps"]), kw["guidance"])
    x0 = generate_latents(denoiser, encoder.encode(list(prompts)), normalizer, frames, seed=seed, device=device, progress=True, **kw)
    with torch.no_grad():
        waves = audioae.decode(x0.to(device)).float().cpu().numpy()
    written = []
    for wave, path in zip(waves, out_paths):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        peak = float(abs(wave).max())
        write_audio(path, wave / peak * 0.99 if peak > 1 else wave, audioae.sample_rate)
        written.append(path)
    return written
