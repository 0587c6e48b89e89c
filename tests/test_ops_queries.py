"""The query side of the pipeline: read-only commands find the MLflow store or say where they looked
(and never create one), `models:/` loads find the demo's registry, `make demo`'s bundles are registered
with aliases, metrics and run ids are accepted as people type them, and a closed pipe is no traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from codec_toys import shared_bundle

import spresso
from spresso.cli import main
from spresso.config import load_config
from spresso.core.errors import SpressoError
from spresso.pipeline import lineage as lineage_module
from spresso.pipeline.publish import register_bundles
from spresso.pipeline.runner import DONE, REUSED, PipelineResult, StageOutcome
from spresso.runtime.tracking import BUNDLE_ARTIFACT, ensure_experiment, mlflow_client

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty folder outside the repository, as the current directory, with no MLflow store configured."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return cwd


@pytest.fixture
def demo_store(tmp_path, monkeypatch, _mlflow_template):
    """A folder holding work/demo/mlflow.db, as `make demo` leaves it, as the current directory."""
    cwd = tmp_path / "repo"
    (cwd / "work" / "demo").mkdir(parents=True)
    shutil.copy(_mlflow_template, cwd / "work" / "demo" / "mlflow.db")
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{cwd / 'work' / 'demo' / 'mlflow.db'}"


@pytest.mark.parametrize("argv", [
    ["pipeline", "status", "demo"],
    ["pipeline", "graph", "demo", "--status", "-o", "dag.dot"],
    ["lineage", "0123456789ab"],
    ["runs", "compare", "-m", "fad"],
])
def test_read_only_commands_create_nothing_and_say_where_they_looked(elsewhere, capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: no MLflow store at")
    assert str(elsewhere / "work" / "demo" / "mlflow.db") in err
    assert list(elsewhere.iterdir()) == []  # no work/demo/mlflow.db, no dag.dot


def test_a_configured_store_that_is_missing_is_named_not_created(elsewhere, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere / 'nope.db'}")
    assert main(["pipeline", "status", "demo"]) == 2
    assert "nope.db (from MLFLOW_TRACKING_URI)" in capsys.readouterr().err
    assert main(["lineage", "0123456789ab", "--tracking-uri", "sqlite:///other.db"]) == 2
    assert "other.db (from --tracking-uri" in capsys.readouterr().err
    assert main(["pipeline", "status", "demo", "--tracking-uri", "sqlite:///third.db"]) == 2
    assert "third.db (from --tracking-uri" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_models_uri_outside_the_repository_creates_no_store(elsewhere):
    with pytest.raises(SpressoError, match="no MLflow store at .*work/demo/mlflow.db"):
        spresso.load("models:/spresso@champion")
    assert list(elsewhere.iterdir()) == []


def _export_run(uri: str, workdir: Path, bundle: Path) -> str:
    """A finished export run holding ``bundle`` as its artifact, as the export stage logs it."""
    client = mlflow_client(uri)
    exp = ensure_experiment(uri, "spresso", str(workdir))
    run = client.create_run(exp, run_name="export", tags={"spresso.stage": "export", "spresso.model_id": "toy"})
    client.log_artifacts(run.info.run_id, str(bundle), BUNDLE_ARTIFACT)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_pipeline_registers_its_bundles_and_models_uri_finds_the_demo_store(demo_store):
    bundle = shared_bundle(continuous=True)
    cfg = load_config("demo")
    assert cfg.pipeline.registered_model == "spresso" and cfg.pipeline.champion_point() == "d96"
    d96, c11 = _export_run(demo_store, Path("work/demo"), bundle), _export_run(demo_store, Path("work/demo"), bundle)
    result = PipelineResult("parent", demo_store, {
        "export@c11": StageOutcome("export@c11", DONE, c11),
        "export@d96": StageOutcome("export@d96", REUSED, d96),  # reused from an earlier run: registered all the same
    })
    assert register_bundles(cfg, result) == {"c11": "1", "d96": "2", "champion": "2"}
    client = mlflow_client(demo_store)
    assert client.get_model_version_by_alias("spresso", "champion").run_id == d96
    assert client.get_model_version_by_alias("spresso", "c11").run_id == c11
    # The README's line, with no MLFLOW_TRACKING_URI, from the folder `make demo` ran in.
    codec = spresso.load("models:/spresso@champion")
    assert codec.model_id == spresso.load(bundle).model_id
    assert register_bundles(cfg, result) == {}  # nothing new: no second version of the same bundle
    assert len(client.search_model_versions("name='spresso'")) == 2


def _runs_with_metrics(uri: str) -> dict[str, str]:
    client = mlflow_client(uri)
    exp = client.create_experiment("q")
    ids = {}
    for name, metrics in (("evaluate", {"d96.fad_aisfx": 3.5, "d96.fad_aisfx.low": 3.0, "c11.fad_aisfx": 2.25,
                                        "d96.si_sdr": -4.0}),
                          ("train", {"loss": 0.5})):
        run = client.create_run(exp, run_name=name, tags={"spresso.stage": name})
        for k, v in metrics.items():
            client.log_metric(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    return ids


def test_runs_compare_takes_short_metric_names_and_lists_the_real_ones(mlflow_env, capsys):
    _runs_with_metrics(mlflow_env)
    assert main(["runs", "compare", "-m", "fad"]) == 0  # the docs' example
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[4:] == ["c11.fad_aisfx", "d96.fad_aisfx"]  # every point's fad, not the interval's bounds
    assert main(["runs", "compare", "-m", "d96.fad", "-m", "loss"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[4:] == ["d96.fad_aisfx", "loss"]
    assert main(["runs", "compare", "-m", "kad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no metric 'kad'" in err
    assert "c11.fad_aisfx, d96.fad_aisfx, d96.fad_aisfx.low, d96.si_sdr, loss" in err


def test_run_ids_are_taken_by_unique_prefix(mlflow_env, capsys):
    ids = _runs_with_metrics(mlflow_env)
    run = ids["evaluate"]
    assert main(["lineage", run[:12]]) == 0  # what `runs compare` prints
    assert f"run {run}" in capsys.readouterr().out
    client = mlflow_client(mlflow_env)
    exp = client.get_experiment_by_name("q").experiment_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": run, "spresso.stage": "child"}).info.run_id
    assert main(["runs", "compare", "--parent", run[:8]]) == 0
    assert child[:12] in capsys.readouterr().out
    assert main(["lineage", "ffff0000ffff"]) == 2
    assert capsys.readouterr().err.startswith("error: no run read or wrote")


def test_an_ambiguous_run_id_prefix_names_the_candidates(mlflow_env, capsys, monkeypatch):
    # uuid4 run ids rarely share 4 digits: stand in two that do for the store's answer.
    monkeypatch.setattr(lineage_module, "matching_runs", lambda uri, prefix: ["abcd" + "0" * 28, "abcd" + "1" * 28])
    assert main(["lineage", "abcd"]) == 2
    err = capsys.readouterr().err
    assert "run id prefix abcd is ambiguous: 2 runs match (abcd00000000, abcd11111111)" in err


def test_a_closed_pipe_is_no_traceback(tmp_path):
    # `spresso pipeline run demo --dry-run | head -1`: the reader is gone before the command writes.
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "spresso", "pipeline", "run", "demo", "--dry-run"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
