"""Edge cases of the codec's pure functions that the mutation run (`make mutation`) showed untested.

Public API only: bitpack pack/unpack/truncate, the .spr stream encode/decode/peel, windowing plans and
the variable-rate helpers. Each test names the behaviour; docs/testing.md lists the mutants they kill.
"""
from __future__ import annotations

import re
import warnings
import zlib

import numpy as np
import pytest

from spresso.codec import bitpack, bitstream, windowing
from spresso.codec.errors import BitstreamError
from spresso.core.errors import SpressoError


# -- bitpack ---------------------------------------------------------------------------------------
def test_out_of_range_message_names_the_code_and_the_range():
    with pytest.raises(BitstreamError, match=r"^code 4 out of range for K = 4 \(must be 0\.\.3\)$"):
        bitpack.pack_bits([1, 4, 2], 2)
    with pytest.raises(BitstreamError, match=r"^code -3 out of range for K = 256 \(must be 0\.\.255\)$"):
        bitpack.pack_bits([7, -3, 300], 8)  # the low end is reported first
    with pytest.raises(BitstreamError, match=r"^code 5 out of range"):
        bitpack.pack_bits([0, 5], 2)  # 0 is in range: the high end is the culprit
    with pytest.raises(BitstreamError, match=r"code width must be 1\.\.32 bits, got 0"):
        bitpack.packed_nbytes(3, 0)
    with pytest.raises(BitstreamError, match=r"code width must be 1\.\.32 bits, got 2\.0"):
        bitpack.pack_bits([1], 2.0)


def test_unpack_returns_int64_and_names_the_shortfall():
    data = bitpack.pack_bits([3, 1, 2], 2)
    out = bitpack.unpack_bits(data, 3, 2)
    assert out.dtype == np.int64 and out.tolist() == [3, 1, 2]
    assert bitpack.unpack_codes(bitpack.pack_codes([[1, 2], [3, 0]], 2), 2, 2, 2).dtype == np.int64
    assert bitpack.unpack_bits(data + b"\xff\xff", 3, 2).tolist() == [3, 1, 2]  # bytes past the codes are ignored
    with pytest.raises(BitstreamError, match=r"^truncated code payload: 9 codes of 3 bits need 4 bytes, got 3$"):
        bitpack.unpack_bits(b"\x00\x00\x00", 9, 3)
    assert bitpack.unpack_bits(b"\x00\x00\x00\x00", 9, 3).tolist() == [0] * 9


def test_pack_codes_rejects_non_2d_arrays_in_one_line():
    with pytest.raises(BitstreamError, match=r"^codes must be a \[frames, codebooks\] array, got shape \(3,\)$"):
        bitpack.pack_codes(np.array([1, 2, 3]), 4)


@pytest.mark.parametrize("data, nbits, expected", [
    (bytes([0b10110000]), 3, False),  # a 1 in the padding of the last, partial byte
    (bytes([0b10100000]), 3, True),
    (bytes([0xFF, 0x01]), 8, False),  # byte-aligned: the whole next byte is padding
    (bytes([0xFF, 0x00]), 8, True),
    (bytes([0xA0, 0x01]), 4, False),  # padding runs past the partial byte
    (bytes([0xA0, 0x00, 0x00]), 4, True),
    (bytes([0xFF, 0xFF]), 16, True),
    (b"", 0, True),
])
def test_tail_bits_zero(data, nbits, expected):
    assert bitpack.tail_bits_zero(data, nbits) is expected


def test_truncate_on_a_byte_boundary_keeps_exactly_the_prefix_bytes():
    codes = np.array([[1, 2], [3, 4]])
    data = bitpack.pack_codes(codes, 8)
    assert bitpack.truncate_codes(data, 2, 1, 8) == bytes([1, 3])
    assert bitpack.truncate_codes(data, 2, 2, 8) == data
    assert bitpack.truncate_codes(bitpack.pack_codes(codes, 4), 2, 1, 4) == bytes([0x13])


# -- the .spr stream -------------------------------------------------------------------------------
MODEL = "00112233aabb"  # hex: only the first 4 bytes are stored


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def raises(message: str):
    """The exact one-line message (the decoder's errors are user-facing)."""
    return pytest.raises(BitstreamError, match="^" + re.escape(message) + "$")


