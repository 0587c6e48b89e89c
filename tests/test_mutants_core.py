"""Exact values and messages of spresso.core.rates and spresso.codec.variable_rate (mutation-run gaps)."""
from __future__ import annotations

import re

import pytest

from spresso.codec.variable_rate import (
    codebooks_for_kbps,
    operating_points,
    resolve_codebooks,
)
from spresso.core import rates
from spresso.core.errors import SpressoError


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- rates -----------------------------------------------------------------------------------------
def test_frame_rates_bits_and_bitrates_exactly():
    assert rates.X0_FRAME_RATE == 100.0 and rates.TIME_FACTORS == (4, 9, 20, 100)
    assert rates.frame_rate(1) == 100.0 and rates.frame_rate(9) == 100 / 9 and rates.frame_rate(0.5) == 200.0
    assert rates.bits_per_frame(3, 2) == 3.0 and rates.bits_per_frame(1, 4096) == 12.0
    assert rates.bits_per_frame(5, 65536) == 80.0
    assert rates.bitrate_bps(8, 4096, 100) == 96.0 and rates.bitrate_bps(2, 16, 4) == 200.0
    assert rates.compression_ratio(20) == 150.0
    assert rates.compression_ratio(4, z_channels=32, sample_rate=16000) == 16000 / (25 * 32)
    assert rates.continuous_bitrate_bps(3, 20) == 3 * 16 * 5.0
    assert rates.continuous_bitrate_bps(3, 20, bits_per_value=8) == 3 * 8 * 5.0


@pytest.mark.parametrize("t", [0, -4])
def test_frame_rate_rejects_non_positive_t(t):
    with pytest.raises(ValueError, match=exactly(f"pooling factor must be positive, got {t}")):
        rates.frame_rate(t)


@pytest.mark.parametrize("K", [0, 1, 3, 1000, -4])
def test_bits_per_frame_rejects_K_not_a_power_of_two(K):
    with pytest.raises(ValueError, match=exactly(f"codebook size K must be a power of two >= 2, got {K}")):
        rates.bits_per_frame(1, K)


def test_operating_point_validation_and_values():
    d = rates.OperatingPoint(t=100, K=4096, M=25, m=8)
    assert not d.continuous and d.frame_rate == 1.0
    assert d.bitrate_bps() == 96.0 and d.bitrate_bps(m=25) == 300.0 and d.bitrate_bps(z_channels=1) == 96.0
    assert d.compression_ratio() == 750.0 and d.compression_ratio(z_channels=32, sample_rate=24000) == 750.0
    c = rates.OperatingPoint(t=4)
    assert c.continuous and c.bitrate_bps() == 64 * 16 * 25.0 and c.bitrate_bps(z_channels=8) == 8 * 16 * 25.0
    assert rates.OperatingPoint(t=4, K=2, M=1, m=1).bitrate_bps() == 25.0
    assert rates.OperatingPoint(t=4, K=2, M=3).bitrate_bps(m=2) == 50.0
    with pytest.raises(ValueError, match=exactly("a discrete operating point needs m to have a bitrate")):
        rates.OperatingPoint(t=4, K=16).bitrate_bps()
    with pytest.raises(ValueError, match=exactly("pooling factor must be positive, got 0")):
        rates.OperatingPoint(t=0)
    with pytest.raises(ValueError, match=exactly("codebook size K must be a power of two >= 2, got 12")):
        rates.OperatingPoint(t=4, K=12)
    with pytest.raises(ValueError, match=exactly("M must be >= 1, got 0")):
        rates.OperatingPoint(t=4, K=16, M=0)
    with pytest.raises(ValueError, match=exactly("m must be >= 1, got 0")):
        rates.OperatingPoint(t=4, K=16, m=0)
    with pytest.raises(ValueError, match=exactly("m=5 codebooks exceed the M=4 trained")):
        rates.OperatingPoint(t=4, K=16, M=4, m=5)
    assert rates.OperatingPoint(t=4, K=16, M=4, m=4).m == 4 and rates.OperatingPoint(t=4, K=16, m=9).M is None


# -- variable rate ---------------------------------------------------------------------------------
def test_operating_points_exactly():
    assert operating_points(1024, 100, 3) == [(1, 0.01), (2, 0.02), (3, 0.03)]
    assert operating_points(16, 4, 1) == [(1, 0.1)]
    with pytest.raises(SpressoError, match=exactly("a model needs at least one codebook, got 0")):
        operating_points(16, 4, 0)


def test_codebooks_for_kbps_edges():
    assert codebooks_for_kbps(1, 1024, 100, 200) == 100  # an int target is accepted
    assert codebooks_for_kbps(0.015, 1024, 100, 3) == 1  # tie between 10 and 20 bps: the smaller m
    assert codebooks_for_kbps(0.0151, 1024, 100, 3) == 2
    assert codebooks_for_kbps(0.0149, 1024, 100, 3) == 1
    assert codebooks_for_kbps(0.005, 1024, 100, 3) == 1  # half a step below the lowest point: still the lowest
    for bad in (True, None, -0.0, 1e-300, 0.0049, 0.0351):
        with pytest.raises(SpressoError, match=exactly(f"--kbps must be within this model's range 0.01..0.03 kbps "
                                                        f"(1..3 codebooks of 0.01 kbps each), got {bad!r}")):
            codebooks_for_kbps(bad, 1024, 100, 3)


def test_resolve_codebooks_messages_and_bounds():
    assert resolve_codebooks(16, 4, 5, codebooks=1) == 1 and resolve_codebooks(16, 4, 5, codebooks=5) == 5
    assert resolve_codebooks(16, 4, 5, kbps=0.2) == 2 and resolve_codebooks(16, 4, 5, kbps=None, codebooks=None) == 5
    with pytest.raises(SpressoError, match=exactly("give --kbps or --codebooks, not both")):
        resolve_codebooks(16, 4, 5, kbps=0.2, codebooks=2)
    with pytest.raises(SpressoError, match=exactly("--codebooks must be 1..5 for this model (0.1..0.5 kbps), got 0")):
        resolve_codebooks(16, 4, 5, codebooks=0)
    with pytest.raises(SpressoError, match=exactly("--codebooks must be 1..5 for this model (0.1..0.5 kbps), got 6")):
        resolve_codebooks(16, 4, 5, codebooks=6)
