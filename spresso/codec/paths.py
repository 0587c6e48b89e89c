"""Which files a codec command reads and which it writes: inputs from files, folders and globs; one unique
output per input. No torch here, so the command line checks every path before it loads a model.

Rules (the ``spresso encode``/``decode`` help repeats them):
- IN is one or more files, folders (every matching file below, recursively) or quoted globs; an
  unquoted glob that the shell expanded into many names is the same as listing them.
- OUT is a folder when there are several inputs, when it ends with ``/``, or when it names an
  existing folder (created when missing); otherwise it is the output file.
- In a folder each output is named after its input (``a.wav`` -> ``a.spr``, below the same
  sub-folder when IN is a folder). When two inputs would get the same name (``a.wav`` and
  ``a.ogg``), those keep their extension: ``a.wav.spr``, ``a.ogg.spr``.
"""
from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from spresso.core.errors import SpressoError

STREAM_SUFFIX = ".spr"
# Audio formats a decode writes, chosen by the output's extension (libsndfile).
WRITABLE_AUDIO = (".wav", ".flac", ".ogg", ".aif", ".aiff")


def _expand_one(pattern: str, suffixes: Sequence[str]) -> tuple[list[Path], Path | None]:
    """(files, root): a file, a folder's matching files (recursive, sorted; root = the folder), or a glob's matches."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise SpressoError(f"{pattern}: no {'/'.join(suffixes)} files in this folder")
        return files, path
    if path.is_file():
        return [path], None
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise SpressoError(f"{pattern}: the pattern matches no file")
        return files, None
    raise SpressoError(f"{pattern}: no such file or folder")


def expand_inputs(patterns: str | Sequence[str], suffixes: Sequence[str]) -> tuple[list[Path], bool]:
    """(files, many) for one or several IN arguments; ``many`` when more than one file may come out."""
    patterns = [patterns] if isinstance(patterns, (str, Path)) else list(patterns)
    files: list[Path] = []
    many = len(patterns) > 1
    for pattern in patterns:
        found, root = _expand_one(str(pattern), suffixes)
        many = many or root is not None or glob.has_magic(str(pattern))
        files.extend(p for p in found if p not in files)
    return files, many


def is_folder_output(output: str, many: bool) -> bool:
    return many or output.endswith(("/", os.sep)) or Path(output).is_dir()


def output_paths(inputs: list[Path], many: bool, output: str, suffix: str, root: str | Sequence[str]) -> list[Path]:
    """One output per input (see the module's rules). Creates nothing; :mod:`spresso.core.outputs` checks them."""
    out = Path(output)
    if not is_folder_output(output, many):
        return [out]
    if out.exists() and not out.is_dir():
        raise SpressoError(f"{output}: several inputs need an output folder, and this is a file "
                           "(an unquoted glob? quote it, or give an output folder last)")
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    base = Path(roots[0]) if len(roots) == 1 and Path(roots[0]).is_dir() else None
    rels = [p.relative_to(base) if base is not None else Path(p.name) for p in inputs]
    plain = [r.with_suffix(suffix) for r in rels]
    clashes = Counter(plain)
    return [out / (r.with_name(r.name + suffix) if clashes[n] > 1 else n) for r, n in zip(rels, plain)]


def take_path(dst: Path, v: int, variations: int) -> Path:
    """Where variation v goes: ``dst`` itself for one variation, else ``dst.v<v+1>.<ext>``."""
    return dst if variations == 1 else dst.with_name(f"{dst.stem}.v{v + 1}{dst.suffix}")


def check_suffix(path: Path, allowed: Sequence[str], what: str) -> None:
    """Refuse an output whose extension says it is something else (``encode a.wav b.wav`` would hide codes in a .wav)."""
    if path.suffix.lower() not in allowed:
        raise SpressoError(f"{path}: {what} writes {'/'.join(allowed)} files; give an output ending in one of them")
