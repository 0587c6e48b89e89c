"""Decoding speed vs quality: real-time factor and quality against step count, per solver, CPU and GPU.

    python benchmarks/decode.py                          # a trained demo bundle under work/demo/bundles, else random weights
    python benchmarks/decode.py --bundle PATH --steps 8 16 32 64 --clips 2 --compile

For each device (CPU; CUDA when present) and solver (DPM-Solver++(2M), Heun) and step count it
prints: network evaluations, real-time factor (seconds of audio decoded per second, 5 s windows
batched), and quality as log-mel L1 distance and cosine similarity of mean log-mel embeddings,
both against the 64-step Heun output (the paper's decoder) and against the original audio.
With random weights the quality columns only show convergence of the solvers, not audio quality:
the output says which case ran.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import spresso  # noqa: E402
from spresso.diffusion.sampler import evaluations  # noqa: E402
from spresso.quant.features import logmel_frames  # noqa: E402


def logmel(wave: np.ndarray) -> np.ndarray:
    return logmel_frames(wave.astype(np.float32), 48000, n_mels=64)


def quality(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ma, mb = logmel(a), logmel(b)
    n = min(len(ma), len(mb))
    dist = float(np.abs(ma[:n] - mb[:n]).mean())
    ea, eb = ma.mean(0), mb.mean(0)
    cos = float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-12))
    return dist, cos


def find_bundle() -> tuple[Path, str]:
    root = Path("work/demo/bundles")
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if (p / "bundle.json").is_file():
                return p, f"trained demo bundle {p}"
    # lazy: the toy bundle (and the training code that writes it) only when no trained bundle exists
    from codec_toys import make_bundle

    return make_bundle(Path(tempfile.mkdtemp(prefix="bench-decode-"))), "NO trained bundle found: train-free RANDOM weights (tests' toy sizes); quality columns show solver convergence only"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--clips", type=int, default=2, help="5 s clips decoded per measurement (one batch)")
    ap.add_argument("--solvers", nargs="+", default=["dpmpp2m", "heun"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile on GPU")
    ap.add_argument("--devices", nargs="+", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.bundle:
        bundle, what = Path(args.bundle), f"bundle {args.bundle}"
    else:
        bundle, what = find_bundle()
    print(f"model: {what}")
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rng = np.random.default_rng(0)
    t = np.arange(240000) / 48000
    originals = [(0.3 * np.sin(2 * np.pi * (200 + 300 * k) * t) * np.exp(-t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
                 for k in range(args.clips)]
    for device in devices:
        codec = spresso.load(bundle, device=device, batch_size=args.clips, compile=args.compile and device != "cpu")
        datas = codec.encode_batch([(w, 48000) for w in originals])
        print(f"\ndevice {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else f'{args.threads} threads'}), "
              f"t={codec.t}, mode {codec.mode}, {args.clips} x 5 s per batch, bf16={codec.bf16}")
        ref = [w for w, _ in codec.decode_batch(datas, steps=64, solver="heun", seed=0)]
        print(f"{'solver':<8} {'steps':>5} {'NFE':>4} {'RTF':>8} {'ms/5s':>8} {'mel_d(64)':>9} {'cos(64)':>8} {'mel_d(orig)':>11} {'cos(orig)':>9}")
        for solver in args.solvers:
            for steps in args.steps:
                codec.decode_batch(datas[:1], steps=steps, solver=solver, seed=0)  # warm-up (compile, allocator)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                outs = [w for w, _ in codec.decode_batch(datas, steps=steps, solver=solver, seed=0)]
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                q64 = np.mean([quality(o, r) for o, r in zip(outs, ref)], axis=0)
                qo = np.mean([quality(o, r) for o, r in zip(outs, originals)], axis=0)
                audio_s = 5.0 * len(outs)
                print(f"{solver:<8} {steps:>5} {evaluations(steps, solver):>4} {audio_s / dt:>8.2f} {1000 * dt / len(outs):>8.1f} "
                      f"{q64[0]:>9.4f} {q64[1]:>8.4f} {qo[0]:>11.4f} {qo[1]:>9.4f}")


if __name__ == "__main__":
    main()
