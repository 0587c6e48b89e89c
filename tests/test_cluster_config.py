"""The cluster definitions: Ray's own schema for ray_cluster.yaml; KubeRay / MLflow manifests parse."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_ray_cluster_yaml_validates_against_rays_schema():
    schema = json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    # ... and Ray's own validation after filling the provider's defaults, as `ray up` does
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))
    nodes = cfg["available_node_types"]
    assert nodes[cfg["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    a100 = [n for n in nodes.values() if n["node_config"]["InstanceType"] == "p4d.24xlarge"]
    assert len(a100) == 1 and a100[0]["min_workers"] == 0 and a100[0]["max_workers"] >= 1
    assert any(n["node_config"]["InstanceType"].startswith("m6i") and n.get("min_workers") == 0 for n in nodes.values())
    assert any("MLFLOW_TRACKING_URI=" in o for o in cfg["docker"]["run_options"])
    base = (REPO / "infra" / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_ray_cluster_schema_catches_mistakes():
    schema = json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    cfg["available_node_types"]["head"]["min_wokers"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, schema)


def test_kuberay_and_mlflow_manifests():
    cluster = {d["kind"]: d for d in _docs(REPO / "infra" / "kuberay" / "raycluster.yaml")}
    rc = cluster["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["spec"]["enableInTreeAutoscaling"] is True
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert groups["a100"]["minReplicas"] == 0
    gpu = groups["a100"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu == "8"
    shared = {(d["kind"], d["metadata"]["name"]): d for d in _docs(REPO / "infra" / "kuberay" / "shared.yaml")}
    assert "MLFLOW_TRACKING_URI" in shared["ConfigMap", "spresso-env"]["data"]
    jobs = sorted((REPO / "infra" / "kuberay").glob("rayjob-*.yaml"))
    assert len(jobs) >= 4
    for path in jobs:
        (job,) = _docs(path)
        assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
        entry = job["spec"]["entrypoint"].split()
        if entry[0] == "python":
            assert (REPO / entry[1]).is_file(), f"{path.name}: {entry[1]} does not exist"
        assert "clusterSelector" in job["spec"] or "rayClusterSpec" in job["spec"]


def server_options(tokens: list[str]) -> dict[str, str | bool]:
    """`--key value` pairs and bare `--flag`s of a command line, by name."""
    opts, i = {}, 0
    while i < len(tokens):
        if tokens[i].startswith("--"):
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            opts[tokens[i]] = tokens[i + 1] if has_value else True
            i += 2 if has_value else 1
        else:
            i += 1
    return opts


def test_mlflow_manifest_structure():
    docs = _docs(REPO / "infra" / "mlflow" / "mlflow.yaml")
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert {"Deployment", "StatefulSet", "Secret", "Service", "ServiceAccount"} <= {k for k, _ in by_kind_name}
    assert all(d["metadata"].get("namespace") == "mlflow" for d in docs if d["kind"] != "Namespace")
    secret = by_kind_name["Secret", "mlflow-secrets"]["stringData"]
    pod = by_kind_name["Deployment", "mlflow"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    # The server's command line: `sh -c "exec mlflow server ..."` (sh expands $BACKEND_URI from the env).
    assert server["command"] == ["sh", "-c"] and len(server["args"]) == 1
    tokens = shlex.split(server["args"][0])
    assert tokens[:3] == ["exec", "mlflow", "server"]
    opts = server_options(tokens[3:])
    assert opts["--app-name"] == "basic-auth" and opts["--serve-artifacts"] is True
    assert opts["--host"] == "0.0.0.0" and int(opts["--workers"]) >= 1
    assert opts["--artifacts-destination"].startswith("s3://") and opts["--artifacts-destination"] != "s3://"
    assert opts["--backend-store-uri"] == "$BACKEND_URI"
    assert opts["--allowed-hosts"] not in {True, "*"}   # what it must hold: tests/test_infra_manifests.py
    # Every env secret ref names a key the secret holds; the backend URI comes from it (no password inline).
    env = {e["name"]: e for e in server["env"]}
    for e in env.values():
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mlflow-secrets" and ref["key"] in secret, e
    assert env["BACKEND_URI"]["valueFrom"]["secretKeyRef"]["key"] == "BACKEND_URI"
    assert secret["BACKEND_URI"].startswith("postgresql://")
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in env and "valueFrom" in env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    # The auth config path points into the mounted secret, at the item that holds basic_auth.ini.
    (mount,) = server["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
    assert volume["secret"]["secretName"] == "mlflow-secrets" and mount.get("readOnly") is True
    auth_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    assert auth_path.startswith(mount["mountPath"] + "/")
    assert items[auth_path[len(mount["mountPath"]) + 1:]] in secret
    # One port everywhere: --port, the container port, the readiness probe, the Service's target.
    port = int(opts["--port"])
    assert [p["containerPort"] for p in server["ports"]] == [port]
    assert server["readinessProbe"]["httpGet"]["port"] == port
    service = by_kind_name["Service", "mlflow"]["spec"]
    assert service["selector"] == by_kind_name["Deployment", "mlflow"]["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["ports"]] == [port]
    # The backend URI reaches PostgreSQL at its Service's name and port.
    pg = by_kind_name["Service", "mlflow-postgres"]["spec"]
    host_port = secret["BACKEND_URI"].split("@", 1)[1].split("/", 1)[0]
    assert host_port == f"mlflow-postgres.mlflow.svc.cluster.local:{pg['ports'][0]['port']}"
    assert pod["serviceAccountName"] in {n for k, n in by_kind_name if k == "ServiceAccount"}
