"""The GPU suite: every figure the paper's GPU work depends on, in one command (<= 8 min on one H100/H200).

    python benchmarks/gpu_suite.py --out gpu_suite.json            # on a CUDA machine (bf16, torch.compile)
    python benchmarks/gpu_suite.py --smoke --out /tmp/smoke.json   # the same code paths, tiny sizes, CPU, < 1 min

Random weights (no checkpoints), no network. For the `paper` preset (configs/paper.yaml) it measures:

- each Ray Train stage's step, with the project's trainers (AudioAETrainer, DiTTrainer, DAETrainer for
  stages 1 and 3, quant.training.train_step for QINCo2 at K = 4096 with 8000-vector batches) at the
  per-GPU batch the stage runs with: steps/s, samples/s, peak CUDA memory; the DiT eager and with its blocks
  compiled (dit.train.compile), side by side; for the DiT (FSDP2 when
  torch.distributed can start a process group, over this one GPU) the achieved TFLOP/s (FLOPs counted by
  torch's FlopCounterMode) as a share of the GPU's dense bf16 peak (gpu_reference.BF16_PEAK, with sources);
- QINCo2 encode vectors/s (beam 32, 16 candidates; target >= 16 000) and faiss RQ encoding of the same
  vectors at the same K, M and beam (faiss's ResidualQuantizer encodes on the CPU in every faiss build);
- x0 and z precompute clips/s (the cache actors EncodeLatents on 5 s clips and EncodeZ on their x0);
- decoding 5 s at 1 Hz (t = 100) with the codec (Codec.decode_windows, blocks compiled with torch.compile
  on CUDA): ms per clip for Heun 64 and DPM-Solver++(2M) 8/16/32, each with its relative L2 distance to
  the Heun-64 audio (random weights: solver convergence, not audio quality);
- that each training stage's loss falls over its steps (fixed batch and fixed noise draw, warm-up of the
  learning rate off): a broken GPU path must not pass as fast. Any check that fails exits 1, loudly.

The JSON holds the GPU, date, torch version and every figure; ``stages.<name>.step_seconds`` feeds
``spresso pipeline run CONFIG --dry-run --cost-table FILE`` (measured seconds per step in place of the
assumed ones).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from gpu_reference import dit_batch, gpu_peak  # noqa: E402
from timing import peak_memory_gib, reset_peak_memory, sync, timed  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from spresso.codec import windowing as win  # noqa: E402
from spresso.codec.bundle import BundleParts, dae_from_manifest  # noqa: E402
from spresso.codec.codec import Codec  # noqa: E402
from spresso.config import SpressoConfig, load_config  # noqa: E402
from spresso.config.dit import RHO  # noqa: E402
from spresso.core.checkpoint import save_checkpoint  # noqa: E402
from spresso.data.latents import EncodeLatents  # noqa: E402
from spresso.data.precompute import ROW  # noqa: E402
from spresso.data.z_latents import EncodeZ  # noqa: E402
from spresso.diffusion.autoencoder import build_dae, build_denoiser  # noqa: E402
from spresso.diffusion.checkpoints import CHECKPOINT_KIND as DAE_KIND  # noqa: E402
from spresso.diffusion.normalize import LatentNormalizer  # noqa: E402
from spresso.models.audioae import AudioAE  # noqa: E402
from spresso.quant import FaissRQ, QINCo2  # noqa: E402
from spresso.quant.training import make_optimizer, train_step  # noqa: E402
from spresso.train.audioae import AudioAETrainer  # noqa: E402
from spresso.train.dit import DiTTrainer  # noqa: E402
from spresso.train.qinco2 import build_spec, settings  # noqa: E402
from spresso.train.stage1 import DAETrainer, per_worker_batch  # noqa: E402

TEXT_DIMS = (384, 384)  # MiniLM token and pooled widths (the paper preset's text encoder)
CLIP_FRAMES = 500  # x0 frames of a 5 s clip (100 Hz)
DECODE_T = 100  # 1 Hz z: the lowest rate
DECODE_ROWS = [("heun", 64), ("dpmpp2m", 8), ("dpmpp2m", 16), ("dpmpp2m", 32)]
QINCO2_K = 4096

# --smoke: the paper config shrunk to toy sizes (rehearsal-like), so the same code runs on a CPU in seconds.
SMOKE_OVERRIDES = [
    "audioae.model={latent_dim: 16, width: 16, blocks: 1, intermediate: 32}",
    "audioae.disc={mpd_channels: [4, 4, 8, 8, 8], stft_channels: 4, stft_windows: [512]}",
    "audioae.train.batch_size=2", "audioae.train.segment_seconds=0.1", "audioae.cache.batch_size=2", "dae.zcache.batch_size=2",
    "dit.model={in_channels: 16, width: 32, heads: 4, joint_blocks: 1, single_blocks: 1, patch: 4}",
    "dit.train.batch_size=2", "dae.stage1.batch_size=16", "dae.stage3.batch_size=16",
    "dae.encoder={z_channels: 8, depth: 1, heads: 2}", "dae.lora={rank: 4, alpha: 4}",
    "qinco2={d: 8, M: 3, L: 1, de: 16, dh: 16, batch_size: 256, beam: 4, candidates: 2}",
    "audioae.disc.periods=[2, 3]", "audioae.disc.bands=[0.0, 0.5, 1.0]",
]
# What the suite changes in every run: the loss check needs the learning rate from step 1.
COMMON_OVERRIDES = ["dit.train.warmup_steps=0", "dae.stage1.warmup_steps=0", "dae.stage3.warmup_steps=0",
                    "dit.train.strategy=fsdp"]


class Sizes:
    """Step counts and batch sizes: the full run's, or --smoke's."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.warmup = 0 if smoke else 3
        self.steps = 2 if smoke else 15  # timed training steps per stage
        self.qinco2_steps = 2 if smoke else 6
        self.qinco2_K = 16 if smoke else QINCO2_K
        self.encode_vectors = 512 if smoke else 64000
        self.faiss_vectors = 256 if smoke else 2000
        self.decode_batch = 2 if smoke else 16
        self.decode_steps = [("heun", 2), ("dpmpp2m", 1), ("dpmpp2m", 2), ("dpmpp2m", 3)] if smoke else DECODE_ROWS
        self.precompute_iters = 1 if smoke else 3


