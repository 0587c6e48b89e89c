"""Frame rates and bitrates of S-PRESSO's operating points: computed here and nowhere else.

x0 runs at 100 frames per second (48 kHz, hop 480). The latent encoder pools it by t frames,
so z runs at 100 / t Hz; a discrete code spends m x log2(K) bits per z frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

X0_FRAME_RATE = 100.0  # 48000 Hz / hop 480

# The paper's time-compression factors, by index (the bitstream stores the index).
TIME_FACTORS: tuple[int, ...] = (4, 9, 20, 100)


def frame_rate(t: int) -> float:
    """z frames per second for a pooling factor t (t=4 -> 25 Hz, 9 -> 11.1 Hz, 20 -> 5 Hz, 100 -> 1 Hz)."""
    if t <= 0:
        raise ValueError(f"pooling factor must be positive, got {t}")
    return X0_FRAME_RATE / t


def bits_per_frame(m: int, K: int) -> float:
    if K < 2 or K & (K - 1):
        raise ValueError(f"codebook size K must be a power of two >= 2, got {K}")
    return m * math.log2(K)


def bitrate_bps(m: int, K: int, t: int) -> float:
    """Nominal bitrate in bits per second: m x log2(K) x frame rate."""
    return bits_per_frame(m, K) * frame_rate(t)


def compression_ratio(t: int, z_channels: int = 64, sample_rate: int = 48000) -> float:
    """Waveform samples per z value, as the paper counts it (t=4 -> 30x, t=9 -> 68x, t=100 -> 750x)."""
    return sample_rate / (frame_rate(t) * z_channels)


def continuous_bitrate_bps(channels: int, t: int, bits_per_value: int = 16) -> float:
    """Nominal bitrate of unquantized z stored as float16: channels x 16 bits x frame rate."""
    return channels * bits_per_value * frame_rate(t)


@dataclass(frozen=True)
class OperatingPoint:
    """One operating point: pooling t, and for a discrete point the codebook size K, the codebooks
    trained M and the codebooks used m. A continuous point has K, M and m unset.

    The config's ``dae.points`` / ``pipeline.points`` entries and the codec turn into this type,
    so frame rate and bitrate are computed here and nowhere else.
    """

    t: int
    K: int | None = None
    M: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        frame_rate(self.t)  # validates t
        if self.K is not None:
            bits_per_frame(1, self.K)  # validates K
        for name in ("M", "m"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.M is not None and self.m is not None and self.m > self.M:
            raise ValueError(f"m={self.m} codebooks exceed the M={self.M} trained")

    @property
    def continuous(self) -> bool:
        return self.K is None

    @property
    def frame_rate(self) -> float:
        return frame_rate(self.t)

    def bitrate_bps(self, z_channels: int = 64, m: int | None = None) -> float:
        """Nominal bitrate: m x log2(K) x frame rate (discrete), or z as float16 (continuous)."""
        if self.continuous:
            return continuous_bitrate_bps(z_channels, self.t)
        codebooks = self.m if m is None else m
        if codebooks is None:
            raise ValueError("a discrete operating point needs m to have a bitrate")
        return bitrate_bps(codebooks, self.K, self.t)

    def compression_ratio(self, z_channels: int = 64, sample_rate: int = 48000) -> float:
        return compression_ratio(self.t, z_channels, sample_rate)
