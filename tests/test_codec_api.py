"""Codec API: encode/decode of many lengths and rates, variations, --kbps, peel, continuous mode, bad input."""
import numpy as np
import pytest
import torch
from codec_toys import shared_bundle

import spresso
from spresso.codec import bitstream as bs
from spresso.codec.codec import CodecError
from spresso.codec.fast_decode import CachedDenoiser
from spresso.codec.windowing import DEFAULT_OVERLAP_FRAMES
from spresso.diffusion.reconstruct import null_text

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    return spresso.load(shared_bundle(), batch_size=4)


def noise(n, ch=None, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n if ch is None else (ch, n)) * 0.1).astype(np.float32)


# frames: 5 per full window at t = 100; the last window keeps ceil(ceil(samples / 480) / 100) of them,
# e.g. 7.2 s at 22.05 kHz = 345600 samples at 48 kHz: windows at 0 and 216000, the last holding
# 129600 samples = 270 x0 frames -> 3 z frames, 5 + 3 in all.
@pytest.mark.parametrize("seconds,sr,ch,windows,frames", [(0.01, 48000, None, 1, 1), (1.3, 44100, 2, 1, 2),
                                                          (5.0, 48000, None, 1, 5), (7.2, 22050, 1, 2, 8),
                                                          (11.0, 16000, 3, 3, 12), (2.0, 37800, None, 1, 2)])
