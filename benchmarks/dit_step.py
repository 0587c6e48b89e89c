"""DiT training-step and sampling benchmark for the demo and paper presets.

    python benchmarks/dit_step.py                      # both presets, device auto
    python benchmarks/dit_step.py --presets paper --batch 32 --compile

Reports per preset: parameters, train step time, samples/s and audio-seconds/s; the step's
FLOPs (counted by torch's FlopCounterMode: matmuls + attention, forward and backward) and, on a
GPU, achieved TFLOP/s against the GPU's dense bf16 peak (target: >= 40% for `paper`) and the
time to sample 5 s of audio (500 x0 frames) with 64 Heun steps (127 evaluations).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from gpu_reference import dit_batch, gpu_peak  # noqa: E402  (this script's folder is on sys.path)
from timing import sync, timed  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from spresso.config import load_config  # noqa: E402
from spresso.diffusion.generate import generate_latents  # noqa: E402
from spresso.diffusion.normalize import LatentNormalizer  # noqa: E402
from spresso.models.dit import count_parameters  # noqa: E402
from spresso.models.text_encoder import TextEmbedding  # noqa: E402
from spresso.train.dit import DiTTrainer  # noqa: E402


def bench_preset(preset: str, batch: int, steps: int, device: torch.device, compile_model: bool, sample: bool) -> dict:
    cfg = load_config(preset).dit
    C, frames, text_dims = cfg.model.in_channels, 500, (384, 384)
    norm = LatentNormalizer([0.0] * C, [1.0] * C)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else None
    trainer = DiTTrainer(cfg, text_dims, norm, device, autocast=autocast)
    if compile_model:
        trainer.model = torch.compile(trainer.model)
    data = dit_batch(batch, C, frames, text_dims, device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # warm-up (allocator, kernels, compile)
        trainer.train_step(data, gen)
    sync(device)
    with FlopCounterMode(display=False) as fc:
        trainer.train_step(data, gen)
    flops = fc.get_total_flops()
    step_s = timed(lambda: trainer.train_step(data, gen), iters=steps, warmup=0, device=device)  # warmed up above
    out = {"preset": preset, "device": str(device), "params_M": count_parameters(trainer.denoiser) / 1e6, "batch": batch,
           "tokens_per_sample": frames // cfg.model.patch + 32, "step_s": step_s, "samples_per_s": batch / step_s,
           "audio_s_per_s": batch * 5.0 / step_s, "step_TFLOP": flops / 1e12, "TFLOP_per_s": flops / step_s / 1e12}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak, _ = gpu_peak(name)
        out["gpu"] = name
        if peak:
            out["bf16_peak_TFLOP_per_s"] = peak
            out["fraction_of_peak"] = out["TFLOP_per_s"] / peak
    if sample:
        model = trainer.denoiser.eval()
        emb = TextEmbedding(data["text"][:1], data["text_mask"][:1], data["pooled"][:1])
        generate_latents(model, emb, norm, frames, steps=2, device=device, autocast=autocast)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        generate_latents(model, emb, norm, frames, steps=64, device=device, autocast=autocast)
        sync(device)
        out["sample_5s_64steps_s"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["demo", "paper"])
    p.add_argument("--batch", type=int, default=None, help="per preset default: GPU 32; CPU demo 8, paper 1")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default GPU 20, CPU 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--no-sample", action="store_true", help="skip the 64-step sampling timing")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for preset in args.presets:
        batch = args.batch or (32 if device.type == "cuda" else (8 if preset == "demo" else 1))
        steps = args.steps or (20 if device.type == "cuda" else 3)
        sample = not args.no_sample and (device.type == "cuda" or preset == "demo")
        r = bench_preset(preset, batch, steps, device, args.compile, sample)
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