def sealed(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


def discrete(codes=((1,), (2,)), K=4, t=4, **kw) -> bitstream.Stream:
    kw = {"sample_count": 480, **kw}
    return bitstream.Stream.discrete(np.array(codes), K, model_id=MODEL, time_factor=t, **kw)


def test_model_id_prefix():
    assert bitstream.model_id_prefix("00112233aabb") == bytes.fromhex("00112233")
    assert bitstream.model_id_prefix(bytes(range(10))) == bytes([0, 1, 2, 3])
    assert bitstream.model_id_prefix(bytearray(b"abcd")) == b"abcd"
    assert bitstream.model_id_prefix(memoryview(b"wxyz!")) == b"wxyz"
    with raises("model id must be a hex string, got 'zz112233'"):
        bitstream.model_id_prefix("zz112233")
    with raises("model id must be bytes or a hex string, got int"):
        bitstream.model_id_prefix(1234)
    with raises("model id needs at least 4 bytes (8 hex digits), got 'abcd'"):
        bitstream.model_id_prefix("abcd")
    with raises("model id needs at least 4 bytes (8 hex digits), got b'abc'"):
        bitstream.model_id_prefix(b"abc")


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (240000, b"\x80\xd3\x0e"), ((1 << 32) - 1, b"\xff\xff\xff\xff\x0f"),
])
def test_varints_are_leb128(value, encoded):
    assert bitstream.encode_varint(value) == encoded
    assert bitstream.decode_varint(b"\x99" + encoded + b"\x05", 1, "x") == (value, 1 + len(encoded))


def test_varint_errors():
    with raises("value -1 does not fit a header field (0..4294967295)"):
        bitstream.encode_varint(-1)
    with raises("value 4294967296 does not fit a header field (0..4294967295)"):
        bitstream.encode_varint(1 << 32)
    with raises("truncated stream: header ends inside the frame count field"):
        bitstream.decode_varint(b"\x80\x80", 0, "frame count")
    with raises("truncated stream: header ends inside the frame count field"):
        bitstream.decode_varint(b"\x01", 1, "frame count")
    with raises("corrupt header: over-long encoding of the overlap field"):
        bitstream.decode_varint(b"\x81\x00", 0, "overlap")
    with raises("corrupt header: the overlap field is too large"):
        bitstream.decode_varint(b"\xff\xff\xff\xff\x1f", 0, "overlap")  # 2**35 - 1
    with raises("corrupt header: the overlap field is too large"):
        bitstream.decode_varint(b"\x80\x80\x80\x80\x80\x01", 0, "overlap")  # a sixth byte


