"""QINCo2 model and beam search: shapes, monotone rates, truncation, beam vs greedy, checkpoints, init."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from spresso.core.checkpoint import save_checkpoint
from spresso.core.errors import SpressoError
from spresso.quant import (
    FaissRQ,
    QINCo2,
    QINCo2Spec,
    load_qinco2,
    residual_kmeans_init,
    save_qinco2,
)
from spresso.quant.training import relative_mse

torch.set_num_threads(1)
SPEC = QINCo2Spec(d=16, K=32, M=4, L=1, de=32, dh=32, A=8, B=8)

faiss.omp_set_num_threads(1)  # OpenMP on a shared 2-core machine is slower than one thread


@pytest.fixture(scope="module")
def data():
    """Correlated, anisotropic vectors (a random linear mix of Laplace sources)."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16)) * np.linspace(2.0, 0.2, 16)[None, :]
    x = (rng.laplace(size=(6000, 16)) @ mix.T + 3.0).astype(np.float32)
    return x[:5000], x[5000:]


@pytest.fixture(scope="module")
def model(data):
    """k-means-initialised QINCo2 with small random networks, so the steps are not plain RQ."""
    torch.manual_seed(0)
    m = QINCo2(SPEC)
    m.norm.fit(data[0])
    residual_kmeans_init(m, m.norm(torch.from_numpy(data[0])).numpy(), niter=10)
    with torch.no_grad():
        for step in m.steps:
            step.out_proj.weight.normal_(0, 0.02)
    return m.eval()


def test_shapes_and_code_ranges(model, data):
    x = torch.from_numpy(data[1][:300]).reshape(3, 100, 16)  # [clips, frames, d]
    for m in (1, 3, 4):
        codes = model.encode(x, m)
        assert codes.shape == (3, 100, m) and codes.dtype == torch.int64
        assert int(codes.min()) >= 0 and int(codes.max()) < SPEC.K
        assert model.decode(codes).shape == (3, 100, 16)
    with pytest.raises(ValueError):
        model.encode(x, 5)
    with pytest.raises(ValueError):
        model.encode(torch.zeros(4, 15))


def test_mse_decreases_with_m_on_training_data(model, data):
    x = torch.from_numpy(data[0][:2000])
    mse = [relative_mse(x, model.decode(model.encode(x, m))) for m in range(1, SPEC.M + 1)]
    assert all(b < a for a, b in zip(mse, mse[1:])), mse
    # decode accepts any prefix of a full code, also monotone
    codes = model.encode(x)
    prefix = [relative_mse(x, model.decode(codes[:, :m])) for m in range(1, SPEC.M + 1)]
    assert all(b < a for a, b in zip(prefix, prefix[1:])), prefix


def test_truncated_encode_beats_prefix_of_longer(model, data):
    x = torch.from_numpy(data[1])
    full = model.encode(x)
    for m in range(1, SPEC.M):
        truncated = relative_mse(x, model.decode(model.encode(x, m)))
        prefix = relative_mse(x, model.decode(full[:, :m]))
        assert truncated < prefix, (m, truncated, prefix)


def test_beam_never_worse_than_greedy(model, data):
    x = torch.from_numpy(data[1])
    for m in (2, 4):
        beam = ((model.decode(model.encode(x, m)) - x) ** 2).sum(1)
        greedy = ((model.decode(model.encode(x, m, beam=1)) - x) ** 2).sum(1)
        assert beam.mean() < greedy.mean()
        assert (beam <= greedy + 1e-4).float().mean() > 0.95


def test_checkpoint_round_trip_reproduces_codes(model, data, tmp_path):
    save_qinco2(tmp_path / "ck", model, config={"qinco2": {"K": SPEC.K}})
    loaded = load_qinco2(tmp_path / "ck")
    x = torch.from_numpy(data[1][:500])
    assert loaded.spec == model.spec
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))


def test_checkpoint_mismatch_is_one_line_error(model, tmp_path):
    save_checkpoint(tmp_path / "bad", {"x": torch.zeros(1)}, kind="qinco2", config={}, meta={"spec": SPEC.to_dict()})
    with pytest.raises(SpressoError, match="do not match"):
        load_qinco2(tmp_path / "bad")
    with pytest.raises(SpressoError, match="not a checkpoint"):
        load_qinco2(tmp_path / "missing")


def test_kmeans_init_matches_faiss_rq_greedy(data):
    train, held = data
    m = QINCo2(SPEC)  # networks at their identity init: the model is plain RQ
    m.norm.fit(train)
    residual_kmeans_init(m, m.norm(torch.from_numpy(train)).numpy(), niter=20)
    ours = relative_mse(held, m.decode(m.encode(torch.from_numpy(held), beam=1)))
    rq = FaissRQ(16, SPEC.M, SPEC.K, beam=1, train_type="default").train(train)
    theirs = relative_mse(held, rq.decode(rq.encode(held)))
    assert abs(ours - theirs) / theirs < 0.05, (ours, theirs)
