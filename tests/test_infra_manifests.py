"""infra/, ray_cluster.yaml and docs/operations.md agree with each other, read as YAML, not as text:
the MLflow host, volumes, secrets, node types and their labels, /dev/shm, where job drivers run, and
that no password travels in a job's runtime env."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from mlflow.server.security_utils import is_allowed_host_header
from ray._private.ray_constants import (
    DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES,
    DEFAULT_OBJECT_STORE_MEMORY_PROPORTION,
)
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
OPERATIONS = REPO / "docs" / "operations.md"
LABEL = "spresso-node"
NODE_LABELS = {"driver": {LABEL: "driver"}, "cpu": {LABEL: "cpu"}, "a100": {LABEL: "a100"}}
CAPACITY = "eks.amazonaws.com/capacityType"
# What the manifests use but the operator creates (docs/operations.md shows how), with the keys they hold.
OPERATOR_CREATED = {
    ("Secret", "spresso-mlflow-client"): {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    ("Secret", "spresso-s3"): {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("ConfigMap", "spresso-ca"): {"ca.crt"},
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
GIB = 2**30


# ---------------------------------------------------------------------------------------- reading


def manifests() -> list[tuple[str, dict]]:
    """Every object in infra/**/*.yaml, with the file it comes from."""
    return [(str(p.relative_to(REPO)), d) for p in sorted(INFRA.rglob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def the(kind: str, name: str) -> dict:
    (obj,) = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


def ray_cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def namespace(obj: dict) -> str:
    return obj["metadata"].get("namespace", "default")


def cluster_specs() -> dict[str, dict]:
    """Each RayCluster spec in infra (the long-lived one and the RayJobs' own), by where it is."""
    specs = {}
    for where, d in manifests():
        if d["kind"] == "RayCluster":
            specs[where] = d["spec"]
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            specs[where] = d["spec"]["rayClusterSpec"]
    return specs


def ray_pods(spec: dict) -> dict[str, dict]:
    """The Ray pod specs of a cluster spec, by group name ('head' for the head)."""
    return {"head": spec["headGroupSpec"]["template"]["spec"],
            **{g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]}}


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """Every pod spec an object makes: workloads' templates, Ray pods, RayJob submitters."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
        return [(name, obj["spec"]["template"]["spec"])]
    pods = []
    if obj["kind"] == "RayCluster":
        pods += [(f"{name}:{g}", p) for g, p in ray_pods(obj["spec"]).items()]
    if obj["kind"] == "RayJob":
        if "rayClusterSpec" in obj["spec"]:
            pods += [(f"{name}:{g}", p) for g, p in ray_pods(obj["spec"]["rayClusterSpec"]).items()]
        if "submitterPodTemplate" in obj["spec"]:
            pods.append((f"{name}:submitter", obj["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def option(tokens: list[str], name: str) -> str:
    return tokens[tokens.index(name) + 1]


def mlflow_server_tokens() -> list[str]:
    (server,) = the("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    return shlex.split(server["args"][0])


def allowed_hosts() -> list[str]:
    return option(mlflow_server_tokens(), "--allowed-hosts").split(",")


def ingress() -> tuple[dict, str]:
    (ing,) = [d for _, d in manifests() if d["kind"] == "Ingress"]
    (rule,) = ing["spec"]["rules"]
    return ing, rule["host"]


def shell_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks of a markdown text, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.DOTALL):
        commands += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    return commands


def docs_mlflow_uris() -> list[str]:
    """MLflow URIs in docs/operations.md: any URL of a host named mlflow*, any MLFLOW_TRACKING_URI value."""
    text = OPERATIONS.read_text()
    urls = re.findall(r"https?://mlflow[^\s`'\")]*", text)
    return urls + re.findall(r"MLFLOW_TRACKING_URI=(https?://[^\s`'\")]+)", text)


def mlflow_uris() -> dict[str, list[str]]:
    """Every MLflow URI a client is given: ray_cluster.yaml, the manifests' env, the docs."""
    found: dict[str, list[str]] = {"ray_cluster.yaml": [], "infra": [], "docs/operations.md": docs_mlflow_uris()}
    for opt in ray_cluster_yaml()["docker"]["run_options"]:
        found["ray_cluster.yaml"] += re.findall(r"MLFLOW_TRACKING_URI=(\S+)", opt)
    for _, obj in manifests():
        if obj["kind"] == "ConfigMap" and "MLFLOW_TRACKING_URI" in obj.get("data", {}):
            found["infra"].append(obj["data"]["MLFLOW_TRACKING_URI"])
        for _, pod in pod_specs(obj):
            found["infra"] += [e["value"] for c in containers(pod) for e in c.get("env", [])
                               if e["name"] == "MLFLOW_TRACKING_URI" and "value" in e]
    return found


