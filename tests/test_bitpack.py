import numpy as np
import pytest

from spresso.codec import bitpack
from spresso.codec.errors import BitstreamError


def test_msb_first_bit_order():
    # 3-bit codes 5 (101), 3 (011), 7 (111) -> 101 011 11|1 0000000
    assert bitpack.pack_bits([5, 3, 7], 3) == bytes([0b10101111, 0b10000000])
    assert bitpack.pack_bits([0xABC], 12) == bytes([0xAB, 0xC0])
    assert bitpack.pack_bits([1], 1) == b"\x80"
    assert bitpack.pack_bits([], 7) == b""


@pytest.mark.parametrize("bits", [*range(1, 18), 24, 32])
def test_round_trip_every_width(bits):
    rng = np.random.default_rng(bits)
    for n in (1, 7, 8, 9, 1000):
        v = rng.integers(0, 1 << bits, n)
        v[0] = (1 << bits) - 1  # the extreme code
        data = bitpack.pack_bits(v, bits)
        assert len(data) == bitpack.packed_nbytes(n, bits) == -(-n * bits // 8)
        np.testing.assert_array_equal(bitpack.unpack_bits(data, n, bits), v)
        assert bitpack.tail_bits_zero(data, n * bits)


def test_step_major_layout_and_prefix():
    codes = np.arange(12).reshape(4, 3) % 16  # [frames, codebooks]
    data = bitpack.pack_codes(codes, 4)
    # codebook 0 for frames 0..3 comes first: 0, 3, 6, 9 -> nibbles 0x03 0x69
    assert data[:2] == bytes([0x03, 0x69])
    np.testing.assert_array_equal(bitpack.unpack_codes(data, 4, 3, 4), codes)
    for m in (1, 2, 3):
        np.testing.assert_array_equal(bitpack.unpack_codes(data, 4, m, 4), codes[:, :m])


def test_truncate_zeroes_tail_bits():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, (5, 4))  # 5 frames x 10 bits = 50 bits per codebook: not byte-aligned
    data = bitpack.pack_codes(codes, 10)
    for m in (1, 2, 3, 4):
        cut = bitpack.truncate_codes(data, 5, m, 10)
        assert cut == bitpack.pack_codes(codes[:, :m], 10)  # identical to packing the first m from scratch


def test_large_input_crosses_chunks():
    v = np.random.default_rng(1).integers(0, 1 << 13, bitpack._CHUNK + 12345)
    np.testing.assert_array_equal(bitpack.unpack_bits(bitpack.pack_bits(v, 13), v.size, 13), v)


def test_errors():
    with pytest.raises(BitstreamError, match="out of range"):
        bitpack.pack_bits([4], 2)
    with pytest.raises(BitstreamError, match="out of range"):
        bitpack.pack_bits([-1], 8)
    with pytest.raises(BitstreamError, match="1..32 bits"):
        bitpack.pack_bits([0], 33)
    with pytest.raises(BitstreamError, match="integers"):
        bitpack.pack_bits([0.5], 4)
    with pytest.raises(BitstreamError, match="truncated"):
        bitpack.unpack_bits(b"\x00", 2, 8)
