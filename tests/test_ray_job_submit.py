"""Every pipeline entry point as a Ray job: `ray job submit --working-dir . -- python pipelines/<stage>.py`
against ONE local `ray start --head` cluster (token auth), in dependency order, on a tiny config.

The head is ours: free ports, its own temp dir, its own process group (`--block`), torn down by
signalling that group. Never `ray stop`: it kills every Ray of this user on the machine (other test
sessions included). Each test submits one stage and checks that the job SUCCEEDED and that its
outputs exist; a stage whose upstream failed is skipped. The last test checks the lineage: one
FINISHED MLflow run per stage, all children of the pipeline's parent run, none left RUNNING.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

T = 4  # the operating point: x0 at 100 Hz pooled 4x; 0.5 s clips -> 50 x0 frames, 13 z frames
POINT = {"t": T, "K": 16, "M": 2, "m": 2}
LATENT, Z = 8, 4  # x0 and z channels: tiny models throughout
TINY = [
    "runtime.actor_cpus=0.25", "data.clip_seconds=0.5", "data.clips_per_shard=8",
    f"audioae.model.latent_dim={LATENT}", "audioae.model.width=16", "audioae.model.blocks=1", "audioae.model.intermediate=32",
    "audioae.disc.mpd_channels=[4,4,8,8,8]", "audioae.disc.stft_channels=4", "audioae.disc.stft_windows=[512]",
    "audioae.steps=2", "audioae.train.batch_size=2", "audioae.train.segment_seconds=0.1", "audioae.train.scaling.workers=0",
    "audioae.train.checkpoint_every=2", "audioae.train.log_every=1", "audioae.train.valid_every=100",
    "audioae.train.valid_clips=2", "audioae.train.audio_examples=1", "audioae.train.shuffle_buffer=2",
    "audioae.train.disc_start_step=1", "audioae.cache.chunk_clips=4", "audioae.cache.batch_size=4",
    f"dit.model.in_channels={LATENT}", "dit.model.width=32", "dit.model.heads=4", "dit.model.joint_blocks=1",
    "dit.model.single_blocks=1", "dit.model.patch=2", "dit.train.steps=2", "dit.train.batch_size=4",
    "dit.train.scaling.workers=0", "dit.train.log_every=1", "dit.train.checkpoint_every=2", "dit.train.sample_every=100",
    "dit.train.num_samples=1", "dit.train.sample_steps=2", "dit.train.warmup_steps=1",
    f"dae.t={T}", "dae.points=[" + json.dumps(POINT) + "]", f"dae.encoder.z_channels={Z}", "dae.encoder.depth=1",
    "dae.lora.rank=2", "dae.lora.alpha=2", "dae.zcache.chunk_clips=4", "dae.zcache.batch_size=4", "dae.decode_steps=2",
    *[f"dae.{s}.{k}" for s in ("stage1", "stage3") for k in (
        "steps=2", "batch_size=4", "scaling.workers=0", "warmup_steps=0", "log_every=1", "checkpoint_every=2")],
    f"qinco2.d={Z}", f"qinco2.K={POINT['K']}", f"qinco2.M={POINT['M']}", "qinco2.L=1", "qinco2.de=8", "qinco2.dh=8",
    "qinco2.beam=2", "qinco2.candidates=2", "qinco2.train_beam=2", "qinco2.train_candidates=2", "qinco2.batch_size=100",
    "qinco2.epochs=1", "qinco2.max_steps=2", "qinco2.valid_every=2", "qinco2.scaling.workers=0", "qinco2.kmeans_iters=2",
    "qinco2.kmeans_vectors=1000", "qinco2.rq_beam=2", "qinco2.rq_train_vectors=200", "qinco2.max_val_vectors=100",
    "qinco2.warmup_steps=1", "qinco2.scaling.use_gpu=false",
]


class Chain:
    """The tiny pipeline's workdir, its config, and the jobs submitted so far."""

    def __init__(self, address: str, env: dict, root: Path, mlflow_template: Path):
        self.address, self.env, self.root = address, env, root
        self.work = root / "work"  # absolute: each job runs in its own copy of the working dir
        self.work.mkdir(parents=True)
        shutil.copy(mlflow_template, self.work / "mlflow.db")  # migrating a fresh SQLite store costs seconds
        self.uri = f"sqlite:///{self.work / 'mlflow.db'}"
        self.overrides = [f"workdir={self.work}", f"runtime.mlflow_tracking_uri={self.uri}", *TINY]
        self.failed: str | None = None
        self.seconds: dict[str, float] = {}
        self.parent = self._parent_run()

    @property
    def cfg(self):
        from spresso.config import load_config

        return load_config("demo", self.overrides)

    def _parent_run(self) -> str:
        """The pipeline's run, as `spresso pipeline run` opens it: stages that take --parent-run-id nest under it."""
        from spresso.runtime.tracking import ensure_experiment, mlflow_client

        cfg = self.cfg
        client = mlflow_client(self.uri)
        run = client.create_run(ensure_experiment(self.uri, cfg.runtime.experiment, cfg.workdir), run_name="pipeline")
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    def submit(self, stage: str, script: str, *args: str, parent: bool = True) -> str:
        if self.failed:
            pytest.skip(f"upstream stage {self.failed} failed")
        sid = f"spresso-{stage}-{uuid.uuid4().hex[:8]}"
        cmd = [str(BIN / "ray"), "job", "submit", f"--address={self.address}", f"--submission-id={sid}",
               "--working-dir", ".", "--", "python", f"pipelines/{script}", "--config", "demo", *args]
        for o in self.overrides:
            cmd += ["--set", o]
        if parent:
            cmd += ["--parent-run-id", self.parent]
        start = time.time()
        deadline = start + 90
        while True:  # the dashboard answers before its job agent is ready: retry until it accepts
            done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300)
            log = done.stdout + done.stderr
            if "No available agent" not in log or time.time() > deadline:
                break
            time.sleep(1)
        self.seconds[stage] = time.time() - start
        ok = done.returncode == 0 and f"Job '{sid}' succeeded" in log
        if not ok:
            self.failed = stage
        assert ok, f"job {stage} did not succeed (rc {done.returncode}):\n{log[-4000:]}"
        return log


