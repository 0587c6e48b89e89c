"""AudioAE settings: the model, its DAC-recipe training and the x0 latent cache."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class AudioAEModelConfig(Section):
    sample_rate: int = 48000
    n_fft: int = 960
    hop: int = 480
    latent_dim: int = 128
    width: int = 512
    blocks: int = 8
    intermediate: int = 1536


class AudioAEConfig(Section):
    model: AudioAEModelConfig = AudioAEModelConfig()
    # Output folder (relative to the workdir) for checkpoints and the x0 cache.
    checkpoint_dir: str = "audioae"
    latents_path: str = "latents/x0.zarr"
    steps: int = Field(2000, gt=0)
