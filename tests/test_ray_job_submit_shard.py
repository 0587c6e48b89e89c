"""The shard stage as a Ray job: `ray job submit --working-dir . -- python pipelines/shard_audio.py ...`
against a local `ray start --head` cluster (its own, in subprocesses; never `ray stop`, which would
stop every Ray on a shared machine: the blocking head process is ended by its id instead)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spresso.audio.synth import synth_corpus
from spresso.data.reader import read_dataset_info, read_manifest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_cluster():
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    port, dash = _free_port(), _free_port()
    # The job's `python` is the cluster's: put this venv first, as a cluster image would.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    # Every port free: other Ray clusters on a shared machine hold the defaults (52365, 8265, ...).
    ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port", "ray-client-server-port")]
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus=2", f"--port={port}", f"--temp-dir={temp}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
         *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dash), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("ray start --head exited early")
            time.sleep(0.5)
    else:
        pytest.fail("the Ray dashboard (job server) did not come up")
    try:
        yield address, env
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own cluster on SIGTERM
        try:
            proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_shard_job_via_ray_job_submit(head_cluster, tmp_path):
    address, env = head_cluster
    corpus = tmp_path / "corpus"
    synth_corpus(corpus, minutes=0.4, seed=11)
    out, workdir = tmp_path / "shards", tmp_path / "work"
    cmd = [RAY, "job", "submit", f"--address={address}", "--working-dir", ".", "--",
           "python", "pipelines/shard_audio.py", "--config", "demo", "--set", f"workdir={workdir}",
           "--set", "data.clips_per_shard=4", "--input", str(corpus), "--output", str(out)]
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    deadline = time.time() + 90
    while True:  # the dashboard answers before its job agent is ready: retry until it accepts
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        log = done.stdout + done.stderr
        if "No available agent" not in log or time.time() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, log[-3000:]
    assert "succeeded" in log and "clips" in log
    info = read_dataset_info(str(out))
    assert info["clips"] == read_manifest(str(out)).num_rows > 0
    # the job ran on that cluster and logged its stage to MLflow in the workdir
    assert info["mlflow_run_id"] and (workdir / "mlflow.db").exists()
