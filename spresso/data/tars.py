"""Deterministic WebDataset tars, written with the WebDataset library's own writer.

``webdataset.TarWriter`` with no owner, mode 0644 and mtime 0 writes members in sorted order of
their extension, so the same clips give the same bytes anywhere (the dataset digest depends on it);
the bytes are hashed and counted as they go out.
"""
from __future__ import annotations

import hashlib
import io

import webdataset


class _HashingWriter(io.RawIOBase):
    """A write-only file object that forwards to ``f`` and hashes and counts the bytes."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)
        return len(b)


class ShardWriter:
    """Append ``<key>.flac`` + ``<key>.json`` samples to one tar; ``close()`` returns (sha256, size)."""

    def __init__(self, fileobj):
        self._out = _HashingWriter(fileobj)
        self._tar = webdataset.TarWriter(self._out, user="", group="", mode=0o644, mtime=0, encoder=False)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        self._tar.write({"__key__": key, **members})

    def close(self) -> tuple[str, int]:
        self._tar.close()
        return self._out.sha.hexdigest(), self._out.size
