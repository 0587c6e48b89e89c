"""Read the shards that `spresso shard` writes (contract 1 of the team brief, DESIGN.md §3).

Layout::

    <shards_dir>/<split>/shard-000000.tar    members <key>.flac + <key>.json, adjacent per key
    <shards_dir>/.manifest/<split>-shard-000000.parquet   the manifest: one piece per tar
    <shards_dir>/manifest.parquet            the same rows in one file, sorted by split then key
    <shards_dir>/rejects.parquet             one row per refused input (path, reason)
    <shards_dir>/failures.parquet            inputs unreadable after retries (tried again next run)
    <shards_dir>/dataset.json                dataset digest and counts

Every path may be local or an fsspec URL (``s3://...``). This module only reads; it does not
import Ray, so training loops and tests can use it anywhere.
"""
from __future__ import annotations

import io
import json
import tarfile
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import soundfile as sf

from spresso.core.errors import SpressoError
from spresso.core.storage import filesystem, join, open_file

MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
FAILURES = "failures.parquet"
DATASET_JSON = "dataset.json"
SHARD_PATTERN = "shard-{:06d}.tar"
MANIFEST_DIR = ".manifest"

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()), ("source", pa.string()),
    ("source_path", pa.string()), ("offset_seconds", pa.float64()), ("duration_seconds", pa.float64()),
    ("valid_samples", pa.int64()), ("caption", pa.string()), ("source_rate", pa.int32()),
    ("source_channels", pa.int32()), ("loudness_lufs", pa.float64()), ("gain_db", pa.float64()),
])


def manifest_pieces(shards_dir: str) -> list[str]:
    """The manifest's pieces (one Parquet file per tar, ``.manifest/<split>-shard-NNNNNN.parquet``),
    sorted: split, then shard, which is also key order. ``[]`` for a manifest in one file."""
    folder = join(shards_dir, MANIFEST_DIR)
    fs, resolved = filesystem(folder)
    if not fs.isdir(resolved):
        return []
    return sorted(join(shards_dir, MANIFEST_DIR, p.rsplit("/", 1)[-1]) for p in fs.ls(resolved, detail=False)
                  if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith("."))


def read_manifest(shards_dir: str) -> pa.Table:
    """The manifest: one row per clip, sorted by split then key.

    Columns: ``key, split, shard, source, offset_seconds, duration_seconds, valid_samples,
    caption, source_rate, source_channels, loudness_lufs``. Read as a ``pyarrow.dataset`` of the
    per-tar pieces that `spresso shard` writes; a single ``manifest.parquet`` (older or hand-made
    shard folders) is read when there are no pieces.
    """
    pieces = manifest_pieces(shards_dir)
    if pieces:
        fs, _ = filesystem(pieces[0])
        table = pads.dataset([filesystem(p)[1] for p in pieces], format="parquet", filesystem=fs,
                             schema=MANIFEST_SCHEMA).to_table()
    else:
        path = join(shards_dir, MANIFEST)
        fs, resolved = filesystem(path)
        if not fs.exists(resolved):
            raise SpressoError(f"no manifest at {path}: run `spresso shard` first")
        with open_file(path) as f:
            table = pq.read_table(f)
    # Pieces are written in key order already; sort again so the contract holds for any writer.
    return table.sort_by([("split", "ascending"), ("key", "ascending")])


def read_rejects(shards_dir: str) -> pa.Table:
    """Inputs refused by `spresso shard`, with the reason (columns ``path, reason``)."""
    path = join(shards_dir, REJECTS)
    with open_file(path) as f:
        return pq.read_table(f)


def read_failures(shards_dir: str) -> pa.Table:
    """Inputs that could not be read after the retries (columns ``path, source, reason``): not
    rejects; the next `spresso shard` run tries them again."""
    with open_file(join(shards_dir, FAILURES)) as f:
        return pq.read_table(f)


def read_dataset_info(shards_dir: str) -> dict:
    """``dataset.json``: the dataset digest, counts and settings of the shard run."""
    path = join(shards_dir, DATASET_JSON)
    fs, resolved = filesystem(path)
    if not fs.exists(resolved):
        raise SpressoError(f"no dataset.json at {path}: run `spresso shard` first")
    with open_file(path) as f:
        return json.loads(f.read().decode())


def shard_paths(shards_dir: str, split: str) -> list[str]:
    """The tars of one split, sorted (``[]`` when the split has none)."""
    folder = join(shards_dir, split)
    fs, resolved = filesystem(folder)
    if not fs.exists(resolved):
        return []
    names = sorted(
        p.rsplit("/", 1)[-1] for p in fs.ls(resolved, detail=False)
        if p.endswith(".tar") and p.rsplit("/", 1)[-1].startswith("shard-")
    )
    return [join(shards_dir, split, n) for n in names]


def decode_clip(flac: bytes, meta: dict, key: str) -> dict:
    """One sample as the contract yields it, from a tar's ``.flac`` and parsed ``.json``."""
    wave, sr = sf.read(io.BytesIO(flac), dtype="float32", always_2d=False)
    if wave.ndim != 1:
        raise SpressoError(f"clip {key}: expected mono audio, got {wave.shape[1]} channels")
    expected = meta.get("sample_rate", sr)
    if sr != expected:
        raise SpressoError(f"clip {key}: sample rate {sr} != {expected} recorded in its json")
    return {
        "key": key,
        "wave": np.ascontiguousarray(wave, dtype=np.float32),
        "valid_samples": int(meta["valid_samples"]),
        "caption": str(meta.get("caption", "")),
        "meta": meta,
    }


def iter_tar(tar_path: str) -> Iterator[dict]:
    """Yield the clips of one tar in member order (members of a key are adjacent)."""
    pending: dict[str, dict[str, bytes]] = {}
    with open_file(tar_path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            # Keys contain no dots, so the first dot starts the extension (webdataset's rule).
            key, _, ext = name.partition(".")
            data = tar.extractfile(member).read()
            entry = pending.setdefault(key, {})
            entry[ext] = data
            if "flac" in entry and "json" in entry:
                del pending[key]
                yield decode_clip(entry["flac"], json.loads(entry["json"]), key)
    if pending:
        raise SpressoError(f"{tar_path}: incomplete samples {sorted(pending)[:3]} (missing .flac or .json)")


def iter_clips(tar_paths: Iterable[str], rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """Yield ``{"key", "wave" [clip_samples] float32 48 kHz mono, "valid_samples", "caption", "meta"}``.

    With ``world_size > 1`` rank ``r`` reads tars ``r, r + world_size, ...`` of the sorted list:
    the one place data is split among workers.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise SpressoError(f"invalid rank {rank} for world_size {world_size}")
    paths = sorted(str(p) for p in tar_paths)
    for path in paths[rank::world_size]:
        yield from iter_tar(path)
