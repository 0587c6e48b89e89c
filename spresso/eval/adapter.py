"""The codec-adapter interface the evaluation harness runs every codec through.

An adapter wraps one codec at one operating point (our bundles, the AudioAE alone, DAC, Opus,
...). The harness hands it audio at the codec's native rate and gets back the reconstruction
at that rate plus the exact encoded size; :func:`roundtrip` does the resampling both ways so
every metric is computed at 48 kHz against the original.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from spresso.audio.io import resample
from spresso.eval.metrics import actual_bitrate_bps

EVAL_RATE = 48000


@dataclass(frozen=True)
class CodecInfo:
    method: str  # "S-PRESSO", "DAC", "Opus", "AudioAE"
    variant: str  # "t=9 K=2^10 M=12", "2 codebooks", "6 kbps"
    sample_rate: int  # the codec's native rate
    frame_rate_hz: float | None = None  # latent/code frames per second (None: not applicable)
    nominal_bitrate_bps: float | None = None  # None for continuous latents
    compression: float | None = None  # waveform samples per latent value, as the paper counts it


class CodecAdapter(ABC):
    """One codec at one operating point. ``available()`` says why not (e.g. weights absent)
    so the report can list it instead of failing."""

    info: CodecInfo
    # Decoding draws noise (our diffusion decoders): the report then plays several seeds.
    stochastic: bool = False

    def available(self) -> tuple[bool, str]:
        return True, ""

    def decode_variation(self, data: bytes, num_samples: int, seed: int) -> np.ndarray:
        """Another decoding of the same stream (stochastic codecs only), e.g. another noise seed."""
        raise NotImplementedError(f"{type(self).__name__} decodes deterministically")

    @abstractmethod
    def encode(self, wave: np.ndarray) -> bytes:
        """mono float32 [n] at ``info.sample_rate`` -> the complete encoded stream (header included)."""

    @abstractmethod
    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        """stream -> mono float32 [num_samples] at ``info.sample_rate``."""


@dataclass
class Roundtrip:
    reconstruction: np.ndarray  # [n] at 48 kHz, same length as the original
    num_bytes: int
    seconds: float

    @property
    def actual_bitrate_bps(self) -> float:
        return actual_bitrate_bps(self.num_bytes, self.seconds)


def roundtrip(adapter: CodecAdapter, wave48k: np.ndarray) -> Roundtrip:
    """Resample to the codec's rate, encode, decode, resample back to 48 kHz, match the length."""

    sr = adapter.info.sample_rate
    native = resample(np.asarray(wave48k, dtype=np.float32), EVAL_RATE, sr)
    data = adapter.encode(native)
    out = resample(adapter.decode(data, native.shape[-1]), sr, EVAL_RATE)
    n = wave48k.shape[-1]
    out = out[:n] if out.shape[-1] >= n else np.pad(out, (0, n - out.shape[-1]))
    return Roundtrip(out.astype(np.float32), len(data), n / EVAL_RATE)
