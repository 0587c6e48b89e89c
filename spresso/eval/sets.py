"""Evaluation sets: a fixed, seeded random sample of N five-second clips, from a shard split or a folder.

The sample depends only on (source, seed, N): candidate clips are listed in a deterministic
order (manifest order for shards; sorted file paths, then window index, for folders), and a
``numpy`` generator seeded with ``seed`` picks N of them without replacement. The chosen clips
are then kept in candidate order, so a set of 500 and the same seed always gives the same clips
on every machine. Every clip is 48 kHz mono float32, zero-padded to the clip length, with
``valid_samples`` saying how much is real (the shard contract).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from spresso.audio.io import AUDIO_EXTENSIONS, AudioError, load_mono
from spresso.core.errors import SpressoError
from spresso.data.reader import iter_clips, read_manifest, shard_paths

EVAL_RATE = 48000


@dataclass(frozen=True)
class EvalClip:
    key: str  # unique in the set, no dots (cache file names and listening-test folders use it)
    wave: np.ndarray  # float32 [clip_samples] at 48 kHz
    valid_samples: int
    caption: str = ""

    @property
    def digest(self) -> str:
        """Content hash: a cache entry is only reused for exactly this audio."""
        return hashlib.sha256(np.ascontiguousarray(self.wave).tobytes()).hexdigest()[:12]


@dataclass(frozen=True)
class EvalSet:
    name: str  # e.g. "shards-test" or "folder-<name>"
    clips: list[EvalClip]
    source: str  # where it came from, for lineage

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for c in self.clips:
            h.update(c.key.encode())
            h.update(c.digest.encode())
        return h.hexdigest()[:16]


def sample_indices(n_candidates: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of min(n, n_candidates) candidates without replacement."""
    if n < 1:
        raise SpressoError(f"an evaluation set needs at least one clip, got {n}")
    if n_candidates == 0:
        raise SpressoError("no candidate clips to sample an evaluation set from")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_candidates, size=min(n, n_candidates), replace=False))


def from_shards(shards_dir: str, split: str, n: int, seed: int = 0) -> EvalSet:
    """N clips of one split of the shards (contract 1), sampled by key from the manifest."""

    manifest = read_manifest(shards_dir)
    keys = [k for k, s in zip(manifest.column("key").to_pylist(), manifest.column("split").to_pylist()) if s == split]
    if not keys:
        splits = sorted(set(manifest.column("split").to_pylist()))
        raise SpressoError(f"split {split!r} has no clips in {shards_dir} (splits: {', '.join(splits)})")
    chosen = {keys[i] for i in sample_indices(len(keys), n, seed)}
    found: dict[str, EvalClip] = {}
    for clip in iter_clips(shard_paths(shards_dir, split)):
        if clip["key"] in chosen:
            found[clip["key"]] = EvalClip(clip["key"], clip["wave"], clip["valid_samples"], clip["caption"])
    missing = chosen - set(found)
    if missing:
        raise SpressoError(f"{len(missing)} sampled clips are in the manifest but not in the {split} tars, e.g. {sorted(missing)[0]}")
    return EvalSet(f"shards-{split}", [found[k] for k in sorted(found)], f"{shards_dir}#{split}")


def _safe_key(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", rel).strip("_") or "clip"


def _duration_samples(path: Path) -> int:
    """Length at 48 kHz, from the header when soundfile can read it (no decoding)."""

    try:
        info = sf.info(str(path))
        return int(round(info.frames * EVAL_RATE / info.samplerate))
    except (RuntimeError, sf.LibsndfileError):
        return load_mono(path, EVAL_RATE)[0].shape[-1]


def from_folder(folder: str | Path, n: int, seed: int = 0, clip_seconds: float = 5.0, min_seconds: float = 0.25) -> EvalSet:
    """N clips from a folder of audio files (recursive): each file is cut into non-overlapping
    ``clip_seconds`` windows (a last window of at least ``min_seconds`` is kept, zero-padded)."""

    root = Path(folder)
    if not root.is_dir():
        raise SpressoError(f"evaluation folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise SpressoError(f"{root} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    clip = int(round(clip_seconds * EVAL_RATE))
    shortest = int(round(min_seconds * EVAL_RATE))
    candidates: list[tuple[Path, int]] = []
    for path in files:
        try:
            total = _duration_samples(path)
        except AudioError:
            continue  # unreadable files are not candidates; the set says where it came from
        for w, start in enumerate(range(0, total, clip)):
            if total - start >= min(clip, shortest) or w == 0 and total > 0:
                candidates.append((path, w))
    if not candidates:
        raise SpressoError(f"{root} holds no readable audio")
    chosen = [candidates[i] for i in sample_indices(len(candidates), n, seed)]
    clips, cache = [], {}
    for path, w in chosen:
        if path not in cache:
            cache.clear()  # windows of one file are adjacent in candidate order: keep one file decoded
            cache[path] = load_mono(path, EVAL_RATE)[0]
        wave = cache[path][w * clip : (w + 1) * clip]
        valid = int(wave.shape[-1])
        key = f"{_safe_key(str(path.relative_to(root).with_suffix('')))}-{w:03d}"
        clips.append(EvalClip(key, np.pad(wave, (0, clip - valid)).astype(np.float32), valid))
    return EvalSet(f"folder-{_safe_key(root.name)}", clips, str(root))
