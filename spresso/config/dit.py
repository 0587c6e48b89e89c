"""DiT settings: the MMDiT network, EDM2 diffusion, Heun sampling and pretraining."""
from __future__ import annotations

from .base import Section


class DiTModelConfig(Section):
    width: int = 768
    heads: int = 12
    joint_blocks: int = 6
    single_blocks: int = 6


class DiTConfig(Section):
    model: DiTModelConfig = DiTModelConfig()
    checkpoint_dir: str = "dit"
