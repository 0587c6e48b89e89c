"""QINCo2's cached codeword tables: equal to a fresh table, reused, and invalidated by any weight update."""
from __future__ import annotations

import numpy as np
import torch

from spresso.quant import QINCo2, QINCo2Spec
from spresso.quant.training import TrainSettings, make_optimizer, train_step

torch.set_num_threads(1)
SPEC = QINCo2Spec(d=8, K=16, M=3, L=1, de=16, dh=16, A=4, B=4)


def _model(seed: int = 0) -> QINCo2:
    torch.manual_seed(seed)
    m = QINCo2(SPEC)
    m.norm.fit(np.random.default_rng(seed).normal(size=(200, 8)).astype(np.float32))
    with torch.no_grad():
        for step in m.steps:
            step.out_proj.weight.normal_(0, 0.1)  # a non-trivial network, so tables matter
    return m.eval()


def _tables(m: QINCo2) -> list[torch.Tensor]:
    with torch.no_grad():
        return [s.code_table() for s in m.steps]


def _fresh(m: QINCo2) -> list[torch.Tensor]:
    with torch.no_grad():
        return [s.fresh_code_table() for s in m.steps]


def test_cached_table_equals_a_fresh_one_and_is_reused():
    m = _model()
    first = _tables(m)
    assert all(s.table_cache is not None for s in m.steps)
    for a, b in zip(first, _fresh(m)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(a is b for a, b in zip(first, _tables(m)))  # a second call rebuilds nothing


def test_decode_with_cached_tables_equals_uncached_decode():
    m = _model()
    codes = torch.randint(0, SPEC.K, (50, SPEC.M))
    cached = m.decode(codes)  # fills the cache
    again = m.decode(codes)  # served from the cache
    m.clear_tables()
    assert all(s.table_cache is None for s in m.steps)
    torch.testing.assert_close(again, cached)
    torch.testing.assert_close(m.decode(codes), cached)


def test_gradient_mode_never_uses_the_cache():
    m = _model()
    _tables(m)
    table = m.steps[0].code_table()  # grad enabled: fresh, differentiable
    assert table.requires_grad and table is not m.steps[0].table_cache[1]


def test_an_optimizer_step_invalidates_the_cached_tables():
    m = _model()
    x = torch.randn(256, 8)
    before = [t.clone() for t in _tables(m)]
    s = TrainSettings(lr=1e-2, warmup_steps=0, total_steps=4, beam=2, candidates=2)
    opt, sched = make_optimizer(m, s)
    train_step(m, opt, sched, x, s)  # encodes (fills the cache), then updates the weights in place
    m.eval()
    after = _tables(m)
    for old, new, fresh in zip(before, after, _fresh(m)):
        torch.testing.assert_close(new, fresh, rtol=0, atol=0)
        assert not torch.equal(old, new)


def test_load_state_dict_and_dtype_changes_invalidate_the_cached_tables():
    m, other = _model(0), _model(1)
    _tables(m)
    m.load_state_dict(other.state_dict())
    for a, b in zip(_tables(m), _fresh(other)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    m.double()
    assert all(t.dtype == torch.float64 for t in _tables(m))


def test_in_place_codebook_edit_invalidates_the_cached_table():
    m = _model()
    old = _tables(m)[0].clone()
    with torch.no_grad():
        m.steps[0].codebook[3] += 1.0
    new = _tables(m)[0]
    assert not torch.equal(old[3], new[3])
    torch.testing.assert_close(new, _fresh(m)[0], rtol=0, atol=0)
