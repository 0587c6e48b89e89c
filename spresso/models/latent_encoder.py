"""The latent encoder g_psi: x0 [B, 128, T] -> z [B, 64, T'] (S-PRESSO's compression in time and channels).

    x0 frames --Linear in (if width != 128)--> RoPE transformer blocks over frames
       --Linear width -> 64 (c = 2)--> average pooling, kernel = stride = t --> z

Padding rule (a clip of T frames, T not a multiple of t): the transformer only ever sees the T
real frames; after the channel projection the sequence is zero-padded to T' * t frames with
``T' = ceil(T / t)`` and each window is averaged over its *real* frames only (a mask-weighted
mean), so the last, short window is the mean of its ``T - (T' - 1) t`` frames rather than being
diluted by padding.

Positions (RoPE of the audio-down stream, in x0-frame units like the DiT's audio tokens): the
central frame of each window's real frames, ``start + (n - 1) / 2``. For even t the centre lies
between two frames (t = 4: 1.5, 5.5, ...); RoPE takes real-valued positions, so we use the exact
half-integer instead of rounding: z token k then rotates exactly like the mean time of the
frames it summarises, and matches ``frame_positions`` of time-patched audio tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spresso.models.mmdit import Mlp
from spresso.models.rope import RotaryEmbedding, apply_rope


def pooled_frames(T: int, t: int) -> int:
    """T' = ceil(T / t): every frame belongs to exactly one window."""
    if t < 1 or T < 1:
        raise ValueError(f"need T >= 1 and t >= 1 (got T={T}, t={t})")
    return -(-int(T) // int(t))


def window_counts(T: int, t: int, device=None) -> torch.Tensor:
    """Real frames in each of the T' windows: t, ..., t, T - (T' - 1) t."""
    n = pooled_frames(T, t)
    counts = torch.full((n,), float(t), device=device)
    counts[-1] = T - (n - 1) * t
    return counts


def decimated_positions(T: int, t: int, device=None) -> torch.Tensor:
    """[T'] position of each z token: the centre of its window's real frames (half-integer for even t)."""
    n = pooled_frames(T, t)
    starts = torch.arange(n, device=device, dtype=torch.float32) * t
    return starts + (window_counts(T, t, device) - 1) / 2


def average_pool(h: torch.Tensor, t: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """h [B, T, D] -> [B, ceil(T / t), D]: mean over the real frames of each window (kernel = stride = t).

    With ``mask`` [B, T] (True = real) only those frames count; a window with none of them is zero.
    """
    B, T, D = h.shape
    n = pooled_frames(T, t)
    if mask is not None:
        w = F.pad(mask.to(h.dtype), (0, n * t - T)).reshape(B, n, t)
        sums = (F.pad(h, (0, 0, 0, n * t - T)).reshape(B, n, t, D) * w[..., None]).sum(2)
        return sums / w.sum(2).clamp(min=1.0)[..., None]
    h = F.pad(h, (0, 0, 0, n * t - T))  # zeros add nothing to the sums below
    sums = h.reshape(B, n, t, D).sum(2)
    return sums / window_counts(T, t, h.device).to(h.dtype)[None, :, None]


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN x) with RoPE and QK RMSNorm, then x + MLP(LN x).

    A plain block rather than the DiT's adaLN block: g_psi has no noise level or caption to
    modulate with, and adaLN under a constant condition would just be a learned affine.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        x = x + self.proj(attn.transpose(1, 2).reshape(B, L, W))
        return x + self.mlp(self.norm2(x))


class LatentEncoder(nn.Module):
    """g_psi: normalised x0 [B, C, T] -> z [B, z_channels, ceil(T / t)]."""

    def __init__(self, in_channels: int = 128, z_channels: int = 64, t: int = 4, depth: int = 6, width: int | None = None,
                 heads: int = 4, mlp_ratio: float = 4.0, rope_base: float = 10000.0):
        super().__init__()
        width = int(width or in_channels)
        self.in_channels, self.z_channels, self.t, self.depth, self.width = int(in_channels), int(z_channels), int(t), int(depth), width
        if self.t < 1:
            raise ValueError(f"pooling factor t must be >= 1, got {t}")
        # The paper's encoder works at the x0 width (128); a wider one needs an input projection.
        self.proj_in = nn.Identity() if width == in_channels else nn.Linear(in_channels, width)
        self.rope = RotaryEmbedding(width // heads, rope_base)
        self.blocks = nn.ModuleList([EncoderBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.to_z = nn.Linear(width, z_channels)  # the paper's Linear 128 -> 64 (c = 2)
        for block in self.blocks:
            # Scaled residual-branch init (GPT-2 style) keeps a deep stack near the identity early on.
            for layer in (block.proj, block.mlp.fc2):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * max(depth, 1)))
                nn.init.zeros_(layer.bias)

    def frames_out(self, T: int) -> int:
        return pooled_frames(T, self.t)

    def positions(self, T: int, device=None) -> torch.Tensor:
        return decimated_positions(T, self.t, device)

    def forward(self, x0: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x0 [B, C, T] -> z [B, z_channels, ceil(T / t)]; ``mask`` [B, T] (True = real) hides the other frames
        as keys and from the pooling (a window of padding only gives zeros)."""
        if x0.dim() != 3 or x0.shape[1] != self.in_channels:
            raise ValueError(f"expected x0 [B, {self.in_channels}, T], got {tuple(x0.shape)}")
        T = x0.shape[-1]
        h = self.proj_in(x0.float().transpose(1, 2))
        cos, sin = self.rope(torch.arange(T, device=x0.device, dtype=torch.float32))
        for block in self.blocks:
            h = block(h, cos, sin, mask)
        return average_pool(self.to_z(self.norm(h)), self.t, mask).transpose(1, 2)


def build_latent_encoder(cfg, t: int, in_channels: int = 128) -> LatentEncoder:
    """g_psi from a :class:`~spresso.config.dae.LatentEncoderConfig` at pooling factor t."""
    return LatentEncoder(in_channels, cfg.z_channels, t, cfg.depth_for(t), cfg.width, cfg.heads, cfg.mlp_ratio, cfg.rope_base)