def test_stream_validation_messages():
    with raises("unknown .spr format version 4 (this build reads versions 1, 2 and 3)"):
        discrete(version=4)
    with raises("rq codes need format version 3 or later (got 2)"):
        discrete(version=2, quantizer="rq")
    with raises("a continuous stream has no codebook size or quantizer"):
        bitstream.Stream(model_id=MODEL, z=np.ones((1, 1)), time_factor=4, sample_count=1, sample_rate=1, quantizer="qinco2")
    with raises("time factor 5 is not an operating point (one of (4, 9, 20, 100))"):
        discrete(t=5)
    with raises("sample_count must be an integer 1..4294967295, got 0"):
        discrete(sample_count=0)
    with raises("sample_count must be an integer 1..4294967295, got 4294967296"):
        discrete(sample_count=1 << 32)
    with raises("sample_rate must be an integer 1..4294967295, got 48000.0"):
        discrete(sample_rate=48000.0)
    with raises("overlap must be an integer 0..4294967295, got -1"):
        discrete(overlap=-1)
    assert discrete(overlap=0).overlap == 0 and discrete(sample_count=1).sample_count == 1
    assert type(discrete(sample_count=np.int32(7)).sample_count) is int
    with raises("codebook size K must be a power of two 2..65536, got 6"):
        discrete(K=6)
    with raises("codebook size K must be a power of two 2..65536, got 1"):
        discrete(K=1)
    with raises("codebook size K must be a power of two 2..65536, got 4.0"):
        discrete(K=4.0)
    base = dict(model_id=b"abcd", time_factor=4, sample_count=480, sample_rate=48000)
    with raises("a stream holds either discrete codes or continuous z, exactly one"):
        bitstream.Stream(**base)
    with raises("a stream holds either discrete codes or continuous z, exactly one"):
        bitstream.Stream(codes=np.zeros((1, 1), int), z=np.zeros((1, 1)), log2k=1, **base)
    with raises("log2 K must be 1..16, got None"):
        bitstream.Stream(codes=np.zeros((1, 1), int), **base)
    with raises("log2 K must be 1..16, got 17"):
        bitstream.Stream(codes=np.zeros((1, 1), int), log2k=17, **base)
    with raises("log2 K must be 1..16, got 0"):
        bitstream.Stream(codes=np.zeros((1, 1), int), log2k=0, **base)
    assert bitstream.Stream(codes=np.zeros((1, 1), int), log2k=16, **base).K == 65536
    assert bitstream.Stream(codes=np.zeros((1, 1), int), log2k=1, **base).K == 2
    with raises("codes must be [frames >= 1, codebooks >= 1], got shape (3,)"):
        discrete(codes=[1, 2, 3])
    with raises("codes must be [frames >= 1, codebooks >= 1], got shape (0, 2)"):
        discrete(codes=np.zeros((0, 2), int))
    with raises("codes must be [frames >= 1, codebooks >= 1], got shape (2, 0)"):
        discrete(codes=np.zeros((2, 0), int))
    with raises("codes must be integers, got dtype float64"):
        discrete(codes=[[1.0]])
    with raises("code 4 out of range for K = 4 (must be 0..3)"):
        discrete(codes=[[0], [4]])
    with raises("code -1 out of range for K = 4 (must be 0..3)"):
        discrete(codes=[[-1], [9]])
    with raises("code 9 out of range for K = 4 (must be 0..3)"):
        discrete(codes=[[0], [9]])
    with raises("a continuous stream has no codebook size or quantizer"):
        bitstream.Stream(z=np.zeros((1, 1), np.float32), log2k=2, **base)
    with raises("z must be [channels >= 1, frames >= 1], got shape (4,)"):
        bitstream.Stream.continuous(np.zeros(4), model_id=MODEL, time_factor=4, sample_count=480)
    with raises("z must be [channels >= 1, frames >= 1], got shape (0, 3)"):
        bitstream.Stream.continuous(np.zeros((0, 3)), model_id=MODEL, time_factor=4, sample_count=480)
    with raises("z must be [channels >= 1, frames >= 1], got shape (3, 0)"):
        bitstream.Stream.continuous(np.zeros((3, 0)), model_id=MODEL, time_factor=4, sample_count=480)
    with raises("z must be floating point, got dtype int64"):
        bitstream.Stream.continuous(np.zeros((1, 1), np.int64), model_id=MODEL, time_factor=4, sample_count=480)
    with raises("z holds values that are not finite in float16 (NaN, inf or beyond +-65504)"):
        bitstream.Stream.continuous(np.full((1, 2), 1e6), model_id=MODEL, time_factor=4, sample_count=480)
    s = discrete(codes=np.array([[1], [2]], np.int16))
    assert s.codes.dtype == np.int64 and not s.codes.flags.writeable
    z = bitstream.Stream.continuous(np.ones((2, 3)), model_id=MODEL, time_factor=9, sample_count=480)
    assert z.z.dtype == np.float16 and not z.z.flags.writeable
    assert bitstream.Stream(model_id="aabbccdd", codes=np.zeros((1, 1), int), log2k=1, time_factor=4,
                            sample_count=1, sample_rate=1).model_id == bytes.fromhex("aabbccdd")


