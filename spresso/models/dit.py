"""The text-to-audio diffusion transformer F_theta on x0 latents (S-PRESSO's decoder backbone).

    x0 frames [B, C, T] --patch--> audio tokens --+
    caption tokens ----------------> text tokens -+--> joint blocks (MMDiT) --> audio tokens
                                                       --> single-stream blocks --> F [B, C, T]
    conditioning c = NoiseEmbedding(c_noise) + MLP(pooled caption)  (adaLN of every block)

The caption can be dropped per sample (``drop``): its tokens become one learned null token and
its pooled vector a learned null vector. That is both the training-time text dropout and the
unconditional branch of classifier-free guidance, and it makes the output independent of the
caption. Other modalities (issue 6's ``audio_down``) enter through ``extra`` as
:class:`~spresso.models.mmdit.StreamInput` after :meth:`DiT.add_stream`.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spresso.config.dit import DiTModelConfig
from spresso.models.fourier import FourierFeatures
from spresso.models.mmdit import JointBlock, Mlp, StreamInput, carried, modulate
from spresso.models.rope import RotaryEmbedding, frame_positions
from spresso.models.text_encoder import TextEmbedding

CHECKPOINT_KIND = "dit"  # a DiT checkpoint: the EMA denoiser (see spresso.diffusion.checkpoints.load_dit)
AUDIO, TEXT = "audio", "text"


class NoiseEmbedding(nn.Module):
    """c_noise -> width: Fourier features then a two-layer MLP."""

    def __init__(self, width: int, channels: int = 256):
        super().__init__()
        self.fourier = FourierFeatures(channels, seed=0)
        self.mlp = Mlp(channels, width, width)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.fourier(c_noise))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear back to patch channels; zero-initialised (F = 0 at init)."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out)
        for layer in (self.adaLN, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(F.silu(c))[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg: DiTModelConfig, text_token_dim: int, text_pooled_dim: int):
        super().__init__()
        self.config = cfg
        W, p = cfg.width, cfg.patch
        self.patch = p
        self.text_token_dim, self.text_pooled_dim = int(text_token_dim), int(text_pooled_dim)
        self.audio_in = nn.Linear(cfg.in_channels * p, W)
        self.text_in = nn.Linear(text_token_dim, W)
        self.noise_embed = NoiseEmbedding(W)
        self.pooled_embed = Mlp(text_pooled_dim, W, W)
        # The null caption (dropout / CFG), in the encoder's space so it passes through text_in.
        self.null_tokens = nn.Parameter(torch.zeros(1, 1, text_token_dim))
        self.null_pooled = nn.Parameter(torch.zeros(1, text_pooled_dim))
        self.rope = RotaryEmbedding(W // cfg.heads, cfg.rope_base)
        # Text is pre-only in the last joint block: its output would be discarded.
        self.joint = nn.ModuleList([
            JointBlock(W, cfg.heads, (AUDIO, TEXT), cfg.mlp_ratio, pre_only=(TEXT,) if i == cfg.joint_blocks - 1 else ())
            for i in range(cfg.joint_blocks)
        ])
        self.single = nn.ModuleList([JointBlock(W, cfg.heads, (AUDIO,), cfg.mlp_ratio) for _ in range(cfg.single_blocks)])
        self.final = FinalLayer(W, cfg.in_channels * p)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("final"):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks():
            for stream in block.streams.values():
                stream.reset_modulation()

    def blocks(self) -> list[JointBlock]:
        """Every transformer block, joint then single: the units that FSDP shards and torch.compile compiles."""
        return [*self.joint, *self.single]

    def add_stream(self, name: str) -> None:
        """Add a modality to every joint block (pre-only in the last, like text)."""
        for i, block in enumerate(self.joint):
            block.add_stream(name, pre_only=i == len(self.joint) - 1)

    # -- token layout ----------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, ceil(T / p), C * p] (zero-padded in time)."""
        B, C, T = x.shape
        pad = (-T) % self.patch
        if pad:
            x = F.pad(x, (0, pad))
        return x.reshape(B, C, -1, self.patch).permute(0, 2, 1, 3).reshape(B, -1, C * self.patch)

    def unpatchify(self, tokens: torch.Tensor, T: int) -> torch.Tensor:
        B, L, _ = tokens.shape
        x = tokens.reshape(B, L, -1, self.patch).permute(0, 2, 1, 3).reshape(B, -1, L * self.patch)
        return x[..., :T]

    def text_stream(self, text: TextEmbedding, drop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, mask, pooled = text.tokens.float(), text.mask.bool(), text.pooled.float()
        if drop is not None:
            drop = drop.bool().to(tokens.device)
            tokens = torch.where(drop[:, None, None], self.null_tokens.expand_as(tokens), tokens)
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = True
            mask = torch.where(drop[:, None], null_mask, mask)
            pooled = torch.where(drop[:, None], self.null_pooled.expand_as(pooled), pooled)
        return self.text_in(tokens), mask, pooled

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, text: TextEmbedding, drop: torch.Tensor | None = None,
                audio_mask: torch.Tensor | None = None, extra: Mapping[str, StreamInput] | None = None) -> torch.Tensor:
        """x [B, C, T] (already scaled by c_in), c_noise [B] -> F [B, C, T].

        ``audio_mask`` [B, ceil(T / patch)] hides audio tokens as keys (None: all real);
        ``extra``: more streams for the joint blocks, by name.
        """
        B, _, T = x.shape
        audio = self.audio_in(self.patchify(x))
        positions = frame_positions(audio.shape[1], self.patch, device=x.device)
        text_tokens, text_mask, pooled = self.text_stream(text, drop)
        c = self.noise_embed(c_noise) + self.pooled_embed(pooled)
        streams = {AUDIO: StreamInput(audio, positions, audio_mask), TEXT: StreamInput(text_tokens, None, text_mask)}
        for name, inp in (extra or {}).items():
            streams[name] = inp
        for block in self.joint:
            out = block(streams, c, self.rope)
            streams = carried(streams, out)
        audio_in = streams[AUDIO]
        h = audio_in.tokens
        for block in self.single:
            h = block({AUDIO: StreamInput(h, positions, audio_mask)}, c, self.rope)[AUDIO]
        return self.unpatchify(self.final(h, c), T)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
