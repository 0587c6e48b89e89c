"""Errors of the codec and the `.spr` format: each one a single line a user can act on."""
from __future__ import annotations

from spresso.core.errors import SpressoError


class BitstreamError(SpressoError):
    """A `.spr` stream is malformed, damaged, made for another model, or asked for something it cannot give.

    Raised for: wrong magic, unknown format version, checksum mismatch, truncated stream,
    padded/trailing bytes, a stream for another model, codes out of range, and peeling to more
    codebooks than the stream holds. Subclasses :class:`SpressoError`, so the CLI prints it as one
    line and exits 2.
    """


class CodecError(SpressoError):
    """Bad input to the codec (audio or stream) - one line."""


SILENCE_PEAK = 1e-6  # -120 dBFS: below 16-bit (and 24-bit dithered) quantisation noise


def refuse_silence(peak: float) -> None:
    """Raise :class:`CodecError` for digital silence: a silent file carries nothing to code."""
    if peak < SILENCE_PEAK:
        raise CodecError("audio is digital silence (peak below -120 dBFS): nothing to encode")