def test_fields_sizes_and_bitrates():
    s = discrete(codes=np.arange(12).reshape(4, 3) % 8, K=8, t=9, sample_count=96000, sample_rate=48000, overlap=5)
    assert s.fields() == {
        "version": 3, "model_id": "00112233", "mode": "discrete", "time_factor": 9, "rate_index": 1,
        "frame_rate_hz": 100 / 9, "n_frames": 4, "sample_count": 96000, "sample_rate": 48000, "duration_s": 2.0,
        "overlap": 5, "log2k": 3, "K": 8, "m": 3, "quantizer": "qinco2", "bitrate_bps": 3 * 3 * 100 / 9}
    assert s.payload_nbytes() == 5  # 4 frames x 3 codebooks x 3 bits = 36 bits
    assert s.channels is None and s.m == 3 and s.K == 8
    z = bitstream.Stream.continuous(np.ones((6, 5)), model_id=MODEL, time_factor=100, sample_count=44100,
                                    sample_rate=44100)
    assert z.fields() == {
        "version": 3, "model_id": "00112233", "mode": "continuous", "time_factor": 100, "rate_index": 3,
        "frame_rate_hz": 1.0, "n_frames": 5, "sample_count": 44100, "sample_rate": 44100, "duration_s": 1.0,
        "overlap": 0, "channels": 6, "bitrate_bps": 6 * 16 * 1.0}
    assert z.payload_nbytes() == 6 * 5 * 2 and z.m is None and z.K is None
    assert bitstream.header_nbytes(s) == len(bitstream.encode_stream(s)) - 5


def test_stream_peel_keeps_everything_but_the_dropped_codebooks():
    s = discrete(codes=np.arange(12).reshape(4, 3) % 8, K=8, t=20, sample_count=777, sample_rate=22050,
                 overlap=2, version=1)
    p = s.peel(2)
    assert (p.time_factor, p.sample_count, p.sample_rate, p.overlap, p.log2k, p.model_id, p.version) == \
        (20, 777, 22050, 2, 3, s.model_id, 1)
    np.testing.assert_array_equal(p.codes, s.codes[:, :2])
    assert bitstream.encode_stream(p) == bitstream.peel(bitstream.encode_stream(s), 2)
    np.testing.assert_array_equal(s.peel(3).codes, s.codes)
    for bad in (0, 4, True, 1.0):
        with raises(f"cannot keep {bad} codebooks: the stream has 3 (choose 1..3)"):
            s.peel(bad)
    z = bitstream.Stream.continuous(np.ones((2, 3)), model_id=MODEL, time_factor=9, sample_count=480)
    with raises("only a discrete stream can be peeled (this one holds continuous z)"):
        z.peel(1)


def test_exact_bytes_of_a_discrete_and_a_continuous_stream():
    s = discrete(codes=[[1, 3], [2, 0]], K=4, t=9, sample_count=480, overlap=3)
    body = (b"SPR\x03" + bytes.fromhex("00112233") + bytes([0 << 4 | 1]) + b"\x02" + b"\x02" + b"\x02"
            + b"\xe0\x03" + b"\x00" + b"\x03" + bytes([0b01101100]))  # codebook 0: 1, 2; codebook 1: 3, 0
    assert bitstream.encode_stream(s) == sealed(body)
    rq = discrete(codes=[[1, 3], [2, 0]], K=4, t=9, sample_count=480, overlap=3, quantizer="rq")
    assert bitstream.encode_stream(rq) == sealed(body[:9] + bytes([1 << 5 | 2]) + body[10:])  # quantizer 1 | log2 K 2
    z = np.array([[1.0, -2.0]], np.float32)
    c = bitstream.Stream.continuous(z, model_id=MODEL, time_factor=100, sample_count=50000, sample_rate=50000)
    body = (b"SPR\x03" + bytes.fromhex("00112233") + bytes([1 << 4 | 3]) + b"\x01" + b"\x02"
            + bitstream.encode_varint(50000) * 2 + b"\x00" + np.array([1.0, -2.0], "<f2").tobytes())
    assert bitstream.encode_stream(c) == sealed(body)
    back = bitstream.decode_stream(sealed(body))
    assert back.sample_rate == 50000 and back.z.dtype == np.float16 and back.z.tolist() == [[1.0, -2.0]]
    rate44 = discrete(sample_rate=44100)
    assert bitstream.encode_stream(rate44)[12:15] == b"\xe0\x03\x01"  # sample count 480, then table code 1


def header(mode_rate=0x00, rest=b"\x02\x01\x01\x01\x00\x00", version=3) -> bytes:
    return b"SPR" + bytes([version]) + b"\x00\x11\x22\x33" + bytes([mode_rate]) + rest


