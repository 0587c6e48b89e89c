"""Pack integer codes of ``bits`` = log2 K bits into bytes, MSB-first, step-major.

Bit order: the first code's most significant bit is the most significant bit of byte 0; codes
follow each other with no gaps; the last byte is padded with zero bits. Step-major order: all
frames of codebook 1, then all frames of codebook 2, ... so the first ``ceil(T*m*bits/8)`` bytes
of a payload with M >= m codebooks hold the first m codebooks exactly (this is what makes
``peel`` a byte slice plus masking the tail bits, with no re-encoding).
"""
from __future__ import annotations

import numpy as np

from spresso.codec.errors import BitstreamError

MIN_BITS, MAX_BITS = 1, 16  # code widths of the .spr format (K = 2..65536); the stream code checks them
WORD_BITS = 32  # what the packer itself handles: other codecs' streams in the evaluation harness (SQCodec: 17)
# Values per chunk when expanding to one byte per bit: bounds the temporary memory (~16 MiB at 16 bits)
# for 2-hour files. A multiple of 8, so each chunk ends on a byte boundary.
_CHUNK = 1 << 20


def _check_bits(bits: int) -> int:
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= int(bits) <= WORD_BITS:
        raise BitstreamError(f"code width must be {MIN_BITS}..{WORD_BITS} bits, got {bits!r}")
    return int(bits)


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy (the last byte zero-padded)."""
    return (count * _check_bits(bits) + 7) // 8


def pack_bits(values, bits: int) -> bytes:
    """Pack a flat sequence of integers in [0, 2**bits) MSB-first into bytes."""
    bits = _check_bits(bits)
    v = np.asarray(values)
    if v.size and not np.issubdtype(v.dtype, np.integer):
        raise BitstreamError(f"codes must be integers, got dtype {v.dtype}")
    v = v.reshape(-1)
    if v.size:
        lo, hi = int(v.min()), int(v.max())
        if lo < 0 or hi >= 1 << bits:  # (Python ints: no overflow at 32 bits)
            bad = lo if lo < 0 else hi
            raise BitstreamError(f"code {bad} out of range for K = {1 << bits} (must be 0..{(1 << bits) - 1})")
    v = v.astype(np.uint64, copy=False)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)  # MSB first
    parts = []
    for start in range(0, v.size, _CHUNK):
        bitmat = ((v[start:start + _CHUNK, None] >> shifts) & 1).astype(np.uint8)
        parts.append(np.packbits(bitmat.reshape(-1)).tobytes())  # np.packbits pads with zeros
    return b"".join(parts)


def unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` codes of ``data`` as int64."""
    bits = _check_bits(bits)
    need = packed_nbytes(count, bits)
    if len(data) < need:
        raise BitstreamError(f"truncated code payload: {count} codes of {bits} bits need {need} bytes, got {len(data)}")
    buf = np.frombuffer(data, dtype=np.uint8, count=need)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    step = _CHUNK  # values per chunk; a multiple of 8 so chunk starts are byte-aligned
    for start in range(0, count, step):
        n = min(step, count - start)
        byte0 = start * bits // 8
        chunk = np.unpackbits(buf[byte0:byte0 + (n * bits + 7) // 8], count=n * bits)
        out[start:start + n] = chunk.reshape(n, bits).astype(np.int64) @ weights
    return out


def pack_codes(codes, bits: int) -> bytes:
    """Pack codes [T frames, m codebooks] step-major: codebook 1 for all frames, then codebook 2, ..."""
    c = np.asarray(codes)
    if c.ndim != 2:
        raise BitstreamError(f"codes must be a [frames, codebooks] array, got shape {c.shape}")
    return pack_bits(np.ascontiguousarray(c.T), bits)


def unpack_codes(data: bytes, n_frames: int, m: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: codes [n_frames, m] int64."""
    return unpack_bits(data, n_frames * m, bits).reshape(m, n_frames).T.copy()


def tail_bits_zero(data: bytes, nbits: int) -> bool:
    """Whether every bit after the first ``nbits`` bits of ``data`` is zero (the canonical padding)."""
    full, rem = divmod(nbits, 8)
    if rem and data[full] & (0xFF >> rem):
        return False
    return not any(data[full + (1 if rem else 0):])


def truncate_codes(data: bytes, n_frames: int, m_keep: int, bits: int) -> bytes:
    """The payload of the first ``m_keep`` codebooks, taken from a step-major payload without unpacking."""
    nbits = n_frames * m_keep * _check_bits(bits)
    out = bytearray(data[:(nbits + 7) // 8])
    rem = nbits % 8
    if rem:
        out[-1] &= (0xFF << (8 - rem)) & 0xFF  # the next codebook's leading bits become padding: zero them
    return bytes(out)
