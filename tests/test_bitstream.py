import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from spresso.codec import windowing as win
from spresso.codec.bitstream import (
    FORMAT_VERSION,
    SAMPLE_RATES,
    Stream,
    decode_stream,
    decode_varint,
    describe,
    encode_stream,
    encode_varint,
    header_nbytes,
    peel,
)
from spresso.codec.errors import BitstreamError
from spresso.core import rates
from spresso.core.errors import SpressoError

VECTORS = Path(__file__).parent / "vectors"
MODEL = "0123456789abcdef"


def make(codes, K, t=100, **kw):
    kw.setdefault("sample_count", 240000)
    return Stream.discrete(codes, K, model_id=MODEL, time_factor=t, **kw)


def frames_5s(t):
    return max(1, int(5 * rates.frame_rate(t)))


# ------------------------------------------------------------ round trips

@pytest.mark.parametrize("K", [2, 1 << 10, 1 << 12, 1 << 16])
@pytest.mark.parametrize("t", rates.TIME_FACTORS)
def test_round_trip_every_m_K_rate(K, t):
    rng = np.random.default_rng(K + t)
    T = frames_5s(t)
    full = rng.integers(0, K, (T, 32))
    full[0, :] = K - 1
    for m in range(1, 33):
        s = make(full[:, :m], K, t)
        data = encode_stream(s)
        d = decode_stream(data, expected_model_id=MODEL)
        np.testing.assert_array_equal(d.codes, full[:, :m])
        assert (d.m, d.K, d.time_factor, d.n_frames) == (m, K, t, T)
        assert len(data) == header_nbytes(s) + -(-T * m * (K.bit_length() - 1) // 8)
        assert encode_stream(d) == data  # canonical
    # peel the m=32 stream down to every m: exactly the first m codebooks, and the bytes of a fresh encode
    data32 = encode_stream(make(full, K, t))
    for m in range(1, 33):
        peeled = peel(data32, m)
        np.testing.assert_array_equal(decode_stream(peeled).codes, full[:, :m])
        assert peeled == encode_stream(make(full[:, :m], K, t))


def test_continuous_round_trip():
    z = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float16)
    s = Stream.continuous(z, model_id=MODEL, time_factor=100, sample_count=240000)
    d = decode_stream(encode_stream(s))
    assert d.mode == "continuous" and d.channels == 64 and d.m is None
    assert d.z.dtype == np.float16 and np.array_equal(d.z.view(np.uint16), z.view(np.uint16))
    assert d.bitrate_bps == 64 * 16 * 1.0
    with pytest.raises(BitstreamError, match="only a discrete stream"):
        peel(encode_stream(s), 1)
    with pytest.raises(BitstreamError, match="not finite"):
        Stream.continuous(np.array([[np.nan]]), model_id=MODEL, time_factor=4, sample_count=1)
    with pytest.raises(BitstreamError, match="not finite"):
        Stream.continuous(np.array([[1e6]]), model_id=MODEL, time_factor=4, sample_count=1)


# ------------------------------------------------------------ header

def test_header_fields_and_size():
    codes = np.random.default_rng(0).integers(0, 4096, (5, 8))
    s = make(codes, 4096, 100)
    data = encode_stream(s)
    # 5 s at 0.096 kbps: 60 bytes of codes, 21 bytes of header + CRC
    assert s.bitrate_bps == pytest.approx(96.0) and s.payload_nbytes() == 60
    assert header_nbytes(s) == 21 and len(data) == 81
    assert data[:4] == b"SPR\x03" and data[4:8] == bytes.fromhex(MODEL[:8])
    assert data[8] == 0x03 and data[9] == 12 and data[10] == 8  # discrete, rate index 3 (t=100); QINCo2 (0) | log2K; m
    assert int.from_bytes(data[-4:], "big") == zlib.crc32(data[:-4])
    info = describe(data)
    assert info["overhead_bytes"] == 21 and info["file_bitrate_bps"] == pytest.approx(81 * 8 / 5)
    d = decode_stream(data)
    assert d.fields() == {
        "version": 3, "model_id": MODEL[:8], "mode": "discrete", "time_factor": 100, "rate_index": 3,
        "frame_rate_hz": 1.0, "n_frames": 5, "sample_count": 240000, "sample_rate": 48000, "duration_s": 5.0,
        "overlap": 0, "log2k": 12, "K": 4096, "m": 8, "quantizer": "qinco2", "bitrate_bps": 96.0,
    }


