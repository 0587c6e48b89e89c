"""Paths that may be local folders or fsspec URLs (``s3://bucket/prefix``, ``memory://``, ``gs://``).

One place that knows the difference: every stage, cache and loader goes through these helpers, so
a workdir can be a local folder or a bucket with no stage-specific code.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import IO

import fsspec


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def absolute(path: str | Path) -> str:
    """An absolute local path (Ray needs them: workers do not share the driver's cwd); URLs unchanged."""
    text = str(path)
    return text if is_url(text) else str(Path(text).resolve())


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...`` for a local folder or a URL (URLs always join with '/')."""
    root = str(root)
    if is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(PurePosixPath(root).joinpath(*parts))


def filesystem(path: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem that holds ``path`` and the path as that filesystem names it."""
    fs, _, [resolved] = fsspec.get_fs_token_paths(str(path))
    return fs, resolved


def open_file(path: str | Path, mode: str = "rb") -> IO:
    """An open file object for a local path or URL (use it as a context manager)."""
    return fsspec.open(str(path), mode).open()


def exists(path: str | Path) -> bool:
    fs, resolved = filesystem(path)
    return fs.exists(resolved)


def is_file(path: str | Path) -> bool:
    fs, resolved = filesystem(path)
    return fs.isfile(resolved)


def read_bytes(path: str | Path) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` whole; a local file goes to a temporary name first and is renamed into place."""
    if is_url(path):
        with fsspec.open(str(path), "wb") as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def make_dirs(path: str | Path) -> None:
    """Create a local folder (object stores have no folders: nothing to do)."""
    if not is_url(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def list_files(root: str | Path) -> list[str]:
    """Every file below ``root``, as paths relative to it, sorted ('/'-separated)."""
    fs, resolved = filesystem(root)
    if not fs.exists(resolved):
        return []
    base = resolved.rstrip("/")
    return sorted(p[len(base) + 1:] for p in fs.find(base) if p != base)
