"""An autoscaling Ray cluster on this machine: Ray's fake multi-node provider, node types of ray_cluster.yaml.

The head is started with our own ``ray start --head`` (its own ports and temporary folder): Ray's
``AutoscalingCluster.start/shutdown`` run ``ray stop --force``, which would kill every Ray on the
machine. The head has no CPUs (as in ray_cluster.yaml), so every task asks the autoscaler (v2: it
honours label selectors) for a worker node of the type that fits; nodes are local processes, each
with its own folder. Token authentication is on: every process gets ``RAY_AUTH_MODE=token`` and the
token through its environment. Stopping signals exactly the processes marked with this cluster's id.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from spresso.core.errors import SpressoError
from spresso.rehearsal.procs import MARKER, free_port, pids_with, signal_all, terminate
from spresso.rehearsal.provider import NODES_ROOT

LABEL = "spresso-node"
ACCELERATOR = "accelerator_type:A100"
HEAD_ID = "f" * 51 + "00000"          # the id the fake provider gives the head (autoscaler v2 looks it up)
NODE_ID_VAR = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # each fake node's processes carry their node id here
HEAD_TYPE = "ray.head.default"


def toy_node_types(ray_cluster: str | Path, max_workers: int = 2, cpus: int = 1, driver_cpus: int = 2,
                   object_store_mb: int = 96, memory_mb: int = 2048) -> dict[str, dict]:
    """ray_cluster.yaml's worker node types at toy size: same names and labels, ``min_workers: 0``.

    An accelerator type (its label names it, e.g. ``a100``) declares the custom resource
    ``accelerator_type:A100: 1`` in place of GPUs; a driver type is added when the file has none
    (the on-demand type drivers are placed on by label). Every type starts at zero nodes: the
    rehearsal shows each one being started for the work that asked for it.
    """
    spec = yaml.safe_load(Path(ray_cluster).read_text())
    head = spec.get("head_node_type")
    out: dict[str, dict] = {}
    for name, node in spec["available_node_types"].items():
        if name == head:
            continue
        labels = dict(node.get("labels") or {})
        role = labels.get(LABEL, "")
        # memory is declared, as the cloud provider fills it in for a real instance type: tasks state
        # their memory need (sharding does), and the autoscaler only starts a type that can hold it.
        resources = {"CPU": driver_cpus if role == "driver" else cpus, "memory": memory_mb << 20,
                     "object_store_memory": object_store_mb << 20}
        if role and role not in ("cpu", "driver"):
            resources[f"accelerator_type:{role.upper()}"] = 1
        out[name] = {"min_workers": 0, "max_workers": 1 if role == "driver" else max_workers,
                     "resources": resources, "labels": labels, "node_config": {}}
    if not any(t["labels"].get(LABEL) == "driver" for t in out.values()):
        out["driver"] = {"min_workers": 0, "max_workers": 1, "labels": {LABEL: "driver"}, "node_config": {},
                         "resources": {"CPU": driver_cpus, "memory": memory_mb << 20,
                                       "object_store_memory": object_store_mb << 20}}
    return out


def autoscaling_config(node_types: dict[str, dict], gcs_address: str, nodes_root: str, idle_minutes: float) -> dict:
    """The autoscaler's cluster config for the fake provider (ours, with a folder per node)."""
    types = {name: dict(t) for name, t in node_types.items()}
    types[HEAD_TYPE] = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "spresso-rehearsal",
        "max_workers": sum(t.get("max_workers", 0) for t in node_types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        "provider": {"type": "external", "module": "spresso.rehearsal.provider.OwnFolderProvider",
                     "gcs_address": gcs_address, "head_node_id": HEAD_ID, "launch_multiple": True,
                     NODES_ROOT: nodes_root, "disable_launch_config_check": True, "disable_node_updaters": True,
                     "foreground_node_launch": True},
        "auth": {"ssh_user": "nobody"},
        "head_node_type": HEAD_TYPE,
        "available_node_types": types,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def node_type_of(node: dict, node_types: dict[str, dict]) -> str:
    """A node's type: the head by id, else the type whose labels the node carries."""
    if node["node_id"] == HEAD_ID or node.get("is_head_node"):
        return "head"
    labels = node.get("labels") or {}
    for name, t in node_types.items():
        if t["labels"] and all(labels.get(k) == v for k, v in t["labels"].items()):
            return name
    return labels.get("ray.io/node-group") or "?"


@dataclass
class NodeBook:
    """Nodes seen over time: when each was first seen alive and when it died, by type."""

    node_types: dict[str, dict]
    nodes: dict[str, dict] = field(default_factory=dict)   # node id -> {type, launched, terminated}

    def observe(self, snapshot: list[dict], now: float) -> None:
        """Record one poll of the node table (dicts with node_id, state, labels, start/end times in ms)."""
        for node in snapshot:
            kind = node_type_of(node, self.node_types)
            if kind == "head":
                continue
            row = self.nodes.setdefault(node["node_id"], {"type": kind, "launched": None, "terminated": None})
            if row["launched"] is None:
                row["launched"] = (node.get("start_time_ms") or now * 1000) / 1000
            if node["state"] == "DEAD" and row["terminated"] is None:
                row["terminated"] = (node.get("end_time_ms") or now * 1000) / 1000

    def per_type(self) -> dict[str, dict[str, int]]:
        out = {name: {"launched": 0, "terminated": 0, "alive": 0} for name in self.node_types}
        for row in self.nodes.values():
            counts = out.setdefault(row["type"], {"launched": 0, "terminated": 0, "alive": 0})
            counts["launched"] += 1
            counts["terminated" if row["terminated"] else "alive"] += 1
        return out

    def alive(self) -> dict[str, int]:
        return {name: c["alive"] for name, c in self.per_type().items()}

    def launched_types(self) -> set[str]:
        return {row["type"] for row in self.nodes.values()}

    def events(self) -> list[tuple[float, str, str, str]]:
        """(time, type, 'launched' | 'terminated', node id), in time order."""
        out = []
        for nid, row in self.nodes.items():
            out.append((row["launched"], row["type"], "launched", nid))
            if row["terminated"]:
                out.append((row["terminated"], row["type"], "terminated", nid))
        return sorted(out)


@dataclass
class LocalCluster:
    """The head (``ray start --head``) plus whatever its autoscaler starts; use as a context manager."""

    root: Path                                   # this cluster's folder (the head's temp dir, the nodes' folders)
    ray_cluster: Path                            # ray_cluster.yaml: the node types
    env: dict[str, str] = field(default_factory=dict)  # what every node's environment carries (AWS, MLflow, ...)
    idle_minutes: float = 0.25
    max_workers: int = 2
    cluster_id: str = field(default_factory=lambda: secrets.token_hex(6))
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    node_types: dict[str, dict] = field(default_factory=dict)
    gcs_port: int = 0
    dashboard_port: int = 0
    book: NodeBook | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def node_env(self) -> dict[str, str]:
        """The environment of the head, the autoscaler and so of every node and worker it starts."""
        repo = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, **self.env, **self.auth_env(), MARKER: self.cluster_id, "PYTHONPATH": path,
                "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
                "RAY_CLOUD_INSTANCE_ID": HEAD_ID, NODE_ID_VAR: HEAD_ID,
                # fail fast on a killed node (defaults: 30 s of missed health checks)
                "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
                # Ray Data asks the autoscaler to keep its nodes for 180 s after its last request (a
                # detached actor outlives the job): toy-sized here, like idle_timeout_minutes
                "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S": "10", "RAY_DATA_LOW_UTIL_REQUEST_RELEASE_DELAY_S": "10"}

    def start(self, timeout: float = 120.0) -> "LocalCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "n").mkdir(exist_ok=True)
        self.node_types = self.node_types or toy_node_types(self.ray_cluster, max_workers=self.max_workers)
        self.book = NodeBook(self.node_types)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        config = autoscaling_config(self.node_types, self.address, str(self.root / "n"), self.idle_minutes)
        config_path = self.root / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(config))
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [str(ray_bin), "start", "--head", f"--port={self.gcs_port}",
               f"--temp-dir={self.root / 'head'}", "--num-cpus=0", "--num-gpus=0",
               f"--autoscaling-config={config_path}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               "--object-store-memory=80000000", "--disable-usage-stats"]
        log = self.root / "ray-start.log"
        with log.open("ab") as out:
            rc = subprocess.run(cmd, env=self.node_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        if rc != 0:
            self.stop()
            raise SpressoError(f"ray start --head failed (rc {rc}); see {log}:\n{log.read_text()[-2000:]}")
        return self

    # ------------------------------------------------------------------ the node table
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def list_nodes(self) -> list[dict]:
        """The GCS node table (alive and dead nodes) through the dashboard's state API, with the token."""
        reply = requests.get(f"{self.dashboard}/api/v0/nodes", params={"limit": 1000, "detail": 1},
                             headers=self.headers(), timeout=30)
        reply.raise_for_status()
        return reply.json()["data"]["result"]["result"]

    def poll(self) -> dict[str, int]:
        """Update the node book; returns alive nodes per type."""
        self.book.observe(self.list_nodes(), time.time())
        return self.book.alive()

    def job_log(self, submission_id: str) -> str:
        """A job driver's log, read from its node's folder. The job API would ask the agent at the
        driver node's IP, and here every node has the same IP: it answers from the head's (empty) file."""
        found = sorted(self.root.glob(f"n/*/session_*/logs/job-driver-{submission_id}.log"))
        return found[-1].read_text(errors="replace") if found else ""

    def status(self) -> str:
        """The autoscaler's view (``ray status``): nodes, usage, pending demands, resource constraints."""
        try:
            reply = requests.get(f"{self.dashboard}/api/cluster_status", params={"format": 1},
                                 headers=self.headers(), timeout=30)
            return str(reply.json().get("data", {}).get("clusterStatus", reply.text))
        except (requests.RequestException, ValueError) as err:
            return f"(no status: {err})"

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no worker node is alive (the autoscaler removed the idle ones)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(self.poll().values()):
                return True
            time.sleep(2)
        return False

    def actors_on_workers(self) -> list[dict]:
        """Alive actors on worker nodes (class, node id, node type, pid). Once every job has ended only
        detached actors are left: they keep their node busy, so the autoscaler never removes it."""
        reply = requests.get(f"{self.dashboard}/api/v0/actors", params={"limit": 10000, "detail": 1},
                             headers=self.headers(), timeout=30)
        reply.raise_for_status()
        return [{"class": a.get("class_name"), "node_id": a["node_id"], "pid": a.get("pid"),
                 "node_type": self.book.nodes.get(a["node_id"], {}).get("type", "?")}
                for a in reply.json()["data"]["result"]["result"]
                if a.get("state") == "ALIVE" and a.get("node_id") and a["node_id"] != HEAD_ID]

    # ------------------------------------------------------------------ failure injection
    def kill_worker(self, node: str) -> str:
        """Kill one worker node's processes (its raylet and everything it runs) with SIGKILL, as a
        reclaimed instance would vanish. ``node``: a node id, or a node type (its first alive node)."""
        node_id = node
        if node in self.node_types:
            alive = [nid for nid, row in self.book.nodes.items() if row["type"] == node and not row["terminated"]]
            if not alive:
                raise SpressoError(f"no alive node of type {node} to kill")
            node_id = alive[0]
        if node_id == HEAD_ID:
            raise SpressoError("refusing to kill the head node")
        pids = [p for p in pids_with(NODE_ID_VAR, node_id) if p in set(pids_with(MARKER, self.cluster_id))]
        if not pids:
            raise SpressoError(f"no process of node {node_id} found")
        signal_all(pids, signal.SIGKILL)
        return node_id

    # ------------------------------------------------------------------ teardown
    def stop(self, keep: bool = False) -> list[int]:
        """Stop every process of this cluster (head, autoscaler, nodes, workers) and remove its folder
        (``keep``: leave it, logs included); returns the pids that would not go (none, normally)."""
        left = terminate(MARKER, self.cluster_id, grace=10.0)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def runaway(self) -> str | None:
        """Nodes that die at start (a misconfiguration the autoscaler answers by launching again,
        forever): launches that never registered a node, beyond the ones that may still be starting.

        Counts launches that never came up, not all launches: the autoscaler legitimately starts and
        retires nodes many times over a DAG (each training stage, each stage's Ray Data read tasks)."""
        tried = len(list((self.root / "n").iterdir()))  # one folder per launch, started or not
        never_up = tried - len(self.book.nodes)
        limit = sum(t["max_workers"] for t in self.node_types.values()) + 6
        return f"{never_up} of {tried} launches never registered a node (at most {limit} expected)" if never_up > limit else None

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def describe(node_types: dict[str, dict]) -> str:
    return json.dumps({k: {"resources": v["resources"], "labels": v["labels"], "max": v["max_workers"]}
                       for k, v in node_types.items()})