@pytest.mark.parametrize("rate", [48000, 44100, 8000, 12000, 37800, 16, 768000])
def test_sample_rates(rate):
    s = make(np.zeros((1, 1), int), 2, 4, sample_count=7, sample_rate=rate, overlap=300)
    data = encode_stream(s)
    d = decode_stream(data)
    assert (d.sample_rate, d.sample_count, d.overlap) == (rate, 7, 300)
    assert len(data) - header_nbytes(s) == 1
    # table rates take one byte
    short = header_nbytes(make(np.zeros((1, 1), int), 2, 4, sample_count=7, sample_rate=48000, overlap=300))
    assert header_nbytes(s) == short + (0 if rate in SAMPLE_RATES else len(encode_varint(rate)) - 1)


def test_varint():
    for v in (0, 1, 127, 128, 240000, 2**32 - 1):
        enc = encode_varint(v)
        assert decode_varint(enc, 0, "x") == (v, len(enc))
    assert encode_varint(300) == b"\xac\x02" and encode_varint(240000) == b"\x80\xd3\x0e"
    with pytest.raises(BitstreamError, match="over-long"):
        decode_varint(b"\x80\x00", 0, "x")
    with pytest.raises(BitstreamError, match="too large"):
        decode_varint(b"\xff\xff\xff\xff\x7f", 0, "x")
    with pytest.raises(BitstreamError, match="too large"):
        decode_varint(b"\xff\xff\xff\xff\xff\x01", 0, "x")
    with pytest.raises(BitstreamError):
        encode_varint(2**32)


# ------------------------------------------------------------ bad input: one clear error each

def _good():
    return encode_stream(make(np.random.default_rng(3).integers(0, 1024, (5, 6)), 1024))