@pytest.mark.parametrize("data, message", [
    (b"", "empty stream (0 bytes)"),
    (b"S", "truncated stream: only 1 bytes"),
    (b"SP", "truncated stream: only 2 bytes"),
    (b"SPR", "truncated stream: only 3 bytes"),
    (b"XY", "not a .spr stream (wrong magic)"),
    (b"SPX\x02\x00\x00\x00\x00\x00\x00", "not a .spr stream (wrong magic)"),
    (b"SPR\x09\x00\x00", "unknown .spr format version 9 (this build reads versions 1, 2 and 3)"),
    (b"SPR\x00\x00\x00", "unknown .spr format version 0 (this build reads versions 1, 2 and 3)"),
    (b"SPR\x02\x00\x11\x22\x33", "truncated stream: only 8 bytes"),
    (header(0x20), "corrupt header: unknown mode 2"),
    (header(0x04), "corrupt header: unknown frame-rate index 4"),
    (header(0x00, b""), "truncated stream: header ends inside the log2 K field"),
    (header(0x00, b"\x00\x01"), "corrupt header: log2 K = 0 (must be 1..16)"),
    (header(0x00, b"\x11\x01"), "corrupt header: log2 K = 17 (must be 1..16)"),
    (header(0x00, b"\x51\x01"), "corrupt header: unknown quantizer code 2"),
    (header(0x00, b"\x22\x01", version=2), "corrupt header: log2 K = 34 (must be 1..16)"),  # no quantizer bits before v3
    (header(0x00, b"\x02"), "truncated stream: header ends inside the codebook count field"),
    (header(0x00, b"\x02\x00\x01\x01\x00\x00"), "corrupt header: 0 codebooks"),
    (header(0x10, b"\x00\x01\x01\x00\x00"), "corrupt header: 0 channels"),
    (header(0x10, b""), "truncated stream: header ends inside the channel count field"),
    (header(0x00, b"\x02\x01"), "truncated stream: header ends inside the frame count field"),
    (header(0x00, b"\x02\x01\x01"), "truncated stream: header ends inside the sample count field"),
    (header(0x00, b"\x02\x01\x01\x01"), "truncated stream: header ends inside the sample rate field"),
    (header(0x00, b"\x02\x01\x01\x01\x00"), "truncated stream: header ends inside the overlap field"),
    (header(0x00, b"\x02\x01\x00\x01\x00\x00"), "corrupt header: 0 frames"),
    (header(0x00, b"\x02\x01\x01\x00\x00\x00"), "corrupt header: 0 samples"),
    (header(0x00, b"\x02\x01\x01\x01\x0d\x00"), "corrupt header: unknown sample-rate code 13"),
    (header(0x00, b"\x02\x01\x01\x01\x0f\x00"), "corrupt header: unknown sample-rate code 15"),
    (header(0x00, b"\x02\x01\x01\x01" + bitstream.encode_varint(44100) + b"\x00"),
     "corrupt header: non-canonical sample rate 44100 (must use its table code)"),
    (header(0x00, b"\x02\x01\x01\x01\x00\x00"), "truncated stream (or damaged header): the header announces 20 bytes, got 15"),
])
def test_decode_errors_name_the_problem(data, message):
    with raises(message):
        bitstream.decode_stream(data)


def test_decode_length_checksum_and_padding_errors():
    good = bitstream.encode_stream(discrete())
    assert len(good) == 21  # 16 header + 1 payload + 4 checksum
    with raises("2 trailing bytes after the end of the stream (21 bytes)"):
        bitstream.decode_stream(good + b"\x00\x00")
    with raises("corrupt stream: length 22 does not match the header (21 bytes) and the checksum fails"):
        bitstream.decode_stream(good[:-1] + b"\x00\x00")
    bad = bytearray(good)
    bad[16] ^= 0x40  # a payload bit: same length, wrong checksum
    stored, actual = int.from_bytes(good[-4:], "big"), zlib.crc32(bytes(bad[:-4]))
    with raises(f"checksum mismatch (stored {stored:08x}, computed {actual:08x}): the stream is damaged"):
        bitstream.decode_stream(bytes(bad))
    body = bytearray(good[:-4])
    body[-1] |= 0x01  # a padding bit (2 codes x 2 bits = 4 bits used)
    with raises("corrupt stream: padding bits after the last code are not zero"):
        bitstream.decode_stream(sealed(bytes(body)))
    with raises("a stream is bytes, got str"):
        bitstream.decode_stream("SPR")
    assert bitstream.decode_stream(bytearray(good)).codes.tolist() == [[1], [2]]
    assert bitstream.decode_stream(memoryview(good), expected_model_id=MODEL).codes.tolist() == [[1], [2]]
    with raises("stream for another model: it was made by model 00112233 with qinco2 codes, this model is deadbeef"):
        bitstream.decode_stream(good, expected_model_id="deadbeef")


