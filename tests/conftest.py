"""Shared fixtures: the real dev corpus when present, small procedural audio always."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
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


@pytest.fixture(autouse=True)
def _ray_cpus_returned(request):
    """A test on the shared local Ray must give back every CPU it took: an actor or task left running
    holds a CPU, and a later Ray Data read then waits forever for it (CI hung 30 min on exactly this).
    Fail the leaking test by name, and free what it left so the rest of the session still runs."""
    yield
    if "ray_local" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.5)
    free = ray.available_resources().get("CPU", 0)
    if free >= total:
        return
    from ray_resources import live_placement_groups, release_placement_groups

    # No dashboard on this Ray (so no state API): placement groups and the GCS's actor table say enough.
    groups = live_placement_groups()
    actors = [a for a in ray._private.state.actors().values() if a.get("State") == "ALIVE"]  # noqa: SLF001
    held = [f"placement group {g.get('name') or g['placement_group_id'][:8]} {g.get('bundles')}" for g in groups] + \
        [f"actor {a.get('ClassName') or a.get('ActorClassName') or a.get('Name')}" for a in actors]
    release_placement_groups()
    pytest.fail(f"{request.node.nodeid} left {total - free:g} of {total:g} Ray CPUs held after 30 s: {held}")


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


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def ray_head():
    """A `ray start --head` of our own (token auth on, as by default), for tests that submit Ray jobs:
    free ports, its own temp dir, its own process group, torn down by signalling that group (never
    `ray stop`). Yields (dashboard address, environment for `ray job submit`)."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs, dash, client, agent, agent_grpc, metrics, renv, nm, om = _free_ports(9)
    # The job's `python` is the cluster's: put this venv first, as a cluster image would.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # each job takes the config's (the workdir's SQLite)
    # Every port free: other Ray clusters on a shared machine hold the defaults (52365, 8265, ...).
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={gcs}", f"--temp-dir={temp}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={renv}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # answering (perhaps asking for the token): the job server is up
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not start: {(Path(temp) / 'head.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield address, env
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # only the group this fixture started
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