def test_round_trip_lengths_rates_channels(codec, seconds, sr, ch, windows, frames):
    n = max(1, int(seconds * sr))
    data = codec.encode(noise(n, ch), sr)
    s = bs.decode_stream(data)
    assert (s.sample_count, s.sample_rate, s.m, s.K, s.version) == (n, sr, codec.default_m, 16, bs.FORMAT_VERSION)
    assert s.n_frames == frames
    assert s.overlap == (DEFAULT_OVERLAP_FRAMES if windows > 1 else 0)
    w48, r48 = codec.decode(data, steps=1)
    assert r48 == 48000 and w48.shape == (-(-n * 48000 // sr),) and w48.dtype == np.float32 and np.isfinite(w48).all()
    w, r = codec.decode(data, steps=1, original_rate=True)
    assert r == sr and w.shape == (n,)


def test_join_has_no_jump_at_window_boundaries(codec):
    data = codec.encode(noise(48000 * 9), 48000)
    w, _ = codec.decode(data, steps=1)
    hop = 240000 - DEFAULT_OVERLAP_FRAMES * 480
    jumps = np.abs(np.diff(w))
    # across the crossfade the step between samples is no larger than the signal's own steps
    assert jumps[hop - 100: 240000 + 100].max() <= 1.5 * jumps.max() + 1e-6


def test_variations_differ_and_are_reproducible_by_seed(codec):
    data = codec.encode(noise(48000 * 2), 48000)
    takes, sr = codec.decode(data, steps=1, seed=7, variations=3)
    assert takes.shape == (3, 96000)
    assert not np.allclose(takes[0], takes[1]) and not np.allclose(takes[1], takes[2])
    again, _ = codec.decode(data, steps=1, seed=7, variations=3)
    np.testing.assert_array_equal(takes, again)
    single, _ = codec.decode(data, steps=1, seed=7)
    np.testing.assert_allclose(single, takes[0], atol=1e-5)  # variation 1 == the plain decode, whatever the batching
    other, _ = codec.decode(data, steps=1, seed=8)
    assert not np.allclose(other, single)


def test_kbps_picks_the_nearest_codebook_count(codec):
    wave = noise(48000)
    # t = 100 (1 Hz), K = 16 (4 bits): m codebooks = 4 m bps
    for kbps, m in ((0.004, 1), (0.0085, 2), (0.011, 3), (0.017, 4), (0.0021, 1)):
        assert bs.decode_stream(codec.encode(wave, 48000, kbps=kbps)).m == m
    for beyond in (1.0, 0.0001, 1e20):  # refused with the range, never clamped
        with pytest.raises(Exception, match=r"range 0.004..0.016 kbps"):
            codec.encode(wave, 48000, kbps=beyond)
    assert bs.decode_stream(codec.encode(wave, 48000, codebooks=2)).m == 2
    with pytest.raises(Exception, match="--codebooks must be 1..4"):
        codec.encode(wave, 48000, codebooks=5)
    with pytest.raises(Exception, match="not both"):
        codec.encode(wave, 48000, kbps=0.01, codebooks=2)


def test_peel_then_decode_equals_encoding_with_m_codebooks(codec):
    wave = noise(48000 * 6, seed=3)
    full = codec.encode(wave, 48000, codebooks=4)
    peeled = bs.peel(full, 2)
    direct = codec.encode(wave, 48000, codebooks=2)
    # The bundle's quantizer uses a greedy search (beam 1), so truncated encoding is a prefix of the full one.
    np.testing.assert_array_equal(bs.decode_stream(peeled).codes, bs.decode_stream(direct).codes)
    assert peeled == direct
    np.testing.assert_array_equal(codec.decode(peeled, steps=2, seed=1)[0], codec.decode(direct, steps=2, seed=1)[0])


def test_batch_api_matches_single_calls(codec):
    items = [(noise(30000, seed=1), 48000), (noise(48000 * 6, 2, seed=2), 32000)]
    datas = codec.encode_batch(items)
    assert datas == [codec.encode(w, sr) for w, sr in items]
    outs = codec.decode_batch(datas, steps=1, seed=4)
    for (w, sr), d in zip(outs, datas):
        np.testing.assert_allclose(w, codec.decode(d, steps=1, seed=4)[0], atol=1e-5)


def test_heun_and_dpm_solvers_both_decode(codec):
    data = codec.encode(noise(24000), 48000)
    a, _ = codec.decode(data, steps=2, solver="heun")
    b, _ = codec.decode(data, steps=2, solver="dpmpp2m")
    assert a.shape == b.shape and np.isfinite(a).all()
    with pytest.raises(CodecError, match="unknown solver"):
        codec.decode(data, solver="euler")


def test_continuous_bundle_round_trip(tmp_path):
    c = spresso.load(shared_bundle(continuous=True))
    data = c.encode(noise(48000 * 6), 48000)
    s = bs.decode_stream(data)
    assert s.mode == "continuous" and s.channels == 6 and s.n_frames == c.frames_per_window + 2  # 1.5 s in the last window
    w, sr = c.decode(data, steps=1)
    assert w.shape == (48000 * 6,)
    # The dropped frames decode as the model's z of silence: the same as a version-1 stream that stores them.
    tail = c.silence_z[:, 2:].cpu().numpy()
    full = bs.Stream.continuous(np.concatenate([s.z, tail.astype(np.float16)], axis=1), model_id=c.model_id, time_factor=s.time_factor,
                                sample_count=s.sample_count, sample_rate=s.sample_rate, overlap=s.overlap, version=1)
    w1, _ = c.decode(bs.encode_stream(full), steps=1)
    np.testing.assert_allclose(w1, w, atol=2e-3 * np.abs(w).max())
    with pytest.raises(CodecError, match="continuous bundle"):
        c.encode(noise(100), 48000, kbps=0.1)


def test_bad_audio_and_streams_give_one_line_errors(codec):
    for wave, sr, msg in ((np.zeros(0, np.float32), 48000, "empty audio"), (np.zeros(48000, np.float32), 48000, "digital silence"),
                          (np.full(10, np.nan, np.float32), 48000, "NaN"), (np.ones((2, 2, 2), np.float32), 48000, "must be"),
                          (noise(100), 0, "sample rate")):
        with pytest.raises(CodecError, match=msg) as err:
            codec.encode(wave, sr)
        assert "\n" not in str(err.value)
    data = codec.encode(noise(1000), 48000)
    with pytest.raises(bs.BitstreamError, match="checksum"):
        codec.decode(data[:-1] + bytes([data[-1] ^ 1]))
    # A valid stream whose frame count does not fit the model's windows.
    s = bs.decode_stream(data)
    assert s.n_frames == 1  # 1000 samples: 3 x0 frames, one z frame at 1 Hz
    bad = bs.encode_stream(bs.Stream.discrete(np.repeat(s.codes, 3, axis=0), 16, model_id=codec.model_id, time_factor=100,
                                              sample_count=1000))
    with pytest.raises(CodecError, match="need 1"):
        codec.decode(bad)
    # Version 1 stored every frame of every window: one frame is a corrupt version-1 stream.
    v1 = bs.Stream.discrete(s.codes, 16, model_id=codec.model_id, time_factor=100, sample_count=1000, version=1)
    with pytest.raises(CodecError, match=r"need 5 \(format version 1\)"):
        codec.decode(bs.encode_stream(v1))
    v1_full = bs.Stream.discrete(np.repeat(s.codes, 5, axis=0), 16, model_id=codec.model_id, time_factor=100, sample_count=1000,
                                 version=1)
    assert codec.decode(bs.encode_stream(v1_full), steps=1)[0].shape == (1000,)
    wrong_t = bs.encode_stream(bs.Stream.discrete(s.codes, 16, model_id=codec.model_id, time_factor=20, sample_count=1000))
    with pytest.raises(CodecError, match="frame rate"):
        codec.decode(wrong_t)
    with pytest.raises(CodecError, match="variations"):
        codec.decode(data, variations=0)


def test_cached_denoiser_matches_the_model(codec):
    dae = codec.dae
    z, x, s = torch.randn(2, 6, 5), torch.randn(2, 8, 500), torch.tensor([3.0, 0.3])
    with torch.no_grad():
        ref = dae(x, s, null_text(dae, 2, "cpu"), z, drop=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(CachedDenoiser(dae, z, 500)(x, s), ref)
