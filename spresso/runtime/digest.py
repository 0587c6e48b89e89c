"""Content digests of datasets, files and configs: the currency of lineage and caching."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(obj: Any) -> str:
    """Digest of a JSON-serialisable object, independent of key order."""
    return digest_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def digest_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_files(paths: Iterable[str | Path], root: str | Path) -> str:
    """Digest of a set of files: relative names and contents, order-independent."""
    root = Path(root)
    entries = sorted((str(Path(p).relative_to(root)), digest_file(p)) for p in paths)
    return digest_json(entries)


def digest_tree(root: str | Path, pattern: str = "**/*") -> str:
    root = Path(root)
    return digest_files((p for p in root.glob(pattern) if p.is_file()), root)
