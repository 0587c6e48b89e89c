"""Submit a command to the cluster as ``ray job submit`` does, follow its logs, wait for it.

The job's working directory is this repository (uploaded by Ray, without work/ and the venv), so
every worker imports this tree; its entrypoint asks for the driver node type by label, which the
autoscaler starts for it. Secrets never go into the job's runtime environment: the nodes have them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from spresso.core.errors import SpressoError

REPO = Path(__file__).resolve().parents[2]
EXCLUDES = [".git", ".venv", "work", "mutants", "**/__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis",
            "mlruns", "mlartifacts", "out", ".ruff_cache"]
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


@dataclass
class JobOutcome:
    submission_id: str
    status: str
    seconds: float                     # submit -> terminal state
    queued_seconds: float = 0.0        # submit -> the driver started (includes the driver node's start)
    logs: str = ""
    message: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status == JobStatus.SUCCEEDED.value


@dataclass
class Jobs:
    dashboard: str                     # http://127.0.0.1:PORT
    token: str                         # the cluster's auth token (sent as a bearer header)
    driver_labels: dict[str, str] = field(default_factory=dict)
    driver_cpus: float = 1.0

    def client(self) -> JobSubmissionClient:
        return JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.token}"})

    def submit(self, entrypoint: str, env: dict[str, str] | None = None) -> str:
        """Submit ``entrypoint``; ``env``: plain settings only (never credentials: the nodes have those)."""
        runtime_env = {"working_dir": str(REPO), "excludes": EXCLUDES}
        if env:
            runtime_env["env_vars"] = dict(env)
        return self.client().submit_job(entrypoint=entrypoint, runtime_env=runtime_env, entrypoint_num_cpus=self.driver_cpus,
                                        entrypoint_label_selector=self.driver_labels or None)

    def wait(self, submission_id: str, timeout: float, on_poll=None, poll_s: float = 2.0) -> JobOutcome:
        """Wait for the job to end (``on_poll()`` is called between polls: watchers, failure injection)."""
        client = self.client()
        t0 = time.monotonic()
        queued = None
        while True:
            info = client.get_job_info(submission_id)
            if queued is None and info.status != JobStatus.PENDING:
                queued = time.monotonic() - t0
            if info.status in TERMINAL:
                break
            if time.monotonic() - t0 > timeout:
                client.stop_job(submission_id)
                return JobOutcome(submission_id, "TIMEOUT", time.monotonic() - t0, queued or 0.0,
                                  self.logs(client, submission_id), f"no result within {timeout:.0f} s", True)
            if on_poll is not None:
                try:
                    on_poll()
                except BaseException:  # the rehearsal gives up (or Ctrl-C): the job goes too
                    client.stop_job(submission_id)
                    raise
            time.sleep(poll_s)
        return JobOutcome(submission_id, info.status.value, time.monotonic() - t0, queued or 0.0,
                          self.logs(client, submission_id), info.message or "")

    @staticmethod
    def logs(client: JobSubmissionClient, submission_id: str) -> str:
        """The job's logs; they live on its driver's node, so they are gone with that node."""
        try:
            return client.get_job_logs(submission_id)
        except Exception as err:
            return f"(logs unavailable: {str(err).splitlines()[0][:200]})"

    def run(self, entrypoint: str, timeout: float, env: dict[str, str] | None = None, on_poll=None) -> JobOutcome:
        try:
            sid = self.submit(entrypoint, env)
        except Exception as err:
            raise SpressoError(f"could not submit the job to {self.dashboard}: {err}") from err
        return self.wait(sid, timeout, on_poll)
