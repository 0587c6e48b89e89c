"""ClipCache / CacheDataset: exact layout, messages and edge cases (mutation-run gaps). Public API only."""
from __future__ import annotations

import logging
import os
import pickle
import re
import uuid

import numpy as np
import pytest
import zarr

from spresso.data.zarr_cache import (
    CacheDataset,
    CacheError,
    ClipCache,
    default_compressor,
)

KEYS = ["a", "b", "c", "d", "e", "f", "g"]
ARRAYS = {"x": ((2, 3), "float16"), "n": ((), "int32"), "tag": ((), "str"), "ok": ((), "bool")}


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def make(tmp_path, name="c.zarr", **kw):
    kw = {"keys": KEYS, "arrays": ARRAYS, "chunk_rows": 3, "attrs": {"model": "m1", "size": [1, 2]}, **kw}
    return ClipCache.create(tmp_path / name, **kw)


def block(start, stop):
    rows = np.arange(start, stop)
    return {"x": (rows[:, None, None] + np.arange(6).reshape(2, 3) / 8).astype(np.float64),
            "n": rows * 10, "tag": [f"t{r}" for r in rows], "ok": rows % 2 == 0}


def test_create_validates_its_arguments(tmp_path):
    p = tmp_path / "v.zarr"
    with pytest.raises(CacheError, match=exactly(f"{p}: a cache needs at least one row")):
        ClipCache.create(p, [], ARRAYS, 3)
    with pytest.raises(CacheError, match=exactly(f"{p}: chunk_rows must be positive (got 0)")):
        ClipCache.create(p, KEYS, ARRAYS, 0)
    for reserved in ("keys", "done", "spresso_layout"):
        with pytest.raises(CacheError, match=exactly(f"{p}: array name '{reserved}' is reserved")):
            ClipCache.create(p, KEYS, {"x": ((1,), "float32"), reserved: ((), "int32")}, 3)
    with pytest.raises(CacheError, match=exactly(f"{p}: a cache needs at least one data array")):
        ClipCache.create(p, KEYS, {}, 3)
    with pytest.raises(CacheError, match=exactly(f"{p}: string array 's' must have an empty row shape")):
        ClipCache.create(p, KEYS, {"s": ((2,), str)}, 3)
    assert not ClipCache.exists(p)


def test_layout_storage_and_repr(tmp_path, monkeypatch):
    c = make(tmp_path)
    assert (c.n_rows, c.chunk_rows) == (7, 3) and c.array_names == ["n", "ok", "tag", "x"]
    assert c.row_spec("x") == ((2, 3), "float16") and c.row_spec("tag") == ((), "str") and c.row_spec("ok") == ((), "bool")
    assert c.keys == KEYS and c.blocks() == [(0, 3), (3, 6), (6, 7)]
    assert c.attrs == {"model": "m1", "size": [1, 2]} and c.path == str((tmp_path / "c.zarr").resolve())
    assert repr(c) == f"ClipCache({c.path!r}, rows=7, chunk_rows=3, arrays=['n', 'ok', 'tag', 'x'])"
    g = zarr.open_group(c.path, mode="r")
    assert g["x"].shards == (3, 2, 3) and g["x"].chunks == (1, 2, 3) and g["x"].dtype == np.float16
    assert g["n"].chunks == (3,) and g["n"].dtype == np.int32 and g["ok"].dtype == np.bool_
    assert g["keys"].chunks == (3,) and g["done"].chunks == (3,) and g["done"].dtype == np.bool_
    assert g["x"].fill_value == 0 and g["n"].fill_value == 0 and not g["done"][:].any()
    blosc = g["x"].compressors[0]
    assert (blosc.cname.value, blosc.clevel, blosc.shuffle.value) == ("zstd", 5, "bitshuffle")
    assert g["n"].compressors[0].cname.value == "zstd" and not g["tag"].compressors and not g["keys"].compressors
    assert default_compressor().clevel == 5
    assert c.read("tag").tolist() == [""] * 7 and c.read("n").tolist() == [0] * 7
    monkeypatch.chdir(tmp_path)
    rel = ClipCache.create("rel.zarr", ["k"], {"v": ((), "float32")}, 1)
    assert rel.path == str(tmp_path / "rel.zarr") and ClipCache.exists("rel.zarr")