def test_decoded_streams_keep_every_header_field():
    s = discrete(codes=[[1, 0], [3, 2], [2, 1]], K=4, t=20, sample_count=123456, sample_rate=96000, overlap=7,
                 version=1)
    back = bitstream.decode_stream(bitstream.encode_stream(s))
    assert back.fields() == s.fields() and back.codes.tolist() == s.codes.tolist()
    assert back.version == 1 and back.model_id == bytes.fromhex("00112233")


def test_byte_peel_errors_and_identity():
    data = bitstream.encode_stream(discrete(codes=[[1, 2, 3], [0, 1, 2]], K=4, sample_rate=50000, overlap=4))
    assert bitstream.peel(data, 3) == data and bitstream.peel(bytearray(data), 3) == data
    assert bitstream.peel(data, np.int64(1)) == bitstream.encode_stream(
        discrete(codes=[[1], [0]], K=4, sample_rate=50000, overlap=4))
    for bad in (0, 4, True, 2.0):
        with raises(f"cannot keep {bad} codebooks: the stream has 3 (choose 1..3)"):
            bitstream.peel(data, bad)
    with raises("stream for another model: it was made by model 00112233 with qinco2 codes, this model is deadbeef"):
        bitstream.peel(data, 1, expected_model_id="deadbeef")
    assert bitstream.peel(data, 2, expected_model_id=MODEL)[3] == 3
    z = bitstream.encode_stream(bitstream.Stream.continuous(np.ones((1, 1)), model_id=MODEL, time_factor=4,
                                                            sample_count=480))
    with raises("only a discrete stream can be peeled (this one holds continuous z)"):
        bitstream.peel(z, 1)


def test_describe_adds_the_file_sizes():
    data = bitstream.encode_stream(discrete(codes=np.zeros((10, 2), int), K=256, t=4, sample_count=19200))
    info = bitstream.describe(data)
    assert info["file_bytes"] == len(data) == 21 + 20  # 17 header (sample count: 3 bytes) + 4 checksum
    assert info["payload_bytes"] == 20 and info["overhead_bytes"] == 21
    assert info["file_bitrate_bps"] == len(data) * 8 / 0.4
    assert info["bitrate_bps"] == 2 * 8 * 25.0 and info["m"] == 2


# -- windowing -------------------------------------------------------------------------------------
def test_window_constants_and_model_length():
    assert (windowing.SAMPLE_RATE, windowing.WINDOW_SAMPLES, windowing.DEFAULT_OVERLAP_SAMPLES) == (48000, 240000, 24000)
    assert windowing.X0_HOP == 480 and windowing.DEFAULT_OVERLAP_FRAMES == 50
    assert windowing.model_length(1, 1) == 48000 and windowing.model_length(3, 96000) == 2
    assert windowing.model_length(2, 96000) == 1 and windowing.model_length(1, 48000) == 1
    with pytest.raises(SpressoError, match=exactly("need a positive length and rate, got 0 samples at 48000 Hz")):
        windowing.model_length(0, 48000)
    with pytest.raises(SpressoError, match=exactly("need a positive length and rate, got 5 samples at 0 Hz")):
        windowing.model_length(5, 0)


