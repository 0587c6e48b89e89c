"""Content digests of datasets, files and configs: the currency of lineage and caching.

Files and trees may be local or fsspec URLs: a tree's digest covers every object's relative name
and content, so it changes when any object changes, on disk or in a bucket.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from spresso.core import storage


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(obj: Any) -> str:
    """Digest of a JSON-serialisable object, independent of key order."""
    return digest_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def digest_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with storage.open_file(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_files(paths: Iterable[str | Path], root: str | Path) -> str:
    """Digest of a set of local files: relative names and contents, order-independent."""
    root = Path(root)
    entries = sorted((str(Path(p).relative_to(root)), digest_file(p)) for p in paths)
    return digest_json(entries)


def digest_tree(root: str | Path) -> str:
    """Digest of every file below ``root`` (a local folder or a URL): the same files give the same digest."""
    if not storage.is_url(root):
        base = Path(root)
        return digest_files((p for p in base.glob("**/*") if p.is_file()), base)
    return digest_json(sorted((n, digest_file(storage.join(root, n))) for n in storage.list_files(root)))
