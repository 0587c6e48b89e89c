"""Find the audio to ingest: folders (recursively), globs and fsspec URLs -> sorted sources.

Each source gets a *source id*: its path relative to the input root, prefixed by the root's
own name (``sfx-dev/heroes/sword.wav``). Keys, splits and the dataset digest derive from the
id, never from the absolute location, so moving a corpus does not change the dataset.

Listing is split into jobs (:func:`listing_jobs`: per input, per top-level folder) that
`spresso shard` runs as Ray tasks; :func:`discover` runs the same jobs in one process.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
from fsspec.core import url_to_fs

from spresso.audio.io import AUDIO_EXTENSIONS
from spresso.core.errors import SpressoError

CAPTION_EXTENSIONS = (".txt", ".json")
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Source:
    """One input file, as the driver saw it when planning."""

    path: str  # what to open: a local path or an fsspec URL
    source_id: str  # stable id: root name + relative path, '/'-separated
    size: int
    mtime: float
    sidecars: tuple[str, ...] = ()  # caption files beside it, most specific first
    sidecar_stamps: tuple[tuple[int, float], ...] = ()  # (size, mtime) of each sidecar
    csv_caption: str | None = None
    split: str = ""
    key_prefix: str = ""

    def fingerprint(self) -> list:
        return [self.source_id, self.size, self.mtime, list(self.sidecars), [list(x) for x in self.sidecar_stamps], self.csv_caption]


def _protocol_prefix(url: str) -> str:
    return url.split("://", 1)[0] + "://" if "://" in url else ""


def _mtime(info: dict) -> float:
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            return 0.0
    return 0.0


def listing_jobs(inputs: list[str]) -> list[dict]:
    """Split the inputs into listing jobs, each small enough for one task: a folder gives one job
    for the files directly inside it and one per top-level sub-folder; a glob or a file is one job.

    Costs one existence check (and one ``ls`` of a folder) per input, never a walk of the tree.
    A missing input is a :class:`SpressoError` (one clear line), not an empty dataset.
    """
    if not inputs:
        raise SpressoError("no input given: pass --input PATH (folder, glob or URL)")
    jobs: list[dict] = []
    for raw in inputs:
        url = str(raw).rstrip("/") or "/"
        fs, bare = url_to_fs(url)
        job = {"raw": str(raw), "url": url}
        if any(c in bare for c in GLOB_CHARS):
            jobs.append({**job, "kind": "glob"})
        elif not fs.exists(bare):
            raise SpressoError(f"input not found: {raw}")
        elif fs.isdir(bare):
            subdirs = sorted(i["name"] for i in fs.ls(bare, detail=True) if i.get("type") == "directory")
            jobs.append({**job, "kind": "top", "folder": bare})
            jobs += [{**job, "kind": "tree", "folder": d} for d in subdirs if d.rstrip("/") != bare.rstrip("/")]
        else:
            jobs.append({**job, "kind": "file"})
    return jobs


def list_job(job: dict) -> tuple[dict[str, tuple[str, int, float, bool]], dict[str, tuple[int, float]]]:
    """The files of one listing job: ``{path: (source_id, size, mtime, named_explicitly)}``, and
    the other files beside matches of globs / named files (``{path: (size, mtime)}``, where
    caption sidecars are looked for)."""
    url, raw, kind = job["url"], job["raw"], job["kind"]
    prefix = _protocol_prefix(url)
    fs, bare = url_to_fs(url)
    beside: dict[str, tuple[int, float]] = {}
    explicit = kind == "file"  # a file named on the command line is tried whatever its extension
    if kind == "glob":
        # The root of a glob is the folder above its first wildcard.
        head = bare[: min(bare.index(c) for c in GLOB_CHARS if c in bare)]
        root = head.rsplit("/", 1)[0] if "/" in head else "."
        matches = fs.glob(bare, detail=True)
        if not matches:
            raise SpressoError(f"input {raw}: the pattern matches no files")
        entries = {}
        for p, info in matches.items():
            if info.get("type") == "directory":
                entries.update(fs.find(p, detail=True))
            else:
                entries[p] = info
    elif kind == "file":
        root = bare.rsplit("/", 1)[0] if "/" in bare else "."
        entries = {bare: fs.info(bare)}
    else:
        root = bare
        if kind == "top":
            entries = {i["name"]: i for i in fs.ls(job["folder"], detail=True) if i.get("type") != "directory"}
        else:
            entries = fs.find(job["folder"], detail=True)
    if kind in ("glob", "file"):
        for parent in {p.rsplit("/", 1)[0] for p in entries if "/" in p}:
            for info in fs.ls(parent, detail=True):
                if info.get("type") != "directory":
                    path = info["name"] if not prefix or info["name"].startswith(prefix) else prefix + info["name"]
                    beside[path] = (int(info.get("size") or 0), _mtime(info))
    root_name = PurePosixPath(root).name or "root"
    found: dict[str, tuple[str, int, float, bool]] = {}
    for p, info in entries.items():
        if info.get("type") == "directory":
            continue
        rel = PurePosixPath(p).relative_to(root) if p.startswith(root.rstrip("/") + "/") else PurePosixPath(PurePosixPath(p).name)
        path = p if not prefix or p.startswith(prefix) else prefix + p
        found[path] = (f"{root_name}/{rel.as_posix()}", int(info.get("size") or 0), _mtime(info), explicit)
    return found, beside


def is_audio(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in AUDIO_EXTENSIONS


def sidecars_for(path: str, files: set[str]) -> tuple[str, ...]:
    """Caption files beside ``path``: ``name.wav.txt``/``.json`` then ``name.txt``/``.json``."""
    stem = path.rsplit(".", 1)[0]
    candidates = [path + ext for ext in CAPTION_EXTENSIONS] + [stem + ext for ext in CAPTION_EXTENSIONS]
    return tuple(c for c in candidates if c in files)


# ------------------------------------------------------------------------------- captions
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_WORD = re.compile(r"[A-Za-z]+")


def caption_from_name(source_id: str) -> str:
    """Words from the folder and file names: ``sfx/Big_Doors/doorSlam02.wav`` -> ``big doors door slam``.

    The root folder is skipped unless nothing else has words; digits and extensions are dropped.
    """
    parts = PurePosixPath(source_id).parts
    stem_parts = [*parts[1:-1], PurePosixPath(parts[-1]).stem] if len(parts) > 1 else [PurePosixPath(parts[0]).stem]

    def words(items):
        out = []
        for item in items:
            for w in _WORD.findall(_CAMEL.sub(" ", item)):
                w = w.lower()
                if len(w) > 1 and (not out or out[-1] != w):
                    out.append(w)
        return out

    found = words(stem_parts) or words(parts[:1])
    return " ".join(found) or "sound effect"


def read_sidecar(text: str, kind: str) -> str | None:
    """The caption inside a sidecar: a .txt's first non-empty text, or a .json's caption field."""
    if kind == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        if isinstance(obj, str):
            return obj.strip() or None
        if isinstance(obj, dict):
            for k in ("caption", "text", "description", "title"):
                v = obj.get(k)
                if isinstance(v, str) and v.strip():
                    return v.strip()
        return None
    cleaned = " ".join(text.split())
    return cleaned or None


def load_captions_csv(path: str) -> dict[str, str]:
    """A ``path,caption`` CSV (header optional) -> ``{path as written: caption}``."""

    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise SpressoError(f"captions CSV not found: {path}") from None
    out: dict[str, str] = {}
    for i, row in enumerate(rows):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise SpressoError(f"captions CSV {path}, line {i + 1}: expected 'path,caption'")
        if i == 0 and row[0].strip().lower() in ("path", "file", "filename") and row[1].strip().lower() in ("caption", "text"):
            continue
        out[row[0].strip()] = row[1].strip()
    return out


def csv_caption(captions: dict[str, str], path: str, source_id: str, csv_dir: str) -> str | None:
    """Match a CSV row by absolute path, path relative to the CSV, source id, relative id or file name."""
    rel_id = source_id.split("/", 1)[-1]
    for cand in (path, source_id, rel_id):
        if cand in captions:
            return captions[cand]
    if csv_dir and path.startswith(csv_dir.rstrip("/") + "/"):
        rel = path[len(csv_dir.rstrip("/")) + 1 :]
        if rel in captions:
            return captions[rel]
    return captions.get(PurePosixPath(path).name)


# ------------------------------------------------------------------------------- splits and keys
def stable_unit(text: str, salt: str) -> float:
    """A number in [0, 1) that depends only on ``text`` (sha256; Python's hash() is salted per process)."""
    h = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_split(source_id: str, fractions: dict[str, float]) -> str:
    """train / valid / test by a stable hash of the source id, so one file's clips never cross splits."""
    u = stable_unit(source_id, "split")
    edge = 0.0
    names = list(fractions)
    for name in names:
        edge += fractions[name]
        if u < edge:
            return name
    return next(n for n in reversed(names) if fractions[n] > 0)


_SLUG = re.compile(r"[^a-z0-9]+")


def key_prefix(source_id: str) -> str:
    """``<readable slug>-<hash>``: unique per source, stable, and free of dots (WebDataset's separator)."""
    stem = PurePosixPath(source_id).with_suffix("").as_posix().split("/", 1)[-1]
    slug = _SLUG.sub("_", stem.lower()).strip("_")[-40:].strip("_") or "clip"
    return f"{slug}-{hashlib.sha256(source_id.encode()).hexdigest()[:10]}"


def clip_key(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


def job_sources(job: dict, fractions: dict[str, float], captions_csv: str | None = None) -> list[Source]:
    """The sources of one listing job, sorted by (split, key prefix, source id, path)."""
    files, beside = list_job(job)
    stamps = {**beside, **{p: v[1:3] for p, v in files.items()}}
    names = set(stamps)
    captions = load_captions_csv(captions_csv) if captions_csv else {}
    csv_dir = captions_csv.rsplit("/", 1)[0] if captions_csv and "/" in captions_csv else ""
    by_id: dict[str, Source] = {}
    for path in sorted(files):
        sid, size, mtime, explicit = files[path]
        if not (explicit or is_audio(path)):
            continue
        if sid in by_id:
            continue  # the same file reached twice
        by_id[sid] = Source(
            path=path, source_id=sid, size=size, mtime=mtime,
            sidecars=(cars := sidecars_for(path, names)),
            sidecar_stamps=tuple(stamps[c] for c in cars),
            csv_caption=csv_caption(captions, path, sid, csv_dir) if captions else None,
            split=assign_split(sid, fractions), key_prefix=key_prefix(sid),
        )
    return sorted(by_id.values(), key=source_order)


def source_order(s: Source) -> tuple[str, str, str, str]:
    """The order of tars and manifest: split, key prefix; then id and path, so that a file reached
    through two inputs keeps its first path whoever merges the lists."""
    return (s.split, s.key_prefix, s.source_id, s.path)


def discover(inputs: list[str], fractions: dict[str, float], captions_csv: str | None = None) -> list[Source]:
    """The sources to ingest, in one process (``spresso shard`` lists in Ray tasks instead; this is
    the same listing, merged), sorted by (split, key prefix): the order of tars and manifest."""
    merged = sorted((s for job in listing_jobs(inputs) for s in job_sources(job, fractions, captions_csv)), key=source_order)
    sources = [s for i, s in enumerate(merged) if i == 0 or merged[i - 1].source_id != s.source_id]
    if not sources:
        raise SpressoError(no_audio_message(inputs))
    return sources


def no_audio_message(inputs: list[str]) -> str:
    return f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {', '.join(map(str, inputs))}"


# ------------------------------------------------------------------------------- sources as Arrow
SOURCE_SCHEMA = pa.schema([
    ("path", pa.string()), ("source_id", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()),
    ("sidecars", pa.list_(pa.string())), ("sidecar_sizes", pa.list_(pa.int64())),
    ("sidecar_mtimes", pa.list_(pa.float64())), ("csv_caption", pa.string()), ("split", pa.string()),
    ("key_prefix", pa.string()),
])


def sources_table(sources: list[Source]) -> pa.Table:
    """Sources as an Arrow table (what listing tasks hand to the planning tasks, in the object store)."""
    return pa.Table.from_pylist([{
        "path": s.path, "source_id": s.source_id, "size": s.size, "mtime": s.mtime, "sidecars": list(s.sidecars),
        "sidecar_sizes": [int(x[0]) for x in s.sidecar_stamps], "sidecar_mtimes": [float(x[1]) for x in s.sidecar_stamps],
        "csv_caption": s.csv_caption, "split": s.split, "key_prefix": s.key_prefix,
    } for s in sources], schema=SOURCE_SCHEMA)


def table_sources(table: pa.Table) -> list[Source]:
    """The inverse of :func:`sources_table` (extra columns are ignored)."""
    return [Source(
        path=r["path"], source_id=r["source_id"], size=r["size"], mtime=r["mtime"], sidecars=tuple(r["sidecars"]),
        sidecar_stamps=tuple(zip(r["sidecar_sizes"], r["sidecar_mtimes"])), csv_caption=r["csv_caption"],
        split=r["split"], key_prefix=r["key_prefix"],
    ) for r in table.select(SOURCE_SCHEMA.names).to_pylist()]
