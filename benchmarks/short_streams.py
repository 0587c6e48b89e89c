"""Short sounds: stream size and decoded audio with the last window's padding frames left out (format v2) or kept (v1).

    python benchmarks/short_streams.py                                  # work/demo/bundles/*, sfx-dev clips
    python benchmarks/short_streams.py --bundle work/demo/bundles/d96 --data ../shared/data/sfx-dev --clips 40

For every clip shorter than one 5 s window it encodes once, writes the stream both ways (version 2:
only the frames that see the signal; version 1: all frames of the window, the encoder's own
padding frames included) and prints, per bundle: bytes and on-disk kbps of each, and how much the
decoded audio moves when the decoder fills the left-out frames with the model's z of silence. That
shift is the log-mel L1 distance between the v1 and v2 decodings with the same noise, next to the
distance between two v1 decodings with different noise (what a change of seed alone does) and each
decoding's distance to the original. Without the dev corpus it uses procedural sound effects.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import spresso  # noqa: E402
from spresso.audio.synth import synth_corpus  # noqa: E402
from spresso.codec import bitstream as bs  # noqa: E402
from spresso.codec import windowing as win  # noqa: E402
from spresso.core.rates import frame_rate  # noqa: E402
from spresso.quant.features import logmel_frames  # noqa: E402


def logmel_l1(a: np.ndarray, b: np.ndarray) -> float:
    ma, mb = logmel_frames(a.astype(np.float32), 48000, n_mels=64), logmel_frames(b.astype(np.float32), 48000, n_mels=64)
    n = min(len(ma), len(mb))
    return float(np.abs(ma[:n] - mb[:n]).mean())


def short_clips(data: str | None, n: int, seed: int) -> tuple[list[tuple[str, np.ndarray, int]], str]:
    """Up to n (name, wave [ch, samples], rate) shorter than 5 s: from ``data``, else procedural."""
    root = Path(data) if data else None
    if root is not None and root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg", ".aiff", ".aif"))
        what = f"{root} ({len(files)} files)"
    else:
        tmp = Path(tempfile.mkdtemp(prefix="short-streams-"))
        files = [tmp / f.path for f in synth_corpus(tmp, 4.0, seed=seed)]
        what = "procedural sound effects (no corpus folder given or found)"
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(files)):
        try:
            wave, sr = sf.read(str(files[i]), dtype="float32", always_2d=True)
        except Exception:
            continue
        if 0 < wave.shape[0] * 48000 / sr < win.WINDOW_SAMPLES and np.abs(wave).max() > 1e-4:
            out.append((files[i].name, wave.T.copy(), int(sr)))
        if len(out) == n:
            break
    return out, what


def run_bundle(bundle: Path, clips, steps: int) -> None:
    codec = spresso.load(bundle, device="cpu")
    rows = []
    m = codec.codebooks_for()
    for name, wave, sr in clips:
        # One encode, written both ways: v2 through the codec's own byte path, v1 keeping every frame.
        mono = codec.prepare(wave, sr)
        plan = win.plan_for_signal(mono.shape[0])
        full = codec.encode_windows(np.array(win.cut(mono, plan)), m)  # [1, T', m] codes or [1, C, T'] z
        v2 = codec.stream_bytes(full, plan, wave.shape[-1], sr, m)
        common = dict(model_id=codec.model_id, time_factor=codec.t, sample_count=wave.shape[-1], sample_rate=sr, version=1)
        if m is not None:
            v1 = bs.encode_stream(bs.Stream.discrete(full[0], int(codec.K), **common))
        else:
            v1 = bs.encode_stream(bs.Stream.continuous(full[0], **common))
        n_frames = bs.decode_stream(v2).n_frames
        a, _ = codec.decode(v1, steps=steps, seed=0)
        b, _ = codec.decode(v2, steps=steps, seed=0)
        c, _ = codec.decode(v1, steps=steps, seed=1)
        seconds = mono.shape[0] / 48000
        rows.append((seconds, n_frames, codec.frames_per_window, len(v1), len(v2), logmel_l1(a, b), logmel_l1(a, c),
                     logmel_l1(a, mono), logmel_l1(b, mono)))
    r = np.asarray(rows)
    print(f"\n{bundle.name}: {codec.mode}, {frame_rate(codec.t):.3g} Hz, {len(r)} clips of median {np.median(r[:, 0]):.2f} s "
          f"(range {r[:, 0].min():.2f}-{r[:, 0].max():.2f} s); {steps} solver steps")
    print(f"  frames stored      v1 {r[:, 2].mean():6.1f}   v2 {r[:, 1].mean():6.1f}   ({r[:, 2].sum() / r[:, 1].sum():.2f}x fewer)")
    print(f"  bytes per stream   v1 {r[:, 3].mean():6.1f}   v2 {r[:, 4].mean():6.1f}   ({r[:, 3].sum() / r[:, 4].sum():.2f}x smaller)")
    print(f"  on-disk kbps       v1 {np.mean(r[:, 3] * 8 / r[:, 0] / 1000):6.3f}   v2 {np.mean(r[:, 4] * 8 / r[:, 0] / 1000):6.3f}"
          f"   (mean over clips of bytes x 8 / duration)")
    print(f"  log-mel L1: v1 vs v2, same noise {r[:, 5].mean():.3f};  v1 vs v1, other noise {r[:, 6].mean():.3f};  "
          f"ratio {r[:, 5].mean() / r[:, 6].mean():.2f}")
    print(f"  log-mel L1 to the original: v1 {r[:, 7].mean():.3f}   v2 {r[:, 8].mean():.3f}   (v2 closer on {(r[:, 8] < r[:, 7]).sum()}/{len(r)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=None, help="bundle folder (repeatable) [work/demo/bundles/*]")
    ap.add_argument("--data", default="../shared/data/sfx-dev", help="folder of sound effects [procedural when absent]")
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundles = [Path(b) for b in args.bundle] if args.bundle else sorted(p for p in Path("work/demo/bundles").glob("*")
                                                                        if (p / "bundle.json").is_file())
    if not bundles:
        sys.exit("no bundle: train one with `make demo` or pass --bundle PATH")
    clips, what = short_clips(args.data, args.clips, args.seed)
    print(f"clips: {len(clips)} shorter than 5 s from {what}")
    for b in bundles:
        run_bundle(b, clips, args.steps)


if __name__ == "__main__":
    main()
