"""`spresso shard`: raw audio -> WebDataset tars + manifest.parquet, on Ray Data.

How it works (and why):

1. The driver lists the inputs, gives each file a stable split and key prefix, and *plans* the
   shards: files sorted by (split, key) are packed, in order, into units of about
   ``clips_per_shard`` clips (durations from the file headers). One unit = one tar. The plan
   depends only on the input, so the tars -- and the dataset digest -- are the same whatever
   the number of workers.
2. Ray Data runs one task per unit (``map`` with ``num_cpus=data.worker_cpus``): read each file,
   decode, downmix, resample (soxr HQ), cut 5 s clips, drop digital silence, encode FLAC, and
   stream them into ``.<name>.tar.tmp-*``, renamed when complete. A small JSON record of the unit
   (its manifest rows, rejects, tar sha256) is written last, by rename: it marks the unit done.
3. A rerun skips done units (so a killed run resumes), then writes manifest.parquet,
   rejects.parquet and dataset.json. When nothing changed it reports "up to date" and writes
   nothing at all.
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
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data as rd
import soundfile as sf
from tqdm.auto import tqdm

from spresso.audio.io import AudioError
from spresso.core.digest import digest_json
from spresso.core.errors import SpressoError
from spresso.core.storage import filesystem, join
from spresso.data.clips import ClipSettings, clip_spans, process_source
from spresso.data.reader import DATASET_JSON, MANIFEST, REJECTS, SHARD_PATTERN
from spresso.data.sources import Source, caption_from_name, discover, read_sidecar
from spresso.data.tars import ShardWriter
from spresso.runtime import init_ray, stage_run
from spresso.runtime.placement import ray_options

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PROGRESS_DIR = ".progress"

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()), ("source", pa.string()),
    ("source_path", pa.string()), ("offset_seconds", pa.float64()), ("duration_seconds", pa.float64()),
    ("valid_samples", pa.int64()), ("caption", pa.string()), ("source_rate", pa.int32()),
    ("source_channels", pa.int32()), ("loudness_lufs", pa.float64()), ("gain_db", pa.float64()),
])
REJECTS_SCHEMA = pa.schema([("path", pa.string()), ("source", pa.string()), ("reason", pa.string())])


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


# ----------------------------------------------------------------------------- planning
@dataclass
class Unit:
    """One tar's worth of source files."""

    split: str
    index: int
    sources: list[dict]
    est_clips: int
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return SHARD_PATTERN.format(self.index)

    @property
    def shard(self) -> str:
        return f"{self.split}/{self.name}"

    @property
    def record(self) -> str:
        return f"{PROGRESS_DIR}/{self.split}-{self.name[:-4]}.json"


def _probe_seconds(src: Source) -> float:
    """Duration from the header (cheap); when unreadable, guess from the size (128 kbit/s)."""

    try:
        with fsspec.open(src.path, "rb") as f:
            info = sf.info(f)
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate
    except Exception:  # unreadable here: the worker records the real reason
        pass
    return src.size / 16000.0


def plan_units(sources: list[Source], settings: ClipSettings, clips_per_shard: int, threads: int = 8) -> list[Unit]:
    with ThreadPoolExecutor(threads) as pool:
        seconds = list(pool.map(_probe_seconds, sources))
    units: list[Unit] = []
    counters: dict[str, int] = {}
    current: Unit | None = None
    for src, sec in zip(sources, seconds):
        n = int(sec * settings.sample_rate)
        est = max(1, len(clip_spans(n, settings.clip_samples, settings.min_samples)))
        if current is None or current.split != src.split or (current.est_clips + est > clips_per_shard and current.sources):
            idx = counters.get(src.split, 0)
            counters[src.split] = idx + 1
            current = Unit(src.split, idx, [], 0)
            units.append(current)
        current.sources.append(asdict(src))
        current.est_clips += est
    for u in units:
        u.fingerprint = digest_json({
            "v": FORMAT_VERSION, "shard": u.shard, "settings": asdict(settings),
            "sources": [Source(**s).fingerprint() + [s["split"], s["key_prefix"]] for s in u.sources],
        })
    return units


