"""Robust audio decoding and resampling: soundfile first, PyAV for what libsndfile cannot read.

There is no CPU torchaudio: decode with soundfile (WAV, FLAC, Ogg/Vorbis, .oga, AIFF, MP3 via
libsndfile >= 1.1) and resample with soxr. Every failure is an :class:`AudioError` whose message
is a short reason, so ingestion can record it in rejects.parquet and carry on.
"""
from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import fsspec
import numpy as np
import soundfile as sf
import soxr

from spresso.core.errors import SpressoError

# The one list of audio file suffixes (lower case) that folders are scanned for.
AUDIO_EXTENSIONS = (".aif", ".aifc", ".aiff", ".flac", ".m4a", ".mp3", ".oga", ".ogg", ".opus", ".wav")


class AudioError(SpressoError):
    """Audio that cannot be used: unreadable, corrupt, empty or containing NaN/Inf."""


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    text = str(source)
    if "://" in text:
        with fsspec.open(text, "rb") as f:
            return f.read()
    return Path(text).read_bytes()


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        sr = f.samplerate
        wave = f.read(dtype="float32", always_2d=True)  # [n, channels]
    return wave.T, sr


def _decode_av(data: bytes) -> tuple[np.ndarray, int]:
    import av  # lazy: optional PyAV, only for formats libsndfile cannot decode

    with av.open(io.BytesIO(data)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError("no audio stream")
        # Ask FFmpeg for planar float at the stream's own rate and layout: arrays [channels, n].
        converter = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        chunks = [f.to_ndarray() for frame in container.decode(stream) for f in converter.resample(frame)]
        chunks += [f.to_ndarray() for f in converter.resample(None)]
        sr = int(stream.rate)
    if not chunks:
        raise AudioError("zero-length audio")
    return np.concatenate(chunks, axis=1).astype(np.float32), sr


def _clean_reason(err: Exception) -> str:
    """libsndfile's message without the object address it embeds (reasons must be reproducible)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r"^Error opening <[^>]*>: ", "", text).strip() or type(err).__name__


def _truncation(data: bytes) -> str | None:
    """A short reason when a WAV/AIFF header promises more sample data than the file holds.

    libsndfile reads such files without complaint (it returns what is there); a cut-off file is
    damaged input and must be refused, not silently shortened.
    """
    if len(data) < 12:
        return None
    riff, form = data[:4], data[8:12]
    if riff in (b"RIFF", b"RIFX") and form == b"WAVE":
        fmt, want, pos = ("<I" if riff == b"RIFF" else ">I"), b"data", 12
    elif riff == b"FORM" and form in (b"AIFF", b"AIFC"):
        fmt, want, pos = ">I", b"SSND", 12
    else:
        return None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from(fmt, data, pos + 4)[0]
        if cid == want:
            have = len(data) - (pos + 8)
            # 0 and 0xFFFFFFFF mean "length unknown" (streamed writers): nothing to check.
            if size not in (0, 0xFFFFFFFF) and have < size:
                return f"truncated: {have} of {size} bytes of sample data"
            return None
        pos += 8 + size + (size & 1)
    return None


def read_audio(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decode audio to ``(wave [channels, samples] float32, sample_rate)``.

    Raises :class:`AudioError` with a short reason for anything unusable.
    """
    try:
        data = _read_bytes(source)
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except IsADirectoryError:
        raise AudioError("is a directory") from None
    except PermissionError:
        raise AudioError("permission denied") from None
    except OSError as err:
        raise AudioError(f"unreadable: {err.strerror or err}") from None
    if not data:
        raise AudioError("empty file")
    truncated = _truncation(data)
    if truncated:
        raise AudioError(truncated)
    try:
        wave, sr = _decode_soundfile(data)
    except Exception as sf_err:  # libsndfile refused it: try FFmpeg before giving up
        try:
            wave, sr = _decode_av(data)
        except AudioError:
            raise
        except Exception:
            raise AudioError(f"not decodable audio ({_clean_reason(sf_err)})") from None
    if wave.shape[1] == 0:
        raise AudioError("zero-length audio")
    if sr <= 0:
        raise AudioError(f"invalid sample rate {sr}")
    if not np.isfinite(wave).all():
        raise AudioError("NaN or Inf samples")
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Downmix [channels, n] to [n] by averaging channels."""
    return wave.mean(axis=0) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """Resample along the last axis with soxr (identity when the rates match)."""
    if sr_in == sr_out:
        return wave.astype(np.float32, copy=False)
    if wave.ndim == 1:
        return soxr.resample(wave, sr_in, sr_out, quality=quality).astype(np.float32)
    return soxr.resample(wave.T, sr_in, sr_out, quality=quality).T.astype(np.float32)


def load_mono(source: str | Path | bytes, sample_rate: int = 48000) -> tuple[np.ndarray, int, int]:
    """Decode, downmix and resample: ``(mono [n] at sample_rate, source_rate, source_channels)``."""
    wave, sr = read_audio(source)
    mono = resample(to_mono(wave), sr, sample_rate)
    return mono, sr, wave.shape[0]


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write [n] or [channels, n] audio; the format follows the file extension."""
    arr = np.ascontiguousarray(wave.T if wave.ndim == 2 else wave)
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    with sf.SoundFile(str(path), "w", sample_rate, channels, subtype) as f:
        # Block writes: libsndfile 1.2's Vorbis encoder crashes on one multi-million-frame write.
        for start in range(0, arr.shape[0], 1 << 16):
            f.write(arr[start : start + (1 << 16)])
