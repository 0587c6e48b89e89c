"""Content digests (spresso.core.digest): values pinned to hashlib, order and name sensitivity, URL trees."""
from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import fsspec

from spresso.core.digest import (
    digest_bytes,
    digest_file,
    digest_files,
    digest_json,
    digest_tree,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_bytes_and_json_digests_are_sha256_of_canonical_json():
    assert digest_bytes(b"abc") == sha(b"abc")
    assert digest_json({"b": 1, "a": [1, 2]}) == sha(b'{"a":[1,2],"b":1}')
    assert digest_json({"a": 1, "b": 2}) == digest_json({"b": 2, "a": 1})
    assert digest_json({"p": Path("/x")}) == sha(b'{"p":"/x"}')  # default=str


def test_file_digest_streams_in_chunks(tmp_path):
    data = bytes(range(256)) * 40
    (tmp_path / "f").write_bytes(data)
    assert digest_file(tmp_path / "f") == sha(data)
    assert digest_file(tmp_path / "f", chunk=7) == sha(data)
    (tmp_path / "e").write_bytes(b"")
    assert digest_file(tmp_path / "e") == sha(b"")


def test_files_digest_covers_relative_names_and_contents_in_any_order(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_bytes(b"1")
    (tmp_path / "y.txt").write_bytes(b"2")
    files = [tmp_path / "y.txt", tmp_path / "a" / "x.txt"]
    expected = sha(json.dumps([["a/x.txt", sha(b"1")], ["y.txt", sha(b"2")]], separators=(",", ":")).encode())
    assert digest_files(files, tmp_path) == expected == digest_files(reversed(files), str(tmp_path))
    assert digest_tree(tmp_path) == expected
    (tmp_path / "y.txt").rename(tmp_path / "z.txt")  # same content, new name: new digest
    assert digest_tree(tmp_path) != expected


def test_tree_digest_of_a_url_matches_the_same_tree_on_disk(tmp_path):
    root = f"memory://digest-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for name, data in (("a/x.txt", b"1"), ("y.txt", b"2"), ("b/z.bin", b"3")):
        fs.pipe(f"{root}/{name}", data)
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert digest_tree(root) == digest_tree(tmp_path) == digest_tree(root + "/")
    fs.pipe(f"{root}/y.txt", b"changed")
    assert digest_tree(root) != digest_tree(tmp_path)