# ----------------------------------------------------------------------------- the worker
def _caption(src: dict) -> str:
    for car in src["sidecars"]:
        try:
            with fsspec.open(car, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        cap = read_sidecar(text, "." + car.rsplit(".", 1)[-1].lower())
        if cap:
            return cap
    return src["csv_caption"] or caption_from_name(src["source_id"])


def run_unit(unit: dict, out: str, settings: dict) -> dict:
    """Process one unit and write its tar and done-record. Returns a summary row (small)."""

    cs = ClipSettings(**settings)
    fs, root = filesystem(out)
    split, name = unit["split"], SHARD_PATTERN.format(unit["index"])
    fs.makedirs(join(root, split), exist_ok=True)
    fs.makedirs(join(root, PROGRESS_DIR), exist_ok=True)
    final = join(root, split, name)
    tmp = join(root, split, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    rows, rejects = [], []
    silent = 0
    t0 = time.perf_counter()
    with fs.open(tmp, "wb") as f:
        writer = ShardWriter(f)
        for src in unit["sources"]:
            try:
                with fsspec.open(src["path"], "rb") as sf_:
                    data = sf_.read()
                caption = _caption(src)
                clips, dropped = process_source(
                    data, key_prefix=src["key_prefix"], source_id=src["source_id"], caption=caption, settings=cs)
            except AudioError as err:
                rejects.append({"path": src["path"], "source": src["source_id"], "reason": str(err)})
                continue
            except (OSError, PermissionError) as err:
                rejects.append({"path": src["path"], "source": src["source_id"], "reason": f"unreadable: {getattr(err, 'strerror', None) or err}"})
                continue
            except Exception as err:  # bad input never stops the job: record it and go on
                rejects.append({"path": src["path"], "source": src["source_id"], "reason": f"failed: {type(err).__name__}: {err}"[:300]})
                continue
            silent += dropped
            for clip in clips:
                writer.add(clip.key, {"flac": clip.flac, "json": clip.json_bytes()})
                m = clip.meta
                rows.append({
                    "key": clip.key, "split": split, "shard": f"{split}/{name}", "source": m["source"],
                    "source_path": src["path"], "offset_seconds": m["offset_seconds"],
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
    record = {"fingerprint": unit["fingerprint"], "shard": f"{split}/{name}", "tar": f"{split}/{name}" if rows else None,
              "sha256": sha, "size": size, "rows": rows, "rejects": rejects, "silent_clips": silent}
    _write_atomic(fs, join(root, unit["record"]), json.dumps(record, sort_keys=True).encode())
    audio_s = sum(r["duration_seconds"] for r in rows)
    return {"shard": f"{split}/{name}", "clips": len(rows), "rejects": len(rejects),
            "audio_seconds": audio_s, "busy_seconds": time.perf_counter() - t0}


def _ray_map_unit(row: dict[str, Any]) -> dict[str, Any]:
    return run_unit(json.loads(row["unit"]), row["out"], json.loads(row["settings"]))


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
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        state = "up to date" if self.up_to_date else f"wrote {self.processed_units} shard(s) in {self.seconds:.1f} s"
        return (f"{self.out}: {state}; {self.clips} clips ({self.hours:.3f} h) in {self.shards} shards from "
                f"{self.files} files, {self.rejects} rejected; digest {self.digest[:16]}")


def _read_record(fs, root: str, unit: Unit) -> dict | None:
    path = join(root, unit.record)
    try:
        with fs.open(path, "rb") as f:
            rec = json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
    if rec.get("fingerprint") != unit.fingerprint:
        return None
    if rec.get("tar"):
        tar = join(root, rec["tar"])
        if not fs.exists(tar) or fs.size(tar) != rec["size"]:
            return None
    return rec


def _plan_key(sources: list[Source], settings: ClipSettings, data_cfg) -> str:
    return digest_json({
        "v": FORMAT_VERSION, "settings": asdict(settings), "clips_per_shard": data_cfg.clips_per_shard,
        "splits": data_cfg.splits.model_dump(), "sources": [s.fingerprint() + [s.split, s.key_prefix] for s in sources],
    })


def _up_to_date(fs, root: str, plan_key: str) -> dict | None:
    try:
        with fs.open(join(root, DATASET_JSON), "rb") as f:
            info = json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
    if info.get("plan_key") != plan_key:
        return None
    needed = [MANIFEST, REJECTS, *info.get("tars", {})]
    return info if all(fs.exists(join(root, p)) for p in needed) else None


def _dataset_digest(tars: dict[str, str], rows: list[dict], rejects: list[dict]) -> str:
    """Digest of what a consumer sees: the tar bytes and the manifest, not where inputs lived."""
    return digest_json({
        "tars": sorted(tars.items()),
        "manifest": [{k: v for k, v in r.items() if k != "source_path"} for r in rows],
        "rejects": sorted((r["source"], r["reason"]) for r in rejects),
    })


def _cleanup(fs, root: str, units: list[Unit], records: dict[str, dict]) -> None:
    """Remove temp files and tars / records that the current plan no longer has."""
    keep = {u.record for u in units} | {r["tar"] for r in records.values() if r.get("tar")}
    for path in fs.find(root):
        rel = path[len(root.rstrip("/")) + 1 :]
        base = rel.rsplit("/", 1)[-1]
        stale_tmp = ".tmp-" in base
        stale_tar = rel.count("/") == 1 and base.startswith("shard-") and base.endswith(".tar") and rel not in keep
        stale_rec = rel.startswith(PROGRESS_DIR + "/") and rel not in keep
        if stale_tmp or stale_tar or stale_rec:
            fs.rm(path)


def _run_ray(pending: list[Unit], out: str, settings: ClipSettings, cfg, num_cpus: float | None, bar) -> list[dict]:
    ray = init_ray(cfg.runtime)

    ctx = rd.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours shows clips, hours and rate instead
    ctx.execution_options.preserve_order = False
    # Ray Data reserves a share of the CPUs per operator; on a small machine that held our one
    # map operator to a single task at a time (measured: 2 CPUs no faster than 1). One operator
    # needs no reservation.
    saved_reservation = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    task_cpus = cfg.data.worker_cpus
    if num_cpus is not None:
        # Cap the pipeline at num_cpus: each task reserves a proportionally larger share of the
        # cluster, so at most num_cpus / worker_cpus tasks run at once. (Not Ray Data's
        # `concurrency=`: that turns on a dynamic cap which backs off whenever the driver reads
        # results late -- measured: a 2-task cap ran one task for most of the run.)
        task_cpus = cfg.data.worker_cpus * ray.cluster_resources().get("CPU", num_cpus) / num_cpus
    # Longest units first (LPT): the short last unit of each split no longer runs alone at the
    # end while the other cores idle (measured: the single-task tail fell from ~9% to ~4% of the
    # run on 2 CPUs). Order does not change the output; each unit owns its tar.
    pending = sorted(pending, key=lambda u: (-u.est_clips, u.split, u.index))
    items = [{"unit": json.dumps({**asdict(u), "record": u.record}), "out": out,
              "settings": json.dumps(asdict(settings))} for u in pending]
    # One block per unit so every unit can run in parallel; tasks (not an actor pool) with a
    # fixed CPU reservation: there is no state worth keeping between units.
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_ray_map_unit, **ray_options(cpus=task_cpus, label=cfg.data.worker_label))
    results = []
    try:
        for row in ds.iter_rows():
            results.append(row)
            bar.update(row["clips"], row["audio_seconds"])
    finally:
        ctx.op_resource_reservation_enabled = saved_reservation  # the context is process-global
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

    ``num_cpus`` caps the CPUs Ray Data may use (benchmarks); ``track`` logs the stage to MLflow.
    """
    t0 = time.perf_counter()
    out = output or cfg.path(cfg.data.shards_dir)
    if "://" not in out:
        out = os.path.abspath(out)
    captions_csv = captions_csv or cfg.data.captions_csv
    settings = ClipSettings.from_config(cfg.data)
    sources = discover([str(i) for i in inputs], cfg.data.splits.model_dump(), captions_csv)
    fs, root = filesystem(out)
    plan_key = _plan_key(sources, settings, cfg.data)
    input_digest = digest_json([s.fingerprint() for s in sources])

    existing = _up_to_date(fs, root, plan_key)
    if existing is not None:
        res = ShardResult(out, existing["digest"], existing["clips"], existing["hours"], existing["rejects"],
                          existing["files"], len(existing["tars"]), up_to_date=True,
                          seconds=time.perf_counter() - t0, run_id=existing.get("mlflow_run_id"), info=existing)
        log.info("%s", res.summary())
        return res

    _check_writable(out)
    units = plan_units(sources, settings, cfg.data.clips_per_shard)
    records = {u.shard: rec for u in units if (rec := _read_record(fs, root, u)) is not None}
    pending = [u for u in units if u.shard not in records]
    total = sum(u.est_clips for u in units)
    log.info("%d files -> %d shards planned (%d done already, %d to write)", len(sources), len(units), len(records), len(pending))

    def body(run) -> ShardResult:
        bar = Progress(total, progress)
        bar.update(sum(len(r["rows"]) for r in records.values()), sum(x["duration_seconds"] for r in records.values() for x in r["rows"]))
        if pending:
            _run_ray(pending, out, settings, cfg, num_cpus, bar)
        bar.close()
        for u in pending:
            rec = _read_record(fs, root, u)
            if rec is None:
                raise SpressoError(f"shard {u.shard} did not complete; rerun to resume")
            records[u.shard] = rec
        rows = sorted((r for rec in records.values() for r in rec["rows"]), key=lambda r: (r["split"], r["key"]))
        rejects = sorted((x for rec in records.values() for x in rec["rejects"]), key=lambda r: r["source"])
        tars = {rec["tar"]: rec["sha256"] for rec in records.values() if rec.get("tar")}
        _cleanup(fs, root, units, records)
        digest = _dataset_digest(tars, rows, rejects)
        hours = sum(r["duration_seconds"] for r in rows) / 3600
        silent = sum(rec["silent_clips"] for rec in records.values())
        _write_atomic(fs, join(root, MANIFEST), _parquet(rows, MANIFEST_SCHEMA))
        _write_atomic(fs, join(root, REJECTS), _parquet(rejects, REJECTS_SCHEMA))
        splits = {}
        for r in rows:
            s = splits.setdefault(r["split"], {"clips": 0, "hours": 0.0, "shards": set()})
            s["clips"] += 1
            s["hours"] += r["duration_seconds"] / 3600
            s["shards"].add(r["shard"])
        info = {
            "digest": digest, "plan_key": plan_key, "input_digest": input_digest, "format_version": FORMAT_VERSION,
            "clips": len(rows), "hours": round(hours, 6), "rejects": len(rejects), "files": len(sources),
            "silent_clips_dropped": silent, "settings": asdict(settings), "clips_per_shard": cfg.data.clips_per_shard,
            "splits": {k: {"clips": v["clips"], "hours": round(v["hours"], 6), "shards": len(v["shards"])} for k, v in sorted(splits.items())},
            "tars": dict(sorted(tars.items())), "inputs": [str(i) for i in inputs],
            "mlflow_run_id": run.run_id if run else None,
        }
        _write_atomic(fs, join(root, DATASET_JSON), json.dumps(info, indent=1, sort_keys=True).encode())
        seconds = time.perf_counter() - t0
        res = ShardResult(out, digest, len(rows), hours, len(rejects), len(sources), len(tars),
                          processed_units=len(pending), seconds=seconds, run_id=run.run_id if run else None, info=info)
        if run:
            run.log_input("raw_audio", ",".join(str(i) for i in inputs), input_digest)
            run.log_output("shards", out, digest)
            run.log_metrics({"clips": len(rows), "hours": hours, "rejects": len(rejects), "files": len(sources),
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


def _parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
