"""1-D rotary position embedding (RoPE) over real-valued token positions.

Positions are in x0-frame units (100 per second), not token indices: a patched audio token sits
at the centre of its frames, and a later "audio-down" stream of decimated z tokens sits at the
centre of its pooling window, so tokens of every stream that describe the same instant get the
same rotation and attend to each other as "near" in time.
"""
from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotating query/key channel pairs by ``position * inv_freq``."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        # Not persistent: a function of the config, so it never belongs in a checkpoint.
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [L] or [B, L] -> (cos, sin), each [B or 1, 1, L, head_dim // 2] in float32."""
        angles = positions.float()[..., None] * self.inv_freq
        if angles.dim() == 2:
            angles = angles[None]
        return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, D]: channel i pairs with channel i + D/2 (the "half-split" layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def frame_positions(tokens: int, patch: int = 1, device=None) -> torch.Tensor:
    """Positions of ``tokens`` audio tokens of ``patch`` frames each: the centre frame of each patch."""
    return torch.arange(tokens, device=device, dtype=torch.float32) * patch + (patch - 1) / 2

