import numpy as np
import pytest

from spresso.codec import windowing as win
from spresso.codec.windowing import (
    DEFAULT_OVERLAP_FRAMES,
    FADES,
    WINDOW_SAMPLES,
    cut,
    fade_in,
    join,
    model_length,
    plan_for_stream,
    plan_windows,
    window_weights,
)
from spresso.core.errors import SpressoError


@pytest.mark.parametrize("n", [1, 1000, WINDOW_SAMPLES - 1, WINDOW_SAMPLES, WINDOW_SAMPLES + 1, 3 * WINDOW_SAMPLES + 777])
def test_plan_covers_signal(n):
    p = plan_windows(n)
    assert p.starts[0] == 0 and p.padded_samples >= n
    assert p.n_windows == 1 or p.starts[-1] < n  # no window made only of padding
    if p.n_windows > 1:
        assert p.starts[-2] + p.window < n  # one window fewer would not cover
    assert np.all(np.diff(p.starts) == p.hop)


@pytest.mark.parametrize("fade", ["hann", "linear"])
@pytest.mark.parametrize("n,overlap", [(1, 24000), (100_000, 24000), (240_001, 24000), (1_000_000, 24000),
                                       (1_000_000, 0), (777_777, 1), (500, 37)])
def test_unchanged_windows_reconstruct_exactly(fade, n, overlap):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    window = 200 if n == 500 else WINDOW_SAMPLES
    p = plan_windows(n, window, overlap)
    w = cut(x, p)
    assert w.shape == (p.n_windows, window)
    np.testing.assert_allclose(join(w, p, fade), x, rtol=0, atol=1e-6)


def test_complementary_fades():
    for fade in ("hann", "linear"):
        r = fade_in(1000, fade)
        np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-12)
        assert np.all(np.diff(r) > 0) and 0 < r[0] < 0.01 and 0.99 < r[-1] < 1
    r = fade_in(1000, "equal_power")
    np.testing.assert_allclose(r**2 + r[::-1] ** 2, 1.0, atol=1e-12)


