"""An MLflow tracking server with basic auth on 127.0.0.1: SQLite in a temporary folder, artifacts in the bucket.

Artifacts: ``--artifacts-destination s3://BUCKET/mlflow`` with ``--serve-artifacts``. The server
proxies artifact uploads (``mlflow-artifacts:/`` URIs), so a client needs only the tracking URI and
its MLflow credentials, exactly what a stage needs anyway; only the server talks to the bucket for
artifacts (with the standard AWS variables it is started with), and basic auth guards artifacts too.

Clients get ``MLFLOW_TRACKING_URI``/``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
(:meth:`MlflowServer.client_env`) through the environment of the cluster's nodes.
"""
from __future__ import annotations

import configparser
import importlib.util
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from spresso.core.errors import SpressoError
from spresso.rehearsal.procs import free_port, wait_stopped

ADMIN = "admin"


def write_auth_config(folder: Path, password: str) -> Path:
    """basic_auth.ini: the auth database beside the tracking database, this admin password."""
    cfg = configparser.ConfigParser()
    cfg["mlflow"] = {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{folder / 'basic_auth.db'}",
        "admin_username": ADMIN,
        "admin_password": password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    path = folder / "basic_auth.ini"
    with path.open("w") as f:
        cfg.write(f)
    path.chmod(0o600)
    return path


@dataclass
class MlflowServer:
    """``mlflow server --app-name basic-auth`` in a subprocess; use as a context manager."""

    folder: Path                      # a temporary folder for the SQLite stores (never the repo's work/)
    artifacts: str                    # s3://BUCKET/mlflow
    env: dict[str, str] = field(default_factory=dict)   # AWS variables (+ the rehearsal's marker)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": self.password}

    def command(self) -> list[str]:
        host = f"127.0.0.1:{self.port}"
        return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination", self.artifacts, "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                # what clients put in Host: this address only (the server refuses any other with 403)
                "--allowed-hosts", f"{host},localhost:{self.port}"]

    def start(self, timeout: float = 120.0, wait: bool = True) -> "MlflowServer":
        """Start the server; ``wait=False`` returns at once (its URI and password are already known:
        start the cluster meanwhile, then :meth:`wait_healthy`)."""
        if importlib.util.find_spec("flask_wtf") is None:
            raise SpressoError("the MLflow basic-auth app needs Flask-WTF: pip install 'mlflow[auth]'")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {**os.environ, **self.env, "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(self.folder, self.password)),
               # the auth app's CSRF protection refuses to start without a static key
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        log = open(self.folder / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder)
        return self.wait_healthy(timeout) if wait else self

    def wait_healthy(self, timeout: float = 120.0) -> "MlflowServer":
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "mlflow-server.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise SpressoError(f"MLflow server on {self.uri} did not start:\n{tail}")
            time.sleep(0.5)
        return self

    def healthy(self) -> bool:
        """Health, and an authenticated API call (the health probe alone passes even when hosts are refused)."""
        try:
            ok = requests.get(f"{self.uri}/health", timeout=2).ok
            api = requests.get(f"{self.uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                               auth=(ADMIN, self.password), timeout=5)
            return ok and api.ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            wait_stopped(self.proc, timeout=15)
            self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
