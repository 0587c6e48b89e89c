"""Decoding with a diffusion autoencoder: z (or QINCo2 codes) -> x0 by the Heun sampler -> audio.

Seeded and batchable: the noise of a batch comes from one generator seeded by ``seed``, so the
same (z, seed) always decodes to the same x0. Without a caption the decoder runs on the null
caption (the codec's case: a bitstream carries no text); a caption can be given as a
:class:`~spresso.models.text_encoder.TextEmbedding`.
"""
from __future__ import annotations

import torch

from spresso.config.dit import RHO, SIGMA_MAX, SIGMA_MIN
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.sampler import heun_sample
from spresso.models.text_encoder import TextEmbedding


def null_text(model, batch: int, device) -> TextEmbedding:
    """A placeholder caption of the DiT's dimensions; ``drop`` replaces it by the learned null caption."""
    dit = model.net.dit
    return TextEmbedding(torch.zeros(batch, 1, dit.text_token_dim, device=device), torch.ones(batch, 1, dtype=torch.bool, device=device),
                         torch.zeros(batch, dit.text_pooled_dim, device=device))


@torch.no_grad()
def reconstruct_latents(model, normalizer: LatentNormalizer, z: torch.Tensor | None, frames: int, *, text: TextEmbedding | None = None,
                        steps: int = 32, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO, seed: int = 0,
                        batch: int | None = None, device=None, progress: bool = False) -> torch.Tensor:
    """z [B, 64, ceil(frames / t)] (None: withheld, an unconditional sample) -> x0 [B, C, frames] in AudioAE units."""
    device = torch.device(device or next(model.parameters()).device)
    model = model.to(device).eval()
    if z is None and text is None and batch is None:
        raise ValueError("give z, a caption or a batch size")
    B = z.shape[0] if z is not None else (text.tokens.shape[0] if text is not None else int(batch))
    drop = torch.zeros(B, dtype=torch.bool, device=device) if text is not None else torch.ones(B, dtype=torch.bool, device=device)
    text = text.to(device) if text is not None else null_text(model, B, device)
    z = z.to(device).float() if z is not None else None
    generator = torch.Generator().manual_seed(int(seed))  # CPU: the same noise for a seed on every device (seeded_randn moves it)

    def denoise(x, sigma):
        return model(x, sigma, text, z, drop=drop)

    y = heun_sample(denoise, (B, normalizer.channels, int(frames)), steps=steps, sigma_min=sigma_min, sigma_max=sigma_max,
                    rho=rho, generator=generator, device=device, progress=progress)
    return normalizer.denormalize(y)


@torch.no_grad()
def codes_to_z(quantizer, codes: torch.Tensor) -> torch.Tensor:
    """QINCo2 codes [B, T', m] -> z_q [B, d, T'] (the quantizer truncated to the m steps given)."""
    return quantizer.decode(codes).float().transpose(1, 2)


@torch.no_grad()
def reconstruct_audio(model, normalizer: LatentNormalizer, audioae, *, z: torch.Tensor | None = None, codes: torch.Tensor | None = None,
                      quantizer=None, frames: int | None = None, **kw) -> torch.Tensor:
    """z or codes -> waveform [B, frames * hop] through the AudioAE decoder."""
    if (z is None) == (codes is None):
        raise ValueError("give exactly one of z and codes")
    if codes is not None:
        if quantizer is None:
            raise ValueError("decoding codes needs the quantizer")
        z = codes_to_z(quantizer, codes)
    frames = int(frames or z.shape[-1] * model.t)
    x0 = reconstruct_latents(model, normalizer, z, frames, **kw)
    ae_device = next(audioae.parameters()).device
    return audioae.decode(x0.to(ae_device)).float()
