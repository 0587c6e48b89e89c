"""ClipCache / CacheDataset: layout, compatibility, whole-block writes, resume, fork-safe reading."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from spresso.core.errors import SpressoError
from spresso.data.zarr_cache import CacheDataset, CacheError, ClipCache

KEYS = [f"clip{i:03d}" for i in range(10)]
ARRAYS = {"x0": ((3, 8), "float16"), "valid_frames": ((), "int32"), "split": ((), "str")}


def _block(start, stop):
    rows = np.arange(start, stop)
    x0 = (rows[:, None, None] + np.arange(24).reshape(3, 8) / 32).astype(np.float16)
    return {"x0": x0, "valid_frames": rows.astype(np.int32), "split": ["train" if r % 3 else "valid" for r in rows]}


@pytest.fixture
def cache(tmp_path):
    return ClipCache.create(tmp_path / "c.zarr", KEYS, ARRAYS, chunk_rows=4, attrs={"model": "a", "frame_rate": 100.0})


def test_create_and_open(cache, tmp_path):
    assert (cache.n_rows, cache.chunk_rows) == (10, 4)
    assert cache.blocks() == [(0, 4), (4, 8), (8, 10)]
    assert cache.missing_blocks() == cache.blocks()
    again = ClipCache.open(tmp_path / "c.zarr")
    assert again.keys == KEYS
    assert again.attrs == {"model": "a", "frame_rate": 100.0}
    assert not again.done().any()
    # Lineage and data arrays are stored as asked: float16 x0 with Blosc zstd + bitshuffle.
    arr = cache._group["x0"]
    assert arr.dtype == np.float16 and arr.shards == (4, 3, 8) and arr.chunks == (1, 3, 8)
    blosc = arr.compressors[0]
    assert blosc.cname.value == "zstd" and blosc.shuffle.value == "bitshuffle"


def test_compatible_create_reopens_and_incompatible_raises(cache, tmp_path):
    cache.write_block(0, 4, **_block(0, 4))
    same = ClipCache.create(tmp_path / "c.zarr", KEYS, ARRAYS, 4, {"model": "a"})
    assert same.missing_blocks() == [(4, 8), (8, 10)]  # kept, not recreated
    with pytest.raises(CacheError, match="model='a'"):
        ClipCache.create(tmp_path / "c.zarr", KEYS, ARRAYS, 4, {"model": "b"})
    with pytest.raises(CacheError, match="keys differ"):
        ClipCache.create(tmp_path / "c.zarr", KEYS[:-1], ARRAYS, 4, {"model": "a"})
    with pytest.raises(CacheError, match="chunk_rows"):
        ClipCache.create(tmp_path / "c.zarr", KEYS, ARRAYS, 5, {"model": "a"})
    with pytest.raises(CacheError, match="arrays differ"):
        ClipCache.create(tmp_path / "c.zarr", KEYS, {**ARRAYS, "x0": ((3, 9), "float16")}, 4, {"model": "a"})
    fresh = ClipCache.create(tmp_path / "c.zarr", KEYS, ARRAYS, 4, {"model": "b"}, overwrite=True)
    assert fresh.missing_blocks() == fresh.blocks() and fresh.attrs["model"] == "b"
    with pytest.raises(SpressoError, match="no clip cache"):
        ClipCache.open(tmp_path / "absent.zarr")


def test_write_block_refuses_partial_blocks(cache):
    for start, stop in [(0, 2), (2, 4), (1, 5), (4, 9), (8, 9), (0, 11)]:
        with pytest.raises(CacheError, match="whole blocks"):
            cache.write_block(start, stop, **_block(start, stop))
    with pytest.raises(CacheError, match="missing"):
        cache.write_block(0, 4, x0=_block(0, 4)["x0"])
    with pytest.raises(CacheError, match="shape"):
        cache.write_block(0, 4, **{**_block(0, 4), "x0": np.zeros((4, 3, 7))})
    assert not cache.done().any()  # nothing half-written
    cache.write_block(0, 8, **_block(0, 8))  # several whole blocks at once are fine
    cache.write_block(8, 10, **_block(8, 10))  # the short last block is whole
    assert cache.complete and cache.missing_blocks() == []


def test_missing_blocks_after_partial_fill_and_read(cache):
    cache.write_block(4, 8, **_block(4, 8))
    assert cache.missing_blocks() == [(0, 4), (8, 10)]
    got = cache.read("x0", [7, 4, 7])
    np.testing.assert_array_equal(got, _block(4, 8)["x0"][[3, 0, 3]])
    assert list(cache.read("split", slice(4, 8))) == ["train", "train", "valid", "train"]
    assert cache.read("valid_frames", 5) == 5
    assert list(cache.read("keys", [9, 0])) == ["clip009", "clip000"]
    np.testing.assert_array_equal(cache.rows_where("split", "valid"), [6])  # row 3 and 9 are not done
    # A reader opened read-only cannot write.
    with pytest.raises(CacheError, match="read-only"):
        ClipCache.open(cache.path, mode="r").write_block(0, 4, **_block(0, 4))


def test_update_attrs_and_pickle(cache):
    cache.update_attrs(x0_mean=[0.5, 1.5])
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.attrs["x0_mean"] == [0.5, 1.5] and clone.path == cache.path
    with pytest.raises(CacheError, match="reserved"):
        cache.update_attrs(spresso_layout={})


def test_cache_dataset_with_forked_workers(cache):
    for a, b in cache.blocks():
        cache.write_block(a, b, **_block(a, b))
    rows = cache.rows_where("split", "train")
    ds = CacheDataset(cache.path, ["x0", "valid_frames", "keys"], rows=rows)
    assert len(ds) == len(rows) == 6
    # The parent has used zarr already: workers must reopen it after the fork, not reuse it.
    assert ds[0]["x0"].shape == (3, 8)
    ctx = torch.multiprocessing.get_context("fork")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=2, multiprocessing_context=ctx, timeout=60)
    got_rows, got_keys = [], []
    for batch in loader:
        assert batch["x0"].dtype == torch.float16
        expected = np.stack([_block(r, r + 1)["x0"][0] for r in batch["valid_frames"].tolist()])
        np.testing.assert_array_equal(batch["x0"].numpy(), expected)
        got_rows += batch["valid_frames"].tolist()
        got_keys += list(batch["keys"])
    assert got_rows == rows.tolist()
    assert got_keys == [KEYS[r] for r in rows]
    with pytest.raises(CacheError, match="no array"):
        CacheDataset(cache.path, ["nope"])


def test_replace_stale_resumes_compatible_and_rebuilds_incompatible(tmp_path):
    keys = [f"k{i}" for i in range(4)]
    spec = {"x": ((3,), "float32")}
    cache = ClipCache.create(tmp_path / "c.zarr", keys, spec, 2, {"model": "a"})
    cache.write_block(0, 2, x=np.ones((2, 3), np.float32))
    same = ClipCache.create(tmp_path / "c.zarr", keys, spec, 2, {"model": "a"}, replace_stale=True)
    assert same.missing_blocks() == [(2, 4)]  # compatible: resumed, nothing lost
    with pytest.raises(CacheError, match="model='a', not 'b'"):
        ClipCache.create(tmp_path / "c.zarr", keys, spec, 2, {"model": "b"})
    fresh = ClipCache.create(tmp_path / "c.zarr", keys, spec, 2, {"model": "b"}, replace_stale=True)
    assert fresh.missing_blocks() == [(0, 2), (2, 4)] and fresh.attrs["model"] == "b"
