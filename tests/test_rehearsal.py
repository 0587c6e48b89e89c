"""`make rehearsal` (spresso.rehearsal): its pieces, and the reduced rehearsal itself (slow).

The slow test runs ``python -m spresso.rehearsal --reduced`` in a subprocess (it starts a moto S3
server, an MLflow server with basic auth and an autoscaling Ray cluster of its own, and stops them)
and checks its JSON report: nothing written locally, DDP on 2 workers, the killed stage resumed from
its checkpoint, every node type it needed started by the autoscaler from zero, one MLflow run per stage.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spresso.rehearsal.cluster import (
    ACCELERATOR,
    HEAD_ID,
    LABEL,
    LocalCluster,
    NodeBook,
    autoscaling_config,
    toy_node_types,
)
from spresso.rehearsal.localwrites import changes, snapshot, work_folders_in_job_copies
from spresso.rehearsal.placement import expected_node_types, type_with_label
from spresso.rehearsal.runs import StageRunInfo, runs_per_instance
from spresso.rehearsal.s3 import prefix_summary
from spresso.rehearsal.watch import checkpoint_steps, first_step_after

ROOT = Path(__file__).resolve().parents[1]


def test_prefix_summary_counts_objects_and_bytes_per_prefix():
    objects = [("work/shards/a.tar", 10), ("work/shards/b.tar", 5), ("work/ray_train/x/y", 7), ("mlflow/1/a", 3), ("top", 1)]
    assert prefix_summary(objects) == {"": {"objects": 1, "bytes": 1}, "mlflow/": {"objects": 1, "bytes": 3},
                                       "work/": {"objects": 3, "bytes": 22}}
    two = prefix_summary(objects, depth=2)
    assert two["work/shards/"] == {"objects": 2, "bytes": 15} and two["work/ray_train/"] == {"objects": 1, "bytes": 7}


def test_toy_node_types_keep_names_and_labels_of_ray_cluster_yaml_from_zero():
    spec = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    types = toy_node_types(ROOT / "ray_cluster.yaml", max_workers=2)
    workers = {n for n in spec["available_node_types"] if n != spec["head_node_type"]}
    assert workers <= set(types)
    for name in workers:
        assert types[name]["labels"] == spec["available_node_types"][name]["labels"]
        assert types[name]["min_workers"] == 0 and 1 <= types[name]["resources"]["CPU"] <= 2
    by_role = {t["labels"][LABEL]: t for t in types.values()}
    assert by_role["a100"]["resources"][ACCELERATOR] == 1 and "GPU" not in by_role["a100"]["resources"]
    assert ACCELERATOR not in by_role["cpu"]["resources"]
    assert by_role["driver"]["min_workers"] == 0  # the driver type scales from zero too


def test_autoscaling_config_uses_our_provider_and_a_cpu_less_head(tmp_path):
    types = toy_node_types(ROOT / "ray_cluster.yaml")
    cfg = autoscaling_config(types, "127.0.0.1:1234", str(tmp_path), 0.25)
    assert cfg["provider"]["module"] == "spresso.rehearsal.provider.OwnFolderProvider"
    assert cfg["provider"]["gcs_address"] == "127.0.0.1:1234" and cfg["idle_timeout_minutes"] == 0.25
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and cfg["max_workers"] == sum(t["max_workers"] for t in types.values())


def node(nid, role, state="ALIVE", start=1000, end=0):
    return {"node_id": nid, "state": state, "labels": {LABEL: role} if role else {}, "start_time_ms": start, "end_time_ms": end}


def test_node_book_counts_launches_and_terminations_per_type():
    types = toy_node_types(ROOT / "ray_cluster.yaml")
    name = {t["labels"][LABEL]: n for n, t in types.items()}
    book = NodeBook(types)
    book.observe([node(HEAD_ID, None), node("n1", "a100"), node("n2", "cpu")], now=2.0)
    book.observe([node("n1", "a100", "DEAD", end=5000), node("n2", "cpu"), node("n3", "a100", start=6000)], now=7.0)
    counts = book.per_type()
    assert counts[name["a100"]] == {"launched": 2, "terminated": 1, "alive": 1}
    assert counts[name["cpu"]] == {"launched": 1, "terminated": 0, "alive": 1}
    assert counts[name["driver"]] == {"launched": 0, "terminated": 0, "alive": 0}
    assert [e[2] for e in book.events()] == ["launched", "launched", "terminated", "launched"]
    assert book.events()[2][0] == 5.0 and book.launched_types() == {name["a100"], name["cpu"]}


def test_runaway_counts_launches_that_never_came_up_not_scale_up_cycles(tmp_path):
    types = toy_node_types(ROOT / "ray_cluster.yaml")
    cluster = LocalCluster(root=tmp_path, ray_cluster=ROOT / "ray_cluster.yaml", node_types=types, book=NodeBook(types))
    limit = sum(t["max_workers"] for t in types.values()) + 6
    # Many launches, every one registered (stages scaling up and down): no runaway, however many.
    for i in range(5 * limit):
        (tmp_path / "n" / f"launch-{i}").mkdir(parents=True)
    cluster.book.observe([node(f"n{i}", "a100", "DEAD", end=1000) for i in range(5 * limit)], now=2.0)
    assert cluster.runaway() is None
    # Launches whose node never registered (dying at start), beyond the ones still starting: runaway.
    for i in range(limit + 1):
        (tmp_path / "n" / f"dead-{i}").mkdir()
    assert cluster.runaway() == f"{limit + 1} of {6 * limit + 1} launches never registered a node (at most {limit} expected)"


def test_checkpoint_steps_and_first_step_after_a_kill():
    keys = ["work/ray_train/s1-ab/checkpoint_2026/step-000000004/model.safetensors",
            "work/ray_train/s1-ab/checkpoint_2026/step-000000008/model.safetensors",
            "work/ray_train/other/step-000000012/x", "work/ray_train/s1-ab/.run.json"]
    assert checkpoint_steps(keys, "work/ray_train/s1-ab") == [4, 8]
    history = [(1000, 2), (2000, 4), (3000, 6), (9000, 10), (9500, 12)]
    assert first_step_after(history, 5000) == 10       # resumed after step 8's checkpoint
    assert first_step_after(history, 10000) is None


def test_local_write_snapshot_sees_new_changed_and_removed_files(tmp_path):
    assert snapshot(tmp_path / "absent") == {}
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    before = snapshot(tmp_path)
    (tmp_path / "a.txt").write_text("xx")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_text("z")
    assert changes(before, snapshot(tmp_path)) == ["+ sub", "+ sub/c", "~ a.txt", "- b.txt"]
    assert changes(before, before) == []


def test_work_folders_in_job_copies_are_found(tmp_path):
    copy = tmp_path / "nodes" / "driver-00001" / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    (copy / "spresso").mkdir(parents=True)
    assert work_folders_in_job_copies(tmp_path) == []
    (copy / "work").mkdir()
    assert work_folders_in_job_copies(tmp_path) == [str(copy / "work")]


def test_runs_per_instance_counts_runs_under_one_pipeline_run():
    runs = [StageRunInfo("r1", "shard", "shard", "FINISHED", 1.0, parent="p1"),
            StageRunInfo("r2", "train_audioae", "train_audioae", "FINISHED", 1.0, parent="p1"),
            StageRunInfo("r3", "train_audioae", "train_audioae", "FAILED", 1.0, parent="p1"),
            StageRunInfo("r4", "shard", "shard", "FINISHED", 1.0, parent="p2")]
    assert runs_per_instance(runs, "p1") == {"shard": 1, "train_audioae": 2}


@pytest.mark.slow
def test_reduced_rehearsal_runs_on_s3_with_autoscaling_ddp_and_a_node_kill(tmp_path):
    report_path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "spresso.rehearsal", "--reduced", "--report", str(report_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert report_path.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert proc.returncode == 0 and report["ok"], "\n".join(report["failures"]) + proc.stdout[-3000:]
    assert report["local_writes"] == []                             # nothing under the repository's work/
    assert report["kill"]["world_size"] >= 2                         # DDP on two Ray Train workers
    assert report["kill"]["first_step_after_kill"] > report["kill"]["checkpoint_step"] > 0  # resumed, not from 0
    launched = {kind for kind, row in report["nodes"].items() if row["launched"]}
    # every node type the stages and the job's driver asked for was started by the autoscaler, from zero
    assert set(report["kill"]["worker_node_types"]) | {"driver"} <= launched
    assert all(row["alive"] == 0 for row in report["nodes"].values())  # and went away when idle
    ran = {k for k, v in report["states_first"].items() if v == "done"}
    assert ran and all(report["runs_per_stage"].get(k) == 1 for k in ran)  # one MLflow run per stage on the server
    assert set(report["states_second"].values()) <= {"reused", "not selected"}
    assert any(prefix.startswith("work/") for prefix in report["bucket"])


def test_expected_node_types_follow_stage_labels_and_the_driver_label():
    from types import SimpleNamespace

    types = toy_node_types(ROOT / "ray_cluster.yaml")
    name = {t["labels"][LABEL]: n for n, t in types.items()}
    cfg = SimpleNamespace(pipeline=SimpleNamespace(
        resources={"stage1": SimpleNamespace(label="a100"), "shard": SimpleNamespace(label="cpu"),
                   "export": SimpleNamespace(label=None)}, driver_label="driver"))
    got = expected_node_types(cfg, ["stage1@c11", "shard", "export@c11", "train_dit"], types)
    assert got == {"stage1@c11": name["a100"], "shard": name["cpu"], "driver": name["driver"]}
    assert type_with_label("tpu", types) is None


def test_local_s3_needs_only_the_standard_aws_variables(tmp_path):
    from spresso.rehearsal.s3 import LocalS3

    code = ("import fsspec; fs = fsspec.filesystem('s3'); fs.pipe('bk1/work/x/a.bin', b'12345'); "
            "fs.pipe('bk1/mlflow/1/m', b'ab'); print(sorted(fs.find('bk1')))")
    with LocalS3(bucket="bk1", log_dir=tmp_path) as s3:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        out = subprocess.run([sys.executable, "-c", code], env={**env, **s3.aws_env()}, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert prefix_summary(s3.objects(), depth=2) == {"mlflow/1/": {"objects": 1, "bytes": 2},
                                                         "work/x/": {"objects": 1, "bytes": 5}}
    assert s3.proc is None


@pytest.mark.slow
def test_mlflow_server_refuses_without_credentials_and_keeps_artifacts_in_the_bucket(tmp_path):
    import requests

    from spresso.rehearsal.mlflow_server import MlflowServer
    from spresso.rehearsal.s3 import LocalS3

    code = ("from mlflow.tracking import MlflowClient; c = MlflowClient(); r = c.create_run(c.create_experiment('e')); "
            "c.log_text(r.info.run_id, 'hi', 'a/b.txt')")
    with LocalS3(bucket="bk2", log_dir=tmp_path) as s3, MlflowServer(tmp_path / "m", "s3://bk2/mlflow", env=s3.aws_env()) as srv:
        assert requests.get(f"{srv.uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=10).status_code == 401
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        out = subprocess.run([sys.executable, "-c", code], env={**env, **srv.client_env()}, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert [k for k, _ in s3.objects()][0].startswith("mlflow/") and s3.objects()[0][1] == 2
