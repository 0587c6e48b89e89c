"""Shared fixtures: the real dev corpus when present, small procedural audio always."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SFX_DEV = Path(os.environ.get("SPRESSO_SFX_DEV", REPO.parent / "shared" / "data" / "sfx-dev"))


@pytest.fixture(scope="session")
def sfx_dev() -> Path:
    """../shared/data/sfx-dev (28 min of real game sounds); tests using it skip cleanly without it."""
    if not SFX_DEV.is_dir():
        pytest.skip(f"dev corpus not found at {SFX_DEV}")
    return SFX_DEV


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """One migrated SQLite MLflow store; creating the schema costs seconds, copying it does not."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch, _mlflow_template):
    """An isolated SQLite MLflow store for one test (a copy of the migrated template)."""
    import shutil

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the tests that need it (started once per session)."""
    import ray

    # Ray workers must import functions defined in test modules (training loops, map functions):
    # the raylet inherits this environment, so put tests/ on their path.
    tests_dir = str(Path(__file__).resolve().parent)
    if tests_dir not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    if not ray.is_initialized():
        # address="local": never join a `ray start` cluster another process left on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """A local S3-compatible server (moto's server mode, as s3fs and Ray test with) for the session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch) -> str:
    """A fresh bucket on the local S3 server, reached through the standard AWS variables only."""
    import uuid

    import fsspec

    for key, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"spresso-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    type(fs).clear_instance_cache()  # later clients are made with this environment
    yield f"s3://{bucket}"
    type(fs).clear_instance_cache()
