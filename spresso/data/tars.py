"""Deterministic WebDataset tars: fixed member order, zero mtimes/owners, hashed while written."""
from __future__ import annotations

import hashlib
import io
import tarfile


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
    """Append ``<key>.flac`` + ``<key>.json`` pairs to one tar; ``close()`` returns (sha256, size).

    Member headers carry no time, owner or permissions of this machine, so the same clips give
    the same bytes anywhere (the dataset digest depends on it).
    """

    def __init__(self, fileobj):
        self._out = _HashingWriter(fileobj)
        self._tar = tarfile.open(fileobj=self._out, mode="w|", format=tarfile.USTAR_FORMAT)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):  # flac before json: fixed order, members of a key adjacent
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(members[ext]), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(members[ext]))

    def close(self) -> tuple[str, int]:
        self._tar.close()
        return self._out.sha.hexdigest(), self._out.size
