"""Fuzz the `.spr` decoder: damaged streams and random bytes give a valid Stream or a BitstreamError.

Never another exception, never a hang (hypothesis deadlines bound each example; pytest-timeout the test).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spresso.codec.bitstream import (
    FORMAT_VERSION,
    MAGIC,
    Stream,
    decode_stream,
    encode_stream,
    peel,
)
from spresso.codec.errors import BitstreamError
from spresso.core import rates

FUZZ = settings(max_examples=250, deadline=250, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_streams(draw) -> bytes:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t = draw(st.sampled_from(rates.TIME_FACTORS))
    T = draw(st.integers(1, 12))
    common = dict(model_id=bytes(rng.integers(0, 256, 4, dtype=np.uint8)), time_factor=t,
                  sample_count=draw(st.integers(1, 10**7)), sample_rate=draw(st.sampled_from([48000, 44100, 37800, 16])),
                  overlap=draw(st.integers(0, 300)))
    if draw(st.booleans()):
        log2k = draw(st.integers(1, 16))
        m = draw(st.integers(1, 8))
        return encode_stream(Stream.discrete(rng.integers(0, 1 << log2k, (T, m)), 1 << log2k, **common))
    z = rng.standard_normal((draw(st.integers(1, 6)), T)).astype(np.float16)
    return encode_stream(Stream.continuous(z, **common))


def check(data: bytes) -> None:
    """The property: decode and peel return valid results or raise BitstreamError, nothing else."""
    try:
        s = decode_stream(data)
    except BitstreamError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert isinstance(s, Stream)
        assert encode_stream(s) == data  # anything accepted is canonical
    for m in (1, 3):
        try:
            out = peel(data, m)
        except BitstreamError:
            continue
        assert decode_stream(out).m == m


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(valid_streams()))
    kind = draw(st.sampled_from(["flip", "truncate", "pad", "splice", "overwrite", "header_byte"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) * 8 - 1))
            data[i // 8] ^= 1 << (i % 8)
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "pad":
        data += draw(st.binary(min_size=1, max_size=16))
    elif kind == "splice":
        other = draw(valid_streams())
        data = data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))):]
    elif kind == "overwrite":
        i = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        data[i: i + len(chunk)] = chunk
    else:  # a header byte set to an extreme value (varint continuation bits, huge counts)
        i = draw(st.integers(8, min(len(data) - 1, 20)))
        data[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
    return bytes(data)


@pytest.mark.timeout(60)
@FUZZ
@given(valid_streams())
def test_valid_streams_decode(data):
    s = decode_stream(data)
    assert encode_stream(s) == data


@pytest.mark.timeout(60)
@FUZZ
@given(mutated())
def test_mutated_streams(data):
    check(data)


@pytest.mark.timeout(60)
@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data):
    check(data)


@pytest.mark.timeout(60)
@FUZZ
@given(st.binary(max_size=60))
def test_random_bytes_after_magic(data):
    # random bytes behind a valid magic and version reach the header and payload parsers
    check(MAGIC + bytes([FORMAT_VERSION]) + data)
