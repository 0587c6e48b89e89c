"""MMDiT building blocks: per-modality streams that meet in one joint attention.

A :class:`JointBlock` holds one :class:`Stream` per modality (``audio``, ``text``; a later
issue adds ``audio_down``). Each stream owns its adaLN-zero modulation, QKV projection,
per-head QK RMSNorm, output projection and MLP; the block concatenates every stream's
queries/keys/values into one ``scaled_dot_product_attention`` call and splits the result back.
A stream's RoPE positions come with its tokens, so a new stream with its own (e.g. decimated)
positions joins without touching the block. A single-stream DiT block is a ``JointBlock`` with
the one stream ``("audio",)``.

Layer names are stable and every projection is a plain ``nn.Linear`` (``streams.<name>.qkv``,
``.proj``, ``.mlp.fc1``, ``.mlp.fc2``, ``.adaLN``) so peft LoRA can target them by name.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spresso.models.rope import RotaryEmbedding, apply_rope


@dataclass
class StreamInput:
    """The tokens of one modality entering a block."""

    tokens: torch.Tensor  # [B, L, width]
    positions: torch.Tensor | None = None  # [L] or [B, L] in x0-frame units; None: no rotation
    mask: torch.Tensor | None = None  # [B, L] bool, True = a real token (keys only are masked)
    # Added to every attention logit on this stream's keys: log(n) weighs each key as n identical keys
    # (a z token that summarises n audio tokens; see ConditionedDiT).
    key_bias: float = 0.0


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Stream(nn.Module):
    """One modality's weights inside a joint block.

    ``pre_only``: the stream only contributes keys/values (its output is discarded after this
    block, e.g. text in the last joint block), so it has no output projection or MLP - weights
    that would never get a gradient and would make DDP complain about unused parameters.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, pre_only: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.pre_only = heads, width // heads, pre_only
        # adaLN-zero: (shift, scale) for attention [+ gate, and shift/scale/gate for the MLP].
        self.adaLN = nn.Linear(width, (2 if pre_only else 6) * width)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        # Per-head QK RMSNorm keeps attention logits bounded (stable bf16 training at width).
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        if not pre_only:
            self.proj = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(width, int(width * mlp_ratio))
        self.reset_modulation()

    def reset_modulation(self) -> None:
        # Zero modulation: gates are 0, so the stream starts as the identity (adaLN-zero, DiT).
        nn.init.zeros_(self.adaLN.weight)
        nn.init.zeros_(self.adaLN.bias)

    def attention_inputs(self, x: torch.Tensor, c: torch.Tensor, rope: RotaryEmbedding, positions):
        """x [B, L, W], c [B, W] -> (q, k, v) each [B, H, L, D], and the modulation chunks."""
        mods = self.adaLN(F.silu(c))[:, None].chunk(2 if self.pre_only else 6, dim=-1)
        h = modulate(self.norm1(x), mods[0], mods[1])
        B, L, _ = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if positions is not None:
            cos, sin = rope(positions)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v, mods

    def attention_outputs(self, x: torch.Tensor, attn: torch.Tensor, mods) -> torch.Tensor:
        """x [B, L, W], attn [B, L, W] (heads merged) -> the stream's updated tokens."""
        _, _, gate_attn, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_attn * self.proj(attn)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


def carried(streams: Mapping[str, StreamInput], out: Mapping[str, torch.Tensor]) -> dict[str, StreamInput]:
    """The next joint block's inputs: each stream's new tokens with its positions, mask and key bias kept
    (pre-only streams, absent from ``out``, drop out)."""
    return {name: replace(s, tokens=out[name]) for name, s in streams.items() if name in out}


def key_mask(B: int, masks: list, lengths: list[int], biases: list[float], q: torch.Tensor) -> torch.Tensor | None:
    """The joint attention's key mask: None (SDPA may use flash kernels), bool [B, 1, 1, L], or, when a
    stream has a key bias, float [B or 1, 1, 1, L] (the bias on that stream's keys, -inf on padding)."""
    if all(m is None for m in masks) and not any(biases):
        return None
    full = [m if m is not None else torch.ones(B, n, dtype=torch.bool, device=q.device) for m, n in zip(masks, lengths)]
    keep = torch.cat(full, dim=1)[:, None, None, :]
    if not any(biases):
        return keep
    bias = torch.cat([torch.full((n,), float(b), device=q.device, dtype=q.dtype) for b, n in zip(biases, lengths)])
    return torch.where(keep, bias, torch.tensor(float("-inf"), device=q.device, dtype=q.dtype))


class JointBlock(nn.Module):
    """Streams that attend jointly; see the module docstring."""

    def __init__(self, width: int, heads: int, streams: Iterable[str], mlp_ratio: float = 4.0,
                 pre_only: Iterable[str] = ()):
        super().__init__()
        self.width, self.heads, self.mlp_ratio = width, heads, mlp_ratio
        pre_only = set(pre_only)
        self.streams = nn.ModuleDict({
            name: Stream(width, heads, mlp_ratio, pre_only=name in pre_only) for name in streams
        })
        if not self.streams:
            raise ValueError("a joint block needs at least one stream")

    def add_stream(self, name: str, pre_only: bool = False) -> Stream:
        """Add a modality (e.g. ``audio_down``) to an existing, possibly pretrained, block."""
        if name in self.streams:
            raise ValueError(f"stream '{name}' already exists")
        ref = next(iter(self.streams.values())).qkv.weight
        stream = Stream(self.width, self.heads, self.mlp_ratio, pre_only=pre_only).to(ref.device, ref.dtype)
        self.streams[name] = stream
        return stream

    def forward(self, inputs: Mapping[str, StreamInput], c: torch.Tensor, rope: RotaryEmbedding) -> dict[str, torch.Tensor]:
        """``{name: StreamInput}`` -> ``{name: tokens}`` for the streams that are not pre-only.

        Streams of this block that are absent from ``inputs`` are skipped (a DiT with an
        ``audio_down`` stream still runs text-only); unknown names are an error.
        """
        unknown = [n for n in inputs if n not in self.streams]
        if unknown:
            raise KeyError(f"no stream '{unknown[0]}' in this block (has {list(self.streams)})")
        names = [n for n in self.streams if n in inputs]
        qs, ks, vs, mods, lengths, masks = [], [], [], {}, [], []
        for name in names:
            inp = inputs[name]
            q, k, v, mods[name] = self.streams[name].attention_inputs(inp.tokens, c, rope, inp.positions)
            qs.append(q), ks.append(k), vs.append(v)
            lengths.append(inp.tokens.shape[1])
            masks.append(inp.mask)
        q, k, v = (torch.cat(t, dim=2) if len(t) > 1 else t[0] for t in (qs, ks, vs))
        attn_mask = key_mask(q.shape[0], masks, lengths, [inputs[n].key_bias for n in names], q)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        B, H, L, D = out.shape
        out = out.transpose(1, 2).reshape(B, L, H * D)
        result, start = {}, 0
        for name, n in zip(names, lengths):
            stream = self.streams[name]
            if not stream.pre_only:
                result[name] = stream.attention_outputs(inputs[name].tokens, out[:, start:start + n], mods[name])
            start += n
        return result