def quantity(q: str | int) -> float:
    """A Kubernetes quantity in bytes (the suffixes our manifests use)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": GIB, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    return float(m[1]) * units.get(m[2], 1)


# ---------------------------------------------------------------------------------------- MLflow host


def test_every_mlflow_uri_names_the_ingress_host_and_passes_allowed_hosts():
    ing, host = ingress()
    allowed = allowed_hosts()
    assert "*" not in allowed and not is_allowed_host_header(allowed, "evil.example.com")
    assert not is_allowed_host_header(allowed, f"{host}.evil.example.com")
    uris = mlflow_uris()
    assert all(uris.values()), f"no MLflow URI found in some place: {uris}"
    for where, found in uris.items():
        for uri in found:
            parts = urlsplit(uri)
            # The Host header a client sends is the URI's netloc; MLflow answers 403 unless it is allowed.
            assert is_allowed_host_header(allowed, parts.netloc), f"{where}: {uri} is not in --allowed-hosts"
            if parts.scheme == "https":
                assert parts.hostname == host, f"{where}: {uri} is not the Ingress host {host}"
    # ray_cluster.yaml and the Ray pods use the Ingress, not a port-forward or an in-cluster name.
    for where in ("ray_cluster.yaml", "infra"):
        assert {urlsplit(u).hostname for u in uris[where]} == {host}, where
    # The Ingress serves that host over TLS and sends it to the MLflow Service's port.
    assert [host] == [h for t in ing["spec"]["tls"] for h in t["hosts"]]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = the("Service", backend["name"])
    assert namespace(service) == namespace(ing)
    assert backend["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]


def test_allowed_hosts_cover_the_service_names_and_port_forward():
    allowed = allowed_hosts()
    service = the("Service", "mlflow")
    name, ns, port = service["metadata"]["name"], namespace(service), service["spec"]["ports"][0]["port"]
    for host in (f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}", name):
        assert is_allowed_host_header(allowed, f"{host}:{port}"), host
    # `kubectl port-forward -n mlflow svc/mlflow 5000:5000` (docs/operations.md)
    assert is_allowed_host_header(allowed, "localhost:5000") and is_allowed_host_header(allowed, "127.0.0.1:5000")


def test_ingress_certificate_comes_from_an_issuer_defined_in_infra():
    ing, host = ingress()
    issuer = the("ClusterIssuer", ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"])
    # A CA issuer: its key pair is a CA certificate that infra also defines, from an issuer it defines.
    (ca,) = [d for _, d in manifests() if d["kind"] == "Certificate"
             and d["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]]
    assert ca["spec"]["isCA"] is True and namespace(ca) == "cert-manager"
    assert the(ca["spec"]["issuerRef"]["kind"], ca["spec"]["issuerRef"]["name"])
    assert all(t["secretName"] for t in ing["spec"]["tls"])


def test_mlflow_server_runs_the_auth_app_with_allowed_hosts():
    tokens = mlflow_server_tokens()
    assert tokens[:3] == ["exec", "mlflow", "server"]
    assert option(tokens, "--app-name") == "basic-auth"
    assert allowed_hosts() and all(allowed_hosts())


# ---------------------------------------------------------------------------------------- volumes, secrets


def test_every_mounted_volume_is_declared_in_its_pod():
    checked = 0
    for where, obj in manifests():
        claims = {t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])}
        for pod_name, pod in pod_specs(obj):
            declared = {v["name"] for v in pod.get("volumes", [])} | claims
            for c in containers(pod):
                paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
                assert len(paths) == len(set(paths)), f"{where} {pod_name}/{c['name']}: a path mounted twice"
                for m in c.get("volumeMounts", []):
                    assert m["name"] in declared, f"{where} {pod_name}/{c['name']}: volume {m['name']} not declared"
                    checked += 1
    assert checked > 20


def defined_objects() -> dict[tuple[str, str, str], set[str]]:
    """(kind, namespace, name) -> keys, for what infra defines and what the operator creates."""
    defined = {(k, "default", n): keys for (k, n), keys in OPERATOR_CREATED.items()}
    for _, obj in manifests():
        key = (obj["kind"], namespace(obj), obj["metadata"]["name"])
        if obj["kind"] in {"Secret", "ConfigMap"}:
            defined[key] = set(obj.get("stringData", {})) | set(obj.get("data", {}))
        elif obj["kind"] in {"PersistentVolumeClaim", "ServiceAccount"}:
            defined[key] = set()
    return defined


def references(pod: dict) -> list[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every Secret, ConfigMap, PVC and ServiceAccount a pod spec uses."""
    refs = [("ServiceAccount", pod["serviceAccountName"], None)] if "serviceAccountName" in pod else []
    for c in containers(pod):
        for e in c.get("env", []):
            for ref_kind, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if ref_kind in e.get("valueFrom", {}):
                    refs.append((kind, e["valueFrom"][ref_kind]["name"], e["valueFrom"][ref_kind]["key"]))
        for source in c.get("envFrom", []):
            for ref_kind, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if ref_kind in source:
                    refs.append((kind, source[ref_kind]["name"], None))
    for v in pod.get("volumes", []):
        if "secret" in v:
            name = v["secret"]["secretName"]
            refs += [("Secret", name, i["key"]) for i in v["secret"].get("items", [])] or [("Secret", name, None)]
        if "configMap" in v:
            name = v["configMap"]["name"]
            refs += [("ConfigMap", name, i["key"]) for i in v["configMap"].get("items", [])] or [("ConfigMap", name, None)]
        if "persistentVolumeClaim" in v:
            refs.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], None))
    return refs


