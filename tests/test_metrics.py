"""SI-SDR invariances and small-sample behaviour; cosine and bitrate helpers."""
import numpy as np
import pytest
import torch

from spresso.core.errors import SpressoError
from spresso.eval.metrics import (
    actual_bitrate_bps,
    cosine_similarity,
    file_bitrate_bps,
    nominal_bitrate_bps,
    si_sdr,
)


def test_si_sdr_invariances_and_value():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 4800))
    noise = rng.standard_normal((4, 4800))
    noise -= noise.mean(axis=1, keepdims=True)
    # make noise orthogonal to the (zero-mean) reference: SI-SDR is then exactly the SNR
    r0 = ref - ref.mean(axis=1, keepdims=True)
    noise -= (noise * r0).sum(1, keepdims=True) / (r0 * r0).sum(1, keepdims=True) * r0
    noise *= 0.1 * np.linalg.norm(r0, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    est = ref + noise
    base = si_sdr(est, ref)
    assert base.shape == (4,)
    np.testing.assert_allclose(base, 20.0, atol=1e-6)
    np.testing.assert_allclose(si_sdr(3.7 * est, ref), base, atol=1e-6)  # scale
    np.testing.assert_allclose(si_sdr(-est, ref), base, atol=1e-6)  # sign
    np.testing.assert_allclose(si_sdr(est + 0.3, ref - 2.0), base, atol=1e-6)  # DC offset (zero-mean)
    np.testing.assert_allclose(si_sdr(torch.from_numpy(est).float(), torch.from_numpy(ref).float()), base, atol=1e-3)
    assert si_sdr(est[0], ref[0]).shape == (1,)


def test_si_sdr_small_samples_and_degenerate_inputs():
    assert np.isfinite(si_sdr(np.zeros(10), np.zeros(10))).all()  # silence: finite
    assert si_sdr(np.array([1.0, 2.0]), np.array([1.0, 2.0]))[0] > 60  # perfect on 2 samples
    assert np.isfinite(si_sdr(np.array([1.0]), np.array([2.0]))).all()  # one sample: zero-mean -> finite
    rng = np.random.default_rng(1)
    r = rng.standard_normal((1, 8))
    assert si_sdr(rng.standard_normal((1, 8)), r)[0] < si_sdr(r + 0.01 * rng.standard_normal((1, 8)), r)[0]
    with pytest.raises(SpressoError):
        si_sdr(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(SpressoError):
        si_sdr(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)))


def test_cosine_and_bitrates(tmp_path):
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(a, np.array([[2.0, 0.0], [-1.0, -1.0]])), [1.0, -1.0])
    assert nominal_bitrate_bps(12, 1024, 9) == pytest.approx(12 * 10 * 100 / 9)
    assert nominal_bitrate_bps(8, 4096, 100) == pytest.approx(96.0)
    assert actual_bitrate_bps(120, 5.0) == pytest.approx(192.0)
    paths = []
    for i, size in enumerate((100, 140)):
        p = tmp_path / f"{i}.spr"
        p.write_bytes(b"x" * size)
        paths.append(p)
    assert file_bitrate_bps(paths, [5.0, 5.0]) == pytest.approx(240 * 8 / 10.0)
    with pytest.raises(SpressoError):
        actual_bitrate_bps(10, 0.0)
    with pytest.raises(SpressoError, match="cannot stat"):
        file_bitrate_bps([tmp_path / "missing"], [1.0])
