"""Every trainer's first steps and the codec's encode/decode on a second device, as on their first GPU run.

The models sit on ``meta`` (the stand-in accelerator of :mod:`devicecheck`), the inputs and the
noise generators are the CPU ones the real loops hand them (batches from the loaders,
``resumed_stream``'s CPU generator). A CPU generator drawing on the device, a CPU tensor meeting a
device tensor, or a quantizer asking for bf16 on the device fails here as it would on CUDA.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from codec_toys import shared_bundle
from devicecheck import DeviceMixError, OnAccelerator

from spresso.codec.codec import Codec
from spresso.config import SpressoConfig, load_config
from spresso.config.dae import DAEConfig, LatentEncoderConfig, LoRASettings
from spresso.config.dit import DiTConfig, DiTModelConfig
from spresso.data.latent_batches import resumed_stream
from spresso.diffusion.autoencoder import build_dae, build_denoiser
from spresso.diffusion.generate import generate_latents
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.reconstruct import reconstruct_latents
from spresso.models.text_encoder import TextEmbedding
from spresso.quant import QINCo2, QINCo2Spec
from spresso.quant.training import (
    TrainSettings,
    make_optimizer,
    reseed_unused,
    train_step,
)
from spresso.train.audioae import AudioAETrainer
from spresso.train.dit import DiTTrainer
from spresso.train.stage1 import DAETrainer
from spresso.train.stage3 import mix_z

torch.set_num_threads(1)
C, TD, PD, T = 8, 12, 10, 20
ACCEL = "meta"
TINY_AE = ["audioae.model.width=16", "audioae.model.blocks=1", "audioae.model.intermediate=32",
           "audioae.disc.mpd_channels=[4,4,8,8,8]", "audioae.disc.stft_channels=4", "audioae.disc.stft_windows=[512]",
           "audioae.train.disc_start_step=0"]


def cpu_generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LatentRows(torch.utils.data.Dataset):
    """Rows as the caches give them (numpy), so batches come through the real loader and collate."""

    def __init__(self, n: int = 8, z: bool = False):
        rng = np.random.default_rng(0)
        f32 = np.float32
        self.rows = [{"x0": rng.standard_normal((C, T)).astype(f32), "text": rng.standard_normal((5, TD)).astype(f32),
                      "text_mask": np.ones(5, bool), "pooled": rng.standard_normal(PD).astype(f32),
                      "valid_frames": np.int32(T if i % 2 else T // 2),
                      **({"z": rng.standard_normal((6, 5)).astype(f32), "zq": rng.standard_normal((6, 5)).astype(f32)} if z else {})}
                     for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def loop_inputs(z: bool = False):
    """(batches, noise generator) exactly as the diffusion loops get them: ``resumed_stream``'s."""
    stream, generator = resumed_stream(LatentRows(z=z), 4, rank=0, world_size=1, seed=0, start=0)
    assert generator.device.type == "cpu"
    return stream, generator


def dit_config() -> DiTConfig:
    return DiTConfig(model=DiTModelConfig(in_channels=C, width=32, heads=4, joint_blocks=2, single_blocks=1))


def dae_config() -> SpressoConfig:
    return SpressoConfig(dit=dit_config(), dae=DAEConfig(t=4, encoder=LatentEncoderConfig(z_channels=6, heads=2, depth=1),
                                                         lora=LoRASettings(rank=4, alpha=4)))


def normalizer() -> LatentNormalizer:
    return LatentNormalizer([0.1] * C, [2.0] * C)


def on_accel(t: torch.Tensor) -> bool:
    return t.device.type == ACCEL


# -- the check itself ----------------------------------------------------------------------------
def test_the_check_refuses_what_cuda_refuses_and_lets_the_rest_through():
    g = cpu_generator()
    x = torch.zeros(3, device=ACCEL)
    with OnAccelerator() as check:
        with pytest.raises(DeviceMixError, match="a cpu generator drawing on meta"):
            torch.randn(3, device=ACCEL, generator=g)
        with pytest.raises(DeviceMixError, match="a cpu generator drawing on meta"):
            x.normal_(generator=g)
        with pytest.raises(DeviceMixError, match="CPU tensor"):
            x + torch.ones(3)  # a factory without device=
        with pytest.raises(DeviceMixError, match="mixed with accelerator tensors"):
            torch.where(torch.ones(3, dtype=torch.bool), x, torch.ones(3))
        # what is allowed on CUDA: draw on the generator's device then move; 0-dim CPU scalars; CPU indices
        y = torch.randn(3, generator=g).to(ACCEL) + torch.tensor(2.0) + x[torch.tensor([0, 1, 2])]
        assert on_accel(y) and x.is_cuda and float(y.sum()) == 0.0 and y.cpu().shape == (3,)
    assert check.calls > 5 and not x.is_cuda  # outside the mode, meta is meta again


def test_the_check_records_reduced_precision_requests():
    with OnAccelerator() as check:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pass
        with torch.autocast(ACCEL, enabled=False):  # the code's "no autocast here" on the device: allowed
            pass
    assert check.asked_bf16() and check.autocasts[-1] == (ACCEL, None, False)
    assert torch.autocast.__name__ == "autocast" and isinstance(torch.autocast("cpu"), torch.amp.autocast_mode.autocast)