@pytest.fixture(scope="module")
def chain(ray_head, tmp_path_factory, _mlflow_template):
    address, env = ray_head
    c = Chain(address, env, tmp_path_factory.mktemp("jobs"), _mlflow_template)
    yield c
    print("job seconds:", {k: round(v, 1) for k, v in c.seconds.items()})


def test_shard(chain):
    from spresso.audio.synth import synth_corpus
    from spresso.data.reader import read_dataset_info, read_manifest

    corpus = chain.root / "corpus"
    synth_corpus(corpus, minutes=0.3, seed=3)
    out = chain.cfg.path(chain.cfg.data.shards_dir)
    log = chain.submit("shard", "shard_audio.py", "--input", str(corpus), "--output", out, parent=False)
    assert "clips" in log
    info = read_dataset_info(out)
    manifest = read_manifest(out)
    assert info["clips"] == manifest.num_rows >= 20 and "train" in set(manifest.column("split").to_pylist())
    assert info["mlflow_run_id"]


def test_train_audioae(chain):
    import torch

    from spresso.models.audioae import load_audioae

    chain.submit("train_audioae", "train_audioae.py")
    final = Path(chain.cfg.path(chain.cfg.audioae.checkpoint_dir)) / "final"
    assert load_audioae(final).encode(torch.zeros(1, 4800)).shape == (1, LATENT, 10)  # strict load of what the job wrote


def test_precompute_latents(chain):
    from spresso.data.reader import read_manifest
    from spresso.data.zarr_cache import ClipCache

    cfg = chain.cfg
    chain.submit("precompute_latents", "precompute_latents.py")
    cache = ClipCache.open(cfg.path(cfg.audioae.latents_path), mode="r")
    n = read_manifest(cfg.path(cfg.data.shards_dir)).num_rows
    assert cache.complete and cache.n_rows == n and cache.chunk_rows == 4
    x0 = cache.read("x0")
    assert x0.shape == (n, LATENT, 50) and np.isfinite(x0).all() and np.abs(x0).max() > 0
    assert len(cache.attrs["x0_std"]) == LATENT and cache.attrs["audioae_run_id"]