def test_reopen_compatible_adds_new_attrs_and_refuses_differences(tmp_path, caplog):
    c = make(tmp_path)
    c.write_block(0, 3, **block(0, 3))
    again = make(tmp_path, attrs={"model": "m1", "size": (1, 2), "extra": 5})  # tuples compare as stored lists
    assert again.done()[:3].all() and again.attrs == {"model": "m1", "size": [1, 2], "extra": 5}
    p = tmp_path / "c.zarr"
    with pytest.raises(CacheError, match=exactly(f"{p}: an existing cache has model='m1', not 'm2'; delete it or overwrite")):
        make(tmp_path, attrs={"model": "m2"})
    with pytest.raises(CacheError, match=exactly(f"{p}: an existing cache is incompatible: its keys differ (7 rows there, "
                                                 f"8 requested); delete it or overwrite")):
        make(tmp_path, keys=KEYS + ["h"])
    with pytest.raises(CacheError, match=exactly(f"{p}: an existing cache is incompatible: its keys differ (7 rows there, "
                                                 f"7 requested); delete it or overwrite")):
        make(tmp_path, keys=KEYS[::-1])
    with pytest.raises(CacheError, match=exactly(f"{p}: an existing cache is incompatible: chunk_rows is 3 there, 4 requested; "
                                                 f"delete it or overwrite")):
        make(tmp_path, chunk_rows=4)
    arrays = {**ARRAYS, "n": ((), "int64")}
    with pytest.raises(CacheError, match=r"incompatible: its arrays differ \(\{.*'n': \[\[\], 'int32'\].*\} there, "
                                         r"\{.*'n': \[\[\], 'int64'\].*\} requested\); delete it or overwrite$"):
        make(tmp_path, arrays=arrays)
    fresh = make(tmp_path, overwrite=True, attrs={"model": "m9"})
    assert not fresh.done().any() and fresh.attrs == {"model": "m9"}
    with caplog.at_level(logging.WARNING, logger="spresso.data.zarr_cache"):
        rebuilt = make(tmp_path, chunk_rows=2, replace_stale=True)
    assert caplog.messages == [f"{p}: an existing cache is incompatible: chunk_rows is 3 there, 2 requested; rebuilding it"]
    assert rebuilt.chunk_rows == 2 and not rebuilt.done().any()


def test_exists_and_open(tmp_path):
    assert not ClipCache.exists(tmp_path / "none.zarr")
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w")  # a group without the layout attr
    assert not ClipCache.exists(tmp_path / "bare.zarr")
    with pytest.raises(CacheError, match=exactly(f"{tmp_path / 'bare.zarr'}: not a clip cache (or its creation was interrupted)")):
        ClipCache.open(tmp_path / "bare.zarr")
    with pytest.raises(CacheError, match=exactly(f"{tmp_path / 'none.zarr'}: no clip cache there")):
        ClipCache.open(tmp_path / "none.zarr", mode="r")
    c = make(tmp_path)
    assert ClipCache.exists(tmp_path / "c.zarr") and ClipCache.open(tmp_path / "c.zarr", mode="r").n_rows == 7
    with pytest.raises(CacheError, match=exactly(f"{c.path}: attr 'spresso_layout' is reserved")):
        c.update_attrs(spresso_layout=1)
    c.update_attrs(stats=[1.5])
    assert ClipCache.open(c.path).attrs["stats"] == [1.5]
    ro = pickle.loads(pickle.dumps(ClipCache.open(c.path, mode="r")))
    with pytest.raises(CacheError, match=exactly(f"{c.path}: opened read-only")):
        ro.write_block(0, 3, **block(0, 3))


