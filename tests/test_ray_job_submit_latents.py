"""`ray job submit` of pipelines/precompute_latents.py against a local `ray start --head`."""
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

import numpy as np
import pytest

from spresso.data.zarr_cache import ClipCache
from test_precompute_latents import CLIP_SECONDS, TINY_MODEL, make_config, save_tiny_audioae, write_tiny_shards

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ray_head():
    """A head node of our own, on free ports, in its own process group.

    Not torn down with `ray stop`: that kills every Ray of this user on the machine (other
    test sessions included). The head runs with `--block` in a session of its own, and the
    teardown signals exactly that process group (its GCS, raylet, dashboard and workers).
    """
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs, dash, client, agent, agent_grpc, metrics, renv = _free_ports(7)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={gcs}", f"--temp-dir={temp}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={renv}", "--disable-usage-stats"]
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
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # only the group this fixture started
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_precompute_latents(tmp_path, ray_head):
    address, env = ray_head
    shards = write_tiny_shards(tmp_path / "shards")
    work = tmp_path / "work"  # absolute: the job runs in a copy of the working dir
    cfg = make_config(work)
    save_tiny_audioae(cfg, tmp_path / "ae")
    overrides = [f"workdir={work}", f"runtime.mlflow_tracking_uri={cfg.runtime.mlflow_tracking_uri}",
                 f"data.clip_seconds={CLIP_SECONDS}", "audioae.cache.chunk_clips=4", "audioae.cache.batch_size=4",
                 "runtime.actor_cpus=0.5", *TINY_MODEL]
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={address}", f"--working-dir={REPO}", "--",
           "python", "pipelines/precompute_latents.py", "--config", "demo",
           "--audioae", str(tmp_path / "ae"), "--shards", str(shards)]
    for o in overrides:
        cmd += ["--set", o]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout + out.stderr
    cache = ClipCache.open(cfg.path(cfg.audioae.latents_path), mode="r")
    assert cache.complete and cache.n_rows == 9 and cache.chunk_rows == 4
    x0 = cache.read("x0")
    assert x0.shape == (9, 128, 50) and np.isfinite(x0).all() and np.abs(x0).max() > 0
    assert len(cache.attrs["x0_std"]) == 128
