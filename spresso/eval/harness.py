"""The evaluation harness: every codec over one evaluation set, per-clip results cached, one report.

For each codec (an adapter spec, see :mod:`spresso.eval.baselines`) and each clip the harness
resamples to the codec's rate and back (:func:`~spresso.eval.adapter.roundtrip`), then computes
SI-SDR, the multi-scale mel distance and the frame embeddings of the reconstruction. Clips are
spread over Ray tasks with fractional CPUs (GPUs when eval.gpus_per_task asks for them). Results
are cached on disk per (codec, clip)::

    <workdir>/eval/cache/<codec-name>-<fingerprint>/<clip-key>-<clip-digest>.npz

where the fingerprint covers the spec, the files it names (size, mtime), the embedding and the
decoding settings: adding a codec computes only that codec; a retrained checkpoint is
recomputed. Set-level metrics (FAD, KAD against the originals' embeddings, bootstrap intervals
for everything) are cheap and recomputed from the cache on every run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from spresso.audio.io import resample, write_audio
from spresso.core import storage
from spresso.core.digest import digest_json
from spresso.core.errors import SpressoError
from spresso.eval.adapter import EVAL_RATE, roundtrip
from spresso.eval.baselines import build_adapter, spec_fingerprint
from spresso.eval.bootstrap import (
    Interval,
    bootstrap_fad,
    bootstrap_kad,
    bootstrap_mean,
)
from spresso.eval.embeddings import load_embedding_model
from spresso.eval.metrics import cosine_similarity, mel_distance, si_sdr
from spresso.eval.report import (
    ExampleClip,
    ResultRow,
    rate_quality_plot,
    table_rows,
    write_html_report,
)
from spresso.eval.sets import EvalClip, EvalSet, from_folder, from_shards
from spresso.runtime import cpu_count, init_ray, stage_run
from spresso.runtime.placement import ray_options

log = logging.getLogger(__name__)
REFERENCE = "_original"  # the originals' embeddings live in the cache like a codec's
ANOTHER_CLIP = "another-clip"  # the unrelated-clip floor's row (eval.floors)
RESERVED = {"reference", "original", "anchor_lp3k5", REFERENCE, ANOTHER_CLIP}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class HarnessSettings:
    embedding: str = "aisfx"
    embedding_checkpoint: str | None = None
    n_boot: int = 200
    level: float = 0.95
    seed: int = 0
    example_clips: int = 4
    variations: int = 2
    diffusion_steps: int = 32
    cpus_per_task: float = 0.5
    gpus_per_task: float = 0.0  # asked of the cluster as configured (eval.gpus_per_task), never sniffed
    threads_per_task: int = 1
    max_tasks: int | None = None  # tasks at once (None: as many as the cluster's CPUs hold at the start)
    label: str | None = None  # node label (spresso-node) the tasks need
    accelerator: str | None = None  # accelerator type each task needs (accelerator_type:X)
    # Solver for bundle specs that name none (None: the bundle's own); with diffusion_steps, the
    # primary row of eval.samplers when the config lists samplers.
    diffusion_solver: str | None = None
    # The unrelated-clip floor: a row scoring each clip against the next clip of the set.
    floors: bool = False

    @classmethod
    def from_config(cls, cfg) -> "HarnessSettings":
        e = cfg.eval
        primary = e.samplers[0] if e.samplers else None
        return cls(e.embedding, e.embedding_checkpoint, e.n_boot, e.level, e.seed, e.example_clips, e.variations,
                   primary.steps if primary else e.diffusion_steps, e.cpus_per_task or cfg.runtime.actor_cpus, e.gpus_per_task,
                   max_tasks=e.max_tasks, label=e.label, accelerator=e.accelerator,
                   diffusion_solver=primary.name if primary else None, floors=e.floors)

    def adapter_defaults(self) -> dict:
        """What a codec spec leaves unsaid: steps, and the solver for bundles."""
        return {"steps": self.diffusion_steps, **({"solver": self.diffusion_solver} if self.diffusion_solver else {})}

    def embedding_id(self) -> str:
        return f"{self.embedding}:{self.embedding_checkpoint or ''}"


def check_codec_names(codecs: dict[str, str]) -> None:
    if not codecs:
        raise SpressoError("give at least one codec (--codec NAME=KIND:ARG)")
    for name in codecs:
        if not NAME_RE.match(name) or name.lower() in RESERVED:
            raise SpressoError(f"codec name {name!r} must be letters, digits, '_' or '-' (and not {', '.join(sorted(RESERVED))})")


def parse_codec_args(items: list[str]) -> dict[str, str]:
    """``["opus6=opus:6", ...]`` -> {"opus6": "opus:6"} (names unique, specs parsed later)."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, spec = item.partition("=")
        if not eq or not spec:
            raise SpressoError(f"--codec {item!r} must be NAME=KIND:ARG (e.g. opus6=opus:6)")
        if name in out:
            raise SpressoError(f"codec name {name!r} given twice")
        out[name] = spec
    check_codec_names(out)
    return out


