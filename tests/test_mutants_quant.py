"""QINCo2 encode/decode and its beam search against explicit computations (mutation-run gaps).

Public API only: QINCo2 / QINCo2Spec, QINCo2.encode/decode/decode_normalized/forward, and
spresso.quant.beam.encode_normalized / chunk_rows / CPU_BUDGET_BYTES.
"""
from __future__ import annotations

import itertools
import re
import warnings

import pytest
import torch

from spresso.quant import QINCo2, QINCo2Spec
from spresso.quant import beam as beam_search

torch.set_num_threads(1)


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def model(K=4, M=3, d=3, L=2, de=5, dh=6, A=2, B=2, seed=0) -> QINCo2:
    torch.manual_seed(seed)
    q = QINCo2(QINCo2Spec(d=d, K=K, M=M, L=L, de=de, dh=dh, A=A, B=B))
    with torch.no_grad():
        for p in q.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)  # out_proj too: the networks must matter
        q.norm.mean.copy_(torch.arange(d, dtype=torch.float32))
        q.norm.std.fill_(2.0)
    return q.eval()


def f_explicit(step, c: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """f_m(c, x_hat) = c + out(blocks(e + W_e e + W_x x_hat)), e = in(c): written out from the weights."""
    e = c @ step.in_proj.weight.T
    h = e + e @ step.cat_code.weight.T + x_hat @ step.cat_ctx.weight.T
    for block in step.blocks:
        h = h + torch.relu(h @ block.up.weight.T) @ block.down.weight.T
    return c + h @ step.out_proj.weight.T


def decode_explicit(q: QINCo2, codes: torch.Tensor) -> list[torch.Tensor]:
    x_hat = q.codebook0[codes[:, 0]]
    outs = [x_hat]
    for s in range(1, codes.shape[1]):
        step = q.steps[s - 1]
        x_hat = x_hat + f_explicit(step, step.codebook[codes[:, s]], x_hat)
        outs.append(x_hat)
    return outs


def all_codes(K: int, m: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K), repeat=m)))


