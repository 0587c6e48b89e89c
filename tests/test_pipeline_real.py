"""The real stage DAG, end to end, on a tiny config: every stage's library function, a few steps each.

One continuous operating point (t=9) and one discrete (t=100, K=16, m=2). Checks: every stage
runs and is one MLflow child run of the pipeline's run, with its upstream run ids and output
digests; a second run reuses everything; changing one point's m reruns only that branch's
stages that depend on m.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from spresso.config import load_config

pytestmark = pytest.mark.slow

# Tiny everything: 16 latent channels, 8 z channels, a handful of steps per stage, in-process training.
TINY = [
    "runtime.num_cpus=2", "runtime.experiment=pipe-real", "data.clips_per_shard=8",
    "audioae.model.latent_dim=16", "audioae.model.width=16", "audioae.model.blocks=1", "audioae.model.intermediate=32",
    "audioae.disc.mpd_channels=[4,4,8,8,8]", "audioae.disc.stft_channels=4", "audioae.disc.stft_windows=[512]",
    "audioae.steps=3", "audioae.train.batch_size=2", "audioae.train.segment_seconds=0.1", "audioae.train.scaling.workers=0",
    "audioae.train.checkpoint_every=3", "audioae.train.valid_every=3", "audioae.train.valid_clips=2",
    "audioae.train.audio_examples=1", "audioae.train.disc_start_step=0", "audioae.cache.chunk_clips=8",
    "dit.model.in_channels=16", "dit.model.width=32", "dit.model.heads=4", "dit.model.joint_blocks=1",
    "dit.model.single_blocks=1", "dit.model.patch=4", "dit.train.steps=3", "dit.train.batch_size=4",
    "dit.train.scaling.workers=0", "dit.train.log_every=1", "dit.train.checkpoint_every=3", "dit.train.sample_every=3",
    "dit.train.num_samples=1", "dit.train.sample_steps=2", "dit.train.warmup_steps=1",
    "dae.encoder.z_channels=8", "dae.encoder.depth=1", "dae.encoder.heads=2", "dae.lora.rank=4", "dae.lora.alpha=4",
    "dae.stage1.steps=3", "dae.stage1.batch_size=4", "dae.stage1.scaling.workers=0", "dae.stage1.checkpoint_every=3",
    "dae.stage1.log_every=1", "dae.stage1.warmup_steps=1",
    "dae.stage3.steps=2", "dae.stage3.epochs=1", "dae.stage3.batch_size=4", "dae.stage3.scaling.workers=0",
    "dae.stage3.checkpoint_every=2", "dae.stage3.log_every=1", "dae.stage3.warmup_steps=1",
    "dae.zcache.chunk_clips=8", "dae.decode_steps=2",
    "qinco2.d=8", "qinco2.M=2", "qinco2.L=1", "qinco2.de=16", "qinco2.dh=16", "qinco2.batch_size=16", "qinco2.epochs=1",
    "qinco2.scaling.workers=0", "qinco2.beam=2", "qinco2.candidates=2", "qinco2.train_beam=2", "qinco2.train_candidates=2",
    "qinco2.kmeans_vectors=2000", "qinco2.max_val_vectors=100", "qinco2.valid_every=2", "qinco2.rq_beam=2",
    "qinco2.rq_train_vectors=2000", "qinco2.warmup_steps=1",
    "eval.num_clips=4", "eval.n_boot=10", "eval.example_clips=1", "eval.variations=0", "eval.diffusion_steps=2",
    "pipeline.inputs=[corpus]",
    "pipeline.points=[{name: c11, t: 9, continuous: true}, {name: d1, t: 100, K: 16, m: 2}]",
]


def tiny_config(workdir: Path, extra: list[str] = ()):
    from spresso.pipeline.registry import registry

    # evaluate joins the branch once its library function exists
    branch = [s for s in ("stage1", "precompute_z", "qinco2", "stage3", "export", "evaluate") if registry()[s].available()]
    return load_config("demo", [f"workdir={workdir}", *TINY, f"pipeline.branch=[{', '.join(branch)}]", *extra])


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    from spresso.audio.synth import synth_corpus

    root = tmp_path_factory.mktemp("pipe-real")
    synth_corpus(root / "w" / "corpus", 1.5, seed=3)
    # the stamp `make demo` leaves, so spresso.demo below takes this corpus as its own
    (root / "w" / "corpus" / ".synth.json").write_text(json.dumps({"minutes": 1.5, "seed": 3}))
    return root / "w"


@pytest.fixture(scope="module")
def own_ray():
    """A local Ray of our own (address="local"): never join a `ray start` cluster another test left running."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    if started:  # later modules' ray_local starts its own (with tests/ on the workers' path)
        ray.shutdown()


def _statuses(result) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for o in result.outcomes.values():
        out.setdefault(o.status, set()).add(o.name)
    return out


def _children(uri: str, experiment: str, parent: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=200)


