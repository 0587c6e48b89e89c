import pytest
from mlflow.tracking import MlflowClient

from spresso import __version__
from spresso.config import load_config
from spresso.core.digest import digest_json
from spresso.runtime import StageRun, find_finished_run, stage_run, tracking_uri
from spresso.runtime.tracking import code_version


def test_default_tracking_uri_is_sqlite_in_workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(str(tmp_path / "w")) == f"sqlite:///{(tmp_path / 'w').resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking_uri(str(tmp_path)) == "http://example:5000"


def test_stage_run_records_config_lineage_and_status(tmp_path, mlflow_env):
    cfg = load_config("demo", [f"workdir={tmp_path}"])
    with stage_run("shard", cfg, key="k1", upstream={"synth": "abc123"}) as run:
        run.log_input("raw", str(tmp_path), digest_json(["a"]))
        run.log_output("shards", str(tmp_path / "shards"), "d" * 64)
        run.log_metrics({"clips": 7})
    client = MlflowClient(mlflow_env)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["data.sample_rate"] == "48000"
    assert got.data.metrics["clips"] == 7
    assert got.data.tags["spresso.upstream.synth"] == "abc123"
    assert got.data.tags["spresso.output.shards.digest"] == "d" * 64
    assert got.inputs.dataset_inputs[0].dataset.name == "raw"
    assert find_finished_run(mlflow_env, run.experiment_id, "shard", "k1").info.run_id == run.run_id
    assert find_finished_run(mlflow_env, run.experiment_id, "shard", "other") is None


def test_failed_stage_is_marked_failed_and_not_reusable(tmp_path, mlflow_env):
    cfg = load_config("demo", [f"workdir={tmp_path}"])
    with pytest.raises(RuntimeError):
        with stage_run("train", cfg, key="k2") as run:
            raise RuntimeError("boom")
    got = MlflowClient(mlflow_env).get_run(run.run_id)
    assert got.info.status == "FAILED" and "boom" in got.data.tags["spresso.error"]
    assert find_finished_run(mlflow_env, run.experiment_id, "train", "k2") is None


def test_attach_logs_to_the_same_run(tmp_path, mlflow_env):
    cfg = load_config("demo", [f"workdir={tmp_path}"])
    with stage_run("train", cfg) as run:
        worker_view = StageRun.attach(run.run_id, mlflow_env)
        worker_view.log_metrics({"loss": 0.5}, step=3)
    hist = MlflowClient(mlflow_env).get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(3, 0.5)]


def test_code_version_is_a_digest_of_library_sources():
    v = code_version()
    assert v.startswith(__version__ + "+") and len(v.split("+")[1]) == 12 and v == code_version()