def test_write_block_checks_and_casts(tmp_path):
    c = make(tmp_path)
    for start, stop in ((0, 2), (1, 3), (3, 3), (-3, 0), (6, 8), (2, 7), (0, 8)):
        with pytest.raises(CacheError, match=exactly(
                f"{c.path}: write [{start}, {stop}) does not cover whole blocks of 3 rows (of 7); "
                "partial blocks would race with other writers")):
            c.write_block(start, stop, **block(0, 3))
    b = block(0, 3)
    with pytest.raises(CacheError, match=exactly(f"{c.path}: write_block needs exactly the arrays ['n', 'ok', 'tag', 'x'] "
                                                 "(missing ['x'], unexpected ['y'])")):
        c.write_block(0, 3, n=b["n"], ok=b["ok"], tag=b["tag"], y=b["x"])
    with pytest.raises(CacheError, match=exactly(f"{c.path}: 'x' block has shape (3, 3, 2), expected (3, 2, 3)")):
        c.write_block(0, 3, **{**b, "x": np.zeros((3, 3, 2))})
    with pytest.raises(CacheError, match=exactly(f"{c.path}: 'n' must be numeric, got <U1")):
        c.write_block(0, 3, **{**b, "n": np.array(["1", "2", "3"])})
    assert not c.done().any()
    c.write_block(0, 6, **block(0, 6))  # two whole blocks at once
    c.write_block(6, 7, **block(6, 7))  # the short last block
    assert c.complete and c.done().dtype == bool and c.missing_blocks() == []
    assert c.read("x").dtype == np.float16 and c.read("n").dtype == np.int32
    np.testing.assert_array_equal(c.read("x"), block(0, 7)["x"].astype(np.float16))
    assert c.read("tag").tolist() == [f"t{r}" for r in range(7)] and c.read("ok").tolist() == [r % 2 == 0 for r in range(7)]


def test_missing_blocks_and_rows_where(tmp_path):
    c = make(tmp_path)
    assert c.missing_blocks() == [(0, 3), (3, 6), (6, 7)] and not c.complete
    c.write_block(3, 6, **block(3, 6))
    assert c.missing_blocks() == [(0, 3), (6, 7)] and c.done().tolist() == [False] * 3 + [True] * 3 + [False]
    assert c.rows_where("ok", True).tolist() == [4] and c.rows_where("ok", True, done_only=False).tolist() == [4]
    assert c.rows_where("n", 0, done_only=False).tolist() == [0, 1, 2, 6] and c.rows_where("n", 0).tolist() == []
    assert c.rows_where("tag", "t5").tolist() == [5]


def test_read_rows_in_any_form(tmp_path):
    c = make(tmp_path)
    c.write_block(0, 7, **block(0, 7))
    assert c.read("n").tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert c.read("n", slice(2, 4)).tolist() == [20, 30] and c.read("n", 3).tolist() == 30
    assert c.read("n", np.int64(6)).tolist() == 60
    assert c.read("n", [5, 1, 5, 0]).tolist() == [50, 10, 50, 0]  # any order, repeats
    assert c.read("x", np.array([[6], [0]])).shape == (2, 2, 3)
    assert c.read("keys", [2, 0]).tolist() == ["c", "a"] and c.read("done", [1]).tolist() == [True]
    empty = c.read("x", [])
    assert empty.shape == (0, 2, 3) and empty.dtype == np.float16
    assert c.read("n", np.array([], dtype=int)).shape == (0,)
    assert c.read("keys", []).shape == (0,) and c.read("done", []).dtype == np.bool_
    assert c.read("keys", []).dtype.kind == "U"  # a plain NumPy str array, not Zarr's StringDType
    with pytest.raises(CacheError, match=exactly(f"{c.path}: no array 'y' (has ['n', 'ok', 'tag', 'x'])")):
        c.read("y")
    for bad in ([7], [-1], [0, 7]):
        with pytest.raises(CacheError, match=exactly(f"{c.path}: row index out of range [0, 7)")):
            c.read("n", bad)
    assert c.read("n", [6]).tolist() == [60] and c.read("n", [0]).tolist() == [0]


