"""Row-aligned clip caches in Zarr v3 (x0 latents, z codes, ...): sized once, filled by blocks.

A cache is one Zarr group whose arrays share their first axis with the shard manifest (row i =
manifest row i):

- ``keys`` [N] str: the clip keys, so a reader can check the alignment;
- one array per produced quantity, e.g. ``x0`` [N, 128, 500] float16, ``valid_frames`` [N] int32;
- ``done`` [N] bool: rows whose data is written, so a rerun fills only what is missing.

Writers own whole *blocks* of ``chunk_rows`` rows (DESIGN.md §3): a block is one Zarr chunk of
every per-row-scalar array and one Zarr *shard* of every array with a row shape. Inside such a
shard each row is its own inner chunk, so a training reader that picks random clips decodes
only the rows it asks for instead of a whole block. Two writers in one shard would overwrite
each other's rows, which is why :meth:`ClipCache.write_block` refuses anything but whole blocks.
``done`` is written last, so a writer killed mid-block leaves the block missing, not half-done.

The attrs passed to :meth:`ClipCache.create` are the cache's identity (which model, which
data): reopening with different values is an error rather than a silent mix of two models'
outputs. Statistics computed after the fill go in with :meth:`ClipCache.update_attrs`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import zarr

from spresso.core.digest import digest_json
from spresso.core.errors import SpressoError

LAYOUT_ATTR = "spresso_layout"
KEYS = "keys"
DONE = "done"
log = logging.getLogger(__name__)

RESERVED = (KEYS, DONE)

ArraySpec = tuple[Sequence[int], Any]  # (row_shape, dtype); dtype "str" for strings


class CacheError(SpressoError):
    """A cache that is missing, incompatible with the request, or written incorrectly."""


def default_compressor():
    # zstd + bit shuffle: float16 latents compress better bit-plane-wise than byte-wise.
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def _is_str(dtype: Any) -> bool:
    return dtype in (str, "str", "string") or (isinstance(dtype, np.dtype) and dtype.kind in "UTO")


def _dtype_name(dtype: Any) -> str:
    return "str" if _is_str(dtype) else np.dtype(dtype).name


def _store_path(path: str | os.PathLike) -> str:
    # Local folders as plain absolute paths; URLs (s3://...) go to zarr's fsspec store unchanged.
    s = str(path)
    return s if "://" in s else str(Path(s).resolve())


def _layout(keys: Sequence[str], arrays: Mapping[str, ArraySpec], chunk_rows: int) -> dict:
    return {
        "n_rows": len(keys),
        "chunk_rows": int(chunk_rows),
        "keys_digest": digest_json(list(keys)),
        "arrays": {name: [list(map(int, shape)), _dtype_name(dtype)] for name, (shape, dtype) in sorted(arrays.items())},
    }


def _describe_difference(old: dict, new: dict) -> str:
    if old.get("n_rows") != new["n_rows"] or old.get("keys_digest") != new["keys_digest"]:
        return f"its keys differ ({old.get('n_rows')} rows there, {new['n_rows']} requested)"
    if old.get("chunk_rows") != new["chunk_rows"]:
        return f"chunk_rows is {old.get('chunk_rows')} there, {new['chunk_rows']} requested"
    return f"its arrays differ ({old.get('arrays')} there, {new['arrays']} requested)"


def _incompatibility(cache: "ClipCache", layout: dict, attrs: Mapping[str, Any]) -> str | None:
    """Why an existing cache cannot be resumed for this layout and these identity attrs (None: it can)."""
    if cache.layout != layout:
        return f"an existing cache is incompatible: {_describe_difference(cache.layout, layout)}"
    old = cache.attrs
    for k, v in attrs.items():
        if k in old and old[k] != v:
            return f"an existing cache has {k}={old[k]!r}, not {v!r}"
    return None


class ClipCache:
    """A Zarr v3 group of row-aligned arrays filled block by block; see the module docstring."""

    def __init__(self, path: str, group, mode: str):
        self.path = path
        self._group = group
        self._mode = mode
        self._layout = dict(group.attrs[LAYOUT_ATTR])
        self._keys: list[str] | None = None
        # Array handles, opened once: each group[name] re-reads the array's metadata from the store
        # (a file read per array per block written; a request each on object storage).
        self._arrays: dict[str, Any] = {}

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        keys: Sequence[str],
        arrays: Mapping[str, ArraySpec],
        chunk_rows: int,
        attrs: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        replace_stale: bool = False,
        compressor=None,
    ) -> "ClipCache":
        """Create the group, or open the existing one when it is compatible; raise otherwise.

        Compatible means same keys (in order), same arrays (row shapes, dtypes), same
        ``chunk_rows`` and the same values for every attr given here. ``overwrite=True``
        always starts afresh; ``replace_stale=True`` resumes a compatible group and replaces an
        incompatible one (what a pipeline wants when an upstream model changed) instead of raising.
        """

        keys = [str(k) for k in keys]
        attrs = dict(attrs or {})
        if not keys:
            raise CacheError(f"{path}: a cache needs at least one row")
        if int(chunk_rows) <= 0:
            raise CacheError(f"{path}: chunk_rows must be positive (got {chunk_rows})")
        bad = [n for n in arrays if n in RESERVED or n == LAYOUT_ATTR]
        if bad:
            raise CacheError(f"{path}: array name '{bad[0]}' is reserved")
        if not arrays:
            raise CacheError(f"{path}: a cache needs at least one data array")
        layout = _layout(keys, arrays, chunk_rows)
        store = _store_path(path)
        if cls.exists(store) and not overwrite:
            cache = cls.open(store)
            # Compare as stored: attrs round-trip through JSON (tuples come back as lists).
            attrs = json.loads(json.dumps(attrs))
            problem = _incompatibility(cache, layout, attrs)
            if problem is None:
                missing = {k: v for k, v in attrs.items() if k not in cache.attrs}
                if missing:
                    cache.update_attrs(**missing)
                return cache
            if not replace_stale:
                raise CacheError(f"{path}: {problem}; delete it or overwrite")
            log.warning("%s: %s; rebuilding it", path, problem)

        compressor = compressor or default_compressor()
        chunk_rows = int(chunk_rows)
        group = zarr.open_group(store, mode="w")
        n = len(keys)

        def vector(name: str, dtype, fill):
            return group.create_array(name, shape=(n,), dtype=dtype, chunks=(chunk_rows,), fill_value=fill,
                                      compressors=None if dtype is str else compressor)

        for name, (row_shape, dtype) in arrays.items():
            row_shape = tuple(int(s) for s in row_shape)
            if _is_str(dtype):
                if row_shape:
                    raise CacheError(f"{path}: string array '{name}' must have an empty row shape")
                vector(name, str, "")
            elif not row_shape:
                vector(name, np.dtype(dtype), 0)
            else:
                # One shard per block (the unit a writer owns), one inner chunk per row (the unit
                # a random-access reader decodes).
                group.create_array(
                    name, shape=(n, *row_shape), dtype=np.dtype(dtype),
                    shards=(chunk_rows, *row_shape), chunks=(1, *row_shape),
                    fill_value=0, compressors=compressor,
                )
        vector(KEYS, str, "")[:] = np.asarray(keys, dtype=object).astype(str)
        vector(DONE, np.dtype(bool), False)
        # The layout goes in last: a group without it is an interrupted creation, redone next time.
        group.attrs.update({**attrs, LAYOUT_ATTR: layout})
        return cls(store, group, "r+")

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """True when ``path`` holds a completely created cache."""

        try:
            group = zarr.open_group(_store_path(path), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
            return False
        return LAYOUT_ATTR in group.attrs

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r+") -> "ClipCache":
        store = _store_path(path)
        try:
            group = zarr.open_group(store, mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
            raise CacheError(f"{path}: no clip cache there") from None
        if LAYOUT_ATTR not in group.attrs:
            raise CacheError(f"{path}: not a clip cache (or its creation was interrupted)")
        return cls(store, group, mode)

    # Ray actors and DataLoader workers receive the path and reopen (an open store is not portable).
    def __reduce__(self):
        return (ClipCache.open, (self.path, self._mode))

    # -- layout -----------------------------------------------------------------------------
    def _array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    @property
    def layout(self) -> dict:
        """What fixes the cache's shape: row count, chunk rows and each array's row shape and dtype."""
        return self._layout

    @property
    def n_rows(self) -> int:
        return int(self._layout["n_rows"])

    @property
    def chunk_rows(self) -> int:
        return int(self._layout["chunk_rows"])

    @property
    def array_names(self) -> list[str]:
        return list(self._layout["arrays"])

    def row_spec(self, name: str) -> tuple[tuple[int, ...], str]:
        shape, dtype = self._layout["arrays"][name]
        return tuple(shape), dtype

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = [str(k) for k in self._array(KEYS)[:]]
        return self._keys

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: v for k, v in self._group.attrs.asdict().items() if k != LAYOUT_ATTR}

    def update_attrs(self, **kv: Any) -> None:
        if LAYOUT_ATTR in kv:
            raise CacheError(f"{self.path}: attr '{LAYOUT_ATTR}' is reserved")
        self._group.attrs.update(kv)

    def blocks(self) -> list[tuple[int, int]]:
        """Every block ``(start, stop)``; the last one may be short."""
        c = self.chunk_rows
        return [(s, min(s + c, self.n_rows)) for s in range(0, self.n_rows, c)]

    # -- progress ---------------------------------------------------------------------------
    def done(self) -> np.ndarray:
        return np.asarray(self._array(DONE)[:], dtype=bool)

    @property
    def complete(self) -> bool:
        return bool(self.done().all())

    def missing_blocks(self) -> list[tuple[int, int]]:
        """Blocks with at least one row not done, in row order."""
        done = self.done()
        return [(a, b) for a, b in self.blocks() if not done[a:b].all()]

    # -- I/O --------------------------------------------------------------------------------
    def write_block(self, start: int, stop: int, **arrays: np.ndarray) -> None:
        """Write every data array for rows [start, stop), a whole number of blocks; mark them done."""
        if self._mode == "r":
            raise CacheError(f"{self.path}: opened read-only")
        c, n = self.chunk_rows, self.n_rows
        if not (0 <= start < stop <= n) or start % c or (stop % c and stop != n):
            raise CacheError(
                f"{self.path}: write [{start}, {stop}) does not cover whole blocks of {c} rows (of {n}); "
                "partial blocks would race with other writers"
            )
        expected = set(self.array_names)
        if set(arrays) != expected:
            missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise CacheError(f"{self.path}: write_block needs exactly the arrays {sorted(expected)} (missing {missing}, unexpected {extra})")
        rows = stop - start
        prepared = {}
        for name, value in arrays.items():
            shape, dtype = self.row_spec(name)
            value = np.asarray(value, dtype=object).astype(str) if dtype == "str" else np.asarray(value)
            if value.shape != (rows, *shape):
                raise CacheError(f"{self.path}: '{name}' block has shape {value.shape}, expected {(rows, *shape)}")
            if dtype != "str":
                if not np.issubdtype(value.dtype, np.number) and value.dtype != bool:
                    raise CacheError(f"{self.path}: '{name}' must be numeric, got {value.dtype}")
                value = value.astype(dtype, copy=False)
            prepared[name] = value
        for name, value in prepared.items():
            self._array(name)[start:stop] = value
        self._array(DONE)[start:stop] = np.ones(rows, dtype=bool)

    def read(self, name: str, rows: slice | Sequence[int] | np.ndarray | int | None = None) -> np.ndarray:
        """Rows of one array (``keys``/``done`` included): a slice, indices (any order), an int or all."""
        if name not in self._layout["arrays"] and name not in RESERVED:
            raise CacheError(f"{self.path}: no array '{name}' (has {self.array_names})")
        arr = self._array(name)
        if rows is None:
            return np.asarray(arr[:])
        if isinstance(rows, slice):
            return np.asarray(arr[rows])
        if np.isscalar(rows):
            return np.asarray(arr[int(rows)])
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            shape, _ = self.row_spec(name) if name in self._layout["arrays"] else ((), None)
            return np.empty((0, *shape), dtype=arr.dtype if name != KEYS else str)
        if idx.min() < 0 or idx.max() >= self.n_rows:
            raise CacheError(f"{self.path}: row index out of range [0, {self.n_rows})")
        # Zarr wants increasing unique indices; read those once and put them back in order.
        uniq, inverse = np.unique(idx, return_inverse=True)
        return np.asarray(arr.oindex[uniq])[inverse]

    def rows_where(self, name: str, value: Any, done_only: bool = True) -> np.ndarray:
        """Row indices where a per-row array equals ``value`` (e.g. ``split == "train"``)."""
        mask = self.read(name) == value
        if done_only:
            mask &= self.done()
        return np.flatnonzero(mask)

    def __repr__(self) -> str:
        return f"ClipCache({self.path!r}, rows={self.n_rows}, chunk_rows={self.chunk_rows}, arrays={self.array_names})"


class CacheDataset:
    """A torch ``Dataset`` over rows of a :class:`ClipCache`: ``ds[i] -> {name: np.ndarray}``.

    Only the path travels to DataLoader workers; each process opens the group on first use
    (tracked by pid), because a Zarr store opened before a fork is not safe to use after it.
    ``__getitems__`` serves a whole batch with one read per array (rows in one shard are
    fetched together), which DataLoader uses automatically with automatic batching.
    """

    def __init__(self, path: str | os.PathLike, arrays: Iterable[str], rows: Sequence[int] | np.ndarray | None = None):
        self.path = _store_path(path)
        self.arrays = list(arrays)
        probe = ClipCache.open(self.path, mode="r")  # validate now: fail in the parent, not in a worker
        unknown = [a for a in self.arrays if a not in probe.array_names and a not in RESERVED]
        if unknown:
            raise CacheError(f"{path}: no array '{unknown[0]}' (has {probe.array_names})")
        self.rows = np.arange(probe.n_rows) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= probe.n_rows):
            raise CacheError(f"{path}: row index out of range [0, {probe.n_rows})")
        self._cache: ClipCache | None = None
        self._pid: int | None = None

    def _open(self) -> ClipCache:
        if self._cache is None or self._pid != os.getpid():
            self._cache = ClipCache.open(self.path, mode="r")
            self._pid = os.getpid()
        return self._cache

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"], state["_pid"] = None, None
        return state

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        cache = self._open()
        row = int(self.rows[i])
        return {name: cache.read(name, row) for name in self.arrays}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        cache = self._open()
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        columns = {name: cache.read(name, rows) for name in self.arrays}
        return [{name: columns[name][j] for name in self.arrays} for j in range(len(rows))]
