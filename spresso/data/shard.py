"""`spresso shard`: raw audio -> WebDataset tars + a Parquet manifest, as Ray tasks.

How it works (and why):

1. Listing: the driver splits the inputs into listing jobs (one per input and per top-level
   folder: one ``ls`` per input, never a walk) and runs each in a Ray task, which finds the files,
   gives each a stable split and key prefix and returns an Arrow table of sources into the object
   store, plus a digest of what it saw (the up-to-date check needs only these digests).
2. Probing: tasks read the file headers of chunks of those tables (durations -> estimated clips).
3. Planning: one task per split merges the tables, sorts the sources by key prefix and packs
   them, in order, into units of about ``clips_per_shard`` clips. One unit = one tar. The plan
   depends only on the input, so the tars -- and the dataset digest -- are the same whatever the
   number of workers. It returns a small descriptor per unit (split, index, row range, estimated
   clips, fingerprint, memory need, done record if any); the sources stay in the object store.
4. Units: one Ray task per unit (``memory=`` from its largest source) reads each file, decodes,
   downmixes, resamples (soxr HQ), cuts 5 s clips, drops digital silence, encodes FLAC and streams
   them into ``.<name>.tar.tmp-*``, renamed when complete; then writes its manifest piece
   (``.manifest/<split>-shard-NNNNNN.parquet``), its rejects / failures pieces and, last, by
   rename, its done record (a small JSON with counts and digests, no rows).
   A file that does not decode is a *reject* with its reason. An I/O error reading a source fails
   the task, which Ray retries (``data.io_retries``); if it persists, the unit runs once more
   recording such sources as *failures* (``failures.parquet``), which the next run tries again.
5. A finalize task streams the pieces into manifest.parquet, rejects.parquet and failures.parquet
   (``pyarrow.dataset``, batch by batch) and removes what the plan no longer has; the driver
   writes dataset.json. A rerun skips done units (so a killed run resumes); when nothing changed
   and nothing failed it reports "up to date" and writes nothing at all.

What the driver holds: the listing jobs (one per input and top-level folder) with a small summary
each, object refs (the source tables live in the object store), and per unit a :class:`Unit` and
a :class:`UnitResult` (tuples of a few numbers and names, under 1 KB together) -- never a row per
file or per clip. The dataset digest is the digest of the sorted per-unit digests the tasks
computed, so it needs no rows either. So the driver's memory grows with the number of tars, about
1/``clips_per_shard`` of the clips (benchmarks/shard_driver_memory.py measures it; the fault test
checks what the driver receives).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Optional

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import soundfile as sf
from tqdm.auto import tqdm

from spresso.audio.io import AudioError
from spresso.core.digest import digest_json
from spresso.core.errors import SpressoError
from spresso.core.storage import filesystem, join
from spresso.data.clips import ClipSettings, clip_spans, process_source
from spresso.data.reader import (
    DATASET_JSON,
    FAILURES,
    MANIFEST,
    MANIFEST_DIR,
    MANIFEST_SCHEMA,
    REJECTS,
    SHARD_PATTERN,
)
from spresso.data.sources import (
    Source,
    caption_from_name,
    job_sources,
    listing_jobs,
    no_audio_message,
    read_sidecar,
    sources_table,
    table_sources,
)
from spresso.data.tars import ShardWriter
from spresso.runtime import init_ray, stage_run
from spresso.runtime.placement import ray_options

log = logging.getLogger(__name__)

# 2: the manifest is per-unit pieces and the dataset digest is over per-unit digests.
FORMAT_VERSION = 2
PROGRESS_DIR = ".progress"
REJECTS_DIR = ".rejects"
FAILURES_DIR = ".failures"
PROBE_CHUNK = 256  # files per header-probing task
# Errors that reading a source may raise and that a retry may cure (network, permissions, a
# file replaced mid-read); ConnectionError and TimeoutError are OSErrors, named for clarity.
IO_ERRORS = (OSError, ConnectionError, TimeoutError)
MIB = 2**20
TASK_MEMORY_FLOOR = 256 * MIB
# Bytes of task memory per byte of source: a compressed file decodes to ~10x its size in float32
# per channel, then float64 for loudness, a resampled copy and FLAC buffers; WAV/AIFF far less.
MEMORY_PER_BYTE = {".wav": 8, ".aif": 8, ".aiff": 8}
MEMORY_PER_BYTE_COMPRESSED = 48

REJECTS_SCHEMA = pa.schema([("path", pa.string()), ("source", pa.string()), ("reason", pa.string())])
FAILURES_SCHEMA = REJECTS_SCHEMA


class SourceReadError(OSError):
    """Reading a source (or its caption sidecar) failed with an I/O error: retried by Ray."""


class UnitResult(NamedTuple):
    """What the driver keeps of a finished unit (a tuple: ~0.5 KB, whatever the unit holds)."""

    shard: str  # <split>/shard-NNNNNN.tar
    tar: Optional[str]  # None when every file was refused
    sha256: Optional[str]
    size: int
    digest: str  # over the tar bytes, manifest rows and rejects of this unit
    clips: int
    audio_seconds: float
    rejects: int
    failures: int
    silent_clips: int


class Unit(NamedTuple):
    """A planned unit as the driver holds it: rows ``start:stop`` of its split's source table."""

    split: str
    index: int
    start: int
    stop: int
    est_clips: int
    memory: int  # bytes of task memory to ask for
    fingerprint: str
    done: Optional[UnitResult] = None

    @property
    def files(self) -> int:
        return self.stop - self.start

    @property
    def paths(self) -> dict[str, str]:
        return unit_paths(self.split, self.index)

    @property
    def shard(self) -> str:
        return self.paths["shard"]


