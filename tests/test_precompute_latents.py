"""The x0 stage: cache rows equal direct encoding, reruns write nothing, a killed job resumes."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from mlflow.tracking import MlflowClient

from spresso.config import load_config
from spresso.core.checkpoint import save_checkpoint
from spresso.core.errors import SpressoError
from spresso.data.latents import (
    channel_stats,
    frame_sums,
    latent_arrays,
    precompute_latents,
    valid_frame_count,
    x0_dataset,
    x0_stats,
)
from spresso.data.precompute import fill_cache
from spresso.data.reader import iter_clips, read_manifest, shard_paths
from spresso.data.zarr_cache import ClipCache
from spresso.models.audioae import AudioAE

REPO = Path(__file__).resolve().parents[1]
SR = 48000
CLIP_SECONDS = 0.5  # 24000 samples -> 50 frames: the layout of 5 s clips at a tenth of the cost
SPLITS = {"train": 5, "valid": 2, "test": 2}
TINY_MODEL = ["audioae.model.width=16", "audioae.model.blocks=1", "audioae.model.intermediate=32"]


def write_tiny_shards(out: Path, splits=SPLITS, clip_seconds=CLIP_SECONDS, clips_per_shard=3, seed=0) -> Path:
    """Shards per contract 1: <split>/shard-NNNNNN.tar with <key>.flac + <key>.json, and the manifest."""
    rng = np.random.default_rng(seed)
    n = int(clip_seconds * SR)
    rows = []
    for split, count in sorted(splits.items()):
        keys = sorted(f"{split}_clip{i:03d}" for i in range(count))
        for s in range(0, count, clips_per_shard):
            name = f"shard-{s // clips_per_shard:06d}.tar"
            (out / split).mkdir(parents=True, exist_ok=True)
            with tarfile.open(out / split / name, "w") as tar:
                for key in keys[s : s + clips_per_shard]:
                    valid = int(rng.integers(n // 4, n + 1))
                    t = np.arange(n) / SR
                    wave = np.zeros(n, np.float32)
                    wave[:valid] = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t[:valid]) * np.exp(-3 * t[:valid])
                                    + 0.05 * rng.standard_normal(valid)).astype(np.float32)
                    buf = io.BytesIO()
                    sf.write(buf, wave, SR, format="FLAC", subtype="PCM_16")
                    meta = {"key": key, "sample_rate": SR, "valid_samples": valid, "caption": f"tone {key}", "split": split}
                    for ext, data in (("flac", buf.getvalue()), ("json", json.dumps(meta).encode())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    rows.append({"key": key, "split": split, "shard": f"{split}/{name}", "source": f"{key}.wav",
                                 "offset_seconds": 0.0, "valid_samples": valid, "caption": f"tone {key}"})
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    (out / "dataset.json").write_text(json.dumps({"digest": f"tiny-{seed}-{len(rows)}", "clips": len(rows)}))
    return out


def make_config(workdir: Path, *extra: str):
    return load_config("demo", [
        f"workdir={workdir}", f"runtime.mlflow_tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        f"data.clip_seconds={CLIP_SECONDS}", "audioae.cache.chunk_clips=2", "audioae.cache.batch_size=3",
        "audioae.cache.actors=1", "runtime.actor_cpus=0.25", *TINY_MODEL, *extra,
    ])


def save_tiny_audioae(cfg, directory: Path, seed: int = 0) -> AudioAE:
    torch.manual_seed(seed)
    model = AudioAE.from_config(cfg.audioae.model).eval()
    save_checkpoint(directory, model.state_dict(), kind="audioae", config=cfg.to_dict(), meta={"mlflow_run_id": "run-of-audioae"})
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    shards = write_tiny_shards(root / "shards")
    cfg = make_config(root / "work")
    model = save_tiny_audioae(cfg, root / "ae")
    return {"root": root, "shards": shards, "cfg": cfg, "model": model, "ae": root / "ae"}


def tree_mtimes(path: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(path).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def filled(setup, ray_local):
    path = precompute_latents(setup["cfg"], str(setup["ae"]), str(setup["shards"]), progress=False)
    return ClipCache.open(path, mode="r")


def test_cache_rows_equal_direct_encoding(setup, filled):
    manifest = read_manifest(str(setup["shards"]))
    assert filled.keys == manifest.column("key").to_pylist()
    assert filled.complete and filled.n_rows == 9 and filled.chunk_rows == 2
    x0 = filled.read("x0")
    assert x0.shape == (9, 128, 50) and x0.dtype == np.float16
    clips = {c["key"]: c for s in SPLITS for c in iter_clips(shard_paths(str(setup["shards"]), s))}
    wave = torch.from_numpy(np.stack([clips[k]["wave"] for k in filled.keys]))
    with torch.inference_mode():
        direct = setup["model"].encode(wave)
        np.testing.assert_allclose(x0.astype(np.float32), direct.numpy(), rtol=2e-3, atol=2e-3)
        # Decoding the cached rows gives the audio of decoding the direct latents.
        dec_cache = setup["model"].decode(torch.from_numpy(x0.astype(np.float32)))
        dec_direct = setup["model"].decode(direct.half().float())
        np.testing.assert_allclose(dec_cache.numpy(), dec_direct.numpy(), atol=1e-4)
    valid = np.array([clips[k]["valid_samples"] for k in filled.keys])
    np.testing.assert_array_equal(filled.read("valid_frames"), -(-valid // 480))
    assert list(filled.read("split")) == manifest.column("split").to_pylist()
    attrs = filled.attrs
    assert attrs["audioae_run_id"] == "run-of-audioae"
    assert attrs["shards_digest"] == "tiny-0-9" and attrs["frame_rate"] == 100.0
    assert len(attrs["audioae_digest"]) == 64
    assert len(attrs["x0_mean"]) == len(attrs["x0_std"]) == 128
    mean, std = x0_stats(filled.path)
    np.testing.assert_allclose(mean, attrs["x0_mean"], rtol=1e-6)
    valid_ds = x0_dataset(filled.path, "valid")
    assert len(valid_ds) == 2 and valid_ds[1]["keys"] == "valid_clip001"

    # One FINISHED MLflow run with its inputs, upstream and output recorded.
    client = MlflowClient(setup["cfg"].runtime.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(setup["cfg"].runtime.experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`spresso.stage` = 'precompute_latents'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    tags = runs[0].data.tags
    assert tags["spresso.input.shards.digest"] == "tiny-0-9"
    assert tags["spresso.input.audioae.digest"] == attrs["audioae_digest"]
    assert tags["spresso.upstream.train_audioae"] == "run-of-audioae"
    assert tags["spresso.output.x0_cache.uri"] == filled.path
    assert {d.dataset.name for d in runs[0].inputs.dataset_inputs} == {"shards", "audioae"}
    assert runs[0].data.metrics["rows_written"] == 9


def test_actors_write_the_blocks_and_the_driver_receives_a_few_numbers_per_block(setup, filled, ray_local, monkeypatch,
                                                                                 tmp_path):
    """Two actors fill the cache themselves; what reaches the driver is seven numbers per block:
    (start, stop, rows) and when, where and with how much CPU it ran."""
    received = []
    real_iter = ray_local.data.Dataset.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real_iter(self, *args, **kwargs):
            received.append({name: np.asarray(col).nbytes for name, col in batch.items()})
            yield batch

    monkeypatch.setattr(ray_local.data.Dataset, "iter_batches", spy)
    cfg = make_config(tmp_path / "work", "audioae.cache.actors=2")
    cache = ClipCache.open(precompute_latents(cfg, str(setup["ae"]), str(setup["shards"]), progress=False), mode="r")
    assert cache.complete and cache.keys == filled.keys
    np.testing.assert_array_equal(cache.read("x0"), filled.read("x0"))  # same cache as one actor wrote
    assert received and all(set(r) == {"start", "stop", "rows", "began", "ended", "cpu", "pid"} for r in received)
    assert sum(sum(r.values()) for r in received) == 7 * 8 * len(cache.blocks())  # no clip or latent came back


def test_rerun_writes_nothing(setup, filled):
    before = tree_mtimes(filled.path)
    path = precompute_latents(setup["cfg"], str(setup["ae"]), str(setup["shards"]), progress=False)
    assert path == filled.path and tree_mtimes(path) == before
    # Even a fill that bypasses the stage's reuse finds nothing to do.
    report = fill_cache(ClipCache.open(path), lambda a, b: {}, object, batch_size=2)
    assert report.rows_written == 0 and report.blocks_written == 0
    assert tree_mtimes(path) == before
    # Another AudioAE must not be mixed into this cache.
    other = setup["root"] / "ae-other"
    save_tiny_audioae(setup["cfg"], other, seed=1)
    with pytest.raises(SpressoError, match="audioae_digest"):
        precompute_latents(setup["cfg"], str(other), str(setup["shards"]), progress=False)


def test_x0_stats_on_known_data(tmp_path):
    rng = np.random.default_rng(1)
    n, c, t = 6, 128, 10
    cache = ClipCache.create(tmp_path / "s.zarr", [f"k{i}" for i in range(n)], latent_arrays(c, t), 4)
    x0 = (rng.standard_normal((n, c, t)) * np.linspace(0.5, 3, c)[None, :, None] + np.arange(c)[None, :, None] / 10).astype(np.float16)
    valid = np.array([10, 3, 0, 7, 10, 5], np.int32)
    split = np.array(["train", "train", "train", "valid", "train", "test"])
    s, sq = frame_sums(x0, valid)
    for a, b in cache.blocks():
        cache.write_block(a, b, x0=x0[a:b], valid_frames=valid[a:b], split=split[a:b], x0_sum=s[a:b], x0_sqsum=sq[a:b])
    mean, std, frames = channel_stats(cache)
    # Reference: the frames of train rows that hold audio, gathered explicitly.
    frames_ref = np.concatenate([x0[i, :, : valid[i]].astype(np.float64) for i in range(n) if split[i] == "train"], axis=1)
    assert frames == frames_ref.shape[1] == 23
    np.testing.assert_allclose(mean, frames_ref.mean(1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, frames_ref.std(1), rtol=1e-7)
    np.testing.assert_array_equal(valid_frame_count([0, 1, 480, 481, 24000, 30000], 480, 50), [0, 1, 1, 2, 50, 50])


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from spresso.config import load_config
    from spresso.data.latents import EncodeLatents, precompute_latents

    class SlowEncode(EncodeLatents):
        # Slow enough that the parent can kill this job between two blocks.
        def __call__(self, batch):
            time.sleep(0.5)
            return super().__call__(batch)

    workdir, ae, shards, *overrides = sys.argv[1:]
    cfg = load_config("demo", overrides)
    precompute_latents(cfg, ae, shards, mapper=SlowEncode, progress=False)
""")


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_cache(setup, filled, tmp_path, ray_local):
    work = tmp_path / "work"
    cfg = make_config(work, "audioae.cache.batch_size=2")
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    overrides = [f"workdir={work}", f"runtime.mlflow_tracking_uri={cfg.runtime.mlflow_tracking_uri}", f"data.clip_seconds={CLIP_SECONDS}",
                 "audioae.cache.chunk_clips=2", "audioae.cache.batch_size=2", "runtime.actor_cpus=0.25", *TINY_MODEL]
    proc = subprocess.Popen([sys.executable, str(script), str(work), str(setup["ae"]), str(setup["shards"]), *overrides],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache_path = cfg.path(cfg.audioae.latents_path)
    deadline = time.time() + 120
    done = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            if ClipCache.exists(cache_path):
                done = int(ClipCache.open(cache_path, mode="r").done().sum())
                if done >= 2:
                    break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job's own process group, as a crash would
        _, err = proc.communicate(timeout=30)
    assert 2 <= done < 9, f"job was not caught mid-way (done={done}): {err.decode()[-2000:]}"
    partial = ClipCache.open(cache_path, mode="r")
    assert 0 < len(partial.missing_blocks()) < len(partial.blocks())

    precompute_latents(cfg, str(setup["ae"]), str(setup["shards"]), progress=False)
    resumed = ClipCache.open(cache_path, mode="r")
    assert resumed.complete
    np.testing.assert_allclose(resumed.read("x0").astype(np.float32), filled.read("x0").astype(np.float32), atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(resumed.read("valid_frames"), filled.read("valid_frames"))
    np.testing.assert_allclose(resumed.attrs["x0_mean"], filled.attrs["x0_mean"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(resumed.attrs["x0_std"], filled.attrs["x0_std"], rtol=1e-3, atol=1e-4)