def test_every_secret_configmap_and_claim_a_pod_uses_exists_with_its_keys():
    defined = defined_objects()
    used = set()
    for where, obj in manifests():
        for pod_name, pod in pod_specs(obj):
            for kind, name, key in references(pod):
                found = defined.get((kind, namespace(obj), name))
                assert found is not None, f"{where} {pod_name}: {kind} {name} is neither in infra nor created by the operator"
                assert key is None or key in found, f"{where} {pod_name}: {kind} {name} has no key {key}"
                used.add((kind, name))
    assert set(OPERATOR_CREATED) <= used, "OPERATOR_CREATED lists something no manifest uses"


def test_docs_create_what_the_operator_must_create():
    created = {}
    for command in shell_commands(OPERATIONS.read_text()):
        tokens = shlex.split(command)
        if tokens[:3] in (["kubectl", "create", "secret"], ["kubectl", "create", "configmap"]):
            kind, name = ("Secret", tokens[4]) if tokens[2] == "secret" else ("ConfigMap", tokens[3])
            created[kind, name] = {t.split("=")[1] for t in tokens if t.startswith(("--from-literal=", "--from-file="))}
    assert created == OPERATOR_CREATED


def test_the_tracking_cert_path_is_the_mounted_ca():
    env = the("ConfigMap", "spresso-env")["data"]
    for where, spec in cluster_specs().items():
        for group, pod in ray_pods(spec).items():
            (c,) = pod["containers"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = [m for m in c["volumeMounts"] if env["MLFLOW_TRACKING_SERVER_CERT_PATH"].startswith(m["mountPath"] + "/")]
            assert len(mounts) == 1, f"{where}:{group}: the CA file is not mounted"
            key = env["MLFLOW_TRACKING_SERVER_CERT_PATH"][len(mounts[0]["mountPath"]) + 1:]
            assert key in OPERATOR_CREATED["ConfigMap", volumes[mounts[0]["name"]]["configMap"]["name"]]
            assert {"configMapRef": {"name": "spresso-env"}} in c["envFrom"]


# ---------------------------------------------------------------------------------------- no password in jobs


def runtime_env_jsons() -> dict[str, str]:
    """Each runtime env a job is submitted with (manifests and docs), as JSON text, by where."""
    found = {}
    for where, obj in manifests():
        if obj["kind"] != "RayJob":
            continue
        if "runtimeEnvYAML" in obj["spec"]:
            found[f"{where} runtimeEnvYAML"] = json.dumps(yaml.safe_load(obj["spec"]["runtimeEnvYAML"]))
        for _, pod in pod_specs(obj):
            for c in containers(pod):
                found |= {f"{where} {e['name']}": e["value"] for e in c.get("env", []) if e["name"] == "SPRESSO_RUNTIME_ENV"}
    text = OPERATIONS.read_text()
    variables = dict(re.findall(r"^(?:export )?(\w+)=('.*'|\".*\"|\S+)$", text, flags=re.MULTILINE))
    for i, command in enumerate(shell_commands(text)):
        tokens = shlex.split(command, comments=True)
        for j, token in enumerate(tokens[:-1]):
            if token == "--runtime-env-json":
                value = tokens[j + 1]
                if value.startswith("$"):
                    value = shlex.split(variables[value.strip("${}")])[0]
                found[f"docs/operations.md command {i}"] = value
    return found


def test_no_password_travels_in_a_job_runtime_env():
    envs = runtime_env_jsons()
    assert any("SPRESSO_RUNTIME_ENV" in w for w in envs)
    secret_values = {v for _, o in manifests() if o["kind"] == "Secret" for v in o["stringData"].values()}
    for where, text in envs.items():
        env_vars = json.loads(text).get("env_vars", {})
        assert not [k for k in env_vars if SECRET_NAME.search(k)], f"{where}: a credential in a job's runtime env"
        assert not any(v in text for v in secret_values), f"{where}: a secret's value in a job's runtime env"
    for command in shell_commands(OPERATIONS.read_text()):
        if "ray job submit" in command or command.startswith("submit "):
            assert not SECRET_NAME.search(command), f"a credential on a job submission: {command}"


def test_ray_cluster_yaml_takes_credentials_from_the_node():
    cfg = ray_cluster_yaml()
    env = [o.split("=", 1)[0].split()[-1] for o in cfg["docker"]["run_options"] if o.startswith("--env ")]
    assert "MLFLOW_TRACKING_URI" in env and not [k for k in env if SECRET_NAME.search(k)]
    # No credential is set anywhere in the file (an env file, a command, an option).
    assert not re.findall(r"\w*(?:PASSWORD|SECRET|TOKEN|ACCESS_KEY)\w*=", yaml.safe_dump(cfg), flags=re.IGNORECASE)
    # The start commands export an env file that file_mounts brings to every node, before `ray start`.
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        sourced = re.search(r"set -a && \. (\S+) && set \+a && ray start", start)
        assert sourced, start
        assert any(sourced[1].startswith(target.rstrip("/") + "/") for target in cfg["file_mounts"]), sourced[1]


# ---------------------------------------------------------------------------------------- node types, pods


def test_node_types_and_worker_groups_have_the_same_names_and_labels():
    cfg = ray_cluster_yaml()
    nodes = cfg["available_node_types"]
    vm = {n: t.get("labels") for n, t in nodes.items() if n != cfg["head_node_type"]}
    assert vm == NODE_LABELS
    assert nodes[cfg["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    assert nodes["driver"]["min_workers"] >= 1 and "InstanceMarketOptions" not in nodes["driver"]["node_config"]
    assert nodes["cpu"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert nodes["a100"]["resources"].get("accelerator_type:A100") == 1
    assert len(cluster_specs()) == 2
    for where, spec in cluster_specs().items():
        # The node types Ray's autoscaler derives from the RayCluster, as it does on KubeRay.
        ray_cr = {"metadata": {"name": "spresso", "namespace": "default"}, "spec": spec}
        types = _derive_autoscaling_config_from_ray_cr(ray_cr)["available_node_types"]
        head = types.pop("headgroup")
        assert head["resources"].get("CPU", 0) == 0 and head["resources"].get("GPU", 0) == 0, where
        assert {n: t["labels"] for n, t in types.items()} == vm, where
        assert not [g for g in spec["workerGroupSpecs"] if "labels" in g["rayStartParams"]], where
        assert types["a100"]["resources"]["GPU"] == 8 and types["a100"]["resources"]["accelerator_type:A100"] >= 1
        assert types["driver"]["min_workers"] >= 1 and types["cpu"]["min_workers"] == 0 == types["a100"]["min_workers"]
        pods = ray_pods(spec)
        assert pods["driver"]["nodeSelector"][CAPACITY] == "ON_DEMAND" and pods["cpu"]["nodeSelector"][CAPACITY] == "SPOT"
        assert spec["autoscalerOptions"]["version"] == "v2", "label selectors scale groups up only with autoscaler v2"


def test_every_ray_pod_has_dev_shm_in_memory_larger_than_the_object_store():
    for where, spec in cluster_specs().items():
        for group, pod in ray_pods(spec).items():
            (c,) = pod["containers"]
            (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            assert volume["emptyDir"]["medium"] == "Memory", f"{where}:{group}"
            # Ray's default object store: a share of the pod's memory, capped; it must fit in /dev/shm.
            memory = quantity(c["resources"]["limits"]["memory"])
            store = min(memory * DEFAULT_OBJECT_STORE_MEMORY_PROPORTION, DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES)
            assert store <= quantity(volume["emptyDir"]["sizeLimit"]) < memory, f"{where}:{group}"


def test_every_ray_pod_has_the_shared_volume_and_the_credentials():
    for where, spec in cluster_specs().items():
        for group, pod in ray_pods(spec).items():
            (c,) = pod["containers"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            shared = [m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/spresso"]
            assert len(shared) == 1, f"{where}:{group}"
            assert volumes[shared[0]["name"]]["persistentVolumeClaim"]["claimName"] == "spresso-efs"
            sources = {next(iter(s.values()))["name"] for s in c["envFrom"]}
            assert {"spresso-env", "spresso-mlflow-client"} <= sources, f"{where}:{group}"
            assert pod["serviceAccountName"] == "spresso-ray"


# ---------------------------------------------------------------------------------------- RayJob drivers


FAKE_RAY = """#!{python}
import json, os, sys
with open(os.environ["FAKE_RAY_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ["FAKE_RAY_STATUS"]) if sys.argv[1:3] == ["job", "status"] else 0)
"""


def submitter_script(job: dict) -> tuple[dict, str]:
    """The submitter container of a RayJob and the script text its command runs (from its ConfigMap)."""
    pod = job["spec"]["submitterPodTemplate"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][0] == "bash" and len(c["command"]) == 2
    (mount,) = [m for m in c["volumeMounts"] if c["command"][1].startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    script = the("ConfigMap", volume["configMap"]["name"])["data"][c["command"][1][len(mount["mountPath"]) + 1:]]
    return c, script


def run_submitter(tmp_path: Path, container: dict, script: str, status: int) -> list[list[str]]:
    """Run a submitter's script with a fake `ray` that records its calls; `ray job status` exits `status`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ray").write_text(FAKE_RAY.format(python=sys.executable))
    (bin_dir / "ray").chmod(0o755)
    (tmp_path / "submit.sh").write_text(script)
    log = tmp_path / f"calls-{status}.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_RAY_LOG": str(log), "FAKE_RAY_STATUS": str(status),
           "RAY_DASHBOARD_ADDRESS": "spresso-head-svc.default.svc.cluster.local:8265", "RAY_JOB_SUBMISSION_ID": "rayjob-abc",
           **{e["name"]: e["value"] for e in container.get("env", [])}}
    subprocess.run(["bash", str(tmp_path / "submit.sh"), *container["args"]], env=env, check=True, timeout=60)
    return [json.loads(line) for line in log.read_text().splitlines()]


def rayjobs() -> list[tuple[str, dict]]:
    return [(w, d) for w, d in manifests() if d["kind"] == "RayJob"]


@pytest.mark.parametrize("where", [w for w, _ in rayjobs()])
def test_rayjob_driver_is_submitted_to_the_driver_group(where: str, tmp_path: Path):
    (job,) = [d for w, d in rayjobs() if w == where]
    driver_label = ray_cluster_yaml()["available_node_types"]["driver"]["labels"]
    container, script = submitter_script(job)
    # The custom submitter replaces KubeRay's command: the fields KubeRay would have put in it are not set.
    assert not {"runtimeEnvYAML", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources"} & set(job["spec"])
    assert shlex.join(container["args"]) == job["spec"]["entrypoint"]
    assert job["spec"]["submitterPodTemplate"]["spec"]["nodeSelector"][CAPACITY] == "ON_DEMAND"
    if job["spec"]["entrypoint"].startswith("python "):
        assert (REPO / container["args"][1]).is_file()

    calls = run_submitter(tmp_path, container, script, status=1)   # not submitted yet
    (submit,) = [c for c in calls if c[:2] == ["job", "submit"]]
    head, entrypoint = submit[:submit.index("--")], submit[submit.index("--") + 1:]
    assert json.loads(option(head, "--entrypoint-label-selector")) == driver_label
    assert float(option(head, "--entrypoint-num-cpus")) > 0
    assert option(head, "--submission-id") == "rayjob-abc" and "--no-wait" in head
    assert option(head, "--address") == "http://spresso-head-svc.default.svc.cluster.local:8265"
    assert entrypoint == container["args"]
    assert calls[-1] == ["job", "logs", "--address", option(head, "--address"), "--follow", "rayjob-abc"]
    # A retried submitter pod finds the job submitted and only follows it.
    calls = run_submitter(tmp_path, container, script, status=0)
    assert [c[:2] for c in calls] == [["job", "status"], ["job", "logs"]]


def test_docs_submit_every_job_to_the_driver_group():
    driver_label = ray_cluster_yaml()["available_node_types"]["driver"]["labels"]
    submits = [shlex.split(c) for c in shell_commands(OPERATIONS.read_text()) if "ray job submit" in c]
    assert submits
    for tokens in submits:
        assert json.loads(option(tokens, "--entrypoint-label-selector")) == driver_label, tokens


# ---------------------------------------------------------------------------------------- MLflow bootstrap


def mounted_file(pod: dict, container: dict, path: str) -> str:
    """The text of the ConfigMap key a container sees at `path`."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return the("ConfigMap", volume["configMap"]["name"])["data"][path[len(mount["mountPath"]) + 1:]]


def test_mlflow_databases_are_bootstrapped_once_by_a_job():
    deployment = the("Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= 2
    job_pod = the("Job", "mlflow-bootstrap")["spec"]["template"]["spec"]
    (job,) = job_pod["containers"]
    assert shlex.split(" ".join(job["command"]))[0] == "sh"
    bootstrap = mounted_file(job_pod, job, job["command"][-1])
    assert "mlflow db upgrade" in bootstrap and "bootstrap_admin_user()" in bootstrap
    # The replicas wait for what the Job leaves behind, checked by the same script the Job ends with.
    (wait,) = pod["initContainers"]
    (ready_path,) = re.findall(r"python (\S+\.py)", " ".join(wait["command"]))
    assert f"python {ready_path}" in bootstrap
    assert mounted_file(pod, wait, ready_path) == mounted_file(job_pod, job, ready_path)
    # Only the Job knows the admin password; all of them read the same auth config and backend URI.
    env = {c["name"]: {e["name"]: e for e in c["env"]} for c in containers(pod) + [job]}
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in env["bootstrap"]
    assert not [c for c, e in env.items() if c != "bootstrap" and "MLFLOW_AUTH_ADMIN_PASSWORD" in e]
    for name in ("MLFLOW_AUTH_CONFIG_PATH", "BACKEND_URI"):
        assert len({json.dumps(e[name], sort_keys=True) for e in env.values()}) == 1, name
    ini = the("Secret", "mlflow-secrets")["stringData"]["basic_auth.ini"]
    assert "admin_username" in ini and "admin_password" not in ini


@pytest.mark.slow
def test_schema_ready_holds_only_after_the_bootstrap(tmp_path: Path):
    scripts = tmp_path / "bootstrap"
    scripts.mkdir()
    for key, text in the("ConfigMap", "mlflow-bootstrap")["data"].items():
        (scripts / key).write_text(text.replace("/etc/mlflow-bootstrap", str(scripts)))
    ini = the("Secret", "mlflow-secrets")["stringData"]["basic_auth.ini"]
    ini = re.sub(r"database_uri = .*", f"database_uri = sqlite:///{tmp_path}/auth.db", ini)
    (tmp_path / "basic_auth.ini").write_text(ini)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"), "BACKEND_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-enough-password"}

    def ready() -> int:
        return subprocess.run([sys.executable, str(scripts / "schema_ready.py")], env=env, timeout=120).returncode

    assert ready() == 1                      # nothing there
    subprocess.run(["mlflow", "db", "upgrade", env["BACKEND_URI"]], env=env, check=True, timeout=300)
    assert ready() == 1                      # tracking schema only: no auth schema, no admin
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs mlflow[auth]")
    subprocess.run(["sh", str(scripts / "bootstrap.sh")], env=env, check=True, timeout=300)
    assert ready() == 0
