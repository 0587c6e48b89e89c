"""The x0 stage: encode every clip of the shards with the AudioAE into a Zarr cache.

``precompute_latents(cfg)`` sizes the cache from the manifest (row i = manifest row i), lets
:func:`~spresso.data.precompute.fill_cache` run the encoder over the missing blocks with Ray
Data, then stores the per-channel statistics the diffusion stages normalise with.

Arrays (contract 2 of the brief): ``x0`` [N, 128, 500] float16, ``valid_frames`` [N] int32,
``split`` [N] str, plus ``keys`` and ``done``; and two small per-row arrays, ``x0_sum`` and
``x0_sqsum`` [N, 128] float64 (sums of x0 and x0^2 over the row's valid frames, from the
stored float16 values). Those make the statistics exact, resumable and cheap: a rerun that
fills three blocks does not have to re-read the other 10,000 to update the mean.

Attrs: ``audioae_run_id``, ``audioae_digest``, ``shards_digest`` and ``frame_rate`` (the cache's
identity: a cache made by another AudioAE is refused, not mixed), then ``x0_mean``, ``x0_std``
(lists of 128 floats over the valid frames of the train split) and ``x0_stats_frames``.
"""
from __future__ import annotations

import json
import logging
import tarfile
from typing import Any

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from spresso.config import SpressoConfig
from spresso.core import storage
from spresso.core.checkpoint import has_checkpoint, read_checkpoint_config
from spresso.core.digest import digest_bytes, digest_json, digest_tree
from spresso.core.errors import SpressoError
from spresso.core.storage import exists, join, open_file
from spresso.data.precompute import ROW, fill_cache
from spresso.data.reader import (
    MANIFEST,
    SHARD_PATTERN,
    decode_clip,
    read_dataset_info,
    read_manifest,
)
from spresso.data.zarr_cache import LAYOUT_ATTR, CacheDataset, ClipCache
from spresso.models.audioae import load_audioae
from spresso.runtime import find_finished_run, stage_run, tracking_uri
from spresso.runtime.tracking import ensure_experiment

log = logging.getLogger(__name__)

STAGE = "precompute_latents"
CHECKPOINT_KIND = "audioae"


# -- the source: manifest rows -> decoded clips (runs in Ray Data read tasks) -------------------
_MANIFESTS: dict[str, dict[str, np.ndarray]] = {}


def manifest_columns(shards_dir: str) -> dict[str, np.ndarray]:
    """The manifest's key, split, shard and valid_samples columns as arrays, read once per process."""
    if shards_dir not in _MANIFESTS:
        table = read_manifest(shards_dir)
        _MANIFESTS[shards_dir] = {
            c: np.asarray(table.column(c).to_pylist(), dtype=object if c != "valid_samples" else np.int64)
            for c in ("key", "split", "shard", "valid_samples")
        }
    return _MANIFESTS[shards_dir]


def _tar_path(shards_dir: str, split: str, shard: Any) -> str:
    """Where a manifest ``shard`` entry lives: a path relative to the shards dir, a file name in
    the split's folder, or a shard number."""
    if isinstance(shard, (int, np.integer)) or str(shard).isdigit():
        return join(shards_dir, split, SHARD_PATTERN.format(int(shard)))
    shard = str(shard)
    if "://" in shard or shard.startswith("/"):
        return shard
    candidate = join(shards_dir, shard)
    return candidate if "/" in shard and exists(candidate) else join(shards_dir, split, shard.rsplit("/", 1)[-1])


class TarIndex:
    """Where each key's first member header starts in one tar, learnt while reading it.

    ``frontier``: every member whose header starts before it is indexed, so a key not in ``start``
    lies at or after it. A block's read seeks to its first key (or to the frontier) instead of
    re-reading the tar from its beginning: without this, the 8th block of a 256-clip tar re-read
    the 7 blocks before it.
    """

    def __init__(self):
        self.start: dict[str, int] = {}
        self.frontier = 0

    def seek_point(self, keys: set[str]) -> int:
        known = [self.start[k] for k in keys if k in self.start]
        return min(known) if len(known) == len(keys) else min([self.frontier, *known])


