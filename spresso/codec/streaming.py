"""Files of any length in bounded memory: encode from a file and decode to a file, window by window.

``Codec.encode``/``decode`` hold a whole signal in memory: fine for sound effects, not for a
2-hour field recording (1.4 GB of float32 mono at 48 kHz, and several copies of it on the way).
Here the file is read in blocks, downmixed and resampled with soxr's streaming resampler (its
output is bit-identical to the one-shot resampler, checked in the tests), cut into the same 5 s
windows as :func:`.windowing.cut`, and coded a device batch at a time. Decoding overlap-adds each
batch into a short running buffer and writes the samples no later window can touch. Memory is
one block of input, one batch of windows and the codes, whatever the length.

The bytes and the audio are the ones the in-memory path gives for the same file, seed and steps:
both are built from the same window-level steps of :class:`~spresso.codec.codec.Codec` (the
:class:`WindowCoder` surface below). This module imports nothing of ``codec.py``; ``Codec``
calls it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm.auto import tqdm

from spresso.audio.io import file_truncation
from spresso.codec import bitstream as bs
from spresso.codec import windowing as win
from spresso.codec.errors import CodecError
from spresso.codec.inputs import Downmix, check_rate, choose_downmix
from spresso.core.errors import SpressoError
from spresso.core.outputs import replacing

BLOCK_SECONDS = 10.0  # input read per block


class WindowCoder(Protocol):
    """The window-level steps of :class:`spresso.codec.codec.Codec` that coding a file block by block uses."""

    sample_rate: int  # the models' rate (48 kHz)
    batch_size: int  # windows per device batch

    def codebooks_for(self, kbps: float | None = None, codebooks: int | None = None) -> int | None: ...

    def encode_windows(self, windows: np.ndarray, m: int | None) -> np.ndarray: ...

    def stream_bytes(self, out: np.ndarray, plan: win.WindowPlan, sample_count: int, sample_rate: int,
                     m: int | None) -> bytes: ...

    def sampler_settings(self, steps: int | None, solver: str | None, rho: float | None) -> tuple[int, str, float]: ...

    def parse(self, data) -> bs.Stream: ...

    def window_z(self, stream: bs.Stream, windows: Sequence[int]) -> torch.Tensor: ...

    def window_noise(self, seed: int, windows: Sequence[tuple[int, int]]) -> torch.Tensor: ...

    def decode_windows(self, z: torch.Tensor, noise: torch.Tensor, steps: int, solver: str, rho: float) -> np.ndarray: ...


def duration_seconds(path: str | Path) -> float | None:
    """Length from the header, or None when libsndfile cannot tell."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


@dataclass(frozen=True)
class FileScan:
    """What one read-through of an audio file found: its rate, readable length, downmix rule and any cut."""

    sample_rate: int
    frames: int  # readable frames (fewer than the header's when the file is cut short)
    rule: Downmix
    cut: str | None  # how the file was cut short, or None

    def partial_note(self, header_frames: int) -> str | None:
        if self.cut is None:
            return None
        whole = f" of {header_frames / self.sample_rate:.2f} s" if header_frames > self.frames else ""
        return f"{self.cut}: kept the readable {self.frames / self.sample_rate:.2f} s{whole}"


def _read_blocks(f: sf.SoundFile, sr: int) -> Iterator[np.ndarray]:
    """[n, channels] float32 blocks; a decoding error mid-file is a one-line error saying where."""
    block = max(1, int(BLOCK_SECONDS * sr))
    while True:
        try:
            data = f.read(block, dtype="float32", always_2d=True)
        except Exception as err:
            raise CodecError(f"audio is corrupt after {f.tell() / sr:.1f} s ({str(err).splitlines()[0]})") from None
        if data.shape[0]:
            if not np.isfinite(data).all():
                raise CodecError("audio holds NaN or Inf samples")
            yield data
        if data.shape[0] < block:
            return


def _open(path: str | Path) -> sf.SoundFile:
    try:
        return sf.SoundFile(str(path))
    except Exception as err:
        raise CodecError(f"cannot read audio ({str(err).splitlines()[0]})") from None


def scan_file(path: str | Path, *, allow_partial: bool = False) -> tuple[FileScan, int]:
    """(:class:`FileScan`, the header's frame count) from one pass in bounded memory: per-channel energy and peaks
    for the downmix rule (:func:`.inputs.choose_downmix`), and the readable length. A file cut short is an
    error unless ``allow_partial``."""
    cut = file_truncation(path)
    with _open(path) as f:
        header_frames, sr, channels = f.frames, f.samplerate, f.channels
        check_rate(sr)
        energy, peak, mid_energy, frames = np.zeros(channels), np.zeros(channels), 0.0, 0
        for data in _read_blocks(f, sr):
            frames += data.shape[0]
            energy += np.einsum("nc,nc->c", data, data, dtype=np.float64)
            peak = np.maximum(peak, np.abs(data).max(axis=0))
            mid = data.mean(axis=1, dtype=np.float32)
            mid_energy += float(np.dot(mid.astype(np.float64), mid))
    if frames < header_frames:
        cut = cut or "truncated"
    if frames == 0:
        raise CodecError(cut or "zero-length audio")
    scan = FileScan(sr, frames, choose_downmix(energy, mid_energy, peak), cut)
    if cut and not allow_partial:
        raise CodecError(f"{scan.partial_note(header_frames)}; pass --allow-partial (allow_partial=True) to encode that")
    return scan, header_frames


