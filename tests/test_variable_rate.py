import pytest

from spresso.codec.variable_rate import (
    codebooks_for_kbps,
    operating_points,
    resolve_codebooks,
)
from spresso.core.errors import SpressoError


def test_paper_operating_points():
    assert codebooks_for_kbps(0.096, 4096, 100, 20) == 8
    assert codebooks_for_kbps(0.3, 4096, 100, 25) == 25
    assert codebooks_for_kbps(1.32, 1024, 9, 20) == 12  # 12 x 10 bits x 11.1 Hz = 1.333 kbps


def test_nearest_and_ties():
    # K = 2^10 at 1 Hz: 10 bps per codebook
    assert codebooks_for_kbps(0.034, 1024, 100, 10) == 3
    assert codebooks_for_kbps(0.036, 1024, 100, 10) == 4
    assert codebooks_for_kbps(0.035, 1024, 100, 10) == 3  # a tie takes the smaller m
    assert codebooks_for_kbps(0.005, 1024, 100, 10) == 1  # half a step below the lowest point still rounds to it
    assert codebooks_for_kbps(0.105, 1024, 100, 10) == 10
    pts = operating_points(1024, 4, 3)
    assert [m for m, _ in pts] == [1, 2, 3] and pts[2][1] == pytest.approx(0.75)


def test_every_point_maps_to_itself():
    for K, t in ((1024, 4), (4096, 9), (4096, 20), (2, 100), (65536, 4)):
        for m, kbps in operating_points(K, t, 32):
            assert codebooks_for_kbps(kbps, K, t, 32) == m


def test_resolve():
    assert resolve_codebooks(4096, 100, 8) == 8
    assert resolve_codebooks(4096, 100, 8, codebooks=3) == 3
    assert resolve_codebooks(4096, 100, 8, kbps=0.05) == 4
    with pytest.raises(SpressoError, match="not both"):
        resolve_codebooks(4096, 100, 8, kbps=0.05, codebooks=3)
    with pytest.raises(SpressoError, match=r"1\.\.8 for this model \(0.012..0.096 kbps\)"):
        resolve_codebooks(4096, 100, 8, codebooks=9)
    for bad in (0, -1.0, float("nan"), float("inf"), "0.3", True):
        with pytest.raises(SpressoError, match=r"range 0.012..0.096 kbps"):
            codebooks_for_kbps(bad, 4096, 100, 8)
    for bad in (3.5, "3", True):
        with pytest.raises(SpressoError, match="must be an integer"):
            resolve_codebooks(4096, 100, 8, codebooks=bad)


def test_out_of_range_bitrates_are_refused_not_clamped():
    """`--kbps 1e20` used to pick the lowest point (every distance rounded to the same float); 1000 and 0.001 clamped."""
    for bad in (1e20, 1000.0, 0.001, 0.0049, 0.1051):
        with pytest.raises(SpressoError, match=r"range 0.01..0.1 kbps \(1..10 codebooks"):
            codebooks_for_kbps(bad, 1024, 100, 10)