# -- the per-clip work (runs in Ray tasks or in-process) ------------------------------------------
_EMBEDDERS: dict[str, object] = {}


def _embedder(settings: HarnessSettings):
    """One embedding model per worker process (loading aisfx/CLAP per chunk would dominate)."""

    key = settings.embedding_id()
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = load_embedding_model(settings.embedding, settings.embedding_checkpoint)
    return _EMBEDDERS[key]


def evaluate_chunk(spec: str | None, clips: list[EvalClip], audio_keys: set[str], settings: HarnessSettings) -> list[dict]:
    """Round-trip ``clips`` through the codec ``spec`` (None: the originals) -> one result dict per clip.

    Each result: si_sdr, mel, emb [F, D] float32, num_bytes, seconds; plus the reconstruction
    (float32) and ``variations`` (other seeds) for clips in ``audio_keys``.
    """

    torch.set_num_threads(max(1, settings.threads_per_task))
    adapter = build_adapter(spec, settings.adapter_defaults()) if spec else None
    embedder = _embedder(settings)
    out = []
    for clip in clips:
        if adapter is None:
            recon, nbytes, data = clip.wave, 0, None
        else:
            rt = roundtrip(adapter, clip.wave)
            recon, nbytes = rt.reconstruction, rt.num_bytes
        r = {"key": clip.key, "digest": clip.digest, "num_bytes": int(nbytes), "seconds": clip.wave.shape[-1] / EVAL_RATE,
             "emb": embedder.embed_from(recon[None], EVAL_RATE)[0].astype(np.float32)}
        if adapter is not None:
            r["si_sdr"] = float(si_sdr(recon, clip.wave)[0])
            r["mel"] = float(mel_distance(recon, clip.wave)[0])
        if clip.key in audio_keys:
            r["recon"] = recon.astype(np.float32)
            if adapter is not None and adapter.stochastic and settings.variations:
                native = resample(clip.wave, EVAL_RATE, adapter.info.sample_rate)
                data = adapter.encode(native)
                n = clip.wave.shape[-1]
                r["variations"] = np.stack([
                    _fit(resample(adapter.decode_variation(data, native.shape[-1], seed), adapter.info.sample_rate, EVAL_RATE), n)
                    for seed in range(1, settings.variations + 1)])
        out.append(r)
    return out


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return (x[:n] if x.shape[-1] >= n else np.pad(x, (0, n - x.shape[-1]))).astype(np.float32)


# -- the cache ------------------------------------------------------------------------------------
class ResultCache:
    """Per-(codec, clip) results as small .npz files; written by the driver only (one writer)."""

    def __init__(self, root: str | Path, codec_id: str):
        self.dir = Path(root) / codec_id

    def _path(self, clip: EvalClip) -> Path:
        return self.dir / f"{clip.key}-{clip.digest}.npz"

    def get(self, clip: EvalClip, need_audio: bool = False) -> dict | None:
        p = self._path(clip)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                r = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None  # a torn file (killed mid-write cannot happen with the rename, but be safe)
        if need_audio and "recon" not in r:
            return None
        return r

    def put(self, clip: EvalClip, result: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.asarray(v) for k, v in result.items() if k not in ("key", "digest")}
        tmp = self._path(clip).with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, self._path(clip))  # atomic: a crash never leaves a half-written entry