def test_window_plan_values_and_messages():
    p = windowing.plan_windows(22, window=10, overlap=3)
    assert (p.hop, p.n_windows, p.starts.tolist(), p.padded_samples) == (7, 3, [0, 7, 14], 24)
    assert p.starts.dtype == np.int64
    q = windowing.plan_windows(10, window=10, overlap=3)
    assert (q.n_windows, q.padded_samples) == (1, 10)
    r = windowing.plan_windows(11, window=10, overlap=0)
    assert (r.hop, r.n_windows, r.starts.tolist(), r.padded_samples) == (10, 2, [0, 10], 20)
    assert windowing.plan_windows(1, window=1, overlap=0).n_windows == 1
    with pytest.raises(SpressoError, match=exactly("cannot cut an empty signal (0 samples) into windows")):
        windowing.plan_windows(0)
    with pytest.raises(SpressoError, match=exactly("window must be at least 1 sample, got 0")):
        windowing.plan_windows(5, window=0, overlap=0)
    with pytest.raises(SpressoError, match=exactly("overlap must be 0..9 samples (less than the window), got 10")):
        windowing.plan_windows(5, window=10, overlap=10)
    with pytest.raises(SpressoError, match=exactly("overlap must be 0..9 samples (less than the window), got -1")):
        windowing.plan_windows(5, window=10, overlap=-1)
    assert windowing.plan_windows(5, window=10, overlap=9).hop == 1
    assert windowing.plan_windows(5.0, 10.0, 2.0) == windowing.WindowPlan(5, 10, 2)
    assert windowing.plan_for_signal(240000).overlap == 0 and windowing.plan_for_signal(240001).overlap == 24000
    s = windowing.plan_for_stream(44100, 44100, 2)
    assert (s.n_samples, s.window, s.overlap) == (48000, 240000, 960)


def test_frames_per_window_and_last_window():
    assert [windowing.frames_per_window(t) for t in (4, 9, 20, 100)] == [125, 56, 25, 5]
    p = windowing.plan_windows(300000)  # 2 windows; the last holds 300000 - 216000 = 84000 samples
    assert windowing.last_window_frames(p, 1) == 175 and windowing.last_window_frames(p, 4) == 44
    assert windowing.stream_frames(p, 4, version=1) == 250 and windowing.stream_frames(p, 4, version=2) == 125 + 44
    assert type(windowing.last_window_frames(p, 4)) is int and type(windowing.stream_frames(p, 4)) is int
    one = windowing.plan_windows(481)
    assert windowing.last_window_frames(one, 1) == 2 and windowing.last_window_frames(one, 2) == 1


def test_cut_is_a_strided_view_of_one_padded_copy():
    p = windowing.plan_windows(22, window=10, overlap=3)
    x = np.arange(1, 23, dtype=np.float32)
    w = windowing.cut(x, p)
    assert w.shape == (3, 10) and w.dtype == np.float32
    assert w[1].tolist() == list(range(8, 18)) and w[2].tolist() == [*range(15, 23), 0, 0]
    with pytest.raises(SpressoError, match=exactly("expected a mono signal of 22 samples, got shape (21,)")):
        windowing.cut(x[:-1], p)
    with pytest.raises(SpressoError, match=exactly("expected a mono signal of 22 samples, got shape (1, 22)")):
        windowing.cut(x[None], p)


def test_fade_curves_exactly():
    x = (np.arange(4) + 0.5) / 4
    np.testing.assert_allclose(windowing.fade_in(4, "linear"), x)
    np.testing.assert_allclose(windowing.fade_in(4, "hann"), np.sin(0.5 * np.pi * x) ** 2)
    np.testing.assert_allclose(windowing.fade_in(4, "equal_power"), np.sin(0.5 * np.pi * x))
    np.testing.assert_allclose(windowing.fade_in(4), np.sin(0.5 * np.pi * x) ** 2)
    assert windowing.fade_in(1, "linear").tolist() == [0.5] and windowing.fade_in(0).size == 0
    assert windowing.fade_in(3, "linear").dtype == np.float64
    with pytest.raises(SpressoError, match=exactly("unknown crossfade 'cubic' (choose from hann, linear, equal_power)")):
        windowing.fade_in(3, "cubic")
    with pytest.raises(SpressoError, match="unknown crossfade"):
        windowing.window_weights(windowing.plan_windows(5, 10, 0), "cubic")


