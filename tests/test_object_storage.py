"""The one storage layer on a real S3 protocol (moto's server): what every stage relies on.

Configured by the standard AWS variables only (the ``s3_bucket`` fixture sets nothing else).
"""
from __future__ import annotations

import time
from pathlib import Path

import botocore.exceptions
import numpy as np
import pyarrow.fs
import pytest
import torch

from spresso.core import storage
from spresso.core.bundle_io import read_bundle_manifest
from spresso.core.checkpoint import (
    has_checkpoint,
    load_weights,
    read_checkpoint_config,
    save_checkpoint,
)
from spresso.core.digest import digest_tree
from spresso.core.errors import BundleError, SpressoError
from spresso.pipeline.cache import content_digest, external_fingerprint


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_write_read_list_and_parent_on_s3(s3_bucket):
    url = storage.join(s3_bucket, "a", "b.txt")
    storage.write_text(url, "hello")
    assert storage.read_text(url) == "hello" and storage.is_file(url) and storage.exists(storage.join(s3_bucket, "a"))
    assert storage.list_files(s3_bucket) == ["a/b.txt"]
    assert storage.parent(url) == f"{s3_bucket}/a" and storage.parent("/x/y/z") == "/x/y"


def test_replace_tree_leaves_exactly_the_new_files(s3_bucket, tmp_path):
    dest = storage.join(s3_bucket, "ckpt")
    storage.replace_tree(_tree(tmp_path / "one", {"old.bin": b"1", "config.json": b"{}"}), dest)
    storage.replace_tree(_tree(tmp_path / "two", {"model.safetensors": b"2", "sub/x": b"3", "config.json": b"{}"}), dest)
    assert storage.list_files(dest) == ["config.json", "model.safetensors", "sub/x"]
    # the same call on a local folder gives the same tree
    local = tmp_path / "local"
    storage.replace_tree(tmp_path / "one", local)
    storage.replace_tree(tmp_path / "two", local)
    assert storage.list_files(local) == storage.list_files(dest)


def test_staged_uploads_only_on_success_and_keeps_existing_files(s3_bucket):
    dest = storage.join(s3_bucket, "eval")
    with storage.staged(dest) as local:
        (local / "cache.npz").write_bytes(b"c")
    with pytest.raises(RuntimeError):
        with storage.staged(dest) as local:
            assert (local / "cache.npz").read_bytes() == b"c"  # fetched: a cache survives across runs
            (local / "half.txt").write_text("x")
            raise RuntimeError("writer failed")
    assert storage.list_files(dest) == ["cache.npz"]  # nothing of the failed writer reached the bucket
    with storage.staged(dest, replace=True) as local:
        assert not any(local.iterdir())
        (local / "report.html").write_text("r")
    assert storage.list_files(dest) == ["report.html"]


def test_digest_of_a_url_tree_is_real(s3_bucket, tmp_path):
    src = _tree(tmp_path / "t", {"a": b"alpha", "d/b": b"beta"})
    url = storage.join(s3_bucket, "t")
    storage.replace_tree(src, url)
    assert digest_tree(url) == digest_tree(src)  # same files, same digest, wherever they are
    other = storage.join(s3_bucket, "u")
    storage.replace_tree(_tree(tmp_path / "u", {"a": b"alpha", "d/b": b"BETA!"}), other)
    assert digest_tree(other) != digest_tree(url)
    before = (content_digest(url), external_fingerprint(url))
    storage.write_bytes(storage.join(url, "d/b"), b"beta2")
    assert content_digest(url) != before[0] and external_fingerprint(url) != before[1]


def test_checkpoints_on_s3(s3_bucket):
    url = storage.join(s3_bucket, "audioae", "final")
    assert not has_checkpoint(url)
    save_checkpoint(url, {"w": torch.arange(4.0)}, kind="toy", config={"x": 1}, meta={"step": 3})
    assert has_checkpoint(url)
    assert read_checkpoint_config(url, kind="toy")["meta"]["step"] == 3
    assert torch.equal(load_weights(url)["w"], torch.arange(4.0))


def test_ray_train_storage_goes_through_the_same_client(s3_bucket):
    fs, path = storage.arrow_filesystem(storage.join(s3_bucket, "ray_train"))
    assert isinstance(fs, pyarrow.fs.PyFileSystem)
    with fs.open_output_stream(f"{path}/run/marker") as f:
        f.write(b"m")
    assert storage.read_bytes(storage.join(s3_bucket, "ray_train", "run", "marker")) == b"m"
    assert storage.arrow_filesystem("relative/dir")[0] is None


