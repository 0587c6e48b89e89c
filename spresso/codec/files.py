"""Coding lists of files: which path each file takes, grouping so short files share device batches, and
carrying on past a bad file.

    failures = encode_files(codec, [(src, dst.spr), ...], kbps=0.3, on_written=print_line, keep_going=True)
    failures = decode_files(codec, [(src.spr, dst.wav), ...], steps=16, variations=2, on_written=print_take)

Files longer than :data:`LONG_SECONDS` stream from and to disk block by block (:mod:`.streaming`),
one at a time, so a recording of hours needs no more memory than a short one. The others are read
and coded :data:`GROUP` at a time so their windows share device batches; when a group fails, its
files are retried one by one so the error names the file it comes from. Every error is one line
that starts with the file's path. With ``keep_going`` a bad file is recorded and the rest go on
(the (path, reason) list is returned); without it the first one raises. Every output is written to
a temporary name and renamed into place (:mod:`spresso.core.outputs`): an interrupted run leaves
no partial file. Naming outputs after inputs is :mod:`.paths`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from spresso.audio.io import read_audio_partial, write_audio
from spresso.codec import bitstream as bs
from spresso.codec.codec import Codec
from spresso.codec.inputs import Downmix
from spresso.codec.paths import take_path
from spresso.codec.streaming import duration_seconds, encode_file_described
from spresso.core.errors import SpressoError
from spresso.core.outputs import replacing, write_file

GROUP = 8  # files read and coded together
LONG_SECONDS = 120.0  # longer files stream from and to disk block by block (bounded memory)

Pair = tuple[Path, Path]  # (input file, output file)
Failure = tuple[Path, str]  # (input file, one-line reason)


@dataclass(frozen=True)
class Encoded:
    """One written stream, for the caller to report: where, how many bytes, codebooks and bitrate, the downmix."""

    src: Path
    dst: Path
    data: bytes
    downmix: Downmix
    partial: str | None = None  # what was kept of a file cut short

    def describe(self) -> str:
        s = bs.decode_stream(self.data)
        rate = f"{s.m} codebooks, {s.bitrate_bps / 1000:.4g} kbps" if s.m is not None else f"continuous, {s.bitrate_bps / 1000:.4g} kbps"
        return f"{self.dst}: {rate}, {len(self.data)} bytes, {self.downmix.describe()}"


class _Failures:
    """Collects one-line failures, or raises the first when not keeping going."""

    def __init__(self, keep_going: bool):
        self.keep_going, self.items = keep_going, []

    def add(self, src: Path, err: SpressoError) -> None:
        if not self.keep_going:
            raise SpressoError(f"{src}: {err}") from None
        self.items.append((src, str(err)))


def groups(items: list, size: int = GROUP) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def encode_files(codec: Codec, pairs: Sequence[Pair], kbps: float | None = None, codebooks: int | None = None, *,
                 progress: bool = False, allow_partial: bool = False, overwrite: bool = True, keep_going: bool = False,
                 on_written: Callable[[Encoded], None] | None = None,
                 on_partial: Callable[[Path, str], None] | None = None) -> list[Failure]:
    """Encode each (audio file, `.spr` path): long files first, one at a time, then the rest in groups.

    ``on_written(Encoded)`` after each stream is written; ``on_partial(src, note)`` for a file cut short that
    ``allow_partial`` lets through. Returns the failures (empty unless ``keep_going``).
    """
    codec.codebooks_for(kbps, codebooks)  # a bad --kbps fails once, not once per file
    long_seconds = LONG_SECONDS  # read at call time: tests lower it
    failures = _Failures(keep_going)
    long, short = [], []
    for pair in pairs:
        (long if (duration_seconds(pair[0]) or 0.0) > long_seconds else short).append(pair)
    for src, dst in long:  # one at a time, read block by block
        try:
            data, rule, note = encode_file_described(codec, src, kbps, codebooks, allow_partial=allow_partial, progress=progress)
            _written(Encoded(src, dst, data, rule, note), overwrite, on_written, on_partial)
        except SpressoError as err:
            failures.add(src, err)
    for group in groups(short):
        items, ok, notes = [], [], {}
        for src, dst in group:
            try:
                wave, sr, cut = read_audio_partial(src)
                if cut and not allow_partial:
                    raise SpressoError(f"{cut}; pass --allow-partial (allow_partial=True) to encode the readable "
                                       f"{wave.shape[1] / sr:.2f} s")
            except SpressoError as err:
                failures.add(src, err)
                continue
            if cut:
                notes[src] = f"{cut}: kept the readable {wave.shape[1] / sr:.2f} s"
            items.append((wave, sr))
            ok.append((src, dst))
        for (src, dst), result in zip(ok, _encode_group(codec, items, kbps, codebooks, progress)):
            if isinstance(result, SpressoError):
                failures.add(src, result)
                continue
            try:
                _written(Encoded(src, dst, result[0], result[1], notes.get(src)), overwrite, on_written, on_partial)
            except SpressoError as err:
                failures.add(src, err)
    return failures.items


def _encode_group(codec: Codec, items: list, kbps, codebooks, progress) -> list:
    """(bytes, Downmix) per item, or the SpressoError of each item that fails (a failed group is retried one by one)."""
    if not items:
        return []
    try:
        datas, rules = codec.encode_batch_described(items, kbps, codebooks, channels_last=False, progress=progress)
        return list(zip(datas, rules))
    except SpressoError as err:
        if len(items) == 1:
            return [err]
    out = []
    for item in items:
        try:
            datas, rules = codec.encode_batch_described([item], kbps, codebooks, channels_last=False)
            out.append((datas[0], rules[0]))
        except SpressoError as err:
            out.append(err)
    return out


def _written(done: Encoded, overwrite: bool, on_written, on_partial) -> None:
    write_file(done.dst, done.data, overwrite=overwrite)
    if done.partial and on_partial is not None:
        on_partial(done.src, done.partial)
    if on_written is not None:
        on_written(done)


def decode_files(codec: Codec, pairs: Sequence[Pair], steps: int | None = None, seed: int = 0, variations: int = 1, *,
                 original_rate: bool = False, solver: str | None = None, progress: bool = False, overwrite: bool = True,
                 keep_going: bool = False, on_written: Callable[[Path, int, int], None] | None = None) -> list[Failure]:
    """Decode each (`.spr` file, audio path), a group at a time; each stream is verified before any decoding.

    Long streams are decoded straight to their file(s); the group's others share device batches.
    With ``variations`` > 1 the takes go to :func:`take_path`. ``on_written(path, samples, rate)``
    is called after each audio file is written. Returns the failures (empty unless ``keep_going``).
    """
    if not 1 <= variations <= 1000:
        raise SpressoError(f"variations must be 1..1000, got {variations}")
    codec.sampler_settings(steps, solver, None)  # bad settings fail once, not once per file
    long_seconds = LONG_SECONDS  # read at call time: tests lower it
    failures = _Failures(keep_going)
    for group in groups(list(pairs)):
        short = []
        for src, dst in group:  # verify each first, so an error names its file
            try:
                data = bs.read_stream_file(src)
                stream = codec.parse(data)
                if stream.sample_count / stream.sample_rate > long_seconds:
                    _decode_long(codec, dst, data, steps, seed, variations, original_rate, solver, progress, overwrite,
                                 on_written)
                else:
                    short.append(((src, dst), data))
            except SpressoError as err:
                failures.add(src, err)
        if not short:
            continue
        results = codec.decode_batch([d for _, d in short], steps=steps, seed=seed, variations=variations,
                                     original_rate=original_rate, solver=solver, progress=progress)
        for ((src, dst), _), (wave, sr) in zip(short, results):
            takes = [wave] if variations == 1 else list(wave)
            try:
                for v, take in enumerate(takes):
                    path = take_path(dst, v, variations)
                    write_audio_file(path, take, sr, overwrite=overwrite)
                    if on_written is not None:
                        on_written(path, take.shape[-1], sr)
            except SpressoError as err:
                failures.add(src, err)
    return failures.items


def write_audio_file(path: Path, wave, sr: int, *, overwrite: bool = True) -> None:
    """:func:`~spresso.audio.io.write_audio` through a temporary name; one-line error naming ``path``."""
    try:
        with replacing(path, overwrite=overwrite) as tmp:
            write_audio(tmp, wave, sr)
    except SpressoError:
        raise
    except Exception as err:
        raise SpressoError(f"{path}: cannot write ({str(err).splitlines()[0]})") from None


def _decode_long(codec: Codec, dst: Path, data: bytes, steps, seed, variations, original_rate, solver, progress, overwrite,
                 on_written) -> None:
    """A long stream decoded straight to its file(s), window batch by window batch."""
    for v in range(variations):
        path = take_path(dst, v, variations)
        if not overwrite and path.exists():
            raise SpressoError(f"{path}: already exists (pass --overwrite to replace it)")
        n, sr = codec.decode_to_file(data, path, steps=steps, seed=seed, variation=v, original_rate=original_rate,
                                     solver=solver, progress=progress)
        if on_written is not None:
            on_written(path, n, sr)


__all__ = ("GROUP", "LONG_SECONDS", "Encoded", "decode_files", "encode_files", "take_path", "write_audio_file")
