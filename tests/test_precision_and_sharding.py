"""The GPU code paths that CPU can exercise: bf16 autocast through the models' forward, and FSDP2 sharding.

bf16: torch.autocast("cpu", dtype=torch.bfloat16) runs the same matmuls in bf16, so the forward passes
must run in bf16 and stay close to fp32. FSDP2: `fully_shard` works on CPU tensors with the gloo backend;
two processes, each with the same batch, must take exactly the step one unsharded process takes.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spresso.config.audioae import AudioAEModelConfig
from spresso.config.dit import DiTConfig, DiTModelConfig
from spresso.diffusion.autoencoder import build_denoiser
from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.audioae import AudioAE
from spresso.models.text_encoder import TextEmbedding
from spresso.quant import QINCo2, QINCo2Spec
from spresso.train.dit import DiTTrainer

torch.set_num_threads(1)
C, TD, PD, T = 8, 12, 10, 16


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def linear_output_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    """Record the dtype every nn.Linear produces during the next forward passes."""
    seen: set[torch.dtype] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    return seen


def dit_config(strategy: str = "ddp") -> DiTConfig:
    cfg = DiTConfig(model=DiTModelConfig(in_channels=C, width=32, heads=4, joint_blocks=2, single_blocks=1))
    cfg.train.warmup_steps, cfg.train.lr, cfg.train.strategy = 0, 1e-2, strategy
    return cfg


def batch(B=4, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x0": torch.randn(B, C, T, generator=g), "text": torch.randn(B, 5, TD, generator=g),
            "text_mask": torch.ones(B, 5, dtype=torch.bool), "pooled": torch.randn(B, PD, generator=g)}


def text(b) -> TextEmbedding:
    return TextEmbedding(b["text"], b["text_mask"], b["pooled"])


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# -- bf16 autocast ---------------------------------------------------------------------------------
# The RMSNorm weights stay float32 under autocast, so PyTorch warns that it cannot fuse them: expected.
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_denoiser_forward_under_bf16_autocast_runs_in_bf16_and_stays_close():
    torch.manual_seed(0)
    den = randomize(build_denoiser(dit_config(), TD, PD)).eval()
    b = batch()
    x, sigma = b["x0"], torch.tensor([0.1, 0.5, 2.0, 10.0])
    with torch.no_grad():
        ref = den(x, sigma, text=text(b))
        seen = linear_output_dtypes(den)
        with bf16():
            out = den(x, sigma, text=text(b))
    assert torch.bfloat16 in seen  # the matmuls ran in bf16 ...
    assert out.dtype == torch.float32  # ... and the preconditioned output is fp32 again (D = c_skip x + c_out F)
    assert torch.isfinite(out).all() and 0 < relative_error(out, ref) < 0.05


def test_audioae_encode_decode_under_bf16_autocast():
    torch.manual_seed(0)
    model = AudioAE.from_config(AudioAEModelConfig(width=32, blocks=1, intermediate=64)).eval()
    wave = torch.randn(2, 4800) * 0.3
    with torch.no_grad():
        ref_z = model.encode(wave)
        ref_w = model.decode(ref_z)
        seen = linear_output_dtypes(model)
        with bf16():
            z = model.encode(wave)
            w = model.decode(ref_z)
    assert torch.bfloat16 in seen
    assert z.shape == ref_z.shape and w.shape == ref_w.shape == wave.shape
    assert torch.isfinite(z).all() and torch.isfinite(w).all()
    assert relative_error(z, ref_z) < 0.05 and relative_error(w, ref_w) < 0.1


def test_qinco2_decode_under_bf16_autocast_stays_close():
    torch.manual_seed(0)
    model = QINCo2(QINCo2Spec(d=8, K=16, M=3, L=1, de=16, dh=16, A=4, B=4)).eval()
    codes = torch.randint(0, 16, (64, 3))
    with torch.no_grad():
        ref = model.decode(codes)
        seen = linear_output_dtypes(model)
        with bf16():
            out = model.decode(codes)
    assert torch.bfloat16 in seen
    assert torch.isfinite(out).all() and relative_error(out, ref) < 0.05


def test_dit_training_step_under_bf16_autocast_keeps_fp32_weights_and_learns():
    torch.manual_seed(0)
    norm = LatentNormalizer([0.0] * C, [1.0] * C)
    trainer = DiTTrainer(dit_config(), (TD, PD), norm, autocast=bf16)
    b = batch()
    seen = linear_output_dtypes(trainer.denoiser)
    losses = [trainer.train_step(b, torch.Generator().manual_seed(0))[0]["loss"] for _ in range(6)]
    assert torch.bfloat16 in seen  # the step ran under the trainer's autocast
    assert all(p.dtype == torch.float32 for p in trainer.denoiser.parameters())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the same (sigma, noise) draw each step: the fit must improve


# -- FSDP2 on CPU (gloo) ---------------------------------------------------------------------------
def fsdp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank (fully_shard keeps each rank's slice)
        norm = LatentNormalizer([0.0] * C, [1.0] * C)
        trainer = DiTTrainer(dit_config("fsdp"), (TD, PD), norm, world_size=world)
        sharded = [p for p in trainer.denoiser.parameters() if hasattr(p, "full_tensor")]
        scalars, _ = trainer.train_step(batch(), torch.Generator().manual_seed(5))
        ema, state, meta = trainer.gather()  # collective: every rank calls it
        if rank == 0:
            torch.save({"sharded": len(sharded), "params": len(list(trainer.denoiser.parameters())),
                        "loss": scalars["loss"], "grad_norm": scalars["grad_norm"],
                        "raw": {k[4:]: v for k, v in state.items() if k.startswith("raw/")}}, os.path.join(out_dir, "rank0.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~20 s on the shared 2-core machine
def test_fsdp2_fully_shard_on_cpu_takes_the_unsharded_step(tmp_path):
    world = 2
    mp.spawn(fsdp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    got = torch.load(tmp_path / "rank0.pt")
    assert got["sharded"] == got["params"] > 0  # every parameter became a sharded DTensor
    torch.manual_seed(0)
    ref = DiTTrainer(dit_config(), (TD, PD), LatentNormalizer([0.0] * C, [1.0] * C))
    before = {k: v.clone() for k, v in ref.denoiser.state_dict().items()}
    scalars, _ = ref.train_step(batch(), torch.Generator().manual_seed(5))
    assert got["loss"] == pytest.approx(scalars["loss"], rel=1e-5)
    assert got["grad_norm"] == pytest.approx(scalars["grad_norm"], rel=1e-4)
    after = ref.denoiser.state_dict()
    assert set(got["raw"]) == set(after)
    moved = 0
    for k, v in after.items():
        torch.testing.assert_close(got["raw"][k], v, rtol=1e-4, atol=1e-5)
        moved += not torch.equal(v, before[k])
    assert moved > 0
