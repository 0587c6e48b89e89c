"""The S-PRESSO decoder: the pretrained DiT conditioned on z through an "audio-down" stream, with LoRA.

    z [B, 64, T'] --f_phi (Linear 64 -> width)--> audio-down tokens at decimated positions
                                                  |
    x0 tokens, caption tokens --> joint blocks (audio | text | audio_down, one attention) --> ...

- :class:`ConditionedDiT`: the raw network F(x; c_noise, text, z) around a pretrained
  :class:`~spresso.models.dit.DiT` that gained an ``audio_down`` stream in each joint block.
  ``z=None`` withholds the conditioning (the DiT then runs on audio and text only).
- :func:`add_audio_down`: adds the stream; by default each block's new stream starts as a copy of
  that block's pretrained *audio* stream. Why: z summarises the same audio frames, at the same
  RoPE positions, so starting from the audio stream's adaLN, QKV/QK-norm and MLP puts the z
  tokens' keys and values in the subspace the pretrained audio queries already read from; the
  joint attention can use z from the first step, instead of waiting for random projections
  (or adaLN-zero gates, which would block every gradient to the stream's MLP) to align.
  In the last joint block the stream only gives keys/values (pre-only, like text), so it takes
  the first two (attention shift/scale) of the audio stream's six adaLN chunks.
- :func:`add_lora` / :func:`merge_lora`: peft LoRA on the pretrained streams' linear layers only
  (the audio-down stream and f_phi are trained in full, so they get no adapters).

The diffusion autoencoder around it (g_psi + the EDM2-preconditioned network) and which
parameters a stage trains live in :mod:`spresso.diffusion.autoencoder`.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from spresso.models.dit import AUDIO, TEXT, DiT
from spresso.models.latent_encoder import decimated_positions
from spresso.models.mmdit import StreamInput
from spresso.models.text_encoder import TextEmbedding

AUDIO_DOWN = "audio_down"


def add_audio_down(dit: DiT, init: str = "audio") -> None:
    """Give every joint block an ``audio_down`` stream, initialised as described in the module docstring."""
    if init not in ("audio", "random"):
        raise ValueError(f"audio_down init must be 'audio' or 'random', got {init!r}")
    dit.add_stream(AUDIO_DOWN)
    if init == "random":
        for block in dit.joint:
            stream = block.streams[AUDIO_DOWN]
            for name, m in stream.named_modules():
                if isinstance(m, nn.Linear) and name != "adaLN":
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        return
    with torch.no_grad():
        for block in dit.joint:
            src, dst = _base_state(block.streams[AUDIO]), block.streams[AUDIO_DOWN]
            for name, p in dst.state_dict().items():
                value = src[name]
                if value.shape != p.shape:  # pre-only adaLN: the attention (shift, scale) rows
                    value = value[: p.shape[0]]
                p.copy_(value)


def _base_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict with LoRA wrappers seen through (``x.base_layer.weight`` -> ``x.weight``)."""
    out = {}
    for k, v in module.state_dict().items():
        if "lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out


# -- LoRA ------------------------------------------------------------------------------------------
def lora_pattern(targets: Iterable[str], streams: Iterable[str] = (AUDIO, TEXT), extra: Iterable[str] = ()) -> str:
    """A regex (peft full-matches it against module names) for the pretrained layers that get adapters."""
    layers = "|".join(re.escape(t) for t in targets)
    names = "|".join(re.escape(s) for s in streams)
    alts = [rf"(?:joint|single)\.\d+\.streams\.(?:{names})\.(?:{layers})"] if layers and names else []
    alts += [re.escape(e) for e in extra]
    if not alts:
        raise ValueError("LoRA needs at least one target layer")
    return rf"(?:.*\.)?(?:{'|'.join(alts)})"


def add_lora(dit: DiT, rank: int = 16, alpha: float = 16.0, dropout: float = 0.0, targets: Iterable[str] = ("qkv", "proj", "mlp.fc1", "mlp.fc2"),
             streams: Iterable[str] = (AUDIO, TEXT), extra: Iterable[str] = ()) -> DiT:
    """Inject peft LoRA adapters (B = 0 at start: the model is unchanged) into the DiT's pretrained layers."""
    # lazy: peft pulls in transformers (seconds to import); the codec never needs it
    from peft import LoraConfig, inject_adapter_in_model

    streams = [s for s in streams if s != AUDIO_DOWN]
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                        target_modules=lora_pattern(targets, streams, extra))
    targets, extra = list(targets), list(extra)
    try:
        dit = inject_adapter_in_model(config, dit)
    except ValueError as err:
        if "not found" not in str(err):
            raise
        dit = None
    if dit is None or not lora_parameters(dit):
        raise ValueError(f"LoRA matched no layer of the DiT (targets {targets}, streams {streams}, extra {extra})")
    return dit


def lora_parameters(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters() if ".lora_" in n]


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + alpha/r B A) and drop the wrappers, in place.

    The result is a plain module whose layer names are those of the original DiT, so it loads
    into a DiT built without peft.
    """
    # lazy: peft pulls in transformers (seconds to import); the codec never needs it
    from peft.tuners.lora import LoraLayer

    for name, sub in list(module.named_modules()):
        if isinstance(sub, LoraLayer):
            sub.merge()
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, sub.get_base_layer())
    return module


# -- the conditioned network ---------------------------------------------------------------------
class ConditionedDiT(nn.Module):
    """F(x; c_noise, text, z): a DiT with an audio-down stream fed by f_phi(z)."""

    def __init__(self, dit: DiT, z_channels: int, t: int, z_key_bias: float = 0.0):
        super().__init__()
        if not all(AUDIO_DOWN in block.streams for block in dit.joint):
            raise ValueError("the DiT has no audio_down stream: call add_audio_down first")
        self.dit = dit
        self.t = int(t)
        self.f_phi = nn.Linear(z_channels, dit.config.width)  # lifts z into the DiT width
        self.z_key_bias = float(z_key_bias)  # attention-logit bias on z keys (LatentEncoderConfig.z_attention)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, text: TextEmbedding, drop: torch.Tensor | None = None,
                z: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
                z_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, T] (scaled by c_in), z [B, z_channels, ceil(T / t)] or None (no conditioning);
        ``audio_mask`` / ``z_mask`` [B, tokens] (True = real) hide padding tokens as keys."""
        extra = None
        if z is not None:
            T = x.shape[-1]
            positions = decimated_positions(T, self.t, device=x.device)
            if z.shape[0] != x.shape[0] or z.shape[-1] != positions.numel():
                raise ValueError(f"z {tuple(z.shape)} does not fit x {tuple(x.shape)} at t={self.t} "
                                 f"(expected [{x.shape[0]}, *, {positions.numel()}])")
            extra = {AUDIO_DOWN: StreamInput(self.f_phi(z.float().transpose(1, 2)), positions, z_mask,
                                             key_bias=self.z_key_bias)}
        return self.dit(x, c_noise, text, drop=drop, audio_mask=audio_mask, extra=extra)
