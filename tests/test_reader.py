"""spresso.data.reader: the shard contract other stages read (contract 1)."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from spresso.core.errors import SpressoError
from spresso.data.reader import iter_clips, iter_tar, read_manifest, shard_paths
from spresso.data.tars import ShardWriter

N = 4800


def _flac(value: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(N, value, np.float32), 48000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    """Two splits, three train tars with two clips each, written in the real layout."""
    rows = []
    for split, n_tars in (("train", 3), ("valid", 1)):
        (tmp_path / split).mkdir()
        for t in range(n_tars):
            with open(tmp_path / split / f"shard-{t:06d}.tar", "wb") as f:
                w = ShardWriter(f)
                for c in range(2):
                    key = f"{split}_src{t}-abc-{c:05d}"
                    meta = {"key": key, "valid_samples": 1000 * (c + 1), "caption": f"cap {t} {c}", "sample_rate": 48000}
                    w.add(key, {"flac": _flac(0.1 * (t + 1)), "json": json.dumps(meta).encode()})
                    rows.append({"key": key, "split": split, "shard": f"{split}/shard-{t:06d}.tar", "source": f"s/{t}.wav",
                                 "offset_seconds": 0.0, "valid_samples": 1000 * (c + 1), "caption": f"cap {t} {c}"})
                w.close()
    (tmp_path / "train" / ".shard-000009.tar.tmp-1234").write_bytes(b"partial")  # never listed
    pq.write_table(pa.Table.from_pylist(rows[::-1]), tmp_path / "manifest.parquet")  # written unsorted on purpose
    return tmp_path, rows


def test_manifest_sorted_by_split_then_key(shards):
    root, rows = shards
    table = read_manifest(str(root))
    for col in ("key", "split", "shard", "source", "offset_seconds", "valid_samples", "caption"):
        assert col in table.column_names
    pairs = list(zip(table["split"].to_pylist(), table["key"].to_pylist()))
    assert pairs == sorted(pairs) and len(pairs) == len(rows)


def test_shard_paths_sorted_and_only_complete(shards):
    root, _ = shards
    paths = shard_paths(str(root), "train")
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert shard_paths(str(root), "test") == []


def test_iter_clips_yields_the_contract(shards):
    root, rows = shards
    clips = list(iter_clips(shard_paths(str(root), "train")))
    assert [c["key"] for c in clips] == [r["key"] for r in rows if r["split"] == "train"]
    c = clips[2]
    assert c["wave"].dtype == np.float32 and c["wave"].shape == (N,)
    assert np.allclose(c["wave"], 0.2, atol=1e-4)
    assert c["valid_samples"] == 1000 and c["caption"] == "cap 1 0" and c["meta"]["key"] == c["key"]


def test_ranks_split_tars_without_overlap(shards):
    root, _ = shards
    paths = shard_paths(str(root), "train")
    per_rank = [[c["key"] for c in iter_clips(paths, rank=r, world_size=2)] for r in range(2)]
    assert len(per_rank[0]) == 4 and len(per_rank[1]) == 2  # tars 0, 2 and tar 1
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(c["key"] for c in iter_clips(paths))
    with pytest.raises(SpressoError):
        list(iter_clips(paths, rank=2, world_size=2))


def test_incomplete_sample_and_missing_manifest(tmp_path):
    with open(tmp_path / "bad.tar", "wb") as f:
        w = ShardWriter(f)
        w.add("lonely-00000", {"flac": _flac(0.1)})
        w.close()
    with pytest.raises(SpressoError, match="incomplete"):
        list(iter_tar(str(tmp_path / "bad.tar")))
    with pytest.raises(SpressoError, match="no manifest"):
        read_manifest(str(tmp_path))


def test_shard_writer_is_deterministic(tmp_path):
    digests = []
    for name in ("a.tar", "b.tar"):
        with open(tmp_path / name, "wb") as f:
            w = ShardWriter(f)
            w.add("k-00000", {"json": b"{}", "flac": _flac(0.3)})
            digests.append(w.close())
    assert digests[0] == digests[1] and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert hashlib.sha256((tmp_path / "a.tar").read_bytes()).hexdigest() == digests[0][0]
