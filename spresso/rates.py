"""Frame rates and bitrates of S-PRESSO's operating points: computed here and nowhere else.

x0 runs at 100 frames per second (48 kHz, hop 480). The latent encoder pools it by t frames,
so z runs at 100 / t Hz; a discrete code spends m x log2(K) bits per z frame.
"""
from __future__ import annotations

import math

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