def test_cache_dataset_rows_and_batches(tmp_path):
    c = make(tmp_path)
    c.write_block(0, 7, **block(0, 7))
    ds = CacheDataset(tmp_path / "c.zarr", ["n", "keys"], rows=[6, 2, 4])
    assert len(ds) == 3 and ds.path == c.path and ds.rows.dtype == np.int64
    assert {k: np.asarray(v).tolist() for k, v in ds[1].items()} == {"n": 20, "keys": "c"}
    batch = ds.__getitems__([2, 0])
    assert [int(b["n"]) for b in batch] == [40, 60] and [str(b["keys"]) for b in batch] == ["e", "g"]
    assert ds.__getitems__([]) == []
    assert len(CacheDataset(c.path, ["x"])) == 7 and CacheDataset(c.path, ["x"], rows=[]).rows.size == 0
    assert CacheDataset(c.path, ["x"], rows=[]).rows.dtype == np.int64
    flat = CacheDataset(c.path, ["n"], rows=np.array([[5], [1]]))
    assert flat.rows.tolist() == [5, 1] and int(flat[1]["n"]) == 10
    ds[0]
    state = ds.__getstate__()
    assert state["_cache"] is None and state["_pid"] is None  # an open store does not travel
    again = pickle.loads(pickle.dumps(ds))
    assert int(again[2]["n"]) == 40 and again.arrays == ["n", "keys"]
    with pytest.raises(CacheError, match=exactly(f"{c.path}: no array 'y' (has ['n', 'ok', 'tag', 'x'])")):
        CacheDataset(c.path, ["n", "y"])
    for bad in ([7], [-1]):
        with pytest.raises(CacheError, match=exactly(f"{c.path}: row index out of range [0, 7)")):
            CacheDataset(c.path, ["n"], rows=bad)


def test_cache_dataset_opens_once_per_process(tmp_path, monkeypatch):
    """One open for the validation probe, one on first use in a process, none after; a new pid (a forked
    DataLoader worker) opens again: a store opened before a fork is not used after it."""
    c = make(tmp_path)
    c.write_block(0, 7, **block(0, 7))
    opened = []
    real_open = ClipCache.open

    def counting_open(path, mode="r+"):
        opened.append(mode)
        return real_open(path, mode)

    monkeypatch.setattr(ClipCache, "open", staticmethod(counting_open))
    ds = CacheDataset(c.path, ["n"])
    assert opened == ["r"]
    assert [int(ds[i]["n"]) for i in (0, 3, 6)] == [0, 30, 60] and int(ds.__getitems__([1])[0]["n"]) == 10
    assert opened == ["r", "r"]
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)
    assert int(ds[2]["n"]) == 20 and int(ds[4]["n"]) == 40
    assert opened == ["r", "r", "r"]


def test_string_dtypes_and_url_stores():
    url = f"memory://zarr-cache-{uuid.uuid4().hex}"  # a URL goes to fsspec unchanged (not resolved as a path)
    arrays = {"o": ((), np.dtype(object)), "u": ((), np.dtype("<U3")), "w": ((), "string"), "s": ((), str),
              "n": ((), np.dtype("int8"))}
    c = ClipCache.create(url, ["a", "b"], arrays, 2)
    assert c.path == url and ClipCache.exists(url)
    assert [c.row_spec(k)[1] for k in ("o", "u", "w", "s", "n")] == ["str", "str", "str", "str", "int8"]
    c.write_block(0, 2, o=["x", "y"], u=["p", "q"], w=["1", "2"], s=["z", "z"], n=[1, 2])
    assert ClipCache.open(url, mode="r").read("o").tolist() == ["x", "y"]