# ----------------------------------------------------------------------------- file system helpers
def _write_atomic(fs, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def _check_writable(out: str):
    fs, root = filesystem(out)
    try:
        fs.makedirs(root, exist_ok=True)
        probe = join(root, f".write-test-{uuid.uuid4().hex[:8]}")
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except (OSError, PermissionError) as err:
        raise SpressoError(f"output {out} is not writable: {getattr(err, 'strerror', None) or err}") from None
    return fs, root


def _parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def unit_paths(split: str, index: int) -> dict[str, str]:
    """Where one unit's outputs live, relative to the output folder."""
    name = SHARD_PATTERN.format(index)
    stem = f"{split}-{name[:-4]}"
    return {"shard": f"{split}/{name}", "record": f"{PROGRESS_DIR}/{stem}.json",
            "manifest": f"{MANIFEST_DIR}/{stem}.parquet", "rejects": f"{REJECTS_DIR}/{stem}.parquet",
            "failures": f"{FAILURES_DIR}/{stem}.parquet"}


# ----------------------------------------------------------------------------- listing and probing (tasks)
def list_task(job: dict, fractions: dict, captions_csv: str | None) -> tuple[dict, pa.Table]:
    """One listing job -> (summary: files, digest, error; the sources as a table)."""
    try:
        sources = job_sources(job, fractions, captions_csv)
    except SpressoError as err:  # reported by the driver in one line, not as a task traceback
        return {"error": str(err), "files": 0, "digest": ""}, sources_table([])
    return ({"error": None, "files": len(sources), "digest": digest_json([s.fingerprint() for s in sources])},
            sources_table(sources))


def _probe_seconds(src: Source) -> float:
    """Duration from the header (cheap); when unreadable, guess from the size (128 kbit/s)."""

    try:
        with fsspec.open(src.path, "rb") as f:
            info = sf.info(f)
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate
    except Exception:  # unreadable here: the unit task records the real reason
        pass
    return src.size / 16000.0


def estimated_clips(seconds: float, settings: ClipSettings) -> int:
    n = int(seconds * settings.sample_rate)
    return max(1, len(clip_spans(n, settings.clip_samples, settings.min_samples)))


def probe_task(table: pa.Table, start: int, stop: int, settings: dict) -> np.ndarray:
    """Estimated clips of rows ``start:stop`` of a listing table, from the file headers."""
    cs = ClipSettings(**settings)
    with ThreadPoolExecutor(8) as pool:  # header reads wait on I/O
        seconds = list(pool.map(_probe_seconds, table_sources(table.slice(start, stop - start))))
    return np.array([estimated_clips(s, cs) for s in seconds], dtype=np.int64)


# ----------------------------------------------------------------------------- planning (one task per split)
def source_memory(path: str, size: int) -> int:
    ext = os.path.splitext(path.lower())[1]
    return int(size) * MEMORY_PER_BYTE.get(ext, MEMORY_PER_BYTE_COMPRESSED)


def _read_record(fs, root: str, unit: Unit) -> dict | None:
    """The unit's done record when it matches the plan and its outputs are all there."""
    paths = unit.paths
    try:
        with fs.open(join(root, paths["record"]), "rb") as f:
            rec = json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
    if rec.get("fingerprint") != unit.fingerprint or rec.get("failures"):
        return None  # another plan, or sources that could not be read: run it again
    if rec.get("tar"):
        tar = join(root, rec["tar"])
        if not fs.exists(tar) or fs.size(tar) != rec["size"] or not fs.exists(join(root, paths["manifest"])):
            return None
    return rec


def plan_units(split: str, tables: list[pa.Table], estimates: list[np.ndarray], settings: ClipSettings,
               clips_per_shard: int) -> tuple[list[Unit], pa.Table]:
    """Pack the sources of ``split`` into units: sorted by key prefix, in order, each unit closed
    before it would pass ``clips_per_shard`` estimated clips. Returns (descriptors, sorted sources)."""
    parts = [t.append_column("est_clips", pa.array(est, pa.int64())) for t, est in zip(tables, estimates)]
    t = pa.concat_tables(parts) if parts else sources_table([]).append_column("est_clips", pa.array([], pa.int64()))
    # A file listed by two inputs (a folder and a folder inside it) keeps the id the later input
    # gives it, whichever split that id falls in: every planning task decides alike.
    paths = t["path"].to_pylist()
    last = {p: i for i, p in enumerate(paths)}
    t = t.filter(pa.array([last[p] == i for i, p in enumerate(paths)], pa.bool_()))
    t = t.filter(pc.equal(t["split"], split))
    t = t.sort_by([("key_prefix", "ascending"), ("source_id", "ascending"), ("path", "ascending")])
    ids = t["source_id"].to_pylist()
    keep = [i == 0 or ids[i - 1] != ids[i] for i in range(len(ids))]  # one file reached twice
    t = t.filter(pa.array(keep, pa.bool_())) if not all(keep) else t
    est = t["est_clips"].to_numpy()
    bounds, start, acc = [], 0, 0
    for i, e in enumerate(est):
        if i > start and acc + e > clips_per_shard:
            bounds.append((start, i, acc))
            start, acc = i, 0
        acc += int(e)
    if len(est):
        bounds.append((start, len(est), acc))
    units = []
    for index, (a, b, n) in enumerate(bounds):
        rows = t.slice(a, b - a)
        srcs = table_sources(rows)
        units.append(Unit(
            split, index, a, b, n,
            memory=max(TASK_MEMORY_FLOOR, max(source_memory(s.path, s.size) for s in srcs) + TASK_MEMORY_FLOOR // 2),
            fingerprint=digest_json({
                "v": FORMAT_VERSION, "shard": unit_paths(split, index)["shard"], "settings": asdict(settings),
                "sources": [s.fingerprint() + [s.split, s.key_prefix] for s in srcs],
            }),
        ))
    return units, t


def plan_task(split: str, out: str, settings: dict, clips_per_shard: int, layout: list[int], *refs) -> tuple[list[Unit], pa.Table]:
    """Plan one split from the listing tables and probe arrays (``layout``: probe chunks per table),
    and attach each unit's done record (``None`` when it must run)."""
    tables, probes = list(refs[: len(layout)]), list(refs[len(layout):])
    estimates, k = [], 0
    for n in layout:
        estimates.append(np.concatenate(probes[k : k + n]) if n else np.zeros(0, np.int64))
        k += n
    units, table = plan_units(split, tables, estimates, ClipSettings(**settings), clips_per_shard)
    fs, root = filesystem(out)
    with ThreadPoolExecutor(8) as pool:  # one small read per unit, I/O-bound
        done = list(pool.map(lambda u: _read_record(fs, root, u), units))
    return [u._replace(done=_summary(rec) if rec else None) for u, rec in zip(units, done)], table


def _summary(rec: dict) -> UnitResult:
    """What the driver keeps of a unit's record: counts and digests."""
    return UnitResult(*(rec[k] for k in UnitResult._fields))


# ----------------------------------------------------------------------------- the unit task
def _read(path: str) -> bytes:
    with fsspec.open(path, "rb") as f:
        return f.read()


def _caption(src: Source) -> str:
    for car in src.sidecars:
        cap = read_sidecar(_read(car).decode("utf-8", errors="replace"), "." + car.rsplit(".", 1)[-1].lower())
        if cap:
            return cap
    return src.csv_caption or caption_from_name(src.source_id)


def _rows_digest(rows: list[dict], rejects: list[dict], sha: str | None) -> str:
    """Digest of what a consumer sees of one unit: its tar bytes, manifest rows and rejects (not
    where the inputs lived)."""
    return digest_json({
        "tar": sha, "manifest": [{k: v for k, v in r.items() if k != "source_path"} for r in rows],
        "rejects": sorted((r["source"], r["reason"]) for r in rejects),
    })


def run_unit(unit: Unit, table: pa.Table, out: str, settings: dict, salvage: bool = False) -> UnitResult:
    """Process one unit: write its tar, manifest piece, rejects / failures pieces and done record.

    An I/O error reading a source raises :class:`SourceReadError` (Ray retries the task); with
    ``salvage`` such sources are recorded as failures instead. Returns the unit's summary (small).
    """
    cs = ClipSettings(**settings)
    fs, root = filesystem(out)
    paths = unit.paths
    split, shard_rel = unit.split, paths["shard"]
    for d in (split, PROGRESS_DIR, MANIFEST_DIR, REJECTS_DIR, FAILURES_DIR):
        fs.makedirs(join(root, d), exist_ok=True)
    final = join(root, shard_rel)
    name = shard_rel.rsplit("/", 1)[-1]
    tmp = join(root, split, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    rows, rejects, failures = [], [], []
    silent = 0
    with fs.open(tmp, "wb") as f:
        writer = ShardWriter(f)
        for src in table_sources(table.slice(unit.start, unit.files)):
            try:
                data = _read(src.path)
                caption = _caption(src)
            except IO_ERRORS as err:
                reason = f"unreadable: {type(err).__name__}: {getattr(err, 'strerror', None) or err}"[:300]
                if not salvage:
                    raise SourceReadError(f"{src.path}: {reason}") from err
                failures.append({"path": src.path, "source": src.source_id, "reason": reason})
                continue
            try:
                clips, dropped = process_source(
                    data, key_prefix=src.key_prefix, source_id=src.source_id, caption=caption, settings=cs)
            except AudioError as err:
                rejects.append({"path": src.path, "source": src.source_id, "reason": str(err)})
                continue
            except Exception as err:  # bad input never stops the job: record it and go on
                rejects.append({"path": src.path, "source": src.source_id, "reason": f"failed: {type(err).__name__}: {err}"[:300]})
                continue
            silent += dropped
            for clip in clips:
                writer.add(clip.key, {"flac": clip.flac, "json": clip.json_bytes()})
                m = clip.meta
                rows.append({
                    "key": clip.key, "split": split, "shard": shard_rel, "source": m["source"],
                    "source_path": src.path, "offset_seconds": m["offset_seconds"],
                    "duration_seconds": m["duration_seconds"], "valid_samples": m["valid_samples"],
                    "caption": m["caption"], "source_rate": m["source_rate"], "source_channels": m["source_channels"],
                    "loudness_lufs": m["loudness_lufs"], "gain_db": m["gain_db"],
                })
        sha, size = writer.close()
    if rows:
        fs.mv(tmp, final)
    else:  # every file refused or silent: no empty tar
        fs.rm(tmp)
        sha, size = None, 0
    for key, items, schema in (("manifest", rows, MANIFEST_SCHEMA), ("rejects", rejects, REJECTS_SCHEMA),
                               ("failures", failures, FAILURES_SCHEMA)):
        path = join(root, paths[key])
        if items:
            _write_atomic(fs, path, _parquet(items, schema))
        elif fs.exists(path):  # left by an earlier attempt of this unit
            fs.rm(path)
    record = {"fingerprint": unit.fingerprint, "shard": shard_rel, "tar": shard_rel if rows else None,
              "sha256": sha, "size": size, "digest": _rows_digest(rows, rejects, sha), "clips": len(rows),
              "audio_seconds": sum(r["duration_seconds"] for r in rows), "rejects": len(rejects),
              "failures": len(failures), "silent_clips": silent}
    _write_atomic(fs, join(root, paths["record"]), json.dumps(record, sort_keys=True).encode())
    return _summary(record)


# ----------------------------------------------------------------------------- finalize (one task)
def _stream_pieces(fs, root: str, rels: list[str], schema: pa.Schema, target: str) -> None:
    """Concatenate Parquet pieces into one file, batch by batch (``pyarrow.dataset``), atomically."""
    paths = [join(root, r) for r in sorted(rels)]
    tmp = join(root, f".{target}.tmp-{uuid.uuid4().hex[:8]}")
    with fs.open(tmp, "wb") as f, pq.ParquetWriter(f, schema, compression="zstd") as writer:
        if paths:
            dataset = pads.dataset(paths, format="parquet", filesystem=fs, schema=schema)
            for batch in dataset.to_batches(batch_size=65536, use_threads=False):  # ordered: piece by piece
                writer.write_batch(batch)
    fs.mv(tmp, join(root, target))


def finalize_task(out: str, results: list[UnitResult]) -> None:
    """Write manifest.parquet, rejects.parquet and failures.parquet from the pieces and remove temp
    files and outputs that the plan (``results``: one per planned unit) no longer has."""
    fs, root = filesystem(out)
    paths = {r.shard: unit_paths(*_split_index(r.shard)) for r in results}
    _stream_pieces(fs, root, [paths[r.shard]["manifest"] for r in results if r.clips], MANIFEST_SCHEMA, MANIFEST)
    _stream_pieces(fs, root, [paths[r.shard]["rejects"] for r in results if r.rejects], REJECTS_SCHEMA, REJECTS)
    _stream_pieces(fs, root, [paths[r.shard]["failures"] for r in results if r.failures], FAILURES_SCHEMA, FAILURES)
    wanted = {p for r in results for k, p in paths[r.shard].items() if k != "shard" or r.tar}
    for path in fs.find(root):
        rel = path[len(root.rstrip("/")) + 1 :]
        base = rel.rsplit("/", 1)[-1]
        folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
        stale_tmp = ".tmp-" in base
        stale_tar = rel.count("/") == 1 and base.startswith("shard-") and base.endswith(".tar") and rel not in wanted
        stale_piece = folder in (PROGRESS_DIR, MANIFEST_DIR, REJECTS_DIR, FAILURES_DIR) and rel not in wanted
        if stale_tmp or stale_tar or stale_piece:
            fs.rm(path)


def _split_index(shard_rel: str) -> tuple[str, int]:
    split, name = shard_rel.split("/")
    return split, int(name[len("shard-"):-len(".tar")])


# ----------------------------------------------------------------------------- the driver
@dataclass
class ShardResult:
    out: str
    digest: str
    clips: int
    hours: float
    rejects: int
    files: int
    shards: int
    up_to_date: bool = False
    processed_units: int = 0
    seconds: float = 0.0
    run_id: str | None = None
    failures: int = 0
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        state = "up to date" if self.up_to_date else f"wrote {self.processed_units} shard(s) in {self.seconds:.1f} s"
        failed = f", {self.failures} unreadable (rerun to retry)" if self.failures else ""
        return (f"{self.out}: {state}; {self.clips} clips ({self.hours:.3f} h) in {self.shards} shards from "
                f"{self.files} files, {self.rejects} rejected{failed}; digest {self.digest[:16]}")


def _up_to_date(fs, root: str, plan_key: str) -> dict | None:
    try:
        with fs.open(join(root, DATASET_JSON), "rb") as f:
            info = json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
    if info.get("plan_key") != plan_key or info.get("failures"):
        return None  # failures remain: a rerun tries them again
    pieces = [unit_paths(*_split_index(t))["manifest"] for t in info.get("tars", {})]
    needed = [MANIFEST, REJECTS, FAILURES, *info.get("tars", {}), *pieces]
    return info if all(fs.exists(join(root, p)) for p in needed) else None


def dataset_digest(results: list[UnitResult]) -> str:
    """Digest of the dataset from the per-unit digests (each over a tar, its rows and rejects)."""
    return digest_json({"v": FORMAT_VERSION, "units": sorted([r.shard, r.digest] for r in results)})


def fetch(refs):
    """Everything the driver receives from tasks comes through here (tests count what it is)."""
    return ray.get(refs)


def _listing(jobs: list[dict], cfg, captions_csv: str | None, opts: dict) -> tuple[list[dict], list]:
    remote = ray.remote(list_task).options(num_returns=2, memory=2 * TASK_MEMORY_FLOOR, **opts)
    pairs = [remote.remote(job, cfg.data.splits.model_dump(), captions_csv) for job in jobs]
    summaries = fetch([p[0] for p in pairs])
    for s in summaries:
        if s["error"]:
            raise SpressoError(s["error"])
    return summaries, [p[1] for p in pairs]


def _plan(summaries: list[dict], tables: list, settings: ClipSettings, cfg, out: str, opts: dict) -> tuple[list[Unit], dict]:
    probe = ray.remote(probe_task).options(memory=TASK_MEMORY_FLOOR, **opts)
    layout, probes = [], []
    for s, table in zip(summaries, tables):
        starts = range(0, s["files"], PROBE_CHUNK)
        layout.append(len(starts))
        probes += [probe.remote(table, a, min(a + PROBE_CHUNK, s["files"]), asdict(settings)) for a in starts]
    files = sum(s["files"] for s in summaries)
    # The planning task holds every listed source of the run (a few hundred bytes each).
    plan = ray.remote(plan_task).options(num_returns=2, memory=_fit(TASK_MEMORY_FLOOR + 4096 * files), **opts)
    splits = [k for k, v in cfg.data.splits.model_dump().items() if v > 0]
    pairs = {split: plan.remote(split, out, asdict(settings), cfg.data.clips_per_shard, layout, *tables, *probes)
             for split in splits}
    units = [u for split in splits for u in fetch(pairs[split][0])]
    return units, {split: pairs[split][1] for split in splits}


def _largest_node_memory() -> int:
    return int(max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0))


def _fit(memory: int, largest: int | None = None) -> int:
    """A memory request no larger than the largest node has: bigger would queue forever."""
    largest = _largest_node_memory() if largest is None else largest
    return min(memory, largest) if largest else memory


def _window(num_cpus: float | None, worker_cpus: float) -> int:
    """Unit tasks in flight: ``num_cpus / worker_cpus`` when capped; else twice what the cluster
    holds now (asked again as nodes join, so an autoscaler sees the demand), at least 64."""
    if num_cpus is not None:
        return max(1, int(num_cpus // worker_cpus))
    return max(64, 2 * int(ray.cluster_resources().get("CPU", 1) / worker_cpus))


def _run_units(pending: list[Unit], tables: dict, out: str, settings: ClipSettings, cfg, num_cpus: float | None,
               opts: dict, bar) -> list[UnitResult]:
    """Run the pending units as Ray tasks, at most ``num_cpus / worker_cpus`` at a time when given."""
    remote = ray.remote(run_unit)  # opts carry the retries on I/O errors
    # Longest units first (LPT): the short last unit of each split no longer runs alone at the
    # end while the other cores idle. Order does not change the output; each unit owns its tar.
    queue = [(u, False) for u in sorted(pending, key=lambda u: (-u.est_clips, u.split, u.index))]
    queue.reverse()  # pop() from the end
    running: dict = {}
    results, broken = [], []
    checked = -float("inf")
    while queue or running:
        if time.monotonic() - checked > 10:  # the cluster may grow: look again now and then
            window, largest, checked = _window(num_cpus, cfg.data.worker_cpus), _largest_node_memory(), time.monotonic()
        while queue and len(running) < window:
            u, salvage = queue.pop()
            ref = remote.options(memory=_fit(u.memory, largest), **opts).remote(u, tables[u.split], out, asdict(settings), salvage)
            running[ref] = (u, salvage)
        ready, _ = ray.wait(list(running), num_returns=1)
        u, salvage = running.pop(ready[0])
        try:
            res = fetch(ready[0])
        except Exception as err:  # noqa: BLE001 -- Ray wraps the task's error
            cause = getattr(err, "cause", err)
            if isinstance(cause, SourceReadError) and not salvage:
                log.warning("shard %s: %s (after %d retries); recording unreadable sources as failures",
                            u.shard, cause, cfg.data.io_retries)
                queue.append((u, True))
            else:
                log.error("shard %s failed: %s", u.shard, cause)
                broken.append(u.shard)
            continue
        results.append(res)
        bar.update(res.clips, res.audio_seconds)
    if broken:
        raise SpressoError(f"shard {broken[0]} did not complete ({len(broken)} failed); rerun to resume")
    return results


class Progress:
    """Clips and hours done and the rate (audio seconds per wall second), via tqdm."""

    def __init__(self, total_clips: int, enabled: bool = True):
        self.t0 = time.perf_counter()
        self.audio = 0.0
        self.bar = tqdm(total=total_clips, unit="clip", desc="shard", disable=not enabled, dynamic_ncols=True)

    def update(self, clips: int, audio_seconds: float) -> None:
        self.audio += audio_seconds
        rate = self.audio / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(clips)
        self.bar.set_postfix_str(f"{self.audio / 3600:.3f} h, {rate:.0f}x realtime")

    def close(self) -> None:
        self.bar.close()


def shard(inputs: list[str], cfg, *, output: str | None = None, captions_csv: str | None = None,
          num_cpus: float | None = None, progress: bool = True, track: bool = True) -> ShardResult:
    """Shard audio under ``inputs`` into ``output`` (default ``cfg.path(cfg.data.shards_dir)``).

    ``num_cpus`` caps the CPUs the unit tasks may use at once (benchmarks); ``track`` logs the stage
    to MLflow.
    """
    t0 = time.perf_counter()
    out = output or cfg.path(cfg.data.shards_dir)
    if "://" not in out:
        out = os.path.abspath(out)
    captions_csv = captions_csv or cfg.data.captions_csv
    settings = ClipSettings.from_config(cfg.data)
    jobs = listing_jobs([str(i) for i in inputs])
    init_ray(cfg.runtime)
    opts = {**ray_options(cpus=cfg.data.worker_cpus, label=cfg.data.worker_label),
            "max_retries": cfg.data.io_retries, "retry_exceptions": list(IO_ERRORS)}
    summaries, tables = _listing(jobs, cfg, captions_csv, opts)
    if not sum(s["files"] for s in summaries):
        raise SpressoError(no_audio_message(inputs))
    fs, root = filesystem(out)
    input_digest = digest_json([s["digest"] for s in summaries])
    plan_key = digest_json({
        "v": FORMAT_VERSION, "settings": asdict(settings), "clips_per_shard": cfg.data.clips_per_shard,
        "splits": cfg.data.splits.model_dump(), "input": input_digest,
    })

    existing = _up_to_date(fs, root, plan_key)
    if existing is not None:
        res = ShardResult(out, existing["digest"], existing["clips"], existing["hours"], existing["rejects"],
                          existing["files"], len(existing["tars"]), up_to_date=True,
                          seconds=time.perf_counter() - t0, run_id=existing.get("mlflow_run_id"), info=existing)
        log.info("%s", res.summary())
        return res

    _check_writable(out)
    units, split_tables = _plan(summaries, tables, settings, cfg, out, opts)
    files = sum(u.files for u in units)
    done = [u.done for u in units if u.done]
    pending = [u for u in units if not u.done]
    log.info("%d files -> %d shards planned (%d done already, %d to write)", files, len(units), len(done), len(pending))

    def body(run) -> ShardResult:
        bar = Progress(sum(u.est_clips for u in units), progress)
        bar.update(sum(r.clips for r in done), sum(r.audio_seconds for r in done))
        results = done + (_run_units(pending, split_tables, out, settings, cfg, num_cpus, opts, bar) if pending else [])
        bar.close()
        results.sort(key=lambda r: r.shard)
        fetch(ray.remote(finalize_task).options(memory=TASK_MEMORY_FLOOR, **opts).remote(out, results))
        digest = dataset_digest(results)
        clips = sum(r.clips for r in results)
        hours = sum(r.audio_seconds for r in results) / 3600
        rejects = sum(r.rejects for r in results)
        failures = sum(r.failures for r in results)
        silent = sum(r.silent_clips for r in results)
        tars = {r.tar: r.sha256 for r in results if r.tar}
        splits: dict[str, dict] = {}
        for r in results:
            if r.clips:
                s = splits.setdefault(r.shard.split("/")[0], {"clips": 0, "hours": 0.0, "shards": 0})
                s["clips"] += r.clips
                s["hours"] += r.audio_seconds / 3600
                s["shards"] += 1
        info = {
            "digest": digest, "plan_key": plan_key, "input_digest": input_digest, "format_version": FORMAT_VERSION,
            "clips": clips, "hours": round(hours, 6), "rejects": rejects, "failures": failures, "files": files,
            "silent_clips_dropped": silent, "settings": asdict(settings), "clips_per_shard": cfg.data.clips_per_shard,
            "splits": {k: {**v, "hours": round(v["hours"], 6)} for k, v in sorted(splits.items())},
            "tars": dict(sorted(tars.items())),
            "inputs": [str(i) for i in inputs], "mlflow_run_id": run.run_id if run else None,
        }
        _write_atomic(fs, join(root, DATASET_JSON), json.dumps(info, indent=1, sort_keys=True).encode())
        seconds = time.perf_counter() - t0
        res = ShardResult(out, digest, clips, hours, rejects, files, len(tars), processed_units=len(pending),
                          seconds=seconds, run_id=run.run_id if run else None, failures=failures, info=info)
        if failures:
            log.warning("%d source(s) could not be read after %d retries (see %s); rerun to try them again",
                        failures, cfg.data.io_retries, FAILURES)
        if run:
            run.log_input("raw_audio", ",".join(str(i) for i in inputs), input_digest)
            run.log_output("shards", out, digest)
            run.log_metrics({"clips": clips, "hours": hours, "rejects": rejects, "failures": failures, "files": files,
                             "shards": len(tars), "silent_clips_dropped": silent, "seconds": seconds,
                             "realtime_factor": hours * 3600 / max(seconds, 1e-9)})
            with tempfile.TemporaryDirectory(prefix="spresso-shard-") as d:
                path = os.path.join(d, DATASET_JSON)
                with open(path, "w") as f:
                    json.dump(info, f, indent=1, sort_keys=True)
                run.log_artifact(path, "shards")
        log.info("%s", res.summary())
        return res

    if not track:
        return body(None)

    with stage_run("shard", cfg, key=plan_key) as run:
        return body(run)