class ShardClipSource:
    """Block ``[start, stop)`` of manifest rows -> ``row, wave [n, clip_samples], valid_samples, split``.

    Reads only the tars that hold the block's keys, from the block's first member on (see
    :class:`TarIndex`), and decodes only those keys' FLAC members.
    """

    TARS_INDEXED = 8  # an actor's blocks mostly walk a few tars in order; older indexes are dropped

    def __init__(self, shards_dir: str, clip_samples: int):
        self.shards_dir = str(shards_dir)
        self.clip_samples = int(clip_samples)
        self._indexes: dict[str, TarIndex] = {}

    def __getstate__(self):  # what is learnt about tars stays in the process that learnt it
        return {**self.__dict__, "_indexes": {}}

    def _index(self, tar_path: str) -> TarIndex:
        index = self._indexes.pop(tar_path, None) or TarIndex()
        self._indexes[tar_path] = index  # most recently used last
        while len(self._indexes) > self.TARS_INDEXED:
            self._indexes.pop(next(iter(self._indexes)))
        return index

    def _read_tar(self, tar_path: str, tar_keys: set[str]):
        """Yield ``(key, clip)`` for each of ``tar_keys`` in ``tar_path``, stopping after the last one."""
        index = self._index(tar_path)
        offset = index.seek_point(tar_keys)
        contiguous = offset <= index.frontier  # this read extends the indexed prefix
        members: dict[str, dict[str, bytes]] = {}
        left = len(tar_keys)
        with open_file(tar_path) as raw:
            raw.seek(offset)
            # "r:" (seekable) rather than "r|": skipped members are seeked over, not read.
            with tarfile.open(fileobj=raw, mode="r:") as tar:
                for member in tar:
                    name = member.name.rsplit("/", 1)[-1]
                    key, _, ext = name.partition(".")  # keys hold no dots (DESIGN.md §3)
                    index.start.setdefault(key, member.offset)
                    if contiguous:
                        index.frontier = max(index.frontier, member.offset)
                    if key not in tar_keys or ext not in ("flac", "json") or not member.isfile():
                        continue
                    entry = members.setdefault(key, {})
                    entry[ext] = tar.extractfile(member).read()
                    if len(entry) == 2:
                        yield key, decode_clip(entry.pop("flac"), json.loads(entry.pop("json")), key)
                        left -= 1
                        if not left:  # every key of this block that lives in this tar is read: stop here
                            break

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        m = manifest_columns(self.shards_dir)
        keys = m["key"][start:stop]
        wanted = {str(k): i for i, k in enumerate(keys)}
        by_tar: dict[str, set[str]] = {}
        where: dict[tuple[str, str], str] = {}  # one lookup per tar, not per key
        for k, split, shard in zip(keys, m["split"][start:stop], m["shard"][start:stop]):
            tar = where.get((str(split), str(shard))) or where.setdefault(
                (str(split), str(shard)), _tar_path(self.shards_dir, str(split), shard))
            by_tar.setdefault(tar, set()).add(str(k))
        wave = np.zeros((stop - start, self.clip_samples), dtype=np.float32)
        found = np.zeros(stop - start, dtype=bool)
        for tar_path, tar_keys in sorted(by_tar.items()):
            for key, clip in self._read_tar(tar_path, tar_keys):
                if clip["wave"].shape != (self.clip_samples,):
                    raise SpressoError(f"{tar_path}: clip {key} has {clip['wave'].size} samples, expected {self.clip_samples}")
                wave[wanted[key]] = clip["wave"]
                found[wanted[key]] = True
        if not found.all():
            missing = [str(k) for k, f in zip(keys, found) if not f]
            raise SpressoError(f"{self.shards_dir}: {len(missing)} clips of the manifest are not in their tars (e.g. {missing[0]})")
        return {
            ROW: np.arange(start, stop, dtype=np.int64),
            "wave": wave,
            "valid_samples": m["valid_samples"][start:stop].astype(np.int64),
            "split": np.asarray(m["split"][start:stop], dtype=str),
        }


