"""Files of any length in bounded memory: encode from a file and decode to a file, window by window.

``Codec.encode``/``decode`` hold a whole signal in memory: fine for sound effects, not for a
2-hour field recording (1.4 GB of float32 mono at 48 kHz, and several copies of it on the way).
Here the file is read in blocks, downmixed and resampled with soxr's streaming resampler (its
output is bit-identical to the one-shot resampler, checked in the tests), cut into the same 5 s
windows as :func:`.windowing.cut`, and coded a device batch at a time. Decoding overlap-adds each
batch into a short running buffer and writes the samples no later window can touch. Memory is
one block of input, one batch of windows and the codes, whatever the length.

The bytes and the audio are the ones the in-memory path gives for the same file, seed and steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from spresso.codec import windowing as win
from spresso.core.errors import SpressoError

if TYPE_CHECKING:  # pragma: no cover
    from spresso.codec.codec import Codec

BLOCK_SECONDS = 10.0  # input read per block


def duration_seconds(path: str | Path) -> float | None:
    """Length from the header, or None when libsndfile cannot tell."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


def _mono_blocks(path: str | Path, sample_rate: int) -> tuple[int, int, Iterator[np.ndarray]]:
    """(source frames, source rate, iterator of mono float32 blocks at ``sample_rate``)."""
    from spresso.codec.codec import CodecError

    try:
        f = sf.SoundFile(str(path))
    except Exception as err:
        raise CodecError(f"cannot read audio ({str(err).splitlines()[0]})") from None
    frames, sr = f.frames, f.samplerate

    def blocks() -> Iterator[np.ndarray]:
        rs = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ") if sr != sample_rate else None
        block = max(1, int(BLOCK_SECONDS * sr))
        with f:
            while True:
                try:
                    data = f.read(block, dtype="float32", always_2d=True)
                except Exception as err:
                    raise CodecError(f"audio is corrupt after {f.tell() / sr:.1f} s ({str(err).splitlines()[0]})") from None
                last = data.shape[0] < block
                mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                if not np.isfinite(mono).all():
                    raise CodecError("audio holds NaN or Inf samples")
                yield rs.resample_chunk(mono, last=last) if rs is not None else mono
                if last:
                    return

    return frames, sr, blocks()


def _windows(blocks: Iterator[np.ndarray], plan: win.WindowPlan) -> Iterator[np.ndarray]:
    """The windows of :func:`.windowing.cut`, from blocks: the first ``plan.n_samples`` samples, zero-padded."""
    buf = np.zeros(0, np.float32)
    start = taken = 0  # start: absolute position of buf[0]; taken: samples of the signal used so far
    k = 0
    for block in blocks:
        block = block[: max(0, plan.n_samples - taken)]
        taken += block.shape[0]
        buf = np.concatenate([buf, block])
        while k < plan.n_windows and buf.shape[0] >= k * plan.hop - start + plan.window:
            off = k * plan.hop - start
            yield buf[off:off + plan.window]
            k += 1
        drop = min(k * plan.hop - start, buf.shape[0])
        buf, start = buf[drop:], start + drop
    while k < plan.n_windows:  # the tail, zero-padded (also a resampler a sample short)
        off = k * plan.hop - start
        w = np.zeros(plan.window, np.float32)
        part = buf[off:off + plan.window]
        w[: part.shape[0]] = part
        yield w
        k += 1


def encode_file(codec: "Codec", path: str | Path, kbps: float | None = None, codebooks: int | None = None, *,
                progress: bool = False) -> bytes:
    """An audio file -> `.spr` bytes, reading it block by block."""
    from spresso.codec.codec import SILENCE_PEAK, CodecError

    m = codec.codebooks_for(kbps, codebooks)
    frames, sr, blocks = _mono_blocks(path, codec.sample_rate)
    n = win.model_length(frames, sr)
    plan = win.plan_for_signal(n)
    peak = 0.0

    def tracked() -> Iterator[np.ndarray]:
        nonlocal peak
        for b in blocks:
            if b.size:
                peak = max(peak, float(np.abs(b).max()))
            yield b

    outs: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    bar = tqdm(total=plan.n_windows, desc="encode", unit="window", disable=not progress, leave=False)
    for w in _windows(tracked(), plan):
        batch.append(w)
        if len(batch) == codec.batch_size:
            outs.extend(codec._encode_windows(np.stack(batch), m))
            bar.update(len(batch))
            batch = []
    if batch:
        outs.extend(codec._encode_windows(np.stack(batch), m))
        bar.update(len(batch))
    bar.close()
    if peak < SILENCE_PEAK:
        raise CodecError("audio is digital silence (peak below -120 dBFS): nothing to encode")
    return codec._stream_bytes(np.stack(outs), plan, frames, sr, m)


def decode_to_file(codec: "Codec", data, path: str | Path, steps: int | None = None, seed: int = 0, variation: int = 0, *,
                   original_rate: bool = False, solver: str | None = None, rho: float | None = None,
                   subtype: str | None = None, progress: bool = False) -> tuple[int, int]:
    """`.spr` bytes -> an audio file written as it is decoded. Returns (samples written, rate)."""
    from spresso.codec.codec import CodecError, _window_weight

    steps, solver, rho = codec._sampler_settings(steps, solver, rho)
    stream = codec.parse(data)
    plan = win.plan_for_stream(stream.sample_count, stream.sample_rate, stream.overlap)
    out_sr = stream.sample_rate if original_rate else codec.sample_rate
    target = stream.sample_count if original_rate else plan.n_samples
    rs = soxr.ResampleStream(codec.sample_rate, out_sr, 1, dtype="float32", quality="HQ") if out_sr != codec.sample_rate else None
    acc = np.zeros(plan.window, np.float32)  # samples from `done` on, still open to later windows
    done = written = 0
    try:
        out = sf.SoundFile(str(path), "w", out_sr, 1, subtype)
    except Exception as err:
        raise SpressoError(f"{path}: cannot write ({str(err).splitlines()[0]})") from None

    def emit(samples: np.ndarray, last: bool = False) -> None:
        nonlocal written
        y = rs.resample_chunk(samples, last=last) if rs is not None else samples
        y = y[: max(0, target - written)]
        for s in range(0, y.shape[0], 1 << 16):  # block writes (libsndfile's Vorbis encoder)
            out.write(y[s:s + (1 << 16)])
        written += y.shape[0]

    with out:
        windows = list(range(plan.n_windows))
        for b in tqdm(range(0, len(windows), codec.batch_size), desc="decode", disable=not progress, leave=False):
            ks = windows[b:b + codec.batch_size]
            z = codec._window_z(stream, ks)
            noise = codec._window_noise(seed, [(variation, k) for k in ks])
            waves = codec._decode_windows(z, noise, steps, solver, rho)
            for k, w in zip(ks, waves):
                start = k * plan.hop - done
                need = start + plan.window
                if need > acc.shape[0]:
                    acc = np.concatenate([acc, np.zeros(need - acc.shape[0], np.float32)])
                acc[start:need] += w * _window_weight(plan, k)
                final = (k + 1) * plan.hop - done if k < plan.n_windows - 1 else acc.shape[0]
                final = min(final, plan.n_samples - done)  # never past the signal's end
                if final > 0:
                    emit(acc[:final])
                    acc, done = acc[final:], done + final
        if rs is not None:
            emit(np.zeros(0, np.float32), last=True)
        if written < target:  # soxr may end a sample short of the exact length
            out.write(np.zeros(target - written, np.float32))
            written = target
    if written != target:  # pragma: no cover - guarded above
        raise CodecError(f"wrote {written} samples, expected {target}")
    return written, out_sr
