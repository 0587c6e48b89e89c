"""Every Ray Train stage under DDP on 2 CPU workers (gloo): the replicas stay identical.

Each rank does what its Ray Train worker does: seeds torch with ``seed + rank`` (``worker_setup``),
builds its trainer with the model wrapped in DDP (``TrainContext.prepare_model`` is Ray's DDP
wrapper; plain ``DistributedDataParallel`` here, without a Ray cluster), and takes the stage's real
training steps on its own batches. DDP broadcasts rank 0's weights once and all-reduces gradients;
anything else a rank keeps on its own (an EMA built before the broadcast, codewords re-seeded from
its own batch, its own scheduler) drifts for good. After the steps, every parameter, buffer and
EMA entry must be bit-identical on both ranks. One spawn runs all stages (process start-up dominates).
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from spresso.config import SpressoConfig, load_config
from spresso.config.dae import DAEConfig, LatentEncoderConfig, LoRASettings
from spresso.config.dit import DiTConfig, DiTModelConfig
from spresso.diffusion.autoencoder import build_dae, build_denoiser
from spresso.diffusion.normalize import LatentNormalizer
from spresso.quant import QINCo2, QINCo2Spec
from spresso.quant.training import TrainSettings, make_optimizer, train_step
from spresso.train.audioae import AudioAETrainer
from spresso.train.dit import DiTTrainer
from spresso.train.qinco2 import synced_reseed
from spresso.train.stage1 import DAETrainer
from spresso.train.stage3 import mix_z

C, TD, PD, T, STEPS = 8, 12, 10, 20, 3
STAGES = ("audioae", "dit", "stage1", "stage3", "qinco2")
TINY_AE = ["audioae.model.width=16", "audioae.model.blocks=1", "audioae.model.intermediate=32",
           "audioae.disc.mpd_channels=[4,4,8,8,8]", "audioae.disc.stft_channels=4", "audioae.disc.stft_windows=[512]",
           "audioae.train.disc_start_step=0", "audioae.train.lr=1e-3"]


def rank_batch(rank: int, step: int, B: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)  # every rank reads its own share of the data
    return {"x0": torch.randn(B, C, T, generator=g), "text": torch.randn(B, 5, TD, generator=g),
            "text_mask": torch.ones(B, 5, dtype=torch.bool), "pooled": torch.randn(B, PD, generator=g),
            "valid_frames": torch.tensor([T] + [T // 2 + rank] * (B - 1))}  # padded clips: stage 1/3 mask them


def state(*modules, ema: dict | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for i, m in enumerate(modules):
        out.update({f"{i}/{k}": v.detach().clone() for k, v in getattr(m, "module", m).state_dict().items()})
    out.update({f"ema/{k}": v.detach().clone() for k, v in (ema or {}).items()})
    return out


def run_audioae(rank: int) -> dict:
    trainer = AudioAETrainer(load_config("demo", TINY_AE).audioae, prepare=DDP)
    for i in range(STEPS):
        out = trainer.train_step(torch.randn(2, 4800, generator=torch.Generator().manual_seed(10 * rank + i)) * 0.1)
    assert "loss/d" in out  # the discriminator stepped too
    return state(trainer.generator, trainer.discriminator)


def run_dit(rank: int) -> dict:
    cfg = DiTConfig(model=DiTModelConfig(in_channels=C, width=32, heads=4, joint_blocks=2, single_blocks=1))
    trainer = DiTTrainer(cfg, (TD, PD), LatentNormalizer([0.0] * C, [1.0] * C), prepare=DDP)
    g = torch.Generator().manual_seed(7 + rank)  # resumed_stream: a generator per rank
    for i in range(STEPS):
        trainer.train_step(rank_batch(rank, i), g)
    return state(trainer.denoiser, ema=trainer.ema.state_dict())


def dae_cfg() -> SpressoConfig:
    return SpressoConfig(dit=DiTConfig(model=DiTModelConfig(in_channels=C, width=32, heads=4, joint_blocks=2, single_blocks=1)),
                         dae=DAEConfig(t=4, encoder=LatentEncoderConfig(z_channels=6, heads=2, depth=1), lora=LoRASettings(rank=4, alpha=4)))


def run_dae(rank: int, stage: str) -> dict:
    cfg = dae_cfg()
    torch.manual_seed(0)  # the pretrained DiT: the same checkpoint on every rank
    den = build_denoiser(cfg.dit, TD, PD)
    torch.manual_seed(100 + rank)  # g_psi, LoRA, audio-down: fresh per rank, as dae_from_dit builds them
    model = build_dae(den, cfg.dae.encoder, cfg.dae.t, cfg.dae.lora)
    trainer = DAETrainer(model, cfg, stage, LatentNormalizer([0.0] * C, [1.0] * C), prepare=DDP)
    g = torch.Generator().manual_seed(7 + rank)
    for i in range(STEPS):
        z = None
        if stage == "stage3":
            zg = torch.Generator().manual_seed(50 * rank + i)
            z, _ = mix_z(torch.randn(2, 6, 5, generator=zg), torch.randn(2, 6, 5, generator=zg), 0.5, g)
        trainer.train_step(rank_batch(rank, i), g, z=z)
    return state(trainer.model_raw)


def run_qinco2(rank: int) -> dict:
    class Ctx:  # what synced_reseed reads of TrainContext
        world_size = dist.get_world_size()

    core = QINCo2(QINCo2Spec(d=4, K=32, M=2, L=1, de=8, dh=8, A=4, B=2))
    model = DDP(core)
    s = TrainSettings(lr=1e-2, warmup_steps=0, total_steps=2 * STEPS, beam=2, candidates=4)
    opt, sched = make_optimizer(core, s)
    usage = torch.zeros(core.M, core.spec.K)
    for i in range(2 * STEPS):  # an epoch, the re-seed the loop does after it, another epoch
        xn = torch.randn(8, 4, generator=torch.Generator().manual_seed(20 * rank + i))
        info, codes = train_step(model, opt, sched, xn, s, usage=usage)
        if i == STEPS - 1:
            moved = synced_reseed(Ctx(), core, opt, usage, (xn, codes), seed=3)
            assert moved > 0  # 32 codewords, 8 vectors per rank: some died
    return {**state(core), "opt/exp_avg_sq": torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in core.parameters()])}


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {}
        for stage in STAGES:
            torch.manual_seed(rank)  # worker_setup: seed + rank, so each rank draws its own initial weights
            run = {"audioae": run_audioae, "dit": run_dit, "qinco2": run_qinco2}.get(stage)
            with contextlib.redirect_stderr(open(os.devnull, "w")):  # ExponentialLR's intended warning, per rank
                results[stage] = run(rank) if run else run_dae(rank, stage)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


@pytest.mark.slow  # two spawned processes, all stages: 15 s of CPU, 40-130 s on the shared 2-core machine
@pytest.mark.parametrize("stage", STAGES)
def test_ddp_replicas_stay_identical(replicas, stage):
    r0, r1 = replicas[0][stage], replicas[1][stage]
    assert set(r0) == set(r1) and len(r0) > 2
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"{stage}: {len(differ)} of {len(r0)} entries differ between ranks, e.g. {differ[:3]}"
