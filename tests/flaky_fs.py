"""A local file system, ``flaky://``, whose whole-file reads fail on purpose (for the shard fault tests).

- ``flaky_*`` files: the first two whole-file reads raise OSError, later ones succeed;
- ``dead_*`` files: every whole-file read raises ConnectionError until ``$FLAKY_FS_STATE/heal`` exists.

Header reads (``read(n)``, as a probe does) always succeed. Attempts are counted in files under
``$FLAKY_FS_STATE``, so every Ray worker process sees the same count. Ray workers register it with
``runtime_env={"worker_process_setup_hook": "flaky_fs.register"}``.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

FAILS_BEFORE_SUCCESS = 2


def _attempt(path: str) -> int:
    counter = Path(os.environ["FLAKY_FS_STATE"]) / (Path(path).name + ".reads")
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    return n


class FlakyOpener(LocalFileOpener):
    def read(self, *args, **kwargs):
        whole = not args or args[0] is None or args[0] < 0
        name = Path(self.path).name
        if whole and name.startswith("flaky_") and _attempt(self.path) <= FAILS_BEFORE_SUCCESS:
            raise OSError(errno.EIO, "injected I/O error", self.path)
        if whole and name.startswith("dead_"):
            _attempt(self.path)
            if not (Path(os.environ["FLAKY_FS_STATE"]) / "heal").exists():
                raise ConnectionError("injected: connection reset by peer")
        return super().read(*args, **kwargs)


class FlakyFileSystem(LocalFileSystem):
    protocol = "flaky"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return super()._strip_protocol(path[len("flaky://"):] if path.startswith("flaky://") else path)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        path = self._strip_protocol(path)
        if self.auto_mkdir and "w" in mode:
            self.makedirs(self._parent(path), exist_ok=True)
        return FlakyOpener(path, mode, fs=self, **kwargs)


def register() -> None:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
