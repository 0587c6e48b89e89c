"""A local S3-compatible server (moto's server mode) on 127.0.0.1, and what a bucket holds.

Clients get only the standard AWS variables (:meth:`LocalS3.aws_env`): s3fs/fsspec, botocore and
pyarrow read ``AWS_ENDPOINT_URL`` themselves, so no endpoint setting of ours is needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from spresso.core.errors import SpressoError
from spresso.rehearsal.procs import free_port, wait_stopped

REGION = "us-east-1"


@dataclass
class LocalS3:
    """``moto_server`` in a subprocess, with one bucket; use as a context manager."""

    bucket: str = "spresso-rehearsal"
    log_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra variables for the server (the rehearsal's marker)
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def aws_env(self) -> dict[str, str]:
        """Everything a client needs: the four standard variables (moto takes any credentials)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal",
                "AWS_DEFAULT_REGION": REGION}

    def client(self):
        env = self.aws_env()
        return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=REGION,
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def start(self, timeout: float = 30.0) -> "LocalS3":
        self.port = free_port()
        server = Path(sys.executable).with_name("moto_server")
        cmd = [str(server)] if server.exists() else [sys.executable, "-m", "moto.server"]
        out = open(self.log_dir / "moto.log", "ab") if self.log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out,
                                     stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().create_bucket(Bucket=self.bucket)
                return self
            except Exception as err:  # not listening yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SpressoError(f"moto server on {self.endpoint} did not start: {err}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            wait_stopped(self.proc)
            self.proc = None

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def objects(self) -> list[tuple[str, int]]:
        """(key, size) of every object in the bucket."""
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            out.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
        return out


def prefix_summary(objects: list[tuple[str, int]], depth: int = 1) -> dict[str, dict[str, int]]:
    """Objects and bytes per prefix of ``depth`` path segments ('' for objects at the top)."""
    out: dict[str, dict[str, int]] = {}
    for key, size in objects:
        parts = key.split("/")
        prefix = "/".join(parts[:depth]) + "/" if len(parts) > depth else ""
        row = out.setdefault(prefix, {"objects": 0, "bytes": 0})
        row["objects"] += 1
        row["bytes"] += size
    return dict(sorted(out.items()))