def test_real_dag_runs_reuses_and_reruns_one_branch(tiny_corpus, mlflow_env, own_ray, capsys):
    from spresso.pipeline import run_pipeline
    cfg = tiny_config(tiny_corpus)
    first = run_pipeline(cfg, progress=False)
    assert first.ok, first.table()
    names = set(first.outcomes)
    assert {"shard", "train_audioae", "precompute_latents", "train_dit", "stage1@c11", "precompute_z@c11",
            "stage1@d1", "precompute_z@d1", "qinco2@d1", "stage3@d1", "export@c11", "export@d1"} <= names
    assert "qinco2@c11" not in names and "stage3@c11" not in names  # continuous: no quantizer
    assert _statuses(first) == {"done": names}

    # One MLflow child run per stage under the pipeline's run, each FINISHED, with upstream ids and output digests.
    children = {r.data.tags["spresso.pipeline.stage"]: r for r in _children(mlflow_env, "pipe-real", first.parent_run_id)}
    assert set(children) == names
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.info.run_id == first.outcomes[name].run_id
        for out, art in first.outcomes[name].outputs.items():
            assert run.data.tags[f"spresso.output.{out}.digest"] == art.digest and Path(art.uri).exists()
    s3 = children["stage3@d1"].data.tags
    assert s3["spresso.upstream.quantizer"] == first.outcomes["qinco2@d1"].run_id  # by read name
    assert s3["spresso.upstream.stage1"] == first.outcomes["stage1@d1"].run_id
    assert children["evaluate@d1"].data.tags["spresso.upstream.bundle"] == first.outcomes["export@d1"].run_id
    # per-branch outputs: the two operating points never share a folder
    assert "/dae/d1/t100/" in first.outcomes["stage3@d1"].outputs["checkpoint"].uri
    assert "/dae/c11/t9/" in first.outcomes["stage1@c11"].outputs["checkpoint"].uri
    assert first.outcomes["qinco2@d1"].outputs["checkpoint"].uri.endswith("/qinco2/d1/final")
    from spresso.core.bundle_io import read_bundle_manifest as read_manifest

    manifest = read_manifest(first.outcomes["export@d1"].outputs["bundle"].uri)
    assert manifest["mode"] == "discrete" and manifest["K"] == 16 and manifest["m"] == 2 and manifest["t"] == 100
    assert read_manifest(first.outcomes["export@c11"].outputs["bundle"].uri)["mode"] == "continuous"

    second = run_pipeline(cfg, progress=False)
    assert _statuses(second) == {"reused": names}
    assert _children(mlflow_env, "pipe-real", second.parent_run_id) == []
    assert all(second.outcomes[n].run_id == first.outcomes[n].run_id for n in names)

    # m enters qinco2 (M = max(qinco2.M, m)), stage3 and export of d1 only: the c11 branch and shared stages stay.
    cfg3 = tiny_config(tiny_corpus, ["pipeline.points=[{name: c11, t: 9, continuous: true}, {name: d1, t: 100, K: 16, m: 1}]"])
    third = run_pipeline(cfg3, progress=False)
    assert third.ok, third.table()
    rerun = {n for n in _statuses(third).get("done", set())}
    assert {"qinco2@d1", "stage3@d1", "export@d1"} <= rerun
    assert not rerun & {"shard", "train_audioae", "precompute_latents", "train_dit", "stage1@d1", "precompute_z@d1",
                        "stage1@c11", "precompute_z@c11", "export@c11", "evaluate@c11"}

    # `make demo` on the same state: every stage reused, clips encoded and decoded once; a rerun takes seconds.
    from spresso import demo

    m1 = ["pipeline.points=[{name: c11, t: 9, continuous: true}, {name: d1, t: 100, K: 16, m: 1}]"]
    argv = ["--minutes", "1.5", "--seed", "3", "--clips", "1"]
    for o in [f"workdir={tiny_corpus}", *TINY, *m1]:
        argv += ["--set", o]
    assert demo.main(argv) == 0
    made = json.loads((tiny_corpus / "demo_codec" / "d1" / ".made.json").read_text())["files"]
    assert [f["codebooks"] for f in made] == [1] and Path(made[0]["spr"]).stat().st_size > 0 and Path(made[0]["wav"]).exists()
    assert json.loads((tiny_corpus / "demo_codec" / "c11" / ".made.json").read_text())["files"][0]["codebooks"] is None
    # ... and registers its bundles: the README's models:/spresso@champion is the last point's (d1)
    import spresso

    want = read_manifest(third.outcomes["export@d1"].outputs["bundle"].uri)["model_id"]
    assert spresso.load("models:/spresso@champion").model_id == want == spresso.load("models:/spresso@d1").model_id
    mtime = Path(made[0]["spr"]).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert demo.main(argv) == 0
    assert time.perf_counter() - t0 < 30  # all reused: MLflow look-ups only
    assert Path(made[0]["spr"]).stat().st_mtime_ns == mtime  # not re-encoded
    out = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "index.html" in out and ".spr" in out
