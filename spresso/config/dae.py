"""Diffusion-autoencoder settings: latent encoder g_psi, audio-down conditioning, LoRA, stages 1 and 3.

One run per operating point: ``dae.t`` picks the pooling factor (4, 9, 20 or 100); its entry in
``dae.points`` gives the quantizer's K, the stage-2 codebooks M and the stage-3 codebooks m.
Outputs live under ``<checkpoint_dir>/t<t>/`` (stage1/final, z.zarr, stage3/final).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from spresso.config.base import Section
from spresso.config.scaling import (
    ActorPoolSettings,
    ScalingSettings,
    run_knob,
    scaling_field,
)

# The paper's encoder depth by pooling factor: 6 at 25 Hz, 10 at 11 Hz, 12 at 5 Hz and 1 Hz.
PAPER_DEPTHS = {4: 6, 9: 10, 20: 12, 100: 12}


class LatentEncoderConfig(Section):
    z_channels: int = Field(64, ge=1)  # c = 2: 128 x0 channels -> 64
    width: Optional[int] = Field(None, ge=1)  # null: the x0 width (128), as in the paper
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    rope_base: float = Field(10000.0, gt=1)
    depth_by_t: dict[int, int] = Field(default_factory=lambda: dict(PAPER_DEPTHS))
    depth: Optional[int] = Field(None, ge=0)  # one depth for every t (overrides depth_by_t)
    # How the DiT's joint attention weighs each z token. "plain" (the paper): one key among the audio
    # and text keys, so at 1 Hz (t = 100, 4-frame patches) the 5 z tokens of a clip get ~3% of the
    # attention next to 125 audio tokens, and g_psi gets ~35x less gradient than with "multiplicity":
    # a logit bias of log(t / patch) on z keys, each z token counting as the t / patch audio tokens it
    # summarises (no change at t <= patch). Checkpoints and bundles saved before this setting load as "plain".
    z_attention: Literal["plain", "multiplicity"] = "plain"
    # Whether a clip's zero padding (clips shorter than the 5 s window) is hidden: from the loss, from
    # g_psi's attention and pooling, and as keys in the DiT (spresso.diffusion.padding). The paper does
    # not say. Seen (false), a 1 Hz z on real sound effects became one per-clip bit, "is this clip
    # padded"; hidden, it spread over ~4 directions and decoded better (README: "How many of z's channels
    # are used"). Stored with the model, so decoding masks the way training did; older models: false.
    mask_padding: bool = True

    def depth_for(self, t: int) -> int:
        if self.depth is not None:
            return self.depth
        if t in self.depth_by_t:
            return self.depth_by_t[t]
        # An unlisted t takes the depth of the nearest listed factor at or below it (deeper for coarser z).
        below = [k for k in self.depth_by_t if k <= t]
        return self.depth_by_t[max(below)] if below else self.depth_by_t[min(self.depth_by_t)]

    def z_key_bias(self, t: int, patch: int) -> float:
        """The attention-logit bias on z keys at pooling factor t with the DiT's audio patch size."""
        return math.log(max(t / patch, 1.0)) if self.z_attention == "multiplicity" else 0.0

    @classmethod
    def stored(cls, tree: dict[str, Any]) -> "LatentEncoderConfig":
        """An encoder section read back from a checkpoint or bundle: one saved before ``z_attention`` is "plain",
        one saved before ``mask_padding`` sees its padding (as it was trained), whatever today's defaults."""
        return cls.model_validate({"z_attention": "plain", "mask_padding": False, **tree})


