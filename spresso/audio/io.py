"""Robust audio decoding and resampling: soundfile first, PyAV for what libsndfile cannot read.

There is no CPU torchaudio: decode with soundfile (WAV, FLAC, Ogg/Vorbis, .oga, AIFF, MP3 via
libsndfile >= 1.1) and resample with soxr. Every failure is an :class:`AudioError` whose message
is a short reason, so ingestion can record it in rejects.parquet and carry on.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import SpressoError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".mp3", ".opus", ".m4a")


class AudioError(SpressoError):
    """Audio that cannot be used: unreadable, corrupt, empty or containing NaN/Inf."""


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    text = str(source)
    if "://" in text:
        import fsspec

        with fsspec.open(text, "rb") as f:
            return f.read()
    return Path(text).read_bytes()


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        sr = f.samplerate
        wave = f.read(dtype="float32", always_2d=True)  # [n, channels]
    return wave.T, sr


def _decode_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

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
    try:
        wave, sr = _decode_soundfile(data)
    except Exception as sf_err:  # libsndfile refused it: try FFmpeg before giving up
        try:
            wave, sr = _decode_av(data)
        except AudioError:
            raise
        except Exception:
            reason = str(sf_err).splitlines()[0] if str(sf_err) else type(sf_err).__name__
            raise AudioError(f"not decodable audio ({reason})") from None
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
    arr = wave.T if wave.ndim == 2 else wave
    sf.write(str(path), arr, sample_rate, subtype=subtype)
