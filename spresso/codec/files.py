"""Coding lists of files: which path each file takes, and grouping so short files share device batches.

    encode_files(codec, [(src, dst.spr), ...], kbps=0.3, on_written=print_bytes)
    decode_files(codec, [(src.spr, dst.wav), ...], steps=16, variations=2, on_written=print_take)

Files longer than :data:`LONG_SECONDS` stream from and to disk block by block (:mod:`.streaming`),
one at a time, so a recording of hours needs no more memory than a short one. The others are read
and coded :data:`GROUP` at a time so their windows share device batches; when a group fails, its
files are retried one by one so the error names the file it comes from. Every error is one line
that starts with the file's path. Also: naming outputs after inputs (:func:`expand_inputs`,
:func:`output_paths`), as the ``spresso encode``/``decode`` commands do.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Callable, Iterator, Sequence

from spresso.audio.io import AUDIO_EXTENSIONS, read_audio, write_audio
from spresso.codec.bitstream import read_stream_file, write_stream_file
from spresso.codec.codec import Codec
from spresso.codec.streaming import duration_seconds
from spresso.core.errors import SpressoError

GROUP = 8  # files read and coded together
LONG_SECONDS = 120.0  # longer files stream from and to disk block by block (bounded memory)
STREAM_SUFFIX = ".spr"

Pair = tuple[Path, Path]  # (input file, output file)


def expand_inputs(pattern: str, suffixes: Sequence[str]) -> tuple[list[Path], bool]:
    """(files, many): a file, a folder's matching files (recursive, sorted), or a glob's matches."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise SpressoError(f"{pattern}: no {'/'.join(suffixes)} files in this folder")
        return files, True
    if path.is_file():
        return [path], False
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise SpressoError(f"{pattern}: the pattern matches no file")
        return files, True
    raise SpressoError(f"{pattern}: no such file or folder")


def output_paths(inputs: list[Path], many: bool, output: str, suffix: str, root: str) -> list[Path]:
    """One output per input: ``output`` itself for a single input, else ``output/<input relative to root>.suffix``
    (folders created)."""
    out = Path(output)
    if not many and not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        return [out]
    if out.exists() and not out.is_dir():
        raise SpressoError(f"{output}: several inputs need an output folder, this is a file")
    out.mkdir(parents=True, exist_ok=True)
    base = Path(root) if Path(root).is_dir() else None
    names = []
    for p in inputs:
        rel = p.relative_to(base) if base is not None else Path(p.name)
        names.append(out / rel.with_suffix(suffix))
    for n in names:
        n.parent.mkdir(parents=True, exist_ok=True)
    return names


def take_path(dst: Path, v: int, variations: int) -> Path:
    """Where variation v goes: ``dst`` itself for one variation, else ``dst.v<v+1>.<ext>``."""
    return dst if variations == 1 else dst.with_name(f"{dst.stem}.v{v + 1}{dst.suffix}")


def groups(items: list, size: int = GROUP) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def encode_files(codec: Codec, pairs: Sequence[Pair], kbps: float | None = None, codebooks: int | None = None, *,
                 progress: bool = False, on_written: Callable[[Path, bytes], None] | None = None) -> None:
    """Encode each (audio file, `.spr` path): long files first, one at a time, then the rest in groups.

    ``on_written(dst, data)`` is called after each stream is written.
    """
    long_seconds = LONG_SECONDS  # read at call time: tests lower it
    long, short = [], []
    for pair in pairs:
        (long if (duration_seconds(pair[0]) or 0.0) > long_seconds else short).append(pair)
    for src, dst in long:  # one at a time, read block by block
        try:
            data = codec.encode_file(src, kbps=kbps, codebooks=codebooks, progress=progress)
        except SpressoError as err:
            raise SpressoError(f"{src}: {err}") from None
        _written(dst, data, on_written)
    for group in groups(short):
        items = []
        for src, _ in group:
            try:
                items.append(read_audio(src))
            except SpressoError as err:
                raise SpressoError(f"{src}: {err}") from None
        try:
            datas = codec.encode_batch(items, kbps=kbps, codebooks=codebooks, progress=progress)
        except SpressoError as err:
            if len(group) == 1:
                raise SpressoError(f"{group[0][0]}: {err}") from None
            datas = []  # find which file of the group it is, for a one-line error naming it
            for (src, _), item in zip(group, items):
                try:
                    datas.extend(codec.encode_batch([item], kbps=kbps, codebooks=codebooks))
                except SpressoError as err1:
                    raise SpressoError(f"{src}: {err1}") from None
        for (_, dst), data in zip(group, datas):
            _written(dst, data, on_written)


def _written(dst: Path, data: bytes, on_written: Callable[[Path, bytes], None] | None) -> None:
    write_stream_file(dst, data)
    if on_written is not None:
        on_written(dst, data)


def decode_files(codec: Codec, pairs: Sequence[Pair], steps: int | None = None, seed: int = 0, variations: int = 1, *,
                 original_rate: bool = False, solver: str | None = None, progress: bool = False,
                 on_written: Callable[[Path, int, int], None] | None = None) -> None:
    """Decode each (`.spr` file, audio path), a group at a time; each stream is verified before any decoding.

    Long streams are decoded straight to their file(s); the group's others share device batches.
    With ``variations`` > 1 the takes go to :func:`take_path`. ``on_written(path, samples, rate)``
    is called after each audio file is written.
    """
    if not 1 <= variations <= 1000:
        raise SpressoError(f"variations must be 1..1000, got {variations}")
    long_seconds = LONG_SECONDS  # read at call time: tests lower it
    for group in groups(list(pairs)):
        datas = [read_stream_file(src) for src, _ in group]
        short = []
        for (src, dst), data in zip(group, datas):  # verify each first, so an error names its file
            try:
                stream = codec.parse(data)
            except SpressoError as err:
                raise SpressoError(f"{src}: {err}") from None
            if stream.sample_count / stream.sample_rate > long_seconds:
                _decode_long(codec, src, dst, data, steps, seed, variations, original_rate, solver, progress, on_written)
            else:
                short.append(((src, dst), data))
        if not short:
            continue
        results = codec.decode_batch([d for _, d in short], steps=steps, seed=seed, variations=variations,
                                     original_rate=original_rate, solver=solver, progress=progress)
        for ((src, dst), _), (wave, sr) in zip(short, results):
            takes = [wave] if variations == 1 else list(wave)
            for v, take in enumerate(takes):
                path = take_path(dst, v, variations)
                try:
                    write_audio(path, take, sr)
                except SpressoError:
                    raise
                except Exception as err:
                    raise SpressoError(f"{path}: cannot write ({str(err).splitlines()[0]})") from None
                if on_written is not None:
                    on_written(path, take.shape[-1], sr)


def _decode_long(codec: Codec, src: Path, dst: Path, data: bytes, steps, seed, variations, original_rate, solver, progress,
                 on_written) -> None:
    """A long stream decoded straight to its file(s), window batch by window batch."""
    for v in range(variations):
        path = take_path(dst, v, variations)
        try:
            n, sr = codec.decode_to_file(data, path, steps=steps, seed=seed, variation=v, original_rate=original_rate,
                                         solver=solver, progress=progress)
        except SpressoError as err:
            raise SpressoError(f"{src}: {err}") from None
        if on_written is not None:
            on_written(path, n, sr)


__all__ = ("AUDIO_EXTENSIONS", "GROUP", "LONG_SECONDS", "STREAM_SUFFIX", "decode_files", "encode_files", "expand_inputs",
           "output_paths", "take_path")