def unit_normalizer(cfg: SpressoConfig) -> LatentNormalizer:
    """Zero mean, unit std per channel: random weights need no real x0 statistics."""
    return LatentNormalizer([0.0] * cfg.dit.model.in_channels, [1.0] * cfg.dit.model.in_channels, cfg.dit.diffusion.sigma_data)


def dit_with_compile(cfg: SpressoConfig, compiled: bool):
    """``cfg.dit`` with ``train.compile`` set to ``compiled``."""
    return cfg.dit.model_copy(update={"train": cfg.dit.train.model_copy(update={"compile": compiled})})


def partial_path(out: Path) -> Path:
    """Where each finished part is saved while a run is under way (removed when the run ends)."""
    return out.with_name(out.name + ".partial")


def seeded() -> torch.Generator:
    """The same noise, sigma and dropout draw every step: the loss then falls on the fixed batch."""
    return torch.Generator().manual_seed(0)


def loss_check(name: str, losses: list[float]) -> dict:
    """Did the loss fall? Mean of the first steps against the mean of the last (two each; one in --smoke)."""
    k = 2 if len(losses) >= 4 else 1
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    ok = bool(np.isfinite(losses).all() and last < first)
    return {"stage": name, "loss_first": first, "loss_last": last, "falls": ok}


def run_stage(name: str, step, batch: int, sizes: Sizes, device: torch.device, steps: int | None = None) -> tuple[dict, dict]:
    """Warm-up then timed steps (``steps``, default ``sizes.steps``) of ``step() -> loss``: (figures row, loss check)."""
    losses: list[float] = []
    reset_peak_memory(device)
    step_s = timed(lambda: losses.append(step()), iters=steps or sizes.steps, warmup=sizes.warmup, device=device)
    row = {"stage": name, "batch_per_gpu": batch, "step_seconds": step_s, "steps_per_s": 1 / step_s,
           "samples_per_s": batch / step_s, "peak_memory_GiB": peak_memory_gib(device)}
    return row, loss_check(name, losses)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process_group(device: torch.device) -> str | None:
    """A one-rank process group for FSDP2 (nccl on CUDA, gloo on CPU); None, or why it could not start."""
    if dist.is_initialized():
        return None
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                                rank=0, world_size=1)
        return None
    except Exception as err:  # e.g. a torch built without distributed
        return str(err).splitlines()[0]


