"""Watching the first submission: MLflow runs and bucket objects of a stage, the train workers'
nodes, and the one node kill (after the stage's first checkpoint reached the bucket)."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import requests
from mlflow.tracking import MlflowClient

from spresso.rehearsal.cluster import LocalCluster
from spresso.rehearsal.s3 import LocalS3
from spresso.runtime.tracking import TAG_STAGE
from spresso.train.harness import RUN_MARKER

STEP = re.compile(r"step-(\d+)")
SNAPSHOT = "checkpoint_manager_snapshot.json"   # Ray Train V2's checkpoint manager state, in the run's storage
TRAIN_WORKER = "TrainWorker"   # Ray Train's worker actor class (RayTrainWorker)


def checkpoint_steps(keys: list[str], folder: str) -> list[int]:
    """Steps of the checkpoints under ``folder`` (Ray Train's storage of one run), from object keys."""
    return sorted({int(m.group(1)) for k in keys if k.startswith(folder + "/") and (m := STEP.search(k[len(folder):]))})


def first_step_after(history: list[tuple[int, int]], t_ms: float) -> int | None:
    """The first step logged after ``t_ms`` (history: (timestamp ms, step) of one metric)."""
    later = sorted((ts, step) for ts, step in history if ts > t_ms)
    return later[0][1] if later else None


def alive_train_workers(cluster: LocalCluster) -> list[dict]:
    reply = requests.get(f"{cluster.dashboard}/api/v0/actors", params={"limit": 10000, "detail": 1},
                         headers=cluster.headers(), timeout=30)
    reply.raise_for_status()
    return [a for a in reply.json()["data"]["result"]["result"]
            if TRAIN_WORKER in (a.get("class_name") or "") and a.get("state") == "ALIVE"]


@dataclass
class KillWatch:
    """Kill the node of one train worker of ``stage`` once that stage has a checkpoint in the bucket."""

    cluster: LocalCluster
    s3: LocalS3
    experiment: str
    stage: str
    storage_prefix: str                  # the bucket key prefix of Ray Train's storage (work/ray_train)
    spare_type: str | None = None        # the node type of the job's driver: never killed
    run_id: str | None = None
    folder: str | None = None
    killed_at: float | None = None       # epoch seconds
    killed_node: str | None = None
    killed_type: str | None = None
    checkpoint_step: int | None = None   # the latest checkpoint in the bucket when the node died
    max_workers_seen: int = 0            # most train workers of the stage alive at once (its world size)
    worker_types: set[str] = field(default_factory=set)
    back_at: float | None = None         # a full worker group was alive again
    errors: list[str] = field(default_factory=list)

    def client(self) -> MlflowClient:
        return MlflowClient()

    def find_run(self) -> None:
        exp = self.client().get_experiment_by_name(self.experiment)
        if exp is None:
            return
        runs = self.client().search_runs([exp.experiment_id], f"tags.`{TAG_STAGE}` = '{self.stage}' and attributes.status = 'RUNNING'",
                                         order_by=["attributes.start_time ASC"], max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id

    def find_folder(self, keys: list[str]) -> None:
        for key in keys:
            if key.startswith(self.storage_prefix) and key.endswith("/" + RUN_MARKER):
                body = self.s3.client().get_object(Bucket=self.s3.bucket, Key=key)["Body"].read()
                if json.loads(body).get("mlflow_run_id") == self.run_id:
                    self.folder = key[: -len(RUN_MARKER) - 1]

    def poll(self) -> None:
        try:
            self.step()
        except Exception as err:  # a watcher hiccup must not end the rehearsal; it is reported
            self.errors.append(f"{type(err).__name__}: {err}")

    def step(self) -> None:
        self.cluster.poll()
        if self.run_id is None:
            self.find_run()
        if self.run_id is None:
            return
        workers = alive_train_workers(self.cluster)
        mine = [w for w in workers if w.get("node_id")]
        types = {self.cluster.book.nodes.get(w["node_id"], {}).get("type", "?") for w in mine}
        if self.killed_at is None:
            self.max_workers_seen = max(self.max_workers_seen, len(mine))
            self.worker_types |= types
            keys = [k for k, _ in self.s3.objects()]
            if self.folder is None:
                self.find_folder(keys)
            steps = self.registered_steps(keys) if self.folder else []
            # never the node of the job's driver (it would take the whole job): a worker-only node
            targets = [w for w in mine if self.cluster.book.nodes.get(w["node_id"], {}).get("type") != self.spare_type]
            if steps and targets:
                self.checkpoint_step = steps[-1]
                self.killed_node = self.cluster.kill_worker(targets[0]["node_id"])
                self.killed_type = self.cluster.book.nodes.get(self.killed_node, {}).get("type")
                self.killed_at = time.time()
        elif self.back_at is None and len(mine) >= self.max_workers_seen and \
                self.killed_node not in {w["node_id"] for w in mine}:
            self.back_at = time.time()  # a full worker group again, none on the dead node

    def registered_steps(self, keys: list[str]) -> list[int]:
        """Checkpoint steps Ray Train has registered (its manager's snapshot in the bucket names them): an
        object under the run's folder is not enough, a restart resumes from registered checkpoints only."""
        snap = f"{self.folder}/{SNAPSHOT}"
        if snap not in keys:
            return []
        text = self.s3.client().get_object(Bucket=self.s3.bucket, Key=snap)["Body"].read().decode()
        return sorted({int(m) for m in STEP.findall(text)})

    def resumed_from(self) -> int | None:
        """The first step the stage logged after the kill (a fresh start would log its first steps again)."""
        if self.run_id is None or self.killed_at is None:
            return None
        client = self.client()
        names = list(client.get_run(self.run_id).data.metrics)
        best = None
        for name in names:
            history = [(m.timestamp, m.step) for m in client.get_metric_history(self.run_id, name)]
            step = first_step_after(history, self.killed_at * 1000)
            if step is not None and (best is None or step < best):
                best = step
        return best

    def resumed_at(self) -> float | None:
        """When the stage logged its first metric after the kill (epoch seconds)."""
        if self.run_id is None or self.killed_at is None:
            return None
        client = self.client()
        times = [m.timestamp / 1000 for name in client.get_run(self.run_id).data.metrics
                 for m in client.get_metric_history(self.run_id, name) if m.timestamp / 1000 > self.killed_at]
        return min(times) if times else None
