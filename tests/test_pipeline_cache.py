"""Caching, invalidation, force, failure isolation and resume of the stage DAG (toy stages)."""
from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from pipeline_toys import STAGES, toy_config

from spresso.pipeline import run_pipeline
from spresso.pipeline.status import pipeline_status


def _children(uri: str, parent: str) -> dict[str, str]:
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("toy").experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return {r.data.tags["spresso.pipeline.stage"]: r.info.status for r in runs}


def _by_status(result) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for o in result.outcomes.values():
        out.setdefault(o.status, set()).add(o.name)
    return out


def test_reuse_invalidation_and_force(tmp_path, mlflow_env):
    cfg = toy_config(tmp_path / "w")
    first = run_pipeline(cfg, STAGES, progress=False)
    assert first.ok
    # encode@c11 and encode@d1k share t=9 and their upstream: identical keys, one run serves both
    assert _by_status(first) == {"done": set(first.outcomes) - {"encode@d1k"}, "reused": {"encode@d1k"}}
    assert first.outcomes["encode@d1k"].run_id == first.outcomes["encode@c11"].run_id
    assert set(_children(mlflow_env, first.parent_run_id)) == set(first.outcomes) - {"encode@d1k"}
    assert set(_children(mlflow_env, first.parent_run_id).values()) == {"FINISHED"}

    second = run_pipeline(cfg, STAGES, progress=False)
    assert _by_status(second) == {"reused": set(second.outcomes)}
    assert _children(mlflow_env, second.parent_run_id) == {}
    assert all(second.outcomes[n].run_id == first.outcomes[n].run_id for n in first.outcomes)

    # m only enters finetune's key: only d96's finetune and its downstream rerun
    cfg.pipeline.points[2].m = 6
    third = run_pipeline(cfg, STAGES, progress=False)
    assert _by_status(third)["done"] == {"finetune@d96", "report@d96"}
    assert json.loads(Path(third.outcomes["finetune@d96"].outputs["decoder"].uri).read_text())["m"] == 6
    # a shared setting reaches every stage downstream of it
    cfg.audioae.steps = 11
    fourth = run_pipeline(cfg, STAGES, progress=False, until=["encode@c11"])
    assert _by_status(fourth)["done"] == {"fit", "encode@c11"}
    assert _by_status(fourth)["reused"] == {"make_data"}
    assert {n for n, o in fourth.outcomes.items() if o.status == "not selected"} == set(fourth.outcomes) - {"make_data", "fit", "encode@c11"}
    rows = {s.name: s for s in pipeline_status(cfg, STAGES)}
    assert rows["encode@c11"].state == "done" and rows["encode@d1k"].state == "done"  # same key: shared run
    assert rows["quantize@d1k"].state == "stale" and rows["report@c11"].state == "stale"
    assert rows["make_data"].state == "reused"

    # force reruns fit; it writes the same bytes, so (content-addressed) nothing downstream reruns
    cfg.audioae.steps = 10
    forced = run_pipeline(cfg, STAGES, progress=False, force=["fit"])
    assert _by_status(forced)["done"] == {"fit"}
    assert forced.outcomes["fit"].run_id != first.outcomes["fit"].run_id
    assert forced.outcomes["fit"].outputs["model"].digest == first.outcomes["fit"].outputs["model"].digest
    assert forced.outcomes["quantize@d1k"].run_id == first.outcomes["quantize@d1k"].run_id


def test_failure_stops_only_downstream_and_rerun_resumes(tmp_path, mlflow_env):
    work = tmp_path / "w"
    cfg = toy_config(work, points=[{"name": "c11", "t": 9, "continuous": True},
                                   {"name": "d96", "t": 100, "K": 4096, "m": 8}])
    (work / "fail-quantize@d96").write_text("")
    failed = run_pipeline(cfg, STAGES, progress=False)
    assert not failed.ok
    st = _by_status(failed)
    assert st["failed"] == {"quantize@d96"}
    assert st["skipped"] == {"finetune@d96", "report@d96"}
    assert st["done"] == {"make_data", "fit", "encode@c11", "report@c11", "encode@d96"}
    assert "injected failure" in failed.outcomes["quantize@d96"].reason
    assert failed.outcomes["finetune@d96"].reason == "upstream quantize@d96 failed"
    children = _children(mlflow_env, failed.parent_run_id)
    assert children["quantize@d96"] == "FAILED" and "RUNNING" not in children.values()
    client = MlflowClient(mlflow_env)
    assert client.get_run(failed.parent_run_id).info.status == "FAILED"
    rows = {s.name: s for s in pipeline_status(cfg, STAGES)}
    assert rows["quantize@d96"].state == "failed" and rows["finetune@d96"].state == "pending"
    assert rows["report@c11"].state == "done"

    (work / "fail-quantize@d96").unlink()
    resumed = run_pipeline(cfg, STAGES, progress=False)
    assert resumed.ok
    assert _by_status(resumed) == {"done": {"quantize@d96", "finetune@d96", "report@d96"},
                                   "reused": {"make_data", "fit", "encode@c11", "report@c11", "encode@d96"}}
    assert client.get_run(resumed.parent_run_id).info.status == "FINISHED"
    # deleting an output invalidates the run that recorded it
    Path(resumed.outcomes["report@d96"].outputs["bundle"].uri).unlink()
    again = run_pipeline(cfg, STAGES, progress=False)
    assert _by_status(again)["done"] == {"report@d96"}


def test_stages_as_ray_tasks(tmp_path, mlflow_env, ray_local):
    """executor: ray — each ready stage is a Ray task with its resources; lineage is the same."""
    cfg = toy_config(tmp_path / "w", points=[{"name": "d1", "t": 100, "K": 256, "m": 2}], executor="ray")
    cfg.pipeline.branch = ["encode", "quantize"]
    first = run_pipeline(cfg, STAGES, progress=False)
    assert first.ok and _by_status(first) == {"done": {"make_data", "fit", "encode@d1", "quantize@d1"}}
    codes = json.loads(Path(first.outcomes["quantize@d1"].outputs["codes"].uri).read_text())
    assert codes["K"] == 256 and codes["z"]["t"] == 100
    run = MlflowClient(mlflow_env).get_run(first.outcomes["fit"].run_id)
    assert run.data.metrics["loss"] == 0.1  # logged from inside the Ray task, to the driver's run
    assert run.data.tags["spresso.upstream.data"] == first.outcomes["make_data"].run_id
    again = run_pipeline(cfg, STAGES, progress=False)
    assert _by_status(again) == {"reused": set(first.outcomes)}
