"""AudioAE settings: the model, its DAC-recipe training and the x0 latent cache."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from spresso.config.base import Section
from spresso.config.scaling import (
    ActorPoolSettings,
    ScalingSettings,
    run_knob,
    scaling_field,
)


class AudioAEModelConfig(Section):
    sample_rate: int = 48000
    n_fft: int = 960
    hop: int = 480
    latent_dim: int = 128
    width: int = 512
    # ConvNeXt-1D blocks per side (encoder and decoder each), Vocos' width/depth at paper scale.
    blocks: int = Field(8, ge=0)
    intermediate: int = 1536
    kernel_size: int = Field(7, gt=0)

    @model_validator(mode="after")
    def _same_framing(self):
        if self.hop <= 0 or self.n_fft < self.hop or (self.n_fft - self.hop) % 2:
            raise ValueError(f"n_fft {self.n_fft} / hop {self.hop}: 'same' framing needs n_fft >= hop and n_fft - hop even")
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")
        return self


class DiscriminatorConfig(Section):
    """DAC's discriminators: multi-period (MPD) and multi-band multi-scale complex STFT (MB-MS-STFT)."""

    periods: list[int] = [2, 3, 5, 7, 11]
    # MPD conv channels per layer (DAC/HiFi-GAN: 32, 128, 512, 1024, 1024).
    mpd_channels: list[int] = [32, 128, 512, 1024, 1024]
    stft_windows: list[int] = [2048, 1024, 512]
    # Band edges as fractions of the STFT bins (5 bands).
    bands: list[float] = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
    stft_channels: int = Field(32, gt=0)


class AudioAETrainConfig(Section):
    """DAC's training recipe, plus data, scaling, checkpoint and logging settings."""

    batch_size: int = Field(16, gt=0)  # per worker
    # Random crops of the train clips; rounded down to a multiple of the hop.
    segment_seconds: float = Field(0.38, gt=0)
    crops_per_clip: int = Field(1, gt=0)
    shuffle_buffer: int = Field(256, gt=0)
    # Where crops are made: `ray_data` (ray.data.read_webdataset, decode + crop in Ray Data CPU tasks,
    # streamed to each worker) or `in_worker` (each worker decodes its own tars, in its training loop).
    # in_worker by default: equal speed on 2 cores once read and decode were one Ray Data operator
    # (benchmarks/audioae_feed.py), and it needs no CPU beside the workers. The paper preset, on GPU
    # nodes where a synchronous in-loop decode leaves the GPU waiting, uses ray_data.
    feed: Literal["ray_data", "in_worker"] = "in_worker"
    # Ray Data feed: batches each worker prepares ahead, and the CPUs each decode task asks for.
    prefetch_batches: int = run_knob(2, ge=0)
    feed_cpus: float = run_knob(1.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = Field(0.01, ge=0)
    lr_gamma: float = Field(0.999996, gt=0, le=1)  # ExponentialLR, stepped every step
    grad_clip: float = Field(1000.0, gt=0)  # the generator's (DAC: 1000)
    # EDM2's power-function EMA of the generator's weights (spresso.diffusion.ema; its profile width
    # relative to the run's length), or null for none (DAC's recipe). With it, validation and the
    # published model.safetensors are the averaged weights; the raw ones stay in the training state.
    ema_std: Optional[float] = Field(None, gt=0, lt=0.28)
    # The discriminators' own clip (DAC: 10): they see raw waveforms and their gradients spike far
    # above the generator's; at 1000 the clip never acted and one bad batch could wreck D.
    disc_grad_clip: float = Field(10.0, gt=0)
    mel_weight: float = 15.0
    # Waveform L1 (EnCodec's time-domain term), the only term that ties the decoder's phase to
    # the input's: the log-mel L1 is phase-blind and the discriminators align phase only after
    # long GAN training. 0 keeps DAC's recipe as published. Scale: a crop's mean |x| is ~0.05,
    # so a weight of ~3000 puts it on a par with 15 x the mel distance (~4-6 early on).
    waveform_l1_weight: float = Field(0.0, ge=0)
    adv_weight: float = 1.0
    fm_weight: float = 2.0
    gan_loss: Literal["lsgan", "hinge"] = "lsgan"
    # The generator trains on the mel loss alone before this step (0: GAN from the start).
    disc_start_step: int = Field(0, ge=0)
    # Wall-clock minutes this stage trains at most (its schedule runs on the training clock); null:
    # its part of budget_hours, if set, else no limit. See spresso.config.budget.
    time_limit_minutes: Optional[float] = Field(None, gt=0)
    scaling: ScalingSettings = scaling_field()
    checkpoint_every: int = run_knob(1000, gt=0)
    log_every: int = run_knob(50, gt=0)
    valid_every: int = run_knob(5000, gt=0)
    valid_clips: int = run_knob(32, gt=0)
    audio_examples: int = run_knob(3, ge=0)
    seed: int = 0
    # Testing aid: raise once at this step (a marker file in the run folder makes it once only).
    fail_at_step: int | None = run_knob(None)


class LatentCacheConfig(ActorPoolSettings):
    """Filling the x0 cache (`spresso precompute-latents`): write blocks and the encoder pool
    (``actors``, ``cpus_per_actor``, ``gpus_per_actor``, ``label``, ``accelerator``)."""

    # Clips per Zarr block (one shard of x0): the unit one writer owns and a rerun redoes.
    chunk_clips: int = Field(64, gt=0)
    # Clips per encoder call inside an actor.
    batch_size: int = Field(16, gt=0)


class AudioAEConfig(Section):
    cache: LatentCacheConfig = LatentCacheConfig()
    model: AudioAEModelConfig = AudioAEModelConfig()
    disc: DiscriminatorConfig = DiscriminatorConfig()
    train: AudioAETrainConfig = AudioAETrainConfig()
    # Output folder (relative to the workdir) for checkpoints and the x0 cache.
    checkpoint_dir: str = "audioae"
    latents_path: str = "latents/x0.zarr"
    steps: int = Field(2000, gt=0)
