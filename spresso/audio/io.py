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


OGG_PAGE_HEADER = 27  # "OggS", version, flags, granule (8), serial (4), sequence (4), CRC (4), segment count
OGG_EOS = 0x04
PROBE_BYTES = 1 << 16  # head and tail read to check a file's framing


def _riff_truncation(head: bytes, size: int) -> str | None:
    if len(head) < 12:
        return None
    riff, form = head[:4], head[8:12]
    if riff in (b"RIFF", b"RIFX") and form == b"WAVE":
        fmt, want, pos = ("<I" if riff == b"RIFF" else ">I"), b"data", 12
    elif riff == b"FORM" and form in (b"AIFF", b"AIFC"):
        fmt, want, pos = ">I", b"SSND", 12
    else:
        return None
    while pos + 8 <= len(head):
        cid, chunk = head[pos : pos + 4], struct.unpack_from(fmt, head, pos + 4)[0]
        if cid == want:
            have = size - (pos + 8)
            # 0 and 0xFFFFFFFF mean "length unknown" (streamed writers): nothing to check.
            if chunk not in (0, 0xFFFFFFFF) and have < chunk:
                return f"truncated: {have} of {chunk} bytes of sample data"
            return None
        pos += 8 + chunk + (chunk & 1)
    return None


def _ogg_truncation(head: bytes, tail: bytes) -> str | None:
    """An Ogg file must end with a whole page that carries the end-of-stream flag; a cut file does not."""
    if not head.startswith(b"OggS"):
        return None
    at = tail.rfind(b"OggS")
    while at >= 0:
        page = tail[at:]
        if len(page) >= OGG_PAGE_HEADER and page[4] == 0:
            nseg = page[26]
            if len(page) >= OGG_PAGE_HEADER + nseg:
                length = OGG_PAGE_HEADER + nseg + sum(page[OGG_PAGE_HEADER : OGG_PAGE_HEADER + nseg])
                if length == len(page):
                    return None if page[5] & OGG_EOS else "truncated: the Ogg stream ends without its last page"
                if length > len(page):
                    return "truncated: the Ogg stream's last page is cut short"
        at = tail.rfind(b"OggS", 0, at)  # "OggS" inside a packet's data: look further back
    return "truncated: no complete Ogg page at the end of the file"


def truncation(head: bytes, size: int, tail: bytes) -> str | None:
    """A short reason when a file's framing says it was cut short, from its first and last bytes and its size.

    libsndfile reads such files without complaint (it returns what is there): a WAV/AIFF whose
    header promises more sample data than the file holds, an Ogg file without its final page.
    """
    return _riff_truncation(head, size) or _ogg_truncation(head, tail)


def file_truncation(path: str | Path) -> str | None:
    """:func:`truncation` of a local file, reading only its head and tail."""
    with open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        head = f.read(PROBE_BYTES)
        f.seek(max(0, size - PROBE_BYTES))
        return truncation(head, size, f.read())


def read_audio(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decode audio to ``(wave [channels, samples] float32, sample_rate)``.

    Raises :class:`AudioError` with a short reason for anything unusable, a file cut short included.
    """
    wave, sr, cut = read_audio_partial(source)
    if cut:
        raise AudioError(cut)
    return wave, sr


def read_audio_partial(source: str | Path | bytes) -> tuple[np.ndarray, int, str | None]:
    """:func:`read_audio` that also decodes a file cut short: ``(wave, sample_rate, reason)``, where
    ``reason`` says how it was cut (None for a whole file); the caller decides whether that will do."""
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
    cut = truncation(data[:PROBE_BYTES], len(data), data[-PROBE_BYTES:])
    try:
        wave, sr = _decode_soundfile(data)
    except Exception as sf_err:  # libsndfile refused it: try FFmpeg before giving up
        try:
            wave, sr = _decode_av(data)
        except AudioError:
            raise
        except Exception:
            raise AudioError(cut or f"not decodable audio ({_clean_reason(sf_err)})") from None
    if wave.shape[1] == 0:
        raise AudioError(cut or "zero-length audio")
    if sr <= 0:
        raise AudioError(f"invalid sample rate {sr}")
    if not np.isfinite(wave).all():
        raise AudioError("NaN or Inf samples")
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr), cut


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
