import pytest

from spresso.core.rates import bitrate_bps, compression_ratio, frame_rate


@pytest.mark.parametrize("m,K,t,kbps", [(12, 1024, 9, 1.333), (25, 4096, 100, 0.3), (8, 4096, 100, 0.096)])
def test_paper_operating_points(m, K, t, kbps):
    assert bitrate_bps(m, K, t) / 1000 == pytest.approx(kbps, rel=2e-3)


def test_frame_rates_and_compression():
    assert [frame_rate(t) for t in (4, 20, 100)] == [25.0, 5.0, 1.0]
    assert compression_ratio(4) == 30 and round(compression_ratio(9)) == 68 and compression_ratio(100) == 750
    with pytest.raises(ValueError):
        bitrate_bps(8, 1000, 4)


def test_continuous_bitrate():
    from spresso.core.rates import continuous_bitrate_bps

    assert continuous_bitrate_bps(64, 100) == 1024.0 and continuous_bitrate_bps(64, 4) == 25 * 64 * 16
