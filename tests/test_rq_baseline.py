"""The faiss ResidualQuantizer baseline: unpacked codes, prefixes, truncated encodes, beam."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from spresso.quant import FaissRQ
from spresso.quant.training import relative_mse

faiss.omp_set_num_threads(1)  # OpenMP on a shared 2-core machine is slower than one thread


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = (rng.laplace(size=(5000, 12)) @ rng.normal(size=(12, 12)) + 5.0).astype(np.float32)
    return x[:4000], x[4000:]


@pytest.fixture(scope="module")
def rq(data):
    return FaissRQ(12, 4, 64, beam=8, train_type="default").train(data[0])


def test_codes_are_unpacked_integers_in_range(rq, data):
    codes = rq.encode(data[1])
    assert codes.shape == (1000, 4) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 64 and len(np.unique(codes[:, 0])) > 32
    assert rq.decode(codes).shape == (1000, 12)


def test_prefix_decodes_improve_with_m(rq, data):
    x = data[1]
    full = rq.encode(x)
    prefix = [relative_mse(x, rq.decode(full[:, :m])) for m in range(1, 5)]
    assert all(b < a for a, b in zip(prefix, prefix[1:]))


def explicit_decode(rq, codes):
    """sum_m C_m[code_m], de-normalised: decoding written out from the trained codebooks."""
    books = rq.codebooks()
    return sum(books[m][codes[:, m]] for m in range(codes.shape[1])) * rq.std + rq.mean


def test_decode_and_truncated_encode_match_an_explicit_computation(data):
    """With beam >= K a 2-step beam search is exhaustive: encode(x, 2) must be the argmin over all K^2
    pairs of the first two codebooks, computed here by brute force (not by faiss)."""
    train, x = data[0], data[1][:300]
    rq = FaissRQ(12, 3, 16, beam=16, train_type="default").train(train)
    books = rq.codebooks()
    xn = (x - rq.mean) / rq.std
    pairs = books[0][:, None, :] + books[1][None, :, :]  # [K, K, d]: every 2-step reconstruction
    err = ((xn[:, None, None, :] - pairs[None]) ** 2).sum(-1).reshape(len(x), -1)
    best = np.stack(np.unravel_index(err.argmin(1), (16, 16)), 1)
    np.testing.assert_array_equal(rq.encode(x, 2), best)
    one = ((xn[:, None, :] - books[0][None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(rq.encode(x, 1)[:, 0], one)
    full = rq.encode(x)
    for m in (1, 2, 3):
        np.testing.assert_allclose(rq.decode(full[:, :m]), explicit_decode(rq, full[:, :m]), rtol=1e-5, atol=1e-4)


def test_beam_beats_greedy(data):
    train, x = data
    beam = FaissRQ(12, 4, 64, beam=8, train_type="default").train(train)
    greedy = FaissRQ(12, 4, 64, beam=1, train_type="default").train(train)
    assert relative_mse(x, beam.decode(beam.encode(x))) < relative_mse(x, greedy.decode(greedy.encode(x)))


def test_rejects_non_power_of_two_K():
    with pytest.raises(ValueError):
        FaissRQ(8, 2, 100)
