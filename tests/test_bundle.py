"""Codec bundles: export from real checkpoints, strict load, version/corruption errors, MLflow registry."""
import json
import shutil

import numpy as np
import pytest
import torch
from codec_toys import config, make_checkpoints, shared_bundle
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import spresso
from spresso.codec.bitstream import BitstreamError
from spresso.codec.bundle import load_bundle
from spresso.core.bundle_io import MANIFEST
from spresso.core.bundle_io import read_bundle_manifest as read_manifest
from spresso.core.errors import BundleError, SpressoError
from spresso.diffusion.checkpoints import load_dae
from spresso.diffusion.reconstruct import null_text
from spresso.train.export import export, export_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return shared_bundle()


def test_export_is_self_contained_with_merged_lora_and_content_hash(bundle, tmp_path):
    files = sorted(p.name for p in bundle.iterdir())
    assert files == ["audioae.safetensors", "bundle.json", "dae.safetensors", "quantizer.safetensors"]
    m = read_manifest(bundle)
    assert m["format_version"] == 2 and m["mode"] == "discrete" and (m["K"], m["M"], m["m"], m["t"]) == (16, 4, 3, 100)
    assert len(m["normalizer"]["x0_mean"]) == 8 and len(m["model_id"]) == 64
    with safe_open(str(bundle / "dae.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("lora_" in k or "base_layer" in k for k in keys)  # LoRA merged into plain layers
    assert any(k.startswith("encoder.") for k in keys) and any(".f_phi." in k for k in keys)
    assert any(".streams.audio_down." in k for k in keys)
    # The merged model computes what the unmerged stage checkpoint computes.
    merged = load_bundle(bundle).dae
    orig, _ = load_dae(bundle.parent / "ck" / "stage3")
    x, s, z = torch.randn(2, 8, 500), torch.tensor([2.0, 0.1]), torch.randn(2, 6, 5)
    drop = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(merged(x, s, null_text(merged, 2, "cpu"), z, drop=drop),
                                   orig(x, s, null_text(orig, 2, "cpu"), z, drop=drop), atol=1e-4, rtol=1e-4)
    # Same weights -> same id; different weights -> another id.
    again = export_bundle(bundle.parent / "ck" / "audioae", bundle.parent / "ck" / "stage3", bundle.parent / "ck" / "qinco2", tmp_path / "again")
    assert read_manifest(again)["model_id"] == m["model_id"]
    other = make_checkpoints(tmp_path / "other", seed=5)
    assert read_manifest(export_bundle(other["audioae"], other["stage"], other["qinco2"], tmp_path / "o"))["model_id"] != m["model_id"]


def test_continuous_bundle_has_no_quantizer(tmp_path):
    b = shared_bundle(continuous=True)
    assert not (b / "quantizer.safetensors").exists()
    assert spresso.load(b).mode == "continuous"


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_version_and_corruption_errors_are_one_line(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    m = json.loads((b / MANIFEST).read_text())
    (b / MANIFEST).write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        spresso.load(b)
    (b / MANIFEST).write_text(json.dumps(m))
    data = bytearray((b / "dae.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (b / "dae.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt bundle file") as err:
        spresso.load(b)
    assert "\n" not in str(err.value)
    (b / "dae.safetensors").unlink()
    with pytest.raises(BundleError, match="missing dae.safetensors"):
        spresso.load(b)
    (b / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not JSON"):
        spresso.load(b)
    with pytest.raises(BundleError, match="no such bundle"):
        spresso.load(tmp_path / "nowhere")


def test_strict_load_refuses_extra_or_missing_weights(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    w = load_file(str(b / "audioae.safetensors"))
    w["surprise"] = torch.zeros(1)
    save_file(w, str(b / "audioae.safetensors"))
    with pytest.raises(BundleError, match="unexpected 1"):
        load_bundle(b, verify=False)  # even without the digest check, strict loading catches it


def test_stream_of_another_model_is_refused(bundle, tmp_path):
    codec = spresso.load(bundle)
    other = spresso.load(shared_bundle(seed=9))
    data = other.encode(np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, 48000)
    with pytest.raises(BitstreamError, match="stream for another model"):
        codec.decode(data, steps=1)


def test_mlflow_log_register_and_load_by_alias(mlflow_env, tmp_path):
    # lazy: MLflow only for the registry test (slow to import)
    from mlflow.tracking import MlflowClient

    ck = make_checkpoints(tmp_path / "ck", meta_run_ids={"audioae": "ae-run-1", "stage": "stage3-run-7"})
    cfg = config()
    cfg.workdir = str(tmp_path / "work")
    summary = export(cfg, tmp_path / "bundle", audioae=str(ck["audioae"]), stage=str(ck["stage"]), quantizer=str(ck["qinco2"]),
                     register="spresso-test", alias="champion")
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["spresso.upstream.train_audioae"] == "ae-run-1"
    assert run.data.tags["spresso.upstream.train_stage3"] == "stage3-run-7"
    assert run.data.tags["spresso.model_id"] == summary["model_id"]
    mv = client.get_model_version_by_alias("spresso-test", "champion")
    assert str(mv.version) == summary["version"] and mv.run_id == summary["run_id"]
    codec = spresso.load("models:/spresso-test@champion")
    assert codec.model_id == summary["model_id"]
    assert spresso.load(f"runs:/{summary['run_id']}/bundle").model_id == summary["model_id"]
    # A second export of other weights moves the alias to version 2.
    ck2 = make_checkpoints(tmp_path / "ck2", seed=4)
    s2 = export(cfg, tmp_path / "bundle2", audioae=str(ck2["audioae"]), stage=str(ck2["stage"]), quantizer=str(ck2["qinco2"]),
                register="spresso-test")
    assert s2["version"] == "2" and spresso.load("models:/spresso-test@champion").model_id == s2["model_id"]
    assert spresso.load("models:/spresso-test/1").model_id == summary["model_id"]
    with pytest.raises(SpressoError, match="cannot fetch the bundle"):
        spresso.load("models:/spresso-test@nope")
