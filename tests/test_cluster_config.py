"""The cluster definitions: Ray's own schema for ray_cluster.yaml; KubeRay / MLflow manifests parse."""
from __future__ import annotations

import json
import os
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
    assert "MLFLOW_TRACKING_URI" in cluster["ConfigMap"]["data"]
    jobs = sorted((REPO / "infra" / "kuberay").glob("rayjob-*.yaml"))
    assert len(jobs) >= 4
    for path in jobs:
        (job,) = _docs(path)
        assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
        entry = job["spec"]["entrypoint"].split()
        if entry[0] == "python":
            assert (REPO / entry[1]).is_file(), f"{path.name}: {entry[1]} does not exist"
        assert "clusterSelector" in job["spec"] or "rayClusterSpec" in job["spec"]
    kinds = [d["kind"] for d in _docs(REPO / "infra" / "mlflow" / "mlflow.yaml")]
    assert {"Deployment", "StatefulSet", "Secret", "Service"} <= set(kinds)
    (server,) = [d for d in _docs(REPO / "infra" / "mlflow" / "mlflow.yaml") if d["kind"] == "Deployment"]
    cmd = " ".join(server["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--app-name basic-auth" in cmd and "--artifacts-destination s3://" in cmd and "BACKEND_URI" in cmd
