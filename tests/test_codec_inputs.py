"""What `codec.encode` accepts: either layout, integer PCM, tensors of any float type, the stereo rule, and
one-line errors for the rest (issue 20: nothing silently wrong). Properties over shapes, dtypes, rates, lengths."""
import numpy as np
import pytest
import torch
from codec_toys import shared_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spresso
from spresso.codec import bitstream as bs
from spresso.codec.errors import CodecError
from spresso.codec.inputs import MAX_RATE, MIN_RATE, as_channels, downmix
from spresso.core.errors import SpressoError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def codec():
    return spresso.load(shared_bundle(), batch_size=4)


def noise(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def test_soundfile_layout_is_recognised(codec):
    """`codec.encode(*soundfile.read(path))` on stereo: [frames, 2] was read as frames channels of 2 samples."""
    frames = noise((22050, 2))  # soundfile's [frames, channels]
    s = bs.decode_stream(codec.encode(frames, 22050))
    assert s.sample_count == 22050
    assert codec.encode(frames, 22050) == codec.encode(frames.T, 22050) == codec.encode(frames, 22050, channels_last=True)
    assert codec.encode(frames.T, 22050, channels_last=False) == codec.encode(frames, 22050)


def test_an_ambiguous_shape_is_refused_with_a_hint(codec):
    with pytest.raises(CodecError, match="channels_last=True for \\[samples, channels\\]"):
        codec.encode(noise((2, 30)), 48000)
    with pytest.raises(CodecError, match="cannot tell channels"):
        codec.encode(noise((100, 100)), 48000)
    assert bs.decode_stream(codec.encode(noise((2, 30)), 48000, channels_last=False)).sample_count == 30
    assert bs.decode_stream(codec.encode(noise((2, 30)), 48000, channels_last=True)).sample_count == 2


@pytest.mark.parametrize("dtype,scale,offset", [(np.int16, 2.0 ** 15, 0), (np.int32, 2.0 ** 31, 0), (np.int8, 2.0 ** 7, 0),
                                                (np.uint8, 128.0, 128)])
def test_integer_pcm_is_scaled_to_unit_range(dtype, scale, offset):
    ints = (np.random.default_rng(1).uniform(-0.5, 0.5, 1000) * scale + offset).astype(dtype)
    got = as_channels(ints)
    np.testing.assert_allclose(got[0], (ints.astype(np.float64) - offset) / scale, rtol=1e-6, atol=1e-7)
    assert np.abs(got).max() <= 1.0


def test_int16_encodes_like_its_float_samples(codec):
    ints = (noise(4800) * 32767).astype(np.int16)
    assert codec.encode(ints, 48000) == codec.encode(ints.astype(np.float32) / 32768, 48000)
    for bad in (ints.astype(np.int64), ints.astype(bool), ints.astype(np.complex64), np.array(["a", "b"])):
        with pytest.raises(CodecError, match="int8/int16/int32/uint8"):
            codec.encode(bad, 48000)


def test_tensors_bf16_f16_and_requiring_grad(codec):
    x = torch.from_numpy(noise(4800))
    want = codec.encode(x.numpy(), 48000)
    assert codec.encode(x.clone().requires_grad_(True), 48000) == want
    for dtype in (torch.bfloat16, torch.float16):
        low = x.to(dtype)
        assert codec.encode(low, 48000) == codec.encode(low.float().numpy(), 48000)


def test_a_path_where_an_array_belongs(codec, tmp_path):
    for wrong in (str(tmp_path / "a.wav"), tmp_path / "a.wav", b"RIFF"):
        with pytest.raises(CodecError, match="read it first, or use codec.encode_file") as err:
            codec.encode(wrong, 48000)
        assert "shape ()" not in str(err.value)


def test_codebooks_and_kbps_must_be_numbers_of_the_right_kind(codec):
    for bad in (3.5, "3", True):
        with pytest.raises(SpressoError, match="must be an integer"):
            codec.encode(noise(480), 48000, codebooks=bad)
    for bad in ("0.01", float("nan"), 1e20):
        with pytest.raises(SpressoError, match="range"):
            codec.encode(noise(480), 48000, kbps=bad)


def test_rates_the_decoder_cannot_restore_are_refused_at_encode(codec):
    """A 1 Hz input gave a .spr its own decoder rejected."""
    for sr in (1, 7, MIN_RATE - 1, MAX_RATE + 1, 44100.5, "48000"):
        with pytest.raises(CodecError, match="sample rate"):
            codec.encode(noise(100), sr)
    assert bs.decode_stream(codec.encode(noise(3), MIN_RATE)).sample_rate == MIN_RATE


def test_anti_phase_stereo_is_coded_not_refused_as_silence(codec):
    left = noise(9600) * 5
    mono, rule = downmix(np.stack([left, -left]))
    assert rule.channel == 0 and "left channel" in rule.describe()
    np.testing.assert_array_equal(mono, left)
    data = codec.encode(np.stack([left, -left]), 48000)
    assert data == codec.encode(left, 48000)
    _, mid = downmix(np.stack([left, left * 0.5]))
    assert mid.channel is None and mid.describe() == "stereo -> mono (mid: mean of the channels)"
    with pytest.raises(CodecError, match="digital silence"):
        codec.encode(np.zeros((2, 4800), np.float32), 48000)


def test_device_and_batch_size_are_checked(tmp_path):
    with pytest.raises(CodecError, match="unknown device 'tpu'|unsupported device 'tpu'"):
        spresso.load(shared_bundle(), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CodecError, match="no CUDA GPU"):
            spresso.load(shared_bundle(), device="cuda")
    with pytest.raises(CodecError, match="batch size must be 1..4096"):
        spresso.load(shared_bundle(), batch_size=0)


# ------------------------------------------------------------------------------ properties
DTYPES = ["float32", "float64", "float16", "int16", "int32", "uint8", "int64", "bool", "bf16-tensor", "f16-tensor"]


@st.composite
def signals(draw):
    dtype = draw(st.sampled_from(DTYPES))
    channels = draw(st.integers(1, 3))
    n = draw(st.integers(0, 3000))
    layout = draw(st.sampled_from(["1d", "channels_first", "channels_last"])) if channels == 1 else \
        draw(st.sampled_from(["channels_first", "channels_last"]))
    rate = draw(st.sampled_from([1, 999, 1000, 8000, 22050, 44100, 48000, 96000, 800000]))
    amp = draw(st.sampled_from([0.0, 1e-9, 0.3]))
    return dtype, channels, n, layout, rate, amp


def build(dtype, channels, n, layout, amp, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (channels, n)) * amp
    if dtype in ("int16", "int32", "int64"):
        x = (x * 2 ** 15).astype(dtype)
    elif dtype == "uint8":
        x = (x * 127 + 128).astype(np.uint8)
    elif dtype == "bool":
        x = x > 0
    elif dtype.endswith("tensor"):
        x = torch.from_numpy(x).to(torch.bfloat16 if dtype.startswith("bf16") else torch.float16)
    else:
        x = x.astype(dtype)
    if layout == "1d":
        return x[0]
    return x.T if layout == "channels_last" else x


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=signals())
def test_any_array_round_trips_or_fails_clearly(codec, case):
    dtype, channels, n, layout, rate, amp = case
    wave = build(dtype, channels, n, layout, amp)
    explicit = None if layout == "1d" else layout == "channels_last"
    try:
        data = codec.encode(wave, rate, channels_last=explicit)
    except CodecError as err:
        msg = str(err)
        assert "\n" not in msg and msg
        reasons = ("empty audio", "digital silence", "sample rate", "int8/int16/int32/uint8")
        assert any(r in msg for r in reasons), msg
        # the refusal is right: an empty, silent, bad-rate or bad-dtype input
        assert n == 0 or amp < 1e-6 or dtype in ("int64", "bool") or not MIN_RATE <= rate <= MAX_RATE or \
            (dtype in ("int16", "int32", "uint8") and amp < 1e-4), case
        return
    assert n > 0 and MIN_RATE <= rate <= MAX_RATE and dtype not in ("int64", "bool")
    s = bs.decode_stream(data)
    assert (s.sample_count, s.sample_rate) == (n, rate)
    wave_out, sr = codec.decode(data, steps=1, original_rate=True)
    assert sr == rate and wave_out.shape == (n,) and np.isfinite(wave_out).all()