def test_decode_matches_the_written_out_network():
    q = model()
    codes = all_codes(4, 3)
    with torch.no_grad():
        partials = q.decode_normalized(codes, partials=True)
        ref = decode_explicit(q, codes)
        assert len(partials) == 3
        for got, want in zip(partials, ref):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q.decode_normalized(codes), ref[-1])
        torch.testing.assert_close(q.decode_normalized(codes[:, :2]), ref[1])
        data = q.decode(codes)
        torch.testing.assert_close(data, ref[-1] * 2.0 + torch.arange(3.0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q.decode(codes, chunk=5), data)
        torch.testing.assert_close(q.decode(codes.reshape(4, 16, 3)), data.reshape(4, 16, 3))
        assert q.decode(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3)
        assert q.decode(torch.zeros(2, 0, 3, dtype=torch.long)).shape == (2, 0, 3)
        assert q.codebook(0) is q.codebook0 and q.codebook(2) is q.steps[1].codebook
    with pytest.raises(ValueError, match=exactly("codes have 4 steps, the model has 3")):
        q.decode_normalized(torch.zeros(1, 4, dtype=torch.long))


def test_training_losses_are_the_step_and_preselection_mses():
    q = model()
    xn = torch.randn(7, 3)
    codes = torch.randint(0, 4, (7, 3))
    total, pre, steps = q(xn, codes)
    with torch.no_grad():
        ref = decode_explicit(q, codes)
        want_steps = torch.stack([(xn - r).pow(2).mean() for r in ref])
        want_pre = sum((q.steps[s - 1].preselect[codes[:, s]] - (xn - ref[s - 1])).pow(2).mean() for s in (1, 2))
    torch.testing.assert_close(steps, want_steps)
    torch.testing.assert_close(total, want_steps.sum())
    torch.testing.assert_close(pre, want_pre)
    assert total.requires_grad and pre.requires_grad and not steps.requires_grad
    _, pre1, _ = q(xn, codes[:, :1])
    assert float(pre1) == 0.0


@pytest.mark.parametrize("m", [1, 2, 3])
def test_exhaustive_beam_finds_the_best_code(m):
    """With beam >= K^(m-1) and all K candidates, beam search is exhaustive: it must return the argmin of
    the reconstruction error over all K^m codes (computed here by decoding every code)."""
    q = model()
    xn = torch.randn(40, 3) * 1.5
    with torch.no_grad():
        every = all_codes(4, m)
        recon = decode_explicit(q, every)[-1]  # [K^m, d]
        err = ((xn[:, None, :] - recon[None]) ** 2).sum(-1)
        best = every[err.argmin(1)]
        got = beam_search.encode_normalized(q, xn, m, beam=4 ** (m - 1), candidates=4)
    assert got.dtype == torch.int64 and got.shape == (40, m)
    torch.testing.assert_close(got, best, rtol=0, atol=0)
    data = q.norm.inverse(xn)
    torch.testing.assert_close(q.encode(data, m, beam=4 ** (m - 1), candidates=4), best, rtol=0, atol=0)
    torch.testing.assert_close(q.encode(data.reshape(5, 8, 3), m, beam=16, candidates=4), best.reshape(5, 8, m),
                               rtol=0, atol=0)


def test_greedy_beam_follows_the_preselection_then_the_network():
    """beam 1, one candidate: step 0 takes the nearest C_0 row, every later step the nearest P_m row."""
    q = model(K=6)
    xn = torch.randn(30, 3)
    with torch.no_grad():
        got = beam_search.encode_normalized(q, xn, 3, beam=1, candidates=1)
        c0 = ((xn[:, None] - q.codebook0[None]) ** 2).sum(-1).argmin(1)
        x_hat, want = q.codebook0[c0], [c0]
        for step in q.steps:
            j = ((xn - x_hat)[:, None] - step.preselect[None]).pow(2).sum(-1).argmin(1)
            x_hat = x_hat + f_explicit(step, step.codebook[j], x_hat)
            want.append(j)
    torch.testing.assert_close(got, torch.stack(want, 1), rtol=0, atol=0)


def test_a_narrow_beam_keeps_the_best_hypotheses():
    """beam 2 with all candidates, m = 2: the 2 best first-step codes survive, then the best pair among them."""
    q = model(K=5, M=2)
    xn = torch.randn(50, 3)
    with torch.no_grad():
        got = beam_search.encode_normalized(q, xn, 2, beam=2, candidates=5)
        d0 = ((xn[:, None] - q.codebook0[None]) ** 2).sum(-1)
        keep = d0.topk(2, dim=1, largest=False).indices  # [N, 2]
        pairs = torch.stack([keep.repeat_interleave(5, 1), torch.arange(5).repeat(50, 2)], -1)  # [N, 10, 2]
        recon = decode_explicit(q, pairs.reshape(-1, 2))[-1].reshape(50, 10, 3)
        best = pairs[torch.arange(50), ((xn[:, None] - recon) ** 2).sum(-1).argmin(1)]
    torch.testing.assert_close(got, best, rtol=0, atol=0)


def test_chunked_encoding_equals_one_pass(monkeypatch):
    q = model(K=8, M=3)
    xn = torch.randn(37, 3)
    whole = beam_search.encode_normalized(q, xn, 3, beam=3, candidates=2)
    per_vector = 3 * 2 * max(5, 6, 3, 8 // 2) * 4 * 4
    assert beam_search.chunk_rows(q, 3, 2, torch.device("cpu")) == beam_search.CPU_BUDGET_BYTES // per_vector
    wide = model(K=64, M=2, de=2, dh=2)  # K / candidates is the widest tensor
    assert beam_search.chunk_rows(wide, 1, 1, torch.device("cpu")) == beam_search.CPU_BUDGET_BYTES // (64 * 16)
    monkeypatch.setattr(beam_search, "CPU_BUDGET_BYTES", 5 * per_vector)  # chunks of 5 vectors
    assert beam_search.chunk_rows(q, 3, 2, torch.device("cpu")) == 5
    torch.testing.assert_close(beam_search.encode_normalized(q, xn, 3, beam=3, candidates=2), whole, rtol=0, atol=0)
    monkeypatch.setattr(beam_search, "CPU_BUDGET_BYTES", 1)
    assert beam_search.chunk_rows(q, 3, 2, torch.device("cpu")) == 1
    torch.testing.assert_close(beam_search.encode_normalized(q, xn[:4], 3, beam=3, candidates=2), whole[:4],
                               rtol=0, atol=0)


def test_encode_errors_and_empty_input():
    q = model()
    with pytest.raises(ValueError, match=exactly("m must be in [1, 3], got 4")):
        beam_search.encode_normalized(q, torch.zeros(2, 3), 4, beam=1, candidates=1)
    with pytest.raises(ValueError, match=exactly("m must be in [1, 3], got 0")):
        beam_search.encode_normalized(q, torch.zeros(2, 3), 0, beam=1, candidates=1)
    with pytest.raises(ValueError, match=exactly("vectors have 4 dims, the quantizer expects 3")):
        beam_search.encode_normalized(q, torch.zeros(2, 4), 1, beam=1, candidates=1)
    with pytest.raises(ValueError, match=exactly("vectors have 2 dims, the quantizer expects 3")):
        q.encode(torch.zeros(2, 2))
    empty = beam_search.encode_normalized(q, torch.zeros(0, 3), 2, beam=2, candidates=2)
    assert empty.shape == (0, 2) and empty.dtype == torch.long
    assert q.encode(torch.zeros(5, 3)).shape == (5, 3)  # m defaults to M, beam/candidates to the spec's


def test_spec_validation_and_presets():
    assert QINCo2Spec.from_preset("S", d=8) == QINCo2Spec(d=8, L=2, de=128, dh=256)
    assert QINCo2Spec.from_preset("M", d=8, K=16, L=None) == QINCo2Spec(d=8, K=16, L=4, de=384, dh=384)
    assert QINCo2Spec.from_preset("L", d=8).L == 16
    assert QINCo2Spec(d=2, K=2, M=1, L=0).to_dict() == {"d": 2, "K": 2, "M": 1, "L": 0, "de": 128, "dh": 256,
                                                         "A": 16, "B": 32, "concat_bias": False}
    assert QINCo2Spec(d=2, K=4096, M=32).M == 32
    with pytest.raises(ValueError, match=exactly("K must be in [2, 4096], got 1")):
        QINCo2Spec(d=2, K=1)
    with pytest.raises(ValueError, match=exactly("K must be in [2, 4096], got 4097")):
        QINCo2Spec(d=2, K=4097)
    with pytest.raises(ValueError, match=exactly("M must be in [1, 32], got 0")):
        QINCo2Spec(d=2, M=0)
    with pytest.raises(ValueError, match=exactly("M must be in [1, 32], got 33")):
        QINCo2Spec(d=2, M=33)
    for bad in ({"d": 0}, {"L": -1}, {"de": 0}, {"dh": 0}, {"A": 0}, {"B": 0}):
        with pytest.raises(ValueError, match="^invalid QINCo2 sizes: QINCo2Spec"):
            QINCo2Spec(**{"d": 2, **bad})
    fresh = QINCo2(QINCo2Spec(d=3, K=4, M=2, L=1, de=4, dh=4))
    with torch.no_grad():  # out_proj starts at zero: an untrained step is its plain codebook
        codes = all_codes(4, 2)
        torch.testing.assert_close(fresh.decode_normalized(codes), fresh.codebook0[codes[:, 0]] + fresh.steps[0].codebook[codes[:, 1]])
    assert len(fresh.steps) == 1 and fresh.M == 2 and len(fresh.steps[0].blocks) == 1


def test_smallest_valid_spec_and_initial_scales():
    tiny = QINCo2Spec(d=1, K=2, M=1, L=0, de=1, dh=1, A=1, B=1)  # every size at its lower bound is valid
    assert QINCo2(tiny).M == 1
    torch.manual_seed(0)
    q = QINCo2(QINCo2Spec(d=16, K=1024, M=2, L=1, de=4, dh=4))
    # codebooks start as N(0, 0.1^2): a k-means init replaces them, but an untrained model must be sane
    for p in (q.codebook0, q.steps[0].codebook, q.steps[0].preselect):
        assert abs(float(p.detach().std()) - 0.1) < 0.005
    assert all(m.bias is None for m in q.modules() if isinstance(m, torch.nn.Linear))


def test_chunk_rows_uses_the_widest_activation_and_half_the_free_gpu_memory(monkeypatch):
    cpu = torch.device("cpu")
    for kw, width in (({"d": 3, "de": 40, "dh": 6}, 40), ({"d": 3, "de": 5, "dh": 50}, 50),
                      ({"d": 60, "de": 5, "dh": 6}, 60), ({"d": 3, "de": 5, "dh": 6, "K": 96}, 32)):
        rows = beam_search.chunk_rows(model(**kw), 2, 3, cpu)
        assert type(rows) is int and rows == beam_search.CPU_BUDGET_BYTES // (2 * 3 * width * 16), kw
    # On CUDA the budget is half the free memory (no GPU needed: the query is replaced).
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return 8 << 30, 16 << 30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    cuda = torch.device("cuda", 1)
    assert beam_search.chunk_rows(model(d=3, de=5, dh=6), 2, 3, cuda) == (4 << 30) // (2 * 3 * 6 * 16)
    assert asked == [cuda]


def test_vectors_with_zero_coordinates_and_amp_on_cpu():
    """Exact zeros in a vector must not upset the distances; amp=True on CPU changes nothing and warns nothing."""
    q = model()
    xn = torch.randn(12, 3)
    xn[::2, 0] = 0.0
    xn[1::3] = 0.0
    with torch.no_grad():
        every = all_codes(4, 2)
        recon = decode_explicit(q, every)[-1]
        best = every[((xn[:, None, :] - recon[None]) ** 2).sum(-1).argmin(1)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "CUDA is not available, disabling autocast"
            got = beam_search.encode_normalized(q, xn, 2, beam=4, candidates=4, amp=True)
    torch.testing.assert_close(got, best, rtol=0, atol=0)
    with torch.no_grad():  # greedy (beam 1, one candidate): here the distances' ranking decides everything
        greedy = beam_search.encode_normalized(q, xn, 2, beam=1, candidates=1)
        c0 = ((xn[:, None] - q.codebook0[None]) ** 2).sum(-1).argmin(1)
        x_hat = q.codebook0[c0]
        c1 = ((xn - x_hat)[:, None] - q.steps[0].preselect[None]).pow(2).sum(-1).argmin(1)
    torch.testing.assert_close(greedy, torch.stack([c0, c1], 1), rtol=0, atol=0)