def codec_id(name: str, spec: str | None, settings: HarnessSettings) -> str:
    parts = [settings.embedding_id(), spec_fingerprint(spec) if spec else "original", settings.diffusion_steps]
    if settings.diffusion_solver:  # only then: the ids of earlier caches stay valid
        parts.append(settings.diffusion_solver)
    return f"{name}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]}"


# -- running ----------------------------------------------------------------------------------------
@dataclass
class CodecResult:
    name: str
    spec: str
    row: ResultRow
    computed: int = 0  # clips computed in this run (the rest came from the cache)
    per_clip: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EvalResult:
    set: EvalSet
    codecs: dict[str, CodecResult]
    out_dir: Path | str | None = None  # a URL when the report was published to object storage
    files: dict[str, Path | str] = field(default_factory=dict)

    def published_to(self, dest: str | Path) -> None:
        """Point out_dir and files at ``dest``, where the folder they were written in now lives."""
        old = Path(self.out_dir)
        self.files = {k: storage.join(dest, Path(v).relative_to(old).as_posix()) for k, v in self.files.items()}
        self.out_dir = dest
        if not storage.is_url(dest):
            self.files = {k: Path(v) for k, v in self.files.items()}
            self.out_dir = Path(dest)

    @property
    def rows(self) -> list[ResultRow]:
        return [c.row for c in self.codecs.values()]