class LoRASettings(Section):
    rank: int = Field(16, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Layers inside each pretrained stream of every block that get adapters (names as in mmdit.Stream).
    targets: list[str] = Field(default_factory=lambda: ["qkv", "proj", "mlp.fc1", "mlp.fc2"])
    streams: list[str] = Field(default_factory=lambda: ["audio", "text"])
    # Other linear layers of the DiT by exact module name (e.g. "audio_in", "final.linear").
    extra: list[str] = Field(default_factory=list)


class OperatingPoint(Section):
    t: int = Field(ge=1)
    K: int = Field(ge=2)  # codebook size of the stage-2 quantizer
    M: int = Field(ge=1)  # stage-2 codebooks
    m: int = Field(ge=1)  # codebooks used in stage 3 (and by the codec at this point)


def _paper_points() -> list[OperatingPoint]:
    return [OperatingPoint(t=4, K=1024, M=20, m=10), OperatingPoint(t=9, K=1024, M=20, m=10),
            OperatingPoint(t=20, K=4096, M=20, m=8), OperatingPoint(t=100, K=4096, M=20, m=8)]


class DAETrainConfig(Section):
    steps: int = Field(100000, ge=1)
    batch_size: int = Field(32, ge=1)  # global: split over the Ray Train workers
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # The paper's stage-1 text dropout: mostly unconditional, so the decoder learns to lean on z.
    text_dropout: float = Field(0.8, ge=0, le=1)
    # Wall-clock minutes this stage trains at most (its schedule runs on the training clock); null:
    # its part of budget_hours, if set, else no limit. See spresso.config.budget.
    time_limit_minutes: Optional[float] = Field(None, gt=0)
    scaling: ScalingSettings = scaling_field()
    loader_workers: int = run_knob(0, ge=0)
    feed: Literal["ray_data", "loader"] = run_knob("loader")  # as dit.train.feed
    prefetch_batches: int = run_knob(2, ge=0)
    log_every: int = run_knob(50, ge=1)
    checkpoint_every: int = run_knob(1000, ge=1)
    # z's effective dimensionality (z/energy_top4, ...) on held-out clips at every checkpoint (stage 1);
    # up to this many clips (0: off).
    z_stats_clips: int = run_knob(128, ge=0)
    seed: int = 0


class Stage3Config(DAETrainConfig):
    # The paper trains stage 3 for 40 epochs; ``steps`` (if set) caps it.
    epochs: int = Field(40, ge=1)
    steps: Optional[int] = Field(None, ge=1)  # type: ignore[assignment]
    keep_z: float = Field(0.1, ge=0, le=1)  # probability of feeding the unquantized z
    train_audio_down: bool = False  # also finetune the audio-down streams (stage 1 trains them)
    quantize_beam: Optional[int] = Field(None, ge=1)  # beam for encoding z (null: the quantizer's own)


class ZCacheConfig(ActorPoolSettings):
    """Filling the z cache (`spresso precompute-z`): block size, batch size and the encoder pool."""

    chunk_clips: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)


class DAEConfig(Section):
    t: int = Field(4, ge=1)  # the operating point being trained
    points: list[OperatingPoint] = Field(default_factory=_paper_points)
    encoder: LatentEncoderConfig = LatentEncoderConfig()
    # How the audio-down streams start: copies of the pretrained audio stream, or fresh (adaLN-zero).
    audio_down_init: Literal["audio", "random"] = "audio"
    lora: LoRASettings = LoRASettings()
    stage1: DAETrainConfig = DAETrainConfig()
    stage3: Stage3Config = Stage3Config()
    zcache: ZCacheConfig = ZCacheConfig()
    # An exported bundle's default sampler (the codec decodes with it unless told otherwise): the paper
    # decodes with Heun at 64 steps (127 network evaluations); DPM-Solver++(2M) is our faster addition.
    decode_steps: int = Field(32, ge=1)
    decode_solver: Literal["dpmpp2m", "heun"] = "dpmpp2m"
    # Inputs (null: the DiT / QINCo2 stages' final checkpoints) and outputs, relative to the workdir.
    dit_dir: Optional[str] = None
    quantizer_dir: Optional[str] = None
    checkpoint_dir: str = "dae"

    @model_validator(mode="after")
    def _known_point(self):
        ts = [p.t for p in self.points]
        if len(set(ts)) != len(ts):
            raise ValueError(f"dae.points lists a pooling factor twice: {ts}")
        return self

    def point(self, t: int | None = None) -> OperatingPoint:
        t = self.t if t is None else t
        for p in self.points:
            if p.t == t:
                return p
        raise ValueError(f"no operating point with t={t} in dae.points ({[p.t for p in self.points]})")

    def folder(self, t: int | None = None) -> str:
        """Outputs of one operating point, relative to the workdir."""
        return f"{self.checkpoint_dir.rstrip('/')}/t{self.t if t is None else t}"
