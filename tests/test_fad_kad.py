"""FAD against the closed form for Gaussians, KAD sanity, bootstrap intervals."""
import numpy as np
import pytest
import scipy.linalg

from spresso.core.errors import SpressoError
from spresso.eval import bootstrap
from spresso.eval.bootstrap import bootstrap_fad, bootstrap_kad, bootstrap_mean
from spresso.eval.fad import GaussianStats, fad, frechet_distance, trace_sqrt_product
from spresso.eval.kad import kad, median_bandwidth


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    got = frechet_distance(GaussianStats(mu1, s1, 0), GaussianStats(mu2, s2, 0))
    assert got == pytest.approx(expected, rel=1e-9)
    # diagonal case: sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    got = frechet_distance(GaussianStats(mu1, np.diag(a), 0), GaussianStats(mu1, np.diag(b), 0))
    assert got == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9)
    # singular (rank-deficient) covariances stay real and finite
    low = np.zeros((d, d)); low[0, 0] = 1.0
    assert np.isfinite(trace_sqrt_product(low, s2)) and trace_sqrt_product(low, s2) >= 0


def test_fad_of_samples_approaches_closed_form_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(1)
    d, n = 8, 20000
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, d)) * 2.0 + 0.5
    closed = d * 0.25 + d * (1 - 2) ** 2  # ||0.5||^2 per dim + (sqrt1 - sqrt4)^2 per dim
    assert fad(x, y).value == pytest.approx(closed, rel=0.05)
    assert fad(x, x).value == pytest.approx(0.0, abs=1e-9)


def test_fad_frame_level_and_size_checks():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((10, 30, 32))  # 10 clips x 30 frames: clip-level would be singular
    cand = ref + 0.1 * rng.standard_normal(ref.shape)
    r = fad(ref, cand)
    assert r.n_clips == 10 and r.frames_reference == 300 and r.value > 0
    with pytest.raises(SpressoError, match="singular"):
        fad(ref, cand, pool="clips")
    with pytest.raises(SpressoError, match="same size"):
        fad(ref, cand[:9])
    # lists of clips with different frame counts are accepted
    assert fad([c[:20] for c in ref], list(cand)).value > 0


def test_kad_identical_near_zero_and_shifted_positive():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 16))
    x2 = rng.standard_normal((300, 16))
    same = kad(x, x2)
    shifted = kad(x, x2 + 1.0)
    assert same.scale == 1000 and same.label == "KAD x1000"
    assert abs(same.value) < 5.0  # x1000: near zero for same distribution
    assert shifted.value > 20 * max(abs(same.value), 1.0)
    # the same points on both sides: the unbiased estimate is slightly negative, O(1/m)
    assert -1000 * 2 / 300 < kad(x, x).value <= 0
    assert same.bandwidth == pytest.approx(median_bandwidth(x))


def test_bootstrap_intervals_contain_estimates_and_are_seeded(monkeypatch):
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((40, 5, 6))
    cand = ref + 0.5 * rng.standard_normal(ref.shape) + 0.3
    f1, f2 = bootstrap_fad(ref, cand, n_boot=50, seed=7), bootstrap_fad(ref, cand, n_boot=50, seed=7)
    assert f1 == f2 and f1.low < f1.high and f1.low <= f1.value * 1.5
    k = bootstrap_kad(ref, cand, n_boot=200, seed=7)
    assert k.low < k.value < k.high + 1e-9 or k.low <= k.value
    m = bootstrap_mean(np.arange(100.0), seed=0)
    assert m.value == pytest.approx(49.5) and 40 < m.low < 49.5 < m.high < 60
    # with every clip drawn exactly once the bootstrap estimators equal the point estimates
    monkeypatch.setattr(bootstrap, "_counts", lambda rng, n, b: np.ones((b, n), dtype=int))
    k1 = bootstrap_kad(ref, cand, n_boot=3)
    assert k1.low == pytest.approx(k1.value, rel=1e-9) and k1.high == pytest.approx(k1.value, rel=1e-9)
    f = bootstrap_fad(ref, cand, n_boot=2)
    assert f.low == pytest.approx(f.value, rel=1e-9)


def test_kad_bootstrap_of_a_close_codec_is_centred_on_its_estimate():
    """A codec whose output is close to each original: a resample that draws clip c twice must not
    pair copy 1's original with copy 2's reconstruction (a near-duplicate pair the point estimate
    has only once per clip), or every draw is pulled below the estimate and the interval can
    exclude it (Opus 12 kbps on 16 clips: 7.42 [-46.2, 4.19] before)."""
    for data_seed in (11, 12, 13):
        rng = np.random.default_rng(data_seed)
        ref = rng.standard_normal((16, 8, 6))
        cand = ref + 0.15 * rng.standard_normal(ref.shape)
        # centred: even the middle half of the draws holds the estimate (before: not even the 95%)
        for level in (0.95, 0.5):
            k = bootstrap_kad(ref, cand, n_boot=400, seed=3, level=level)
            assert k.low < k.value < k.high, (data_seed, k)