class Harness:
    """Evaluate ``codecs`` ({name: spec}) on ``eval_set``; results cached under ``cache_dir``."""

    def __init__(self, eval_set: EvalSet, codecs: dict[str, str], cache_dir: str | Path, settings: HarnessSettings | None = None,
                 use_ray: bool = True):
        check_codec_names(codecs)
        if len(eval_set) < 2:
            raise SpressoError("an evaluation set needs at least two clips (FAD and intervals need a spread)")
        self.set, self.codecs, self.cache_dir = eval_set, dict(codecs), Path(cache_dir)
        self.settings = settings or HarnessSettings()
        self.use_ray = use_ray
        n = min(self.settings.example_clips, len(eval_set))
        self.example_keys = [c.key for c in eval_set.clips[:: max(1, len(eval_set) // max(1, n))][:n]] if n else []

    # the work list of one codec: clips missing from its cache
    def _missing(self, cache: ResultCache) -> list[EvalClip]:
        return [c for c in self.set.clips if cache.get(c, need_audio=c.key in self.example_keys) is None]

    def _compute(self, jobs: list[tuple[str, str | None, ResultCache, list[EvalClip]]], progress: bool) -> dict[str, int]:
        """Run every (name, spec, cache, clips) job; write results to the caches; return counts."""

        audio = set(self.example_keys)
        total = sum(len(c) for *_, c in jobs)
        counts = {name: 0 for name, *_ in jobs}
        if not total:
            return counts
        bar = tqdm(total=total, desc="eval clips", disable=not progress, mininterval=5)
        if not self.use_ray:
            for name, spec, cache, clips in jobs:
                for r, clip in zip(evaluate_chunk(spec, clips, audio, self.settings), clips):
                    cache.put(clip, r)
                    counts[name] += 1
                    bar.update(1)
            bar.close()
            return counts

        s = self.settings
        # GPUs as configured (the cluster provides them); the cluster's CPUs only size the chunking
        # when the config gives no number of tasks.
        slots = s.max_tasks or max(1, int(ray.cluster_resources().get("CPU", 1) / max(s.cpus_per_task, 1e-3)))
        task = ray.remote(evaluate_chunk).options(max_retries=1, **ray_options(
            cpus=s.cpus_per_task, gpus=s.gpus_per_task, label=s.label, accelerator=s.accelerator))
        todo = []
        for name, spec, cache, clips in jobs:
            # a few chunks per codec: enough to fill the slots, few enough that model loading is amortised
            n_chunks = max(1, min(len(clips), math.ceil(slots / max(1, len(jobs))), math.ceil(len(clips) / 4)))
            for part in np.array_split(np.arange(len(clips)), n_chunks):
                todo.append((name, spec, cache, [clips[i] for i in part]))
        todo.reverse()
        pending = {}
        try:
            while pending or todo:
                while todo and len(pending) < (s.max_tasks or len(todo) + len(pending)):  # at most max_tasks at once
                    name, spec, cache, chunk = todo.pop()
                    pending[task.remote(spec, chunk, audio, self.settings)] = (name, cache, chunk)
                done, _ = ray.wait(list(pending), num_returns=1)
                name, cache, chunk = pending.pop(done[0])
                for r, clip in zip(ray.get(done[0]), chunk):
                    cache.put(clip, r)  # the driver is the only writer
                    counts[name] += 1
                bar.update(len(chunk))
        except ray.exceptions.RayTaskError as err:
            for ref in pending:
                ray.cancel(ref)
            cause = err.cause if isinstance(getattr(err, "cause", None), Exception) else err
            raise SpressoError(f"codec {name!r} failed: {str(cause).splitlines()[0]}") from None
        finally:
            bar.close()
        return counts

    def run(self, progress: bool = True) -> EvalResult:
        s = self.settings
        ref_cache = ResultCache(self.cache_dir, codec_id(REFERENCE, None, s))
        jobs = [(REFERENCE, None, ref_cache, self._missing(ref_cache))]
        adapters, caches, notes = {}, {}, {}
        for name, spec in self.codecs.items():
            adapter = build_adapter(spec, s.adapter_defaults())  # bad specs fail here, before any work
            ok, why = adapter.available()
            adapters[name] = adapter
            if not ok:
                notes[name] = f"not available: {why}"
                log.warning("codec %s (%s) is not available: %s", name, spec, why)
                continue
            caches[name] = ResultCache(self.cache_dir, codec_id(name, spec, s))
            jobs.append((name, spec, caches[name], self._missing(caches[name])))
        t0 = time.time()
        counts = self._compute([j for j in jobs if j[3]], progress)
        log.info("evaluated %d clip round trips in %.1f s", sum(counts.values()), time.time() - t0)
        reference = [ref_cache.get(c) for c in self.set.clips]
        ref_emb = [r["emb"] for r in reference]
        results = {}
        for name, spec in self.codecs.items():
            info = adapters[name].info
            row = ResultRow(info.method, info.variant, info.frame_rate_hz, info.nominal_bitrate_bps, info.compression)
            res = CodecResult(name, spec, row, counts.get(name, 0))
            if name in notes:
                row.note = notes[name]
            else:
                entries = [caches[name].get(c) for c in self.set.clips]
                res.per_clip = {k: np.array([float(e[k]) for e in entries]) for k in ("si_sdr", "mel", "num_bytes", "seconds")}
                row.actual_bitrate_bps = 8.0 * res.per_clip["num_bytes"].sum() / res.per_clip["seconds"].sum()
                row.metrics = self._metrics(ref_emb, [e["emb"] for e in entries], res.per_clip)
            results[name] = res
        if s.floors:
            results[ANOTHER_CLIP] = self._another_clip(ref_emb)
        return EvalResult(self.set, results)

    def _another_clip(self, ref_emb: list[np.ndarray]) -> CodecResult:
        """The unrelated-clip floor: each clip "decoded" as the next real clip of the set (cosine, mel,
        SI-SDR against its own original). No set-level distances: the clips come from the set's own
        distribution, so its FAD/KAD would say nothing."""
        s, e = self.settings, self.settings.embedding
        waves = [c.wave for c in self.set.clips]
        n = min(w.shape[-1] for w in waves)
        ref = np.stack([w[:n] for w in waves])
        other = np.roll(ref, -1, axis=0)
        means = np.stack([x.mean(0) for x in ref_emb])
        per_clip = {"si_sdr": si_sdr(other, ref), "mel": mel_distance(other, ref),
                    f"{e}_cos": cosine_similarity(means, np.roll(means, -1, axis=0))}
        row = ResultRow("Floor", "another real clip")
        row.metrics = {k: bootstrap_mean(np.asarray(v, np.float64), s.n_boot, s.level, s.seed) for k, v in per_clip.items()}
        return CodecResult(ANOTHER_CLIP, "", row, per_clip=per_clip)

    def _metrics(self, ref_emb: list[np.ndarray], emb: list[np.ndarray], per_clip: dict) -> dict[str, Interval]:
        # BLAS threads beyond half the cores thrash on a shared machine (FAD's eighs got 8x slower)
        with threadpool_limits(limits=max(1, cpu_count() // 2)):
            return self._set_metrics(ref_emb, emb, per_clip)

    def _set_metrics(self, ref_emb, emb, per_clip) -> dict[str, Interval]:
        s, e = self.settings, self.settings.embedding
        cos = cosine_similarity(np.stack([x.mean(0) for x in ref_emb]), np.stack([x.mean(0) for x in emb]))
        per_clip[f"{e}_cos"] = cos
        return {
            f"fad_{e}": bootstrap_fad(ref_emb, emb, n_boot=s.n_boot, level=s.level, seed=s.seed),
            f"kad_{e}": bootstrap_kad(ref_emb, emb, n_boot=s.n_boot, level=s.level, seed=s.seed),
            f"{e}_cos": bootstrap_mean(cos, s.n_boot, s.level, s.seed),
            "si_sdr": bootstrap_mean(per_clip["si_sdr"], s.n_boot, s.level, s.seed),
            "mel": bootstrap_mean(per_clip["mel"], s.n_boot, s.level, s.seed),
        }

    # -- outputs ------------------------------------------------------------------------------
    def write_outputs(self, result: EvalResult, out_dir: str | Path, title: str | None = None) -> EvalResult:
        """table.md / table.csv / results.json, rate-quality PNGs, index.html with players and
        spectrograms, and ``listening/<clip>/{reference,<codec>}.wav`` for ``spresso listening-test``."""

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = result.rows
        header, body = table_rows(rows)
        with open(out / "table.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["codec", *header])
            w.writerows([name, *b] for name, b in zip(result.codecs, body))
        plots = {}
        for metric in ("si_sdr", f"fad_{self.settings.embedding}", "mel"):
            if any(r.bitrate_bps and metric in r.metrics and not r.note for r in rows):
                plots[metric] = rate_quality_plot(rows, metric, out / f"rate_quality_{metric}.png")
        examples = []
        clips = {c.key: c for c in self.set.clips}
        for key in self.example_keys:
            clip = clips[key]
            folder = out / "listening" / key
            folder.mkdir(parents=True, exist_ok=True)
            versions = {"original": folder / "reference.wav"}
            write_audio(versions["original"], np.clip(clip.wave, -1, 1), EVAL_RATE, subtype="PCM_16")
            for name, res in result.codecs.items():
                if res.row.note or not res.spec:  # no audio of its own (the unrelated-clip floor)
                    continue
                entry = ResultCache(self.cache_dir, codec_id(name, res.spec, self.settings)).get(clip, need_audio=True)
                path = folder / f"{name}.wav"
                write_audio(path, np.clip(entry["recon"], -1, 1), EVAL_RATE, subtype="PCM_16")
                versions[name] = path
                for i, var in enumerate(entry.get("variations", [])):
                    vpath = out / "variations" / key / f"{name}-seed{i + 1}.wav"
                    vpath.parent.mkdir(parents=True, exist_ok=True)
                    write_audio(vpath, np.clip(var, -1, 1), EVAL_RATE, subtype="PCM_16")
                    versions[f"{name} (seed {i + 1})"] = vpath
            examples.append(ExampleClip(key, versions))
        index = write_html_report(out, rows, examples, title or f"spresso evaluation: {self.set.name} ({len(self.set)} clips)",
                                  plots=plots)
        per_clip = {name: {k: v.tolist() for k, v in r.per_clip.items()} for name, r in result.codecs.items()}
        (out / "per_clip.json").write_text(json.dumps({"keys": [c.key for c in self.set.clips], "codecs": per_clip}), encoding="utf-8")
        (out / "codecs.json").write_text(json.dumps({n: {"spec": r.spec, "note": r.row.note} for n, r in result.codecs.items()},
                                                    indent=1), encoding="utf-8")
        result.out_dir = out
        result.files = {"index": index, "table_md": out / "table.md", "table_csv": out / "table.csv",
                        "results": out / "results.json", **{f"plot_{k}": Path(v) for k, v in plots.items()}}
        return result


# -- the stage: set + harness + outputs + MLflow ---------------------------------------------------
def load_eval_set(cfg, *, split: str | None = None, folder: str | None = None, num_clips: int | None = None) -> EvalSet:
    n = int(num_clips or cfg.eval.num_clips)
    if folder:
        return from_folder(folder, n, cfg.eval.seed, cfg.eval.clip_seconds, cfg.data.min_seconds)
    return from_shards(cfg.path(cfg.data.shards_dir), split or cfg.eval.split, n, cfg.eval.seed)


def run_evaluation(cfg, codecs: dict[str, str], *, split: str | None = None, folder: str | None = None,
                   num_clips: int | None = None, out_dir: str | None = None, parent_run_id: str | None = None,
                   use_ray: bool = True, progress: bool = True) -> tuple[EvalResult, str]:
    """The ``evaluate`` stage: one MLflow run holding the table, plots, report and listening folder."""

    check_codec_names(codecs)
    eval_set = load_eval_set(cfg, split=split, folder=folder, num_clips=num_clips)
    settings = HarnessSettings.from_config(cfg)
    base = storage.absolute(cfg.path(cfg.eval.out_dir))
    out_dir = storage.absolute(out_dir) if out_dir else storage.join(base, f"{eval_set.name}-{eval_set.digest[:8]}")
    if use_ray:
        init_ray(cfg.runtime)
    key = digest_json({"set": eval_set.digest, "codecs": {n: codec_id(n, s, settings) for n, s in codecs.items()},
                       "n_boot": settings.n_boot, "level": settings.level, **({"floors": True} if settings.floors else {})})
    # Local folders for the writers (audio, plots, npz); on object storage the results cache is
    # fetched first and both are published when the stage succeeds.
    with storage.staged(storage.join(base, "cache")) as cache_dir, storage.staged(out_dir, replace=True) as out, \
            stage_run("evaluate", cfg, key=key, parent_run_id=parent_run_id) as run:
        harness = Harness(eval_set, codecs, cache_dir, settings, use_ray=use_ray)
        run.log_input("eval_set", eval_set.source, eval_set.digest)
        run.log_params({f"codec.{n}": s for n, s in codecs.items()} | {"eval.set": eval_set.name, "eval.clips": len(eval_set)})
        result = harness.run(progress)
        harness.write_outputs(result, out)
        metrics = {}
        for name, r in result.codecs.items():
            metrics[f"{name}.computed_clips"] = r.computed
            if r.row.actual_bitrate_bps is not None:
                metrics[f"{name}.actual_kbps"] = r.row.actual_bitrate_bps / 1000
            for m, iv in r.row.metrics.items():
                metrics[f"{name}.{m}"] = iv.value
                metrics[f"{name}.{m}.low"] = iv.low
                metrics[f"{name}.{m}.high"] = iv.high
        run.log_metrics(metrics)
        run.client.log_artifacts(run.run_id, str(out), "report")
        run.log_output("report", out_dir, digest_json(json.loads((out / "results.json").read_text())))
    result.published_to(out_dir)  # the staged folder is gone: name the files where they were published
    return result, run.run_id
