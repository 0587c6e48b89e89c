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


def test_prefix_and_truncated_encodes_improve_with_m(rq, data):
    x = data[1]
    full = rq.encode(x)
    prefix = [relative_mse(x, rq.decode(full[:, :m])) for m in range(1, 5)]
    truncated = [relative_mse(x, rq.decode(rq.encode(x, m))) for m in range(1, 5)]
    assert all(b < a for a, b in zip(prefix, prefix[1:]))
    assert all(t <= p + 1e-6 for t, p in zip(truncated, prefix))
    assert truncated[-1] == pytest.approx(prefix[-1])


def test_beam_beats_greedy(data):
    train, x = data
    beam = FaissRQ(12, 4, 64, beam=8, train_type="default").train(train)
    greedy = FaissRQ(12, 4, 64, beam=1, train_type="default").train(train)
    assert relative_mse(x, beam.decode(beam.encode(x))) < relative_mse(x, greedy.decode(greedy.encode(x)))


def test_rejects_non_power_of_two_K():
    with pytest.raises(ValueError):
        FaissRQ(8, 2, 100)
