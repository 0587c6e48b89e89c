"""Output files that are never lost or half-written: checked before any work, written whole or not at all.

    check_outputs([out], inputs=[src], overwrite=False)   # refuses: out == an input, out exists, parent is a file
    with replacing(out) as tmp:                            # tmp: a hidden sibling with out's extension
        write(tmp)                                         # renamed onto out on success, removed on any error
                                                           # (Ctrl-C included)

The temporary name keeps the final extension (soundfile picks the format from it) and sits in the
same folder (a rename within one file system is atomic). Files are created by the writer, so
they get the usual mode (0644 under a 022 umask), not ``mkstemp``'s 0600.
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from spresso.core.errors import SpressoError

NAME_MAX = 255  # bytes in one path component on the usual file systems (ext4, xfs, apfs)
PARTIAL_TAG = ".partial-"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), *, overwrite: bool = False) -> Path:
    """Refuse, in one line, an output that would destroy an input, replace a file without ``overwrite``, or
    cannot be created (a parent that is a file, a name longer than the file system allows)."""
    out = Path(path)
    for src in inputs:
        if _same_file(out, Path(src)):
            raise SpressoError(f"{out}: the output is the input file; give another output name")
    if out.is_dir():
        raise SpressoError(f"{out}: is a folder, expected a file name")
    if len(os.fsencode(out.name)) + len(PARTIAL_TAG) + 10 > NAME_MAX:
        raise SpressoError(f"{out}: file name too long ({len(os.fsencode(out.name))} bytes; at most "
                           f"{NAME_MAX - len(PARTIAL_TAG) - 10})")
    _refuse_file_parent(out)
    if out.exists() and not overwrite:
        raise SpressoError(f"{out}: already exists (pass --overwrite to replace it)")
    return out


def check_outputs(paths: Iterable[str | Path], inputs: Iterable[str | Path] = (), *, overwrite: bool = False) -> list[Path]:
    """:func:`check_output` for each; also refuses two outputs with the same name."""
    inputs = list(inputs)
    seen: dict[Path, Path] = {}
    out = []
    for p in paths:
        path = check_output(p, inputs, overwrite=overwrite)
        key = path.resolve()
        if key in seen:
            raise SpressoError(f"{path}: two inputs would be written to this same output")
        seen[key] = path
        out.append(path)
    return out


def _refuse_file_parent(out: Path) -> None:
    for parent in [out.parent, *out.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise SpressoError(f"{out}: cannot write there, {parent} is a file, not a folder")
            return


def make_parent(path: str | Path) -> None:
    """Create ``path``'s folder; one line when that is impossible."""
    _refuse_file_parent(Path(path))
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpressoError(f"{path}: cannot create its folder ({err.strerror or err})") from None


def partial_name(path: str | Path) -> Path:
    """A hidden, unique sibling of ``path`` that keeps its extension: ``dir/.name.partial-<hex>.ext``."""
    p = Path(path)
    return p.with_name(f".{p.stem}{PARTIAL_TAG}{uuid.uuid4().hex[:8]}{p.suffix}")


@contextlib.contextmanager
def replacing(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling to write; on success it is renamed onto ``path``, on any error
    (KeyboardInterrupt included) it is removed and ``path`` is left as it was."""
    final = Path(path)
    make_parent(final)
    tmp = partial_name(final)
    try:
        yield tmp
        if not overwrite and final.exists():
            raise SpressoError(f"{final}: already exists (pass --overwrite to replace it)")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_file(path: str | Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` whole through :func:`replacing`; one-line :class:`SpressoError` on an OS error."""
    try:
        with replacing(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        reason = "file name too long" if err.errno == errno.ENAMETOOLONG else (err.strerror or str(err))
        raise SpressoError(f"{path}: cannot write ({reason})") from None