def test_embed_captions(chain):
    from spresso.data.zarr_cache import ClipCache

    cfg = chain.cfg
    chain.submit("embed_captions", "embed_captions.py", parent=False)
    captions = ClipCache.open(cfg.path(cfg.dit.captions_path), mode="r")
    x0 = ClipCache.open(cfg.path(cfg.audioae.latents_path), mode="r")
    assert captions.complete and list(captions.keys) == list(x0.keys)


def test_train_dit(chain):
    from spresso.core.checkpoint import read_checkpoint_config

    cfg = chain.cfg
    chain.submit("train_dit", "train_dit.py")
    info = read_checkpoint_config(Path(cfg.path(cfg.dit.checkpoint_dir)) / "final")
    assert info["config"]["dit"]["model"]["width"] == 32


def test_train_stage1(chain):
    from spresso.config.layout import stage_output

    chain.submit("train_stage1", "train_stage1.py")
    assert (Path(stage_output(chain.cfg, "stage1")) / "config.json").is_file()


def test_precompute_z(chain):
    from spresso.data.z_latents import z_cache_path
    from spresso.data.zarr_cache import ClipCache

    chain.submit("precompute_z", "precompute_z.py")
    z = ClipCache.open(z_cache_path(chain.cfg), mode="r")
    assert z.complete and z.read("z").shape == (z.n_rows, Z, 13) and z.attrs["t"] == T


def test_train_qinco2(chain):
    from spresso.data.z_latents import z_cache_path

    # The CLI entry point: no --parent-run-id (the stage logs its upstream runs itself).
    chain.submit("train_qinco2", "train_qinco2.py", "--vectors", z_cache_path(chain.cfg), parent=False)
    final = Path(chain.cfg.path(chain.cfg.qinco2.checkpoint_dir)) / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()


def test_train_stage3(chain):
    from spresso.config.layout import stage_output

    chain.submit("train_stage3", "train_stage3.py")
    assert (Path(stage_output(chain.cfg, "stage3")) / "config.json").is_file()


def test_export(chain):
    from spresso.core.bundle_io import read_bundle_manifest as read_manifest

    log = chain.submit("export", "export.py", "--out", "bundles/d4", "--m", str(POINT["m"]))
    lines = log.splitlines()  # the CLI prints the summary as indented JSON: from its last "{" to the next "}"
    start = max(i for i, line in enumerate(lines) if line.startswith("{"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("}"))
    summary = json.loads("\n".join(lines[start:end + 1]))
    manifest = read_manifest(summary["bundle"])
    assert summary["model_id"] == manifest["model_id"] and manifest["t"] == T


@pytest.mark.skipif(not (REPO / "pipelines" / "evaluate.py").is_file(), reason="pipelines/evaluate.py not built yet")
def test_evaluate(chain):
    bundle = chain.cfg.path("bundles/d4")
    out = Path(chain.cfg.path("eval/d4"))
    # `spresso eval` takes no --parent-run-id: it logs its own run.
    log = chain.submit("evaluate", "evaluate.py", "--codec", f"d4=spresso:{bundle},steps=2", "--set-split", "train",
                       "--clips", "2", "--out", str(out), "--no-ray", parent=False)
    assert "report:" in log and (out / "table.md").is_file()


def test_lineage_one_finished_run_per_stage(chain):
    """Every stage ran once (no orphans from restarts), finished, and those given the parent nest under it."""
    if chain.failed:
        pytest.skip(f"stage {chain.failed} failed")
    from spresso.runtime.tracking import TAG_STAGE, mlflow_client

    client = mlflow_client(chain.uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(exps, max_results=500) if TAG_STAGE in r.data.tags]
    stages = [r.data.tags[TAG_STAGE] for r in runs]
    assert sorted(stages) == sorted(set(stages)), f"a stage logged more than one run: {sorted(stages)}"
    assert {r.info.status for r in runs} == {"FINISHED"}
    nested = {r.data.tags[TAG_STAGE] for r in runs if r.data.tags.get("mlflow.parentRunId") == chain.parent}
    assert {"train_audioae", "precompute_latents", "train_dit", "train_stage1", "precompute_z", "train_stage3", "export"} <= nested
    assert {"shard", "qinco2"} <= set(stages)
