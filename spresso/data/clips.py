"""One source file -> 5 s clips: decode, downmix, resample (soxr HQ), cut, pad, gate, encode.

Pure functions of (bytes, settings): the same input gives byte-identical FLAC, whichever worker
runs it, which is what makes the dataset digest independent of the number of workers.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from scipy import signal

from spresso.audio.io import AudioError, read_audio, resample, to_mono
from spresso.data.sources import clip_key


@dataclass(frozen=True)
class ClipSettings:
    sample_rate: int = 48000
    clip_seconds: float = 5.0
    min_seconds: float = 0.25
    silence_dbfs: float = -80.0
    loudness_normalize: bool = False
    target_lufs: float = -23.0
    bit_depth: int = 16

    @classmethod
    def from_config(cls, data) -> "ClipSettings":
        return cls(data.sample_rate, data.clip_seconds, data.min_seconds, data.silence_dbfs,
                   data.loudness_normalize, data.target_lufs, data.bit_depth)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def min_samples(self) -> int:
        return max(1, int(round(self.min_seconds * self.sample_rate)))


@dataclass
class Clip:
    key: str
    flac: bytes
    meta: dict  # what goes into <key>.json

    def json_bytes(self) -> bytes:
        return json.dumps(self.meta, sort_keys=True, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------- loudness
def _k_weighting(sr: int):
    """ITU-R BS.1770 K-weighting (high shelf + RLB high-pass) as two biquads, for any rate."""
    # Shelf: +4 dB above ~1.7 kHz (bilinear design with the standard's analogue parameters).
    G, Q, fc = 3.999843853973347, 0.7071752369554196, 1681.974450955533
    K = math.tan(math.pi * fc / sr)
    Vh = 10 ** (G / 20)
    Vb = Vh ** 0.4996667741545416
    a0 = 1 + K / Q + K * K
    shelf_b = [(Vh + Vb * K / Q + K * K) / a0, 2 * (K * K - Vh) / a0, (Vh - Vb * K / Q + K * K) / a0]
    shelf_a = [1.0, 2 * (K * K - 1) / a0, (1 - K / Q + K * K) / a0]
    # High-pass at ~38 Hz.
    Q, fc = 0.5003270373238773, 38.13547087602444
    K = math.tan(math.pi * fc / sr)
    a0 = 1 + K / Q + K * K
    hp_b = [1.0, -2.0, 1.0]
    hp_a = [1.0, 2 * (K * K - 1) / a0, (1 - K / Q + K * K) / a0]
    return np.array([shelf_b + shelf_a, hp_b + hp_a])


_SOS_CACHE: dict[int, np.ndarray] = {}


def integrated_loudness(x: np.ndarray, sr: int) -> float:
    """BS.1770-4 integrated loudness (LUFS) of a mono signal; -inf when everything is gated.

    400 ms blocks with 75 % overlap, absolute gate -70 LUFS, relative gate -10 LU. Computed with
    cumulative sums rather than a Python loop over blocks, so it costs well under a millisecond
    per clip (it matches pyloudnorm to 0.01 LU; see tests).
    """
    sos = _SOS_CACHE.get(sr)
    if sos is None:
        sos = _SOS_CACHE[sr] = _k_weighting(sr)
    y = signal.sosfilt(sos, x.astype(np.float64))
    block, step = int(round(0.4 * sr)), int(round(0.1 * sr))
    if y.size < block:
        return float("-inf")
    c = np.concatenate([[0.0], np.cumsum(y * y)])
    starts = np.arange(0, y.size - block + 1, step)
    z = (c[starts + block] - c[starts]) / block
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10 * np.log10(z)
    z = z[lk > -70.0]
    if z.size == 0:
        return float("-inf")
    rel = -0.691 + 10 * np.log10(z.mean()) - 10.0
    with np.errstate(divide="ignore"):
        z = z[-0.691 + 10 * np.log10(z) > rel]
    return float(-0.691 + 10 * np.log10(z.mean())) if z.size else float("-inf")


# ----------------------------------------------------------------------------- cutting
def clip_spans(n: int, clip: int, min_len: int) -> list[tuple[int, int]]:
    """(start, valid_length) of each clip: consecutive full clips, then a remainder >= min_len."""
    spans = [(s, clip) for s in range(0, n - clip + 1, clip)]
    rest = n - len(spans) * clip
    if rest >= min_len and rest > 0:
        spans.append((len(spans) * clip, rest))
    return spans


def encode_flac(x: np.ndarray, sr: int, bit_depth: int) -> bytes:
    buf = io.BytesIO()
    # Clip first: libsndfile wraps out-of-range floats around instead of saturating.
    sf.write(buf, np.clip(x, -1.0, 1.0), sr, format="FLAC", subtype=f"PCM_{bit_depth}")
    return buf.getvalue()


def process_source(data: bytes, *, key_prefix: str, source_id: str, caption: str,
                   settings: ClipSettings, key_fn=None) -> tuple[list[Clip], int]:
    """Cut one decoded file into clips. Returns ``(clips, silent_clips_dropped)``.

    Raises :class:`AudioError` with a reason when the file gives no usable clip.
    """
    wave, sr = read_audio(data)
    channels = wave.shape[0]
    mono = resample(to_mono(wave), sr, settings.sample_rate, quality="HQ")
    n = mono.size
    clip, min_len = settings.clip_samples, settings.min_samples
    spans = clip_spans(n, clip, min_len)
    if not spans:
        raise AudioError(f"too short: {n / settings.sample_rate:.3f} s < min_seconds {settings.min_seconds:g}")
    floor = 10 ** (settings.silence_dbfs / 20)
    out: list[Clip] = []
    silent = 0
    for index, (start, valid) in enumerate(spans):
        seg = mono[start : start + valid]
        peak = float(np.abs(seg).max())
        if peak < floor:
            silent += 1  # digital silence carries nothing to learn
            continue
        padded = np.zeros(clip, dtype=np.float32)
        padded[:valid] = seg
        lufs = integrated_loudness(seg, settings.sample_rate)
        gain_db = 0.0
        if settings.loudness_normalize and math.isfinite(lufs):
            gain_db = settings.target_lufs - lufs
            # Never clip: cap the gain so the peak stays below full scale.
            gain_db = min(gain_db, -20 * math.log10(peak / 0.999))
            padded *= np.float32(10 ** (gain_db / 20))
        key = (key_fn or _default_key)(key_prefix, index)
        meta = {
            "key": key,
            "source": source_id,
            "source_rate": int(sr),
            "source_channels": int(channels),
            "offset_seconds": round(start / settings.sample_rate, 6),
            "duration_seconds": round(valid / settings.sample_rate, 6),
            "valid_samples": int(valid),
            "sample_rate": settings.sample_rate,
            "loudness_lufs": round(lufs, 3) if math.isfinite(lufs) else None,
            "gain_db": round(gain_db, 3),
            "caption": caption,
        }
        out.append(Clip(key, encode_flac(padded, settings.sample_rate, settings.bit_depth), meta))
    if not out:
        raise AudioError(f"digital silence (peak below {settings.silence_dbfs:g} dBFS)")
    return out, silent


def _default_key(prefix: str, index: int) -> str:
    return clip_key(prefix, index)