# -- the training stages ---------------------------------------------------------------------------------------------
def bench_audioae(cfg: SpressoConfig, sizes: Sizes, device, autocast) -> tuple[dict, dict]:
    tc = cfg.audioae.train
    trainer = AudioAETrainer(cfg.audioae, device, autocast=autocast)
    n = int(tc.segment_seconds * cfg.audioae.model.sample_rate)
    x = (0.1 * torch.randn(tc.batch_size, n, generator=seeded())).to(device)
    return run_stage("train_audioae", lambda: trainer.train_step(x)["loss/mel"], tc.batch_size, sizes, device)


def dit_trainer(dc, norm, device, autocast, why: str | None) -> tuple[DiTTrainer, str]:
    """The DiT trainer as each of the stage's workers builds it: FSDP2 when a process group is up."""
    if why is None:
        # world_size=2 only selects DiTTrainer's FSDP2 wrapping: the group has one rank, so FSDP2 shards over
        # this one GPU, with its bf16 mixed-precision policy, as each of the 16 workers would run it.
        return DiTTrainer(dc, TEXT_DIMS, norm, device, world_size=2, autocast=autocast), "fsdp2 (1 rank)"
    return DiTTrainer(dc, TEXT_DIMS, norm, device, autocast=autocast), "single"


def bench_dit(cfg: SpressoConfig, sizes: Sizes, device, autocast, peak: float | None) -> tuple[dict, dict]:
    """The DiT step as configured (dit.train.compile), then with the other compile setting beside it."""
    C = cfg.dit.model.in_channels
    norm = unit_normalizer(cfg)
    why = start_process_group(device)
    batch = dit_batch(cfg.dit.train.batch_size, C, CLIP_FRAMES, TEXT_DIMS, device, seed=1)
    rows, flops = {}, None
    for compiled in (cfg.dit.train.compile, not cfg.dit.train.compile):
        dc = dit_with_compile(cfg, compiled)
        try:
            trainer, strategy = dit_trainer(dc, norm, device, autocast, why)
        except Exception as err:
            why = str(err).splitlines()[0]
            trainer, strategy = dit_trainer(dc, norm, device, autocast, why)

        def step(t: DiTTrainer = trainer) -> float:
            return t.train_step(batch, seeded())[0]["loss"]

        row, check = run_stage("train_dit", step, dc.train.batch_size, sizes, device)
        row.update(strategy=strategy, compiled=compiled, **({"fsdp_unavailable": why} if why else {}),
                   params_M=sum(p.numel() for p in trainer.denoiser.parameters()) / 1e6)
        if flops is None and not compiled:
            try:  # counted on the eager step: the compiled one does the same arithmetic
                with FlopCounterMode(display=False) as fc:
                    step()
                flops = fc.get_total_flops()
            except Exception as err:  # FLOP counting is a figure, not a check
                row["flops_error"] = str(err).splitlines()[0]
        rows[compiled] = (row, check)
        del trainer, step  # free the first trainer's GPU memory before the second
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row, _ in rows.values():
        if flops:
            row["step_TFLOP"] = flops / 1e12
            row["TFLOP_per_s"] = flops / row["step_seconds"] / 1e12
            if peak:
                row["share_of_bf16_peak"] = row["TFLOP_per_s"] / peak
    row, check = rows[cfg.dit.train.compile]
    other, other_check = rows[not cfg.dit.train.compile]
    row["other_compile_setting"] = other  # the same step with dit.train.compile flipped, measured beside it
    check["other_compile_setting_falls"] = other_check["falls"]
    check["falls"] = check["falls"] and other_check["falls"]
    return row, check


def dae_model(cfg: SpressoConfig, device):
    den = build_denoiser(cfg.dit, *TEXT_DIMS)
    d = cfg.dae
    return build_dae(den.train(), d.encoder, d.t, d.lora, d.audio_down_init).to(device)