def test_a_missing_bucket_is_one_line_naming_the_url_within_seconds(s3_bucket):
    url = s3_bucket + "-missing/work"
    start = time.monotonic()
    with pytest.raises(SpressoError) as err:
        storage.check_store(url)
    assert time.monotonic() - start < 10
    assert str(err.value) == f"{url}: no such bucket"
    storage.check_store(storage.join(s3_bucket, "work"))  # the real bucket passes
    assert not storage.exists(storage.join(s3_bucket, "work", ".spresso-write-check"))  # and is left clean


def test_an_unreachable_endpoint_is_one_line_within_seconds(s3_bucket, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(SpressoError) as err:
        storage.check_store(storage.join(s3_bucket, "work"))
    assert time.monotonic() - start < 10
    assert str(err.value) == f"{s3_bucket}/work: cannot reach http://127.0.0.1:{port} (AWS_ENDPOINT_URL)"


@pytest.mark.parametrize("code, expected", [
    ("InvalidAccessKeyId", "access refused"), ("SignatureDoesNotMatch", "access refused"),
    ("NoSuchBucket", "no such bucket"), ("SlowDown", "ClientError"),
])
def test_store_errors_are_described_in_one_line(code, expected):
    err = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")
    text = storage.describe_error(err)
    assert text.startswith(expected) and "\n" not in text


def test_a_bundle_loads_from_the_bucket(s3_bucket, tmp_path):
    from codec_toys import shared_bundle

    import spresso

    local = shared_bundle()
    url = storage.join(s3_bucket, "bundles", "d1")
    storage.replace_tree(local, url)
    assert read_bundle_manifest(url) == read_bundle_manifest(local)
    wave = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    remote, here = spresso.load(url), spresso.load(local)
    data = remote.encode(wave, 48000)
    assert data == here.encode(wave, 48000)
    (a, rate_a), (b, rate_b) = remote.decode(data, steps=2), here.decode(data, steps=2)
    np.testing.assert_array_equal(a, b)
    assert rate_a == rate_b
    with pytest.raises(BundleError, match="no such bundle"):
        read_bundle_manifest(storage.join(s3_bucket, "bundles", "nope"))


@pytest.mark.slow
def test_the_whole_dag_runs_on_a_bucket_and_writes_nothing_locally(s3_bucket, tmp_path, monkeypatch):
    """Every stage of the real DAG (tiny sizes) with workdir s3://: outputs in the bucket, nothing on
    the local disk but the MLflow database, a rerun reuses every stage, and the bundle decodes from the
    bucket. (2 Ray Train workers checkpointing into the bucket: the reduced rehearsal, tests/test_rehearsal.py.)"""
    import fsspec
    import ray
    from test_pipeline_real import tiny_config

    import spresso
    from spresso.audio.synth import synth_corpus
    from spresso.pipeline import run_pipeline

    cwd, db = tmp_path / "cwd", tmp_path / "mlflow"
    cwd.mkdir(), db.mkdir()
    synth_corpus(tmp_path / "corpus", 1.5, seed=3)
    work = storage.join(s3_bucket, "work")
    fsspec.filesystem("s3").put(str(tmp_path / "corpus") + "/", storage.join(work, "corpus") + "/", recursive=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db / 'mlflow.db'}")
    monkeypatch.chdir(cwd)
    if ray.is_initialized():  # the workers must start with this environment (the AWS variables)
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = tiny_config(work)
        first = run_pipeline(cfg, progress=False)
        assert first.ok, first.table()
        again = run_pipeline(cfg, progress=False)
    finally:
        ray.shutdown()
    assert {o.status for o in again.outcomes.values()} == {"reused"}, again.table()
    for outcome in first.outcomes.values():
        for art in outcome.outputs.values():
            assert art.uri.startswith(work + "/"), (outcome.name, art.uri)
    tops = {name.split("/", 1)[0] for name in storage.list_files(work)}
    assert {"shards", "audioae", "latents", "dit", "dae", "qinco2", "bundles", "eval"} <= tops
    assert not any(cwd.iterdir()), sorted(p.name for p in cwd.iterdir())
    assert sorted(p.name for p in db.iterdir()) == ["mlflow.db"]
    codec = spresso.load(first.outcomes["export@d1"].outputs["bundle"].uri)
    wave, rate = codec.decode(codec.encode(np.zeros(48000, np.float32) + 0.01 * np.sin(np.arange(48000)), 48000), steps=2)
    assert rate == 48000 and wave.shape[-1] == 48000


def test_a_store_refusal_outside_a_stage_check_is_one_cli_line(s3_bucket, monkeypatch, capsys):
    from spresso.cli import main

    monkeypatch.delenv("AWS_ACCESS_KEY_ID"), monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"), monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert main(["export", "--set", f"workdir={s3_bucket}/w", "--out", "bundles/d1", "--stage", "/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: access refused") and "\n" not in err and "Traceback" not in err, err