def test_equal_power_keeps_power_of_uncorrelated_windows_not_identity():
    n, overlap = 2 * WINDOW_SAMPLES, 48000
    p = plan_windows(n, overlap=overlap)
    rng = np.random.default_rng(0)
    # each window an independent noise rendition: equal-power keeps the overlap's level, hann dips by ~1.8 dB
    windows = rng.standard_normal((p.n_windows, p.window))
    mid = slice(int(p.starts[1]) + overlap // 2 - 4000, int(p.starts[1]) + overlap // 2 + 4000)
    assert np.std(join(windows, p, "equal_power")[mid]) == pytest.approx(1.0, rel=0.05)
    assert np.std(join(windows, p, "hann")[mid]) == pytest.approx(np.sqrt(0.5), rel=0.05)
    # ...but it lifts a coherent signal in the overlap (why it is not the default)
    x = np.ones(n, np.float32)
    assert join(cut(x, p), p, "equal_power").max() == pytest.approx(np.sqrt(2), rel=1e-3)


@pytest.mark.parametrize("fade", FADES)
def test_perturbed_windows_join_without_clicks(fade):
    """Windows that disagree by up to eps (a DC offset each, plus noise) join with no jump above eps."""
    n, overlap, eps = 3 * WINDOW_SAMPLES, 24000, 0.05
    t = np.arange(n) / 48000
    x = (0.5 * np.sin(2 * np.pi * 3 * t)).astype(np.float32)  # smooth: its own sample steps are tiny
    p = plan_windows(n, overlap=overlap)
    rng = np.random.default_rng(1)
    offsets = rng.choice([-eps, eps], p.n_windows) * 0.8
    offsets[::2], offsets[1::2] = -0.8 * eps, 0.8 * eps  # neighbours disagree by 1.6 eps: worst case for a hard cut
    ref = join(cut(x, p), p, fade)  # == x for hann/linear; equal-power's own sqrt2 bump is not the perturbation's doing
    y = join(cut(x, p) + offsets[:, None], p, fade)
    err = y - ref
    # the error is a blend of the windows' perturbations: never larger than one of them (x sqrt2 for equal-power)
    bound = 0.8 * eps * (np.sqrt(2) if fade == "equal_power" else 1)
    assert np.abs(err).max() <= bound + 1e-6
    # and it moves smoothly: its largest sample-to-sample step is the offset gap spread over the overlap
    # (a hard cut would jump by the full gap of 1.6 eps in one sample)
    gap = 1.6 * eps
    smooth = gap * np.pi / overlap
    assert np.abs(np.diff(err)).max() <= smooth + 1e-6
    assert np.abs(np.diff(y)).max() <= np.abs(np.diff(ref)).max() + smooth + 1e-6
    hard = np.concatenate([w[: p.hop] for w in cut(x, p) + offsets[:, None]])[:n]
    assert np.abs(np.diff(hard)).max() > gap * 0.9  # the test signal would click without a crossfade
    # random perturbations inside each window: the output never strays from the reference by more than they do
    noisy = cut(x, p) + rng.uniform(-eps, eps, (p.n_windows, p.window))
    y2 = join(noisy, p, fade)
    assert np.abs(y2 - ref).max() <= eps * (np.sqrt(2) if fade == "equal_power" else 1) + 1e-6


def test_weights_first_and_last_window_unfaded():
    p = plan_windows(3 * WINDOW_SAMPLES, overlap=1000)
    w = window_weights(p)
    assert np.all(w[0, : -1000] == 1) and np.all(w[-1, 1000:] == 1)
    assert np.all(window_weights(plan_windows(100)) == 1)


def test_errors():
    with pytest.raises(SpressoError, match="empty"):
        plan_windows(0)
    with pytest.raises(SpressoError, match="overlap"):
        plan_windows(10, window=100, overlap=100)
    p = plan_windows(10, window=100, overlap=10)
    with pytest.raises(SpressoError, match="mono signal"):
        cut(np.zeros((2, 10)), p)
    with pytest.raises(SpressoError, match="windows"):
        join(np.zeros((2, 100)), p)
    with pytest.raises(SpressoError, match="unknown crossfade"):
        join(np.zeros((1, 100)), p, "cubic")


def test_plan_from_stream_header():
    assert model_length(441000, 44100) == 480000 and model_length(1, 44100) == 2 and model_length(7, 48000) == 7
    p = plan_for_stream(441000, 44100, DEFAULT_OVERLAP_FRAMES)
    assert (p.n_samples, p.overlap, p.hop, p.n_windows) == (480000, 24000, 216000, 3)
    with pytest.raises(SpressoError, match="overlap"):
        plan_for_stream(48000, 48000, 500)  # an overlap as long as the window (a damaged header)


@pytest.mark.parametrize("t", [4, 9, 20, 100])
@pytest.mark.parametrize("n", [1, 479, 480, 481, 4 * 480, 9 * 480 + 1, 100 * 480, 239999, 240000, 240001, 456000, 456001, 480000])
def test_stream_keeps_exactly_the_frames_that_see_the_signal(n, t):
    plan = win.plan_for_signal(n)
    full = win.frames_per_window(t)
    last_start = int(plan.starts[-1])
    # z frame j of the last window pools x0 frames [j t, (j + 1) t), i.e. samples [480 j t, 480 (j + 1) t) of it.
    sees_signal = [j for j in range(full) if last_start + 480 * j * t < n]
    assert win.last_window_frames(plan, t) == len(sees_signal) == max(sees_signal) + 1
    assert win.stream_frames(plan, t, version=1) == plan.n_windows * full
    assert win.stream_frames(plan, t) == (plan.n_windows - 1) * full + len(sees_signal)


def test_stream_frames_worked_numbers():
    assert win.frames_per_window(9) == 56 and win.frames_per_window(100) == 5
    one_and_a_half_s = win.plan_for_signal(72000)  # 150 x0 frames
    assert [win.stream_frames(one_and_a_half_s, t) for t in (4, 9, 20, 100)] == [38, 17, 8, 2]
    ten_s = win.plan_for_signal(480000)  # windows at 0, 4.5 and 9 s; the last holds 1 s
    assert ten_s.n_windows == 3 and win.stream_frames(ten_s, 9) == 2 * 56 + 12