# -- the trainers' first steps --------------------------------------------------------------------
def test_dit_first_steps_on_the_accelerator_with_the_streams_cpu_generator():
    trainer = DiTTrainer(dit_config(), (TD, PD), normalizer(), ACCEL, autocast=contextlib.nullcontext)
    stream, g = loop_inputs()
    with OnAccelerator() as check:
        for _ in range(2):
            scalars, out = trainer.train_step(next(stream), g)
    assert check.calls > 1000 and trainer.step == 2
    assert on_accel(out.loss) and on_accel(out.sigma) and out.per_sample.shape == (4,)
    assert all(on_accel(v) for v in trainer.ema.state_dict().values())


@pytest.mark.parametrize("stage", ["stage1", "stage3"])
def test_dae_first_steps_on_the_accelerator(stage):
    cfg = dae_config()
    torch.manual_seed(0)
    model = build_dae(build_denoiser(cfg.dit, TD, PD), cfg.dae.encoder, cfg.dae.t, cfg.dae.lora)
    trainer = DAETrainer(model, cfg, stage, normalizer(), ACCEL, autocast=contextlib.nullcontext)
    stream, g = loop_inputs(z=stage == "stage3")
    with OnAccelerator() as check:
        for _ in range(2):
            batch, z = next(stream), None
            if stage == "stage3":  # stage 3's z_fn: z and z_q from the loader, mixed with the stream's generator
                z, keep = mix_z(batch["z"].float(), batch["zq"].float(), 0.1, g)
            scalars, out = trainer.train_step(batch, g, z=z)
    assert check.calls > 1000 and trainer.step == 2 and on_accel(out.loss)
    assert all(on_accel(p) for p in trainer.params)


def test_qinco2_training_steps_and_reseed_on_the_accelerator():
    model = QINCo2(QINCo2Spec(d=4, K=8, M=3, L=1, de=8, dh=8, A=4, B=2)).to(ACCEL)
    s = TrainSettings(total_steps=5, beam=2, candidates=4)
    opt, sched = make_optimizer(model, s)
    usage = torch.zeros(3, 8, device=ACCEL)
    with OnAccelerator() as check:
        for _ in range(2):
            xn = model.norm(torch.randn(16, 4).to(ACCEL))
            info, codes = train_step(model, opt, sched, xn, s, usage=usage)
        reseed_unused(model, opt, usage, xn, codes, generator=cpu_generator())  # the CPU generator synced_reseed uses
    assert check.calls > 300 and on_accel(codes) and codes.shape == (16, 3)
    assert not check.asked_bf16()  # the beam search's network runs as decode's: fp32


def test_qinco2_encode_on_the_accelerator_runs_in_decodes_precision():
    """Encode ranks candidates with the network decode applies: bf16 in one and fp32 in the other gives a
    GPU different codes than a CPU for the same z (and codes the decoder does not reproduce best)."""
    model = QINCo2(QINCo2Spec(d=4, K=8, M=3, L=1, de=8, dh=8, A=4, B=2)).to(ACCEL)
    with OnAccelerator() as check:
        codes = model.encode(torch.randn(10, 4).to(ACCEL))
        x_hat = model.decode(codes)
    assert codes.shape == (10, 3) and on_accel(x_hat)
    assert not check.asked_bf16(), f"the quantizer asked for {check.autocasts}"


def test_audioae_gan_steps_on_the_accelerator():
    cfg = load_config("demo", TINY_AE)
    trainer = AudioAETrainer(cfg.audioae, ACCEL)
    with OnAccelerator() as check:
        for _ in range(2):
            out = trainer.train_step(torch.randn(2, 4800))  # CropStream's CPU batch
    assert check.calls > 5000 and trainer.step == 2 and "loss/d" in out
    assert all(on_accel(p) for p in trainer.discriminator.parameters())


# -- the codec -----------------------------------------------------------------------------------
def test_codec_encode_and_decode_on_the_accelerator():
    codec = Codec.from_path(shared_bundle(), device=torch.device(ACCEL))  # a device object: the API accepts meta
    wave = np.random.default_rng(0).standard_normal(48000 * 6).astype(np.float32) * 0.1
    with OnAccelerator() as check:
        data = codec.encode(wave, 48000)
        encode_autocasts = list(check.autocasts)
        out, sr = codec.decode(data, steps=2)
    assert check.calls > 500 and sr == 48000 and out.shape == wave.shape
    assert not any(enabled for _, _, enabled in encode_autocasts), f"encode asked for {encode_autocasts}"


# -- sampling: the noise of a seed is the same on every device ---------------------------------------
def test_reconstruction_and_generation_sample_on_the_accelerator():
    """Seeded samplers draw their noise from a CPU generator and move it (a generator on the device
    would give other numbers per device type, and ``meta``, like some accelerators, has none)."""
    cfg = dae_config()
    torch.manual_seed(0)
    den = build_denoiser(cfg.dit, TD, PD)
    dae = build_dae(build_denoiser(cfg.dit, TD, PD), cfg.dae.encoder, cfg.dae.t, cfg.dae.lora).to(ACCEL)
    text = TextEmbedding(torch.randn(2, 5, TD), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, PD))
    with OnAccelerator() as check:
        x0 = reconstruct_latents(dae, normalizer(), torch.randn(2, 6, 5), T, steps=2, seed=3)
        gen = generate_latents(den.to(ACCEL), text, normalizer(), T, steps=2, seed=3, device=ACCEL)
    assert check.calls > 500 and on_accel(x0) and on_accel(gen)
    assert x0.shape == gen.shape == (2, C, T)
