"""AudioAE and x0-cache throughput.

    python benchmarks/audioae.py [--config demo|paper] [--audioae CKPT] [--audio DIR] [--clips 32] [--out result.json]

Measures, on CPU and (when CUDA is present) on the GPU:
- encoder and decoder throughput in seconds of audio per second (5 s clips, float32; bf16
  autocast as well on GPU);
- Zarr writes of whole blocks and reads (whole blocks, and random clip batches the way a
  training loader reads them) in MB/s of raw float16 x0;
- compressed bytes per clip (Blosc zstd + bitshuffle) against raw float16 (128 x 500 x 2 bytes).

Latents come from a trained checkpoint when ``--audioae`` is given (compression depends on
them); otherwise from a randomly initialised model of the preset, which is noted in the output.
Audio comes from ``--audio`` (default ../shared/data/sfx-dev when present, else a synthetic corpus).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spresso.audio.io import AUDIO_EXTENSIONS, AudioError, load_mono  # noqa: E402
from spresso.audio.synth import synth_corpus  # noqa: E402
from spresso.config import load_config  # noqa: E402
from spresso.data.latents import frame_sums, latent_arrays  # noqa: E402
from spresso.data.zarr_cache import CacheDataset, ClipCache  # noqa: E402
from spresso.models.audioae import AudioAE, load_audioae  # noqa: E402

SR = 48000


def load_clips(folder: Path, n: int, clip_samples: int) -> np.ndarray:
    clips: list[np.ndarray] = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        try:
            wave = load_mono(str(path), SR)[0]
        except AudioError:
            continue
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        for start in range(0, max(len(wave), 1), clip_samples):
            clip = np.zeros(clip_samples, np.float32)
            piece = wave[start : start + clip_samples]
            clip[: len(piece)] = piece
            clips.append(clip)
            if len(clips) == n:
                return np.stack(clips)
    if not clips:
        raise SystemExit(f"no audio found in {folder}")
    reps = -(-n // len(clips))
    return np.stack((clips * reps)[:n])


def audio_folder(arg: str | None, tmp: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), arg
    dev = Path(__file__).resolve().parents[2] / "shared" / "data" / "sfx-dev"
    if dev.is_dir():
        return dev, "sfx-dev"

    synth_corpus(tmp / "synth", minutes=3, seed=0)
    return tmp / "synth", "synth_corpus(3 min)"


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up (allocations, cuDNN autotune)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def bench_model(model: AudioAE, clips: np.ndarray, device: str, batch: int, repeats: int) -> dict:
    model = model.to(device).eval()
    wave = torch.from_numpy(clips[:batch]).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    audio_s = wave.shape[0] * wave.shape[1] / SR
    out = {}
    modes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if device == "cuda" else [])
    for name, dtype in modes:
        def run(f):
            with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                return f()
        with torch.inference_mode():
            x0 = model.encode(wave)
        enc = timed(lambda: run(lambda: model.encode(wave)), repeats, sync)
        dec = timed(lambda: run(lambda: model.decode(x0)), repeats, sync)
        out[name] = {"encode_audio_s_per_s": round(audio_s / enc, 1), "decode_audio_s_per_s": round(audio_s / dec, 1)}
    return out


def encode_all(model: AudioAE, clips: np.ndarray, batch: int) -> np.ndarray:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    parts = []
    with torch.inference_mode():
        for i in range(0, len(clips), batch):
            parts.append(model.encode(torch.from_numpy(clips[i : i + batch]).to(device)).float().cpu().numpy())
    return np.concatenate(parts).astype(np.float16)


def bench_zarr(x0: np.ndarray, chunk_rows: int, tmp: Path, loader_batch: int) -> dict:
    n, c, t = x0.shape
    raw = x0.nbytes
    valid = np.full(n, t, np.int32)
    s, sq = frame_sums(x0, valid)
    split = np.array(["train"] * n)
    cache = ClipCache.create(tmp / "bench.zarr", [f"k{i}" for i in range(n)], latent_arrays(c, t), chunk_rows)
    t0 = time.perf_counter()
    for a, b in cache.blocks():
        cache.write_block(a, b, x0=x0[a:b], valid_frames=valid[a:b], split=split[a:b], x0_sum=s[a:b], x0_sqsum=sq[a:b])
    write_s = time.perf_counter() - t0
    x0_bytes = sum(p.stat().st_size for p in (tmp / "bench.zarr" / "x0").rglob("*") if p.is_file())

    reader = ClipCache.open(cache.path, mode="r")
    t0 = time.perf_counter()
    back = np.concatenate([reader.read("x0", slice(a, b)) for a, b in reader.blocks()])
    block_read_s = time.perf_counter() - t0
    assert np.array_equal(back, x0)

    ds = CacheDataset(cache.path, ["x0"])
    rng = np.random.default_rng(0)
    batches = max(1, n // loader_batch)
    t0 = time.perf_counter()
    for _ in range(batches):
        ds.__getitems__(rng.choice(n, size=min(loader_batch, n), replace=False).tolist())
    random_s = time.perf_counter() - t0
    clip_raw = c * t * 2
    return {
        "clips": n,
        "chunk_rows": chunk_rows,
        "raw_float16_bytes_per_clip": clip_raw,
        "compressed_bytes_per_clip": round(x0_bytes / n),
        "compression_ratio": round(clip_raw * n / x0_bytes, 3),
        "write_MB_per_s": round(raw / write_s / 1e6, 1),
        "read_blocks_MB_per_s": round(raw / block_read_s / 1e6, 1),
        "read_random_batches_MB_per_s": round(batches * min(loader_batch, n) * clip_raw / random_s / 1e6, 1),
        "read_random_clips_per_s": round(batches * min(loader_batch, n) / random_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--audioae", default=None, help="trained AudioAE checkpoint folder (else random init of the preset)")
    p.add_argument("--audio", default=None, help="folder of audio files")
    p.add_argument("--clips", type=int, default=32, help="5 s clips to encode and cache")
    p.add_argument("--batch", type=int, default=8, help="clips per encoder/decoder call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=None, help="clips per Zarr block [config audioae.cache.chunk_clips]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write the JSON result here too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    clip_samples = int(cfg.data.clip_seconds * SR)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        folder, audio_name = audio_folder(args.audio, tmp)
        clips = load_clips(folder, args.clips, clip_samples)
        if args.audioae:
            model, weights = load_audioae(args.audioae), args.audioae
        else:
            torch.manual_seed(0)
            model, weights = AudioAE.from_config(cfg.audioae.model), f"random init of {args.config} preset"
        result = {
            "host": platform.node(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "config": args.config, "weights": weights, "audio": audio_name, "clip_seconds": cfg.data.clip_seconds,
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "cpu": bench_model(model, clips, "cpu", min(args.batch, len(clips)), args.repeats),
        }
        if torch.cuda.is_available():
            result["gpu_name"] = torch.cuda.get_device_name(0)
            result["cuda"] = bench_model(model, clips, "cuda", min(args.batch * 8, len(clips)), args.repeats)
        x0 = encode_all(model, clips, args.batch)
        result["zarr"] = bench_zarr(x0, args.chunk_rows or cfg.audioae.cache.chunk_clips, tmp, loader_batch=min(32, len(clips)))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