def mono_blocks(path: str | Path, sample_rate: int, scan: FileScan) -> Iterator[np.ndarray]:
    """Mono float32 blocks at ``sample_rate`` by ``scan``'s downmix rule, ``scan.frames`` source frames in all."""
    rs = soxr.ResampleStream(scan.sample_rate, sample_rate, 1, dtype="float32", quality="HQ") if scan.sample_rate != sample_rate else None
    with _open(path) as f:
        left = scan.frames
        for data in _read_blocks(f, scan.sample_rate):
            data = data[:left]
            left -= data.shape[0]
            mono = scan.rule.apply(np.ascontiguousarray(data.T))
            last = left <= 0
            yield rs.resample_chunk(mono, last=last) if rs is not None else mono
            if last:
                return
        if rs is not None:  # fewer frames than the scan found (the file changed): flush the resampler
            yield rs.resample_chunk(np.zeros(0, np.float32), last=True)


def block_windows(blocks: Iterator[np.ndarray], plan: win.WindowPlan) -> Iterator[np.ndarray]:
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


def encode_file(codec: WindowCoder, path: str | Path, kbps: float | None = None, codebooks: int | None = None, *,
                allow_partial: bool = False, progress: bool = False) -> bytes:
    """An audio file -> `.spr` bytes, reading it block by block (:func:`encode_file_described`)."""
    return encode_file_described(codec, path, kbps, codebooks, allow_partial=allow_partial, progress=progress)[0]


def encode_file_described(codec: WindowCoder, path: str | Path, kbps: float | None = None, codebooks: int | None = None, *,
                          allow_partial: bool = False, progress: bool = False) -> tuple[bytes, Downmix, str | None]:
    """(`.spr` bytes, the downmix rule, what was kept of a file cut short or None), in two passes over the file:
    one for the downmix rule and the readable length, one to code it."""
    m = codec.codebooks_for(kbps, codebooks)
    scan, header_frames = scan_file(path, allow_partial=allow_partial)
    plan = win.plan_for_signal(win.model_length(scan.frames, scan.sample_rate))
    outs: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    bar = tqdm(total=plan.n_windows, desc="encode", unit="window", disable=not progress, leave=False)
    for w in block_windows(mono_blocks(path, codec.sample_rate, scan), plan):
        batch.append(w)
        if len(batch) == codec.batch_size:
            outs.extend(codec.encode_windows(np.stack(batch), m, win.plan_x0_frames(plan, range(len(outs), len(outs) + len(batch)))))
            bar.update(len(batch))
            batch = []
    if batch:
        outs.extend(codec.encode_windows(np.stack(batch), m, win.plan_x0_frames(plan, range(len(outs), len(outs) + len(batch)))))
        bar.update(len(batch))
    bar.close()
    data = codec.stream_bytes(np.stack(outs), plan, scan.frames, scan.sample_rate, m)
    return data, scan.rule, scan.partial_note(header_frames)


def decode_to_file(codec: WindowCoder, data, path: str | Path, steps: int | None = None, seed: int = 0, variation: int = 0, *,
                   original_rate: bool = False, solver: str | None = None, rho: float | None = None,
                   subtype: str | None = None, progress: bool = False) -> tuple[int, int]:
    """`.spr` bytes -> an audio file written as it is decoded. Returns (samples written, rate)."""
    steps, solver, rho = codec.sampler_settings(steps, solver, rho)
    stream = codec.parse(data)
    plan = win.plan_for_stream(stream.sample_count, stream.sample_rate, stream.overlap)
    out_sr = stream.sample_rate if original_rate else codec.sample_rate
    target = stream.sample_count if original_rate else plan.n_samples
    rs = soxr.ResampleStream(codec.sample_rate, out_sr, 1, dtype="float32", quality="HQ") if out_sr != codec.sample_rate else None
    with replacing(path) as tmp:  # written under a temporary name: an interrupted decode leaves no partial file
        return _decode_into(codec, stream, plan, tmp, path, out_sr, target, rs, steps, solver, rho, seed, variation,
                            subtype, progress)


def _decode_into(codec: WindowCoder, stream: bs.Stream, plan: win.WindowPlan, tmp: Path, path: str | Path, out_sr: int,
                 target: int, rs, steps: int, solver: str, rho: float, seed: int, variation: int, subtype: str | None,
                 progress: bool) -> tuple[int, int]:
    acc = np.zeros(plan.window, np.float32)  # samples from `done` on, still open to later windows
    done = written = 0
    try:
        out = sf.SoundFile(str(tmp), "w", out_sr, 1, subtype)
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
            z = codec.window_z(stream, ks)
            noise = codec.window_noise(seed, [(variation, k) for k in ks])
            waves = codec.decode_windows(z, noise, steps, solver, rho, win.plan_x0_frames(plan, ks))
            for k, w in zip(ks, waves):
                start = k * plan.hop - done
                need = start + plan.window
                if need > acc.shape[0]:
                    acc = np.concatenate([acc, np.zeros(need - acc.shape[0], np.float32)])
                acc[start:need] += w * win.window_weight(plan, k)
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