def test_window_weights_exactly():
    p = windowing.plan_windows(22, window=10, overlap=4)
    w = windowing.window_weights(p, "linear")
    rise = (np.arange(4) + 0.5) / 4
    assert w.shape == (3, 10) and w.dtype == np.float64
    np.testing.assert_allclose(w[0], [1] * 6 + list(rise[::-1]))
    np.testing.assert_allclose(w[1], list(rise) + [1] * 2 + list(rise[::-1]))
    np.testing.assert_allclose(w[2], list(rise) + [1] * 6)
    wide = windowing.window_weights(windowing.plan_windows(18, window=10, overlap=6), "linear")  # hop 4
    rise6 = (np.arange(6) + 0.5) / 6
    both = np.ones(10)
    both[:6] *= rise6
    both[4:] *= rise6[::-1]  # the fade-in and fade-out meet inside the window: they multiply
    np.testing.assert_allclose(wide[1], both)


def test_join_values_and_messages():
    p = windowing.plan_windows(16, window=10, overlap=4)
    windows = np.stack([np.full(10, 1.0), np.full(10, 3.0)])
    rise = (np.arange(4) + 0.5) / 4
    out = windowing.join(windows, p, "linear")
    assert out.dtype == np.float32 and out.shape == (16,)
    np.testing.assert_allclose(out, [1] * 6 + list(1 * (1 - rise) + 3 * rise) + [3] * 6, rtol=1e-6)
    ep = windowing.join(windows, p, "equal_power")  # no normalisation: the weights' squares sum to 1
    r = np.sin(0.5 * np.pi * rise)
    np.testing.assert_allclose(ep, [1] * 6 + list(1 * r[::-1] + 3 * r) + [3] * 6, rtol=1e-6)
    assert windowing.join([np.zeros(10), np.ones(10)], p).shape == (16,)  # a list of windows works too
    with pytest.raises(SpressoError, match=exactly("expected 2 windows of 10 samples, got 3")):
        windowing.join(np.zeros((3, 10)), p)
    with pytest.raises(SpressoError, match=exactly("window 1 has shape (9,), expected (10,)")):
        windowing.join([np.zeros(10), np.zeros(9)], p)


def test_stream_edges_the_mutation_run_found():
    assert discrete(sample_count=(1 << 32) - 1).sample_count == (1 << 32) - 1  # the largest header value
    base = dict(codes=np.zeros((1, 1), int), log2k=1, time_factor=4, sample_count=1, sample_rate=1)
    assert bitstream.Stream(model_id=b"abcdef", **base).model_id == b"abcd"  # bytes are cut to the 4-byte prefix
    assert bitstream.Stream(model_id=bytearray(b"wxyz"), **base).model_id == b"wxyz"
    assert type(bitstream.Stream(model_id=bytearray(b"wxyz"), **base).model_id) is bytes
    with raises("model id needs at least 4 bytes (8 hex digits), got 'abcd'"):
        bitstream.Stream(model_id="abcd", **base)  # a 4-character str is hex for 2 bytes, not 4 bytes
    z = bitstream.Stream.continuous(np.ones((1, 1)), model_id=MODEL, time_factor=4, sample_count=1)
    assert z.sample_rate == 48000 and z.overlap == 0 and z.version == 3 and z.quantizer is None
    d = bitstream.Stream.discrete(np.ones((1, 1), int), 2, model_id=MODEL, time_factor=4, sample_count=1)
    assert d.sample_rate == 48000 and d.overlap == 0 and d.version == 3 and d.quantizer == "qinco2"
    np.testing.assert_array_equal(discrete(codes=[[1, 2], [3, 0]]).peel(1).codes, [[1], [3]])
    with warnings.catch_warnings():  # the float16 overflow is reported as the stream's error, not a warning
        warnings.simplefilter("error")
        with raises("z holds values that are not finite in float16 (NaN, inf or beyond +-65504)"):
            bitstream.Stream.continuous(np.full((1, 1), 1e6), model_id=MODEL, time_factor=4, sample_count=1)
    with raises("unknown .spr format version 9 (this build reads versions 1, 2 and 3)"):
        bitstream.decode_stream(b"SPR\x09")  # 4 bytes: long enough to read the version
    with raises("truncated stream: only 4 bytes"):
        bitstream.decode_stream(b"SPR\x02")
    with raises("corrupt header: the overlap field is too large"):
        bitstream.decode_varint(b"\x80\x80\x80\x80\x80\x00", 0, "overlap")  # a varint never reads a 6th byte