# -- the mapper: clips -> x0 (one per actor) -----------------------------------------------------
def valid_frame_count(valid_samples: np.ndarray, hop: int, frames: int) -> np.ndarray:
    """Frames that see real audio: ceil(valid / hop), capped at the clip's frame count."""
    return np.minimum(-(-np.asarray(valid_samples, dtype=np.int64) // hop), frames).astype(np.int32)


def frame_sums(x0: np.ndarray, valid_frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row, per-channel sum and sum of squares of ``x0 [B, C, T]`` over each row's valid frames."""
    x = x0.astype(np.float64)
    mask = (np.arange(x.shape[-1])[None, :] < np.asarray(valid_frames)[:, None])[:, None, :]
    x = np.where(mask, x, 0.0)
    return x.sum(-1), (x * x).sum(-1)


class EncodeLatents:
    """Ray Data actor: loads the AudioAE once, maps wave batches to x0 rows of the cache.

    Runs in float32 on whatever device the actor got (GPU when Ray gave it one): the cache is
    stored in float16, and bf16 autocast would throw away more mantissa than float16 keeps.
    """

    def __init__(self, checkpoint_dir: str):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_audioae(checkpoint_dir, map_location=self.device).eval()
        self.hop = self.model.hop

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wave = torch.from_numpy(np.ascontiguousarray(batch["wave"], dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            x0 = self.model.encode(wave).float().cpu().numpy().astype(np.float16)
        valid = valid_frame_count(batch["valid_samples"], self.hop, x0.shape[-1])
        s, sq = frame_sums(x0, valid)
        return {ROW: batch[ROW], "x0": x0, "valid_frames": valid, "split": batch["split"], "x0_sum": s, "x0_sqsum": sq}


# -- statistics ----------------------------------------------------------------------------------
def channel_stats(cache: ClipCache, split: str = "train") -> tuple[list[float], list[float], int]:
    """Per-channel mean and std of x0 over the valid frames of ``split`` (all splits if it has none)."""
    rows = cache.rows_where("split", split)
    if rows.size == 0:
        log.warning("%s: no done rows in split '%s'; x0 statistics use every split", cache.path, split)
        rows = np.flatnonzero(cache.done())
    frames = int(cache.read("valid_frames", rows).astype(np.int64).sum()) if rows.size else 0
    if frames == 0:
        raise SpressoError(f"{cache.path}: no valid frames to compute x0 statistics from")
    total = cache.read("x0_sum", rows).sum(0)
    total_sq = cache.read("x0_sqsum", rows).sum(0)
    mean = total / frames
    var = np.maximum(total_sq / frames - mean * mean, 0.0)
    # A dead channel would divide by zero when the DiT normalises: floor its std.
    std = np.sqrt(np.maximum(var, 1e-12))
    return [float(v) for v in mean], [float(v) for v in std], frames


# -- lineage -------------------------------------------------------------------------------------
def shards_digest(shards_dir: str) -> str:
    """The dataset digest `spresso shard` recorded, else a digest of the manifest file."""

    try:
        info = read_dataset_info(shards_dir)
    except SpressoError:
        info = {}
    for k in ("digest", "dataset_digest", "sha256"):
        if isinstance(info.get(k), str) and info[k]:
            return info[k]
    with open_file(join(shards_dir, MANIFEST)) as f:
        return digest_bytes(f.read())


def audioae_run_id(checkpoint_dir: str, digest: str, cfg: SpressoConfig) -> str:
    """The MLflow run that produced the checkpoint: from its metadata, else by its output digest."""

    meta = read_checkpoint_config(checkpoint_dir, CHECKPOINT_KIND).get("meta", {})
    for k in ("mlflow_run_id", "run_id"):
        if meta.get(k):
            return str(meta[k])
    try:
        client = MlflowClient(tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri))
        exp = client.get_experiment_by_name(cfg.runtime.experiment)
        if exp is not None:
            for run in client.search_runs([exp.experiment_id], max_results=200, order_by=["attributes.start_time DESC"]):
                if any(t.startswith("spresso.output.") and t.endswith(".digest") and v == digest for t, v in run.data.tags.items()):
                    return run.info.run_id
    except Exception as err:  # lineage lookup must not block the stage
        log.warning("could not look up the AudioAE run in MLflow: %s", err)
    return ""


def cache_digest(cache: ClipCache) -> str:
    """A digest of what determines the cache's content: layout, keys, lineage and statistics.

    The content is a deterministic function of the AudioAE and the shards, so this is cheap
    where hashing hundreds of GB of chunks is not.
    """

    return digest_json({"layout": cache.layout, "attrs": cache.attrs, LAYOUT_ATTR: True})


# -- the stage -----------------------------------------------------------------------------------
def latent_arrays(latent_dim: int, frames: int) -> dict[str, tuple[tuple[int, ...], str]]:
    return {
        "x0": ((latent_dim, frames), "float16"),
        "valid_frames": ((), "int32"),
        "split": ((), "str"),
        "x0_sum": ((latent_dim,), "float64"),
        "x0_sqsum": ((latent_dim,), "float64"),
    }


def _resolve_inputs(cfg: SpressoConfig, audioae_dir: str | None, shards_dir: str | None) -> tuple[str, str]:
    audioae_dir = storage.absolute(audioae_dir or storage.join(cfg.path(cfg.audioae.checkpoint_dir), "final"))
    shards_dir = shards_dir or cfg.path(cfg.data.shards_dir)
    if not has_checkpoint(audioae_dir):
        raise SpressoError(f"no AudioAE checkpoint at {audioae_dir}: run `spresso train audioae` or pass --audioae DIR")
    return audioae_dir, shards_dir


def open_or_create_cache(cfg: SpressoConfig, audioae_dir: str, shards_dir: str, *, overwrite: bool = False,
                         replace_stale: bool = False) -> ClipCache:
    """Size the x0 cache from the manifest and the checkpoint's model settings (no model loaded)."""

    model_cfg = read_checkpoint_config(audioae_dir, CHECKPOINT_KIND)["config"]["audioae"]["model"]
    hop, latent_dim, sr = int(model_cfg["hop"]), int(model_cfg["latent_dim"]), int(model_cfg["sample_rate"])
    clip_samples = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    if sr != cfg.data.sample_rate or clip_samples % hop:
        raise SpressoError(f"AudioAE at {audioae_dir} ({sr} Hz, hop {hop}) does not fit {clip_samples}-sample clips at {cfg.data.sample_rate} Hz")
    keys = [str(k) for k in read_manifest(shards_dir).column("key").to_pylist()]
    digest = digest_tree(audioae_dir)
    attrs = {
        "audioae_run_id": audioae_run_id(audioae_dir, digest, cfg),
        "audioae_digest": digest,
        "shards_digest": shards_digest(shards_dir),
        "frame_rate": sr / hop,
        "hop": hop,
        "clip_samples": clip_samples,
    }
    return ClipCache.create(
        cfg.path(cfg.audioae.latents_path), keys, latent_arrays(latent_dim, clip_samples // hop),
        cfg.audioae.cache.chunk_clips, attrs, overwrite=overwrite, replace_stale=replace_stale,
    )


def _stage_key(cache: ClipCache) -> str:
    a = cache.attrs
    return digest_json({"stage": STAGE, "audioae": a["audioae_digest"], "shards": a["shards_digest"], "layout": cache.layout})


def precompute_latents(
    cfg: SpressoConfig,
    audioae_dir: str | None = None,
    shards_dir: str | None = None,
    *,
    overwrite: bool = False,
    replace_stale: bool = False,
    max_blocks: int | None = None,
    mapper: type = EncodeLatents,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> str:
    """Fill (or finish) the x0 cache and return its path.

    A complete cache from the same AudioAE and shards whose MLflow run finished is reused
    without a new run. ``mapper`` is the actor class (a subclass may wrap the encoder).
    """

    audioae_dir, shards_dir = _resolve_inputs(cfg, audioae_dir, shards_dir)
    cache = open_or_create_cache(cfg, audioae_dir, shards_dir, overwrite=overwrite, replace_stale=replace_stale)
    key = _stage_key(cache)
    attrs = cache.attrs
    if cache.complete and "x0_mean" in attrs:
        uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
        exp = ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir)
        if find_finished_run(uri, exp, STAGE, key) is not None:
            log.info("x0 cache %s is complete and recorded; reusing it", cache.path)
            return cache.path

    upstream = {"train_audioae": attrs["audioae_run_id"]} if attrs.get("audioae_run_id") else None
    with stage_run(STAGE, cfg, key=key, upstream=upstream, parent_run_id=parent_run_id) as run:
        run.log_input("shards", shards_dir, attrs["shards_digest"])
        run.log_input("audioae", audioae_dir, attrs["audioae_digest"], context="model")
        c = cfg.audioae.cache
        source = ShardClipSource(shards_dir, int(attrs["clip_samples"]))
        report = fill_cache(
            cache, source, mapper, {"checkpoint_dir": storage.absolute(audioae_dir)},
            batch_size=c.batch_size, pool=c, runtime=cfg.runtime, max_blocks=max_blocks,
            progress=progress, desc="x0",
        )
        metrics = {"rows_written": report.rows_written, "blocks_written": report.blocks_written,
                   "blocks_total": report.blocks_total, "seconds": report.seconds}
        if report.rows_written:
            audio_s = report.rows_written * float(attrs["clip_samples"]) / cfg.data.sample_rate
            metrics.update(clips_per_second=report.rows_per_second, audio_seconds_per_second=audio_s / report.seconds)
        if cache.complete:
            mean, std, frames = channel_stats(cache)
            new = {"x0_mean": mean, "x0_std": std, "x0_stats_frames": frames}
            if any(cache.attrs.get(k) != v for k, v in new.items()):  # a no-op rerun writes nothing
                cache.update_attrs(**new)
            metrics.update(x0_mean_avg=float(np.mean(mean)), x0_std_avg=float(np.mean(std)), stats_frames=frames)
        run.log_metrics(metrics)
        run.log_params({"latents.n_rows": cache.n_rows, "latents.chunk_rows": cache.chunk_rows})
        if cache.complete:
            run.log_output("x0_cache", cache.path, cache_digest(cache))
        else:
            done = int(cache.done().sum())
            run.set_tags({"spresso.partial": f"{done}/{cache.n_rows} rows done"})
            log.info("x0 cache %s: %d of %d rows done (rerun to continue)", cache.path, done, cache.n_rows)
    return cache.path


# -- readers for the diffusion stages ------------------------------------------------------------
def x0_dataset(path: str, split: str = "train", arrays: tuple[str, ...] = ("x0", "valid_frames", "keys")):
    """A :class:`~spresso.data.zarr_cache.CacheDataset` over the done rows of one split.

    Wrap it in a ``torch.utils.data.DataLoader(shuffle=True, num_workers=N)`` for random clip
    batches; each worker opens the cache itself, so forked workers are safe.
    """

    cache = ClipCache.open(path, mode="r")
    rows = cache.rows_where("split", split)
    if rows.size == 0:
        raise SpressoError(f"{path}: no finished rows in split '{split}' (run `spresso precompute-latents`)")
    return CacheDataset(path, list(arrays), rows=rows)


def x0_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean, std)`` of x0 as float32 arrays ``[128]`` (what the DiT normalises with)."""
    attrs = ClipCache.open(path, mode="r").attrs
    if "x0_mean" not in attrs:
        raise SpressoError(f"{path}: the x0 cache is not complete yet (no statistics); rerun `spresso precompute-latents`")
    return np.asarray(attrs["x0_mean"], np.float32), np.asarray(attrs["x0_std"], np.float32)
