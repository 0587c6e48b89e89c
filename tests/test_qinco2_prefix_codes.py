"""Codes that truncate: every stored m-codebook code is the truncated encode with m codebooks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from spresso.core.errors import SpressoError
from spresso.data.zarr_cache import ClipCache
from spresso.quant import QINCo2, QINCo2Spec, residual_kmeans_init, save_qinco2
from spresso.train.qinco2 import codes_array, quantize_cache

torch.set_num_threads(1)
SPEC = QINCo2Spec(d=8, K=16, M=4, L=1, de=16, dh=16, A=4, B=4)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = (rng.laplace(size=(3000, 8)) @ rng.normal(size=(8, 8))).astype(np.float32)
    torch.manual_seed(0)
    m = QINCo2(SPEC)
    m.norm.fit(x)
    residual_kmeans_init(m, m.norm(torch.from_numpy(x)).numpy(), niter=5)
    with torch.no_grad():
        for step in m.steps:
            step.out_proj.weight.normal_(0, 0.1)  # a real network: beams then keep non-greedy prefixes
    return m.eval()


def test_one_search_gives_every_truncated_encode(model):
    x = torch.randn(600, 8) * 2
    per_m = model.encode_all(x)
    full = model.encode(x)
    assert [c.shape for c in per_m] == [(600, k) for k in range(1, SPEC.M + 1)]
    for k in range(1, SPEC.M + 1):
        torch.testing.assert_close(per_m[k - 1], model.encode(x, k), rtol=0, atol=0)
    # Why the cache needs them: a prefix of the longest code is not the truncated encode.
    assert any(not torch.equal(full[:, :k], model.encode(x, k)) for k in range(1, SPEC.M))


def _z_cache(path, n: int = 6, T: int = 10):
    z = np.random.default_rng(1).normal(size=(n, 8, T)).astype(np.float32) * 2
    cache = ClipCache.create(path, [f"c{i}" for i in range(n)], {"z": ((8, T), np.float32)}, 3, {})
    for a in range(0, n, 3):
        cache.write_block(a, a + 3, z=z[a : a + 3])
    return z


def test_quantize_cache_stores_the_truncated_encode_of_every_m(model, tmp_path):
    z = _z_cache(tmp_path / "z.zarr")
    save_qinco2(tmp_path / "q", model)
    out = quantize_cache(str(tmp_path / "q"), str(tmp_path / "z.zarr"), str(tmp_path / "codes.zarr"), device="cpu")
    group = zarr.open_group(out, mode="r")
    assert list(group.attrs["ms"]) == [1, 2, 3, 4]
    frames = torch.from_numpy(z.transpose(0, 2, 1).copy())
    for k in range(1, SPEC.M + 1):
        stored = group[codes_array(k)][:]
        assert stored.shape == (6, 10, k) and stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, model.encode(frames, k).numpy())
    assert "codes" not in group  # no full-M array whose prefixes a reader could mistake for truncated codes


def test_quantize_cache_stores_only_the_asked_operating_points(model, tmp_path):
    _z_cache(tmp_path / "z.zarr")
    save_qinco2(tmp_path / "q", model)
    out = quantize_cache(str(tmp_path / "q"), str(tmp_path / "z.zarr"), str(tmp_path / "c.zarr"), device="cpu", ms=[3, 1])
    assert sorted(k for k in zarr.open_group(out, mode="r").array_keys() if k.startswith("codes")) == [codes_array(1), codes_array(3)]
    with pytest.raises(SpressoError, match="must lie in"):
        quantize_cache(str(tmp_path / "q"), str(tmp_path / "z.zarr"), str(tmp_path / "d.zarr"), device="cpu", ms=[5])