def bench_dae(stage: str, cfg: SpressoConfig, sizes: Sizes, device, autocast) -> tuple[dict, dict]:
    tc = cfg.dae.stage1 if stage == "stage1" else cfg.dae.stage3
    C = cfg.dit.model.in_channels
    norm = unit_normalizer(cfg)
    trainer = DAETrainer(dae_model(cfg, device), cfg, stage, norm, device, autocast=autocast)
    b = per_worker_batch(tc.batch_size, max(1, tc.scaling.workers))  # what each of the stage's workers runs
    batch = dit_batch(b, C, CLIP_FRAMES, TEXT_DIMS, device, seed=1)
    z = None
    if stage == "stage3":
        frames = -(-CLIP_FRAMES // cfg.dae.t)
        z = torch.randn(b, cfg.dae.encoder.z_channels, frames, generator=seeded()).to(device)
    row, check = run_stage(stage, lambda: trainer.train_step(batch, seeded(), z=z)[0]["loss"], b, sizes, device)
    row["global_batch"] = tc.batch_size
    return row, check


def qinco2_model(cfg: SpressoConfig, K: int, device) -> tuple[QINCo2, torch.Tensor]:
    q = cfg.qinco2.model_copy(update={"K": K})
    model = QINCo2(build_spec(q, q.d)).to(device)
    x = torch.randn(max(q.batch_size, 1024), q.d, generator=seeded())
    model.norm.fit(x.numpy())
    return model, model.norm(x.to(device))


def bench_qinco2(cfg: SpressoConfig, sizes: Sizes, device, autocast) -> tuple[dict, dict]:
    q = cfg.qinco2
    model, xn = qinco2_model(cfg, sizes.qinco2_K, device)
    s = settings(q.model_copy(update={"K": sizes.qinco2_K}), sizes.warmup + sizes.qinco2_steps)
    opt, sched = make_optimizer(model, s)
    batch = xn[: q.batch_size]

    def step() -> float:
        return train_step(model, opt, sched, batch, s, autocast=autocast())[0]["loss_recon"]

    row, check = run_stage("qinco2", step, q.batch_size, sizes, device, steps=sizes.qinco2_steps)
    row.update(K=sizes.qinco2_K, M=q.M, beam=s.beam, candidates=s.candidates)
    return row, check


def bench_quantizer_encode(cfg: SpressoConfig, sizes: Sizes, device) -> dict:
    q = cfg.qinco2
    model, _ = qinco2_model(cfg, sizes.qinco2_K, device)
    model.eval()
    x = torch.randn(sizes.encode_vectors, q.d, generator=torch.Generator().manual_seed(2))
    xd = x.to(device)
    with torch.no_grad():
        # The untimed first call of each is its warm-up, and its codes are the ones compared.
        codes = model.encode(xd, beam=q.beam, candidates=q.candidates)
        enc_s = timed(lambda: model.encode(xd, beam=q.beam, candidates=q.candidates), iters=1, warmup=0, device=device)
        amp = {}
        if device.type == "cuda":  # bf16 network in the search: a throughput experiment (quant/beam.py), not a codec path
            same = (model.encode(xd, beam=q.beam, candidates=q.candidates, amp=True) == codes).all(-1).float().mean()
            amp_s = timed(lambda: model.encode(xd, beam=q.beam, candidates=q.candidates, amp=True), iters=1, warmup=0, device=device)
            amp = {"qinco2_encode_bf16_vectors_per_s": sizes.encode_vectors / amp_s, "bf16_codes_equal_to_fp32": float(same)}
    rq = FaissRQ(q.d, q.M, sizes.qinco2_K, beam=q.beam)
    g = np.random.default_rng(3)
    rq.set_trained(g.standard_normal((q.M, sizes.qinco2_K, q.d)).astype(np.float32) * 0.3, np.zeros(q.d, np.float32), 1.0)
    xs = x[: sizes.faiss_vectors].numpy()
    faiss_s = timed(lambda: rq.encode(xs), iters=1, warmup=0)  # CPU: nothing to warm up
    return {"K": sizes.qinco2_K, "M": q.M, "beam": q.beam, "candidates": q.candidates,
            "qinco2_vectors": sizes.encode_vectors, "qinco2_encode_vectors_per_s": sizes.encode_vectors / enc_s,
            "qinco2_target_vectors_per_s": 16000, **amp, "faiss_backend": "cpu (faiss ResidualQuantizer has no GPU encoder)",
            "faiss_vectors": len(xs), "faiss_rq_encode_vectors_per_s": len(xs) / faiss_s}


# -- x0 precompute and decoding ----------------------------------------------------------------------------------------
def bench_precompute(cfg: SpressoConfig, sizes: Sizes, device, tmp: Path) -> dict:
    ae = AudioAE.from_config(cfg.audioae.model)
    save_checkpoint(tmp / "audioae", ae.state_dict(), kind="audioae", config=cfg.to_dict(), meta={"step": 0})
    mapper = EncodeLatents(str(tmp / "audioae"))  # the cache actor: its own device pick (CUDA when present)
    b = cfg.audioae.cache.batch_size
    n = win.WINDOW_SAMPLES
    batch = {ROW: np.arange(b), "wave": 0.1 * np.random.default_rng(0).standard_normal((b, n)).astype(np.float32),
             "valid_samples": np.full(b, n), "split": np.array(["train"] * b)}
    s = timed(lambda: mapper(batch), iters=sizes.precompute_iters, warmup=min(1, sizes.warmup), device=mapper.device)
    return {"batch": b, "device": str(mapper.device), "batch_seconds": s, "clips_per_s": b / s}


def bench_precompute_z(cfg: SpressoConfig, sizes: Sizes, tmp: Path) -> dict:
    """The z cache actor (EncodeZ: g_psi on normalised x0) on a batch of x0 rows, from a saved random stage-1 model."""
    C = cfg.dit.model.in_channels
    norm = unit_normalizer(cfg)
    meta = {**norm.to_meta(), "stage": "stage1", "t": cfg.dae.t, "text_dims": list(TEXT_DIMS),
            "dit_config": cfg.dit.model_dump(mode="json")}
    save_checkpoint(tmp / "stage1", dae_model(cfg, "cpu").state_dict(), kind=DAE_KIND, config=cfg.to_dict(), meta=meta)
    mapper = EncodeZ(str(tmp / "stage1"))
    b = cfg.dae.zcache.batch_size
    batch = {ROW: np.arange(b), "x0": np.random.default_rng(0).standard_normal((b, C, CLIP_FRAMES)).astype(np.float16),
             "valid_frames": np.full(b, CLIP_FRAMES), "split": np.array(["train"] * b)}
    s = timed(lambda: mapper(batch), iters=sizes.precompute_iters, warmup=min(1, sizes.warmup), device=mapper.device)
    return {"batch": b, "device": str(mapper.device), "batch_seconds": s, "clips_per_s": b / s, "t": cfg.dae.t}


def decode_codec(cfg: SpressoConfig, device, compile_blocks: bool, batch: int) -> Codec:
    """A continuous 1 Hz codec with random weights, built as a bundle's parts would be."""
    dit = {k: v for k, v in cfg.dit.model_dump(mode="json").items() if k != "train"}
    manifest = {"t": DECODE_T, "mode": "continuous", "sample_rate": 48000, "text_dims": list(TEXT_DIMS),
                "configs": {"dit": dit, "encoder": cfg.dae.encoder.model_dump(mode="json")},
                "sampler": {"steps": 64, "solver": "heun", "rho": RHO}}
    parts = BundleParts(manifest, AudioAE.from_config(cfg.audioae.model), dae_from_manifest(manifest), None,
                        unit_normalizer(cfg), Path("."))
    return Codec(parts, device, batch_size=batch, compile=compile_blocks)


def bench_decode(cfg: SpressoConfig, sizes: Sizes, device, compile_blocks: bool) -> list[dict]:
    codec = decode_codec(cfg, device, compile_blocks, sizes.decode_batch)
    b = sizes.decode_batch
    z = torch.randn(b, cfg.dae.encoder.z_channels, codec.frames_per_window, generator=seeded()).to(device)
    noise = codec.window_noise(0, [(0, k) for k in range(b)])
    rows, ref = [], None
    for solver, steps in sizes.decode_steps:
        out: list[np.ndarray] = []
        reset_peak_memory(device)
        s = timed(lambda: out.append(codec.decode_windows(z, noise, steps, solver, RHO)), iters=1, warmup=min(1, sizes.warmup),
                  device=device)
        audio = out[-1]
        if ref is None:
            ref = audio
        dist_l2 = float(np.linalg.norm(audio - ref) / max(np.linalg.norm(ref), 1e-12))
        rows.append({"solver": solver, "steps": steps, "reference": f"{sizes.decode_steps[0][0]} {sizes.decode_steps[0][1]}", "clips_per_batch": b, "ms_per_clip": 1000 * s / b,
                     "rel_l2_to_reference": dist_l2, "compiled": compile_blocks, "peak_memory_GiB": peak_memory_gib(device)})
    return rows


# -- --profile: where the time of the two missed targets goes ----------------------------------------------------------
def kernel_summary(fn, device, steps: int, top: int = 12) -> dict:
    """torch.profiler over ``steps`` calls of ``fn``: per call, the wall time, the device's summed kernel time
    (its busy share: low means launch- or host-bound), the kernel count, and the top ops by device time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()
    sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        wall = (time.perf_counter() - t0) / steps
    kernels = [e for e in prof.events() if cuda and e.device_type.name == "CUDA"]
    busy = sum(e.device_time_total for e in kernels) / 1e6 / steps if cuda else None  # us -> s per call
    key = "device_time_total" if cuda else "cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return {"wall_seconds": wall, "device_busy_seconds": busy, "device_busy_share": busy / wall if cuda else None,
            "kernels_per_call": len(kernels) / steps if cuda else None,
            "top": [{"op": e.key[:80], "ms_per_call": getattr(e, key) / 1e3 / steps, "calls": e.count // steps} for e in ops]}


def profile_dit(cfg: SpressoConfig, sizes: Sizes, device, autocast, compiled: bool) -> dict:
    """The DiT step (no FSDP) at its batch and at twice it, then profiled at its batch."""
    C = cfg.dit.model.in_channels
    norm = unit_normalizer(cfg)
    b = cfg.dit.train.batch_size
    dc = dit_with_compile(cfg, compiled)
    trainer = DiTTrainer(dc, TEXT_DIMS, norm, device, autocast=autocast)
    rows = {}
    for batch_size in (b, 2 * b):
        batch = dit_batch(batch_size, C, CLIP_FRAMES, TEXT_DIMS, device, seed=1)
        step_s = timed(lambda: trainer.train_step(batch, seeded()), iters=sizes.steps // 3 or 1,
                       warmup=max(1, sizes.warmup), device=device)
        rows[f"batch_{batch_size}"] = {"step_seconds": step_s, "samples_per_s": batch_size / step_s}
    batch = dit_batch(b, C, CLIP_FRAMES, TEXT_DIMS, device, seed=1)
    rows["profile"] = kernel_summary(lambda: trainer.train_step(batch, seeded()), device, steps=3)
    print(f"  profile dit {'compiled' if compiled else 'eager'}: {rows[f'batch_{b}']['samples_per_s']:.0f} -> "
          f"{rows[f'batch_{2 * b}']['samples_per_s']:.0f} samples/s at batch {b} -> {2 * b}, "
          f"device busy {fmt(rows['profile']['device_busy_share'], '.0%')}", file=sys.stderr, flush=True)
    return rows


def profile_encode(cfg: SpressoConfig, sizes: Sizes, device) -> dict:
    q = cfg.qinco2
    model, _ = qinco2_model(cfg, sizes.qinco2_K, device)
    model.eval()
    x = torch.randn(sizes.encode_vectors // 4, q.d, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        out = kernel_summary(lambda: model.encode(x, beam=q.beam, candidates=q.candidates), device, steps=1)
    print(f"  profile qinco2 encode: device busy {fmt(out['device_busy_share'], '.0%')}", file=sys.stderr, flush=True)
    return {**out, "vectors": len(x)}


def profile_parts(cfg: SpressoConfig, sizes: Sizes, device, autocast, partial: Path | None = None) -> dict:
    """Eager DiT, QINCo2 encode, compiled DiT (slowest to start, last); each saved to ``partial`` as it ends."""
    out: dict = {"dit": {}}
    for where, name, fn in ((out["dit"], "eager", lambda: profile_dit(cfg, sizes, device, autocast, False)),
                            (out, "qinco2_encode", lambda: profile_encode(cfg, sizes, device)),
                            (out["dit"], "compiled", lambda: profile_dit(cfg, sizes, device, autocast, True))):
        where[name] = attempt(f"profile {name}", fn, device)
        if partial is not None:
            partial.write_text(json.dumps(out, indent=1) + "\n")
    return out


def top_op_lines(pr: dict, n: int = 8) -> list[str]:
    return [f"    {t['ms_per_call']:8.2f} ms {t['calls']:>5}x  {t['op']}" for t in pr["top"][:n]]


def profile_table(prof: dict) -> str:
    lines = []
    for mode, rows in prof.get("dit", {}).items():
        if "error" in rows:
            lines.append(f"DiT {mode}: ERROR {rows['error']}")
            continue
        pr = rows["profile"]
        scale = ", ".join(f"{k.split('_')[1]}: {v['samples_per_s']:.0f}" for k, v in rows.items() if k.startswith("batch_"))
        lines.append(f"DiT {mode}: samples/s by batch {scale}; step {pr['wall_seconds'] * 1e3:.1f} ms, device busy "
                     f"{fmt(pr['device_busy_share'], '.0%')}, {fmt(pr['kernels_per_call'])} kernels")
        lines += top_op_lines(pr)
    pr = prof.get("qinco2_encode")
    if pr is not None and "error" in pr:
        lines.append(f"QINCo2 encode: ERROR {pr['error']}")
    elif pr is not None:
        lines.append(f"QINCo2 encode of {pr['vectors']} vectors: {pr['wall_seconds']:.2f} s, device busy "
                     f"{fmt(pr['device_busy_share'], '.0%')}, {fmt(pr['kernels_per_call'])} kernels")
        lines += top_op_lines(pr)
    return "\n".join(lines)


# -- the report ---------------------------------------------------------------------------------------------------------
def fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def table(result: dict) -> str:
    lines = [f"GPU suite: {result['gpu']} ({result['device']}), torch {result['torch']}, {result['date']}"
             + (" [SMOKE: toy sizes, CPU]" if result["smoke"] else "")]
    lines.append(f"{'stage':<14}{'batch':>6}{'steps/s':>10}{'samples/s':>11}{'peak GiB':>10}  loss first -> last")
    checks = {c["stage"]: c for c in result["loss_checks"]}
    for name, r in result["stages"].items():
        c = checks.get(name, {})
        if "error" in r:
            lines.append(f"{name:<14} ERROR: {r['error']}")
            continue
        lines.append(f"{name:<14}{r['batch_per_gpu']:>6}{fmt(r['steps_per_s']):>10}{fmt(r['samples_per_s']):>11}"
                     f"{fmt(r['peak_memory_GiB']):>10}  {fmt(c.get('loss_first'), '.5g')} -> {fmt(c.get('loss_last'), '.5g')}"
                     f" {'ok' if c.get('falls') else 'DID NOT FALL'}")
    d = result["stages"]["train_dit"]
    for r in (d, d.get("other_compile_setting") or {}):
        if r.get("step_seconds"):
            lines.append(f"DiT ({r.get('strategy')}, {'compiled' if r.get('compiled') else 'eager'}): "
                         f"{fmt(r.get('steps_per_s'))} steps/s, {fmt(r.get('TFLOP_per_s'))} TFLOP/s = "
                         f"{fmt(r.get('share_of_bf16_peak'), '.1%')} of bf16 peak {fmt(result.get('bf16_peak_TFLOP_per_s'))} "
                         f"(target >= 40%)")
    q, p, dec = result["quantizer_encode"], result["precompute"], result["decode"]
    if "error" in q:
        lines.append(f"QINCo2 encode / faiss RQ: ERROR: {q['error']}")
    else:
        lines.append(f"QINCo2 encode (K={q['K']}, beam {q['beam']}): {q['qinco2_encode_vectors_per_s']:,.0f} vectors/s (target >= 16,000); "
                     f"faiss RQ [{q['faiss_backend']}]: {q['faiss_rq_encode_vectors_per_s']:,.0f} vectors/s")
        if "qinco2_encode_bf16_vectors_per_s" in q:
            lines.append(f"  QINCo2 encode with a bf16 network (experiment): {q['qinco2_encode_bf16_vectors_per_s']:,.0f} vectors/s, "
                         f"{q['bf16_codes_equal_to_fp32']:.1%} of codes equal to fp32's")
    for what, p in (("x0 precompute", p), ("z precompute", result["precompute_z"])):
        lines.append(f"{what}: ERROR: {p['error']}" if "error" in p else
                     f"{what}: {p['clips_per_s']:.3g} clips/s ({p['device']}, batch {p['batch']})")
    if isinstance(dec, dict):
        lines.append(f"decode 5 s at 1 Hz: ERROR: {dec['error']}")
    else:
        lines.append(f"decode 5 s at 1 Hz: solver steps  ms/clip  rel-L2 to the first row ({dec[0]['reference']})")
        for r in dec:
            lines.append(f"  {r['solver']:<8}{r['steps']:>6}{r['ms_per_clip']:>9.1f}{r['rel_l2_to_reference']:>10.4f}")
    return "\n".join(lines)


def attempt(what: str, fn, device: torch.device):
    """``fn()``, or {"error": one line} with the traceback on stderr: one broken part must not hide the others."""
    try:
        return fn()
    except Exception as err:
        traceback.print_exc()
        print(f"  {what}: ERROR {type(err).__name__}", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def failures(result: dict) -> list[str]:
    """What makes the run fail: errors anywhere, and losses that did not fall."""
    out = [f"{c['stage']}: the loss did not fall" for c in result["loss_checks"] if not c["falls"] and "error" not in c]
    parts = {**{f"stage {k}": v for k, v in result["stages"].items()}, "quantizer_encode": result["quantizer_encode"],
             "precompute": result["precompute"], "precompute_z": result["precompute_z"], "decode": result["decode"]}
    return out + [f"{k}: {v['error']}" for k, v in parts.items() if isinstance(v, dict) and "error" in v]


def setup(smoke: bool):
    """(sizes, cuda, device, autocast, paper config) for a run: CUDA with TF32 and bf16 autocast when present
    (and not --smoke), else the CPU at two threads in float32."""
    sizes = Sizes(smoke)
    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(min(2, torch.get_num_threads()))

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    return sizes, cuda, device, autocast, load_config("paper", (SMOKE_OVERRIDES if smoke else []) + COMMON_OVERRIDES)


def run_suite(smoke: bool, partial: Path | None = None) -> dict:
    """Every part in turn; after each, what is known so far goes to ``partial`` (a run cut short keeps its figures)."""
    sizes, cuda, device, autocast, cfg = setup(smoke)
    gpu = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    peak, peak_source = gpu_peak(gpu) if cuda else (None, None)
    torch.manual_seed(0)
    t0 = time.time()
    stages, checks = {}, []
    result = {"suite": "gpu_suite", "version": 1, "smoke": smoke, "gpu": gpu, "device": str(device),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None, "host": platform.node(),
              "config": "paper" + (" (smoke overrides)" if smoke else ""), "dtype": "bf16 autocast" if cuda else "float32",
              "bf16_peak_TFLOP_per_s": peak, "bf16_peak_source": peak_source,
              "stages": stages, "loss_checks": checks}

    def record(**parts) -> None:
        result.update(parts, seconds=time.time() - t0)
        for part in parts:
            print(f"  {part}: done ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)
        if partial is not None:
            partial.write_text(json.dumps(result, indent=1) + "\n")
    for name, fn in (("train_audioae", lambda: bench_audioae(cfg, sizes, device, autocast)),
                     ("train_dit", lambda: bench_dit(cfg, sizes, device, autocast, peak)),
                     ("stage1", lambda: bench_dae("stage1", cfg, sizes, device, autocast)),
                     ("stage3", lambda: bench_dae("stage3", cfg, sizes, device, autocast)),
                     ("qinco2", lambda: bench_qinco2(cfg, sizes, device, autocast))):
        out = attempt(name, fn, device)
        row, check = (out if isinstance(out, tuple) else ({"stage": name, **out}, {"stage": name, "falls": False, **out}))
        stages[name] = row
        checks.append(check)
        record()
        print(f"  {name}: {fmt(row.get('steps_per_s'))} steps/s ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    record(quantizer_encode=attempt("quantizer encode", lambda: bench_quantizer_encode(cfg, sizes, device), device))
    with tempfile.TemporaryDirectory() as tmp:
        record(precompute=attempt("precompute", lambda: bench_precompute(cfg, sizes, device, Path(tmp)), device))
        record(precompute_z=attempt("precompute_z", lambda: bench_precompute_z(cfg, sizes, Path(tmp)), device))
    record(decode=attempt("decode", lambda: bench_decode(cfg, sizes, device, compile_blocks=cuda), device))
    return result


def run_profile(smoke: bool, out: Path) -> int:
    sizes, cuda, device, autocast, cfg = setup(smoke)
    prof = profile_parts(cfg, sizes, device, autocast, partial=partial_path(out))
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    out.write_text(json.dumps({"suite": "gpu_suite_profile", "smoke": smoke, "gpu": gpu, "torch": torch.__version__,
                               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               "profile": prof}, indent=1) + "\n")
    partial_path(out).unlink(missing_ok=True)
    print(profile_table(prof))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (CI): same code paths, figures meaningless")
    p.add_argument("--out", default="gpu_suite.json", help="JSON file to write [gpu_suite.json]")
    p.add_argument("--profile", action="store_true",
                   help="instead of the figures: where the DiT step's and QINCo2 encode's time goes (profiler, batch scaling)")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device (use --smoke for the CPU check of the code paths)", file=sys.stderr)
        return 2
    if args.profile:
        return run_profile(args.smoke, Path(args.out))
    out = Path(args.out)
    result = run_suite(args.smoke, partial=partial_path(out))
    failed = result["failures"] = failures(result)
    out.write_text(json.dumps(result, indent=1) + "\n")
    partial_path(out).unlink(missing_ok=True)
    print(table(result))
    if failed:
        print("FAILED (a wrong GPU path must not pass as fast):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