def _reseal(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


@pytest.mark.parametrize("mutate,message", [
    (lambda d: b"RIFF" + d[4:], "wrong magic"),
    (lambda d: b"", "empty"),
    (lambda d: d[:2], "truncated"),
    (lambda d: d[:3] + b"\x04" + d[4:], "unknown .spr format version 4"),
    (lambda d: d[:3] + b"\x00" + d[4:], "unknown .spr format version 0"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:12], "truncated"),
    (lambda d: d + b"\x00", "1 trailing bytes"),
    (lambda d: d + d, "trailing bytes"),
    (lambda d: d[:20] + bytes([d[20] ^ 0x10]) + d[21:], "checksum mismatch"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum mismatch"),
    (lambda d: _reseal(d[:8] + b"\x05" + d[9:-4]), "unknown frame-rate index"),
    (lambda d: _reseal(d[:8] + b"\x23" + d[9:-4]), "unknown mode"),
    (lambda d: _reseal(d[:9] + b"\x11" + d[10:-4]), "log2 K"),
    (lambda d: _reseal(d[:9] + bytes([2 << 5 | 10]) + d[10:-4]), "unknown quantizer code 2"),
    (lambda d: _reseal(d[:3] + b"\x02" + d[4:9] + bytes([1 << 5 | 10]) + d[10:-4]), "log2 K = 42"),  # v2: no quantizer bits
    (lambda d: _reseal(d[:-5] + bytes([d[-5] | 1])), "padding bits"),
])
def test_bad_streams(mutate, message):
    with pytest.raises(BitstreamError, match=message) as err:
        decode_stream(mutate(_good()))
    assert "\n" not in str(err.value) and isinstance(err.value, SpressoError)


def test_other_model_and_peel_limits():
    data = _good()
    with pytest.raises(BitstreamError, match="another model.*01234567.*deadbeef"):
        decode_stream(data, expected_model_id="deadbeef00")
    decode_stream(data, expected_model_id=bytes.fromhex(MODEL))
    with pytest.raises(BitstreamError, match="the stream has 6"):
        peel(data, 7)
    with pytest.raises(BitstreamError, match="the stream has 6"):
        peel(data, 0)
    assert peel(data, 6) == data
    with pytest.raises(BitstreamError, match="out of range for K = 1024"):
        make(np.array([[1024]]), 1024)
    with pytest.raises(BitstreamError, match="not an operating point"):
        make(np.zeros((1, 1), int), 2, t=7)
    with pytest.raises(BitstreamError, match="power of two"):
        make(np.zeros((1, 1), int), 1000)
    with pytest.raises(BitstreamError, match="hex"):
        Stream.discrete(np.zeros((1, 1), int), 2, model_id="xyz not hex", time_factor=4, sample_count=1)


def test_peel_needs_no_unpacking():
    # peel slices bytes: its output must equal packing the first m codebooks from scratch, bit for bit
    codes = np.random.default_rng(5).integers(0, 2, (13, 5))  # 13 bits per codebook: never byte-aligned
    data = encode_stream(make(codes, 2, 4))
    for m in range(1, 6):
        assert peel(data, m) == encode_stream(make(codes[:, :m], 2, 4))
        assert peel(peel(data, m), 1) == peel(data, 1)


# ------------------------------------------------------------ test vectors (catch format changes)

FROZEN = {"v1/": 1, "v2/": 2}  # older versions' vectors, by folder
VECTOR_NAMES = sorted(p.stem for p in VECTORS.glob("*.spr")) + sorted(
    f"{folder}{p.stem}" for folder in FROZEN for p in (VECTORS / folder).glob("*.spr"))


def _version_of(name: str) -> int:
    return next((v for folder, v in FROZEN.items() if name.startswith(folder)), FORMAT_VERSION)


def test_vectors_present():
    for version in (1, 2, FORMAT_VERSION):
        assert sum(_version_of(n) == version for n in VECTOR_NAMES) >= 6


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector(name):
    data = (VECTORS / f"{name}.spr").read_bytes()
    want = json.loads((VECTORS / f"{name}.json").read_text())
    assert data.hex() == want["hex"]
    s = decode_stream(data)
    f = want["fields"]
    if "codes" in want and f["version"] < 3:
        f = {**f, "quantizer": "qinco2"}  # implied before version 3 (its vectors were written without the field)
    assert s.fields() == f and f["version"] == _version_of(name)
    common = dict(model_id=f["model_id"], time_factor=f["time_factor"], sample_count=f["sample_count"],
                  sample_rate=f["sample_rate"], overlap=f["overlap"], version=f["version"])
    if "codes" in want:
        np.testing.assert_array_equal(s.codes, np.array(want["codes"]))
        rebuilt = Stream.discrete(np.array(want["codes"]), f["K"], quantizer=f["quantizer"], **common)
    else:
        bits = np.array(want["z_float16_bits"], dtype=np.uint16)
        assert np.array_equal(s.z.view(np.uint16), bits)
        np.testing.assert_array_equal(s.z.astype(float), np.array(want["z"]))
        rebuilt = Stream.continuous(bits.view(np.float16), **common)
    assert encode_stream(rebuilt) == data
    if f["version"] >= 2:  # these vectors are also streams a model of their rate accepts (section 6)
        plan = win.plan_for_stream(f["sample_count"], f["sample_rate"], f["overlap"])
        assert f["n_frames"] == win.stream_frames(plan, f["time_factor"], f["version"])


def test_rq_stream_names_its_quantizer_and_needs_version_3():
    data = (VECTORS / "t100_k4096_m8_5s_rq.spr").read_bytes()
    s = decode_stream(data)
    assert s.quantizer == "rq" and data[9] == 1 << 5 | 12 and s.peel(3).quantizer == "rq"
    assert decode_stream(peel(data, 3)).quantizer == "rq"
    with pytest.raises(BitstreamError, match="rq codes need format version 3"):
        Stream.discrete(s.codes, 4096, model_id=MODEL, time_factor=100, sample_count=240000, version=2, quantizer="rq")
    with pytest.raises(BitstreamError, match="unknown quantizer 'pq'"):
        Stream.discrete(s.codes, 4096, model_id=MODEL, time_factor=100, sample_count=240000, quantizer="pq")
    with pytest.raises(BitstreamError, match="another model.*5e1f0c0d with rq codes.*deadbeef"):
        decode_stream(data, expected_model_id="deadbeef")


def test_peeled_vector_is_peel_of_full():
    for folder in (VECTORS, VECTORS / "v1", VECTORS / "v2"):
        full = (folder / "t100_k4096_m8_5s.spr").read_bytes()
        assert peel(full, 3) == (folder / "t100_k4096_m3_peeled.spr").read_bytes()  # peeling keeps the version
