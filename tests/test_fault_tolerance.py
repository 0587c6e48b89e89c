"""Scaling and fault tolerance on a simulated multi-node cluster (`ray.cluster_utils.Cluster`).

One cluster, in a subprocess of its own (so it never meets the session's `ray_local`): a head
with no CPUs (as on the real cluster) and two 1-CPU worker nodes. Three scenarios run on it, in
order, and write what they saw to JSON; the tests below assert on that:

(a) a Ray Train stage asking for 2 workers of 1 CPU runs across both nodes (DDP over gloo);
(b) killing a node while `shard` runs ends with the same dataset digest as an undisturbed run,
    and one FINISHED MLflow run for the stage (Ray Data retries the lost tasks);
(c) killing the node of the only training worker after its first checkpoint: Ray Train
    (`FailureConfig(max_failures=1)`) restarts it on the other node from that checkpoint, the
    final weights equal an undisturbed run's, and there is one FINISHED MLflow run (no orphan).

The kill is a hook in the driver process: a thread polls for the first shard record / the first
Ray Train checkpoint folder, then `cluster.remove_node(node, allow_graceful=False)`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS, CKPT_EVERY = 8, 2


# ----------------------------------------------------------------------------- the training stage
def sgd_steps(model, start: int, stop: int, rank: int):
    """Deterministic plain SGD (no optimiser state): resuming at any step gives the same weights."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(start + 1, stop + 1):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x = torch.randn(16, 4, generator=g)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield step, float(loss.detach())


def train_loop(config: dict) -> None:
    import ray
    import torch

    from spresso.core.checkpoint import (
        load_weights,
        read_checkpoint_config,
        save_checkpoint,
    )
    from spresso.train.harness import TrainContext

    torch.set_num_threads(1)
    ctx = TrainContext(config)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    start = 0
    with ctx.latest_checkpoint() as ck:
        if ck is not None:
            net.load_state_dict(load_weights(ck))
            start = int(read_checkpoint_config(ck, "ft")["meta"]["step"])
    model = ctx.prepare_model(net)
    out = Path(config["out"])
    node = ray.get_runtime_context().get_node_id()
    (out / f"attempt-{os.getpid()}-rank{ctx.rank}.json").write_text(
        json.dumps({"rank": ctx.rank, "world": ctx.world_size, "node": node, "start": start}))
    for step, loss in sgd_steps(model, start, config["steps"], ctx.rank):
        time.sleep(config["sleep"])  # room for the fault hook to act between checkpoints
        weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        save = None
        if step % config["every"] == 0:
            def save(d, weights=weights, step=step):
                save_checkpoint(d, weights, kind="ft", config={}, meta={"step": step})
        ctx.log_metrics({"loss": loss}, step)
        ctx.report({"loss": loss}, step, save=save)
    (out / f"final-rank{ctx.rank}.json").write_text(json.dumps({k: v.tolist() for k, v in net.state_dict().items()}))


def reference_weights() -> dict:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    for _ in sgd_steps(net, 0, TOTAL_STEPS, 0):
        pass
    return {k: v.tolist() for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------- scenarios (subprocess)
def _config(workdir: Path, *extra: str):
    from spresso.config import load_config

    workdir.mkdir(parents=True, exist_ok=True)
    return load_config("demo", [f"workdir={workdir}", f"runtime.mlflow_tracking_uri=sqlite:///{workdir / 'mlflow.db'}", *extra])


def _stage_runs(cfg, stage: str) -> list[str]:
    from spresso.runtime.tracking import TAG_STAGE, mlflow_client, tracking_uri

    client = mlflow_client(tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri))
    exps = [e.experiment_id for e in client.search_experiments()]
    return [r.info.status for r in client.search_runs(exps) if r.data.tags.get(TAG_STAGE) == stage]


def _kill_when(cluster, found, pick_node, timeout: float, log: dict) -> threading.Thread:
    """Poll ``found()``; once true remove the node ``pick_node()`` names (hard kill). Bounded by ``timeout``."""
    def hook():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (seen := found()):
                log["seen_at_kill"] = seen
                node_id = pick_node()
                node = next((n for n in cluster.worker_nodes if n.node_id == node_id), None)
                if node is not None:
                    log["killed_at"] = time.time()
                    log["killed_node"] = node_id
                    cluster.remove_node(node, allow_graceful=False)
                    return
            time.sleep(0.05)
        log["kill_timeout"] = True

    t = threading.Thread(target=hook, daemon=True)
    t.start()
    return t


def _train(cfg, name: str, out: Path, workers: int, max_failures: int, sleep: float) -> dict:
    from spresso.config.scaling import ScalingSettings
    from spresso.runtime import stage_run
    from spresso.train.harness import TrainJob, fit

    out.mkdir(parents=True, exist_ok=True)
    job = TrainJob(name=name, loop=train_loop, storage_path=str(Path(cfg.workdir).resolve() / "ray_train"),
                   scaling=ScalingSettings(workers=workers, cpus_per_worker=1.0, max_failures=max_failures),
                   loop_config={"out": str(out), "steps": TOTAL_STEPS, "every": CKPT_EVERY, "sleep": sleep})
    with stage_run("ft_train", cfg, key=name) as run:
        result = fit(job, run)
    attempts = [json.loads(p.read_text()) for p in sorted(out.glob("attempt-*.json"), key=os.path.getmtime)]
    finals = {p.name: json.loads(p.read_text()) for p in out.glob("final-rank*.json")}
    return {"attempts": attempts, "finals": finals, "metrics_step": (result.metrics or {}).get("step"),
            "checkpoint": result.checkpoint is not None, "runs": _stage_runs(cfg, "ft_train")}


def scenario_across_nodes(cluster, root: Path) -> dict:
    facts = _train(_config(root / "a"), "ft-across", root / "a" / "out", workers=2, max_failures=0, sleep=0.0)
    facts["nodes"] = sorted(n.node_id for n in cluster.worker_nodes)
    return facts


def scenario_shard_kill(cluster, root: Path) -> dict:
    from spresso.audio.synth import synth_corpus
    from spresso.data.shard import PROGRESS_DIR, shard

    corpus = root / "corpus"
    # 4x the units it had, so that some are still pending when the hook sees the first record,
    # even when a loaded machine delays its polling (with 3 units, all 3 once finished first)
    synth_corpus(corpus, minutes=2.0, seed=5)
    extra = ["data.clip_seconds=1.0", "data.clips_per_shard=2", "data.worker_cpus=1"]
    ref_cfg, kill_cfg = _config(root / "b_ref", *extra), _config(root / "b_kill", *extra)
    ref = shard([str(corpus)], ref_cfg, output=str(root / "b_ref" / "shards"), progress=False)
    out = root / "b_kill" / "shards"
    log: dict = {}
    victim = sorted(n.node_id for n in cluster.worker_nodes)[0]
    def records() -> int:  # units finished so far (each writes its record last)
        return len(list((out / PROGRESS_DIR).glob("**/*.json"))) if (out / PROGRESS_DIR).is_dir() else 0

    hook = _kill_when(cluster, records, lambda: victim, 90, log)
    res = shard([str(corpus)], kill_cfg, output=str(out), progress=False)
    hook.join(timeout=5)
    return {"ref_digest": ref.digest, "digest": res.digest, "clips": res.clips, "ref_clips": ref.clips, "units": len(res.info["tars"]),
            "killed": "killed_node" in log, **log, "runs": _stage_runs(kill_cfg, "shard")}


def scenario_train_kill(cluster, root: Path) -> dict:
    cfg = _config(root / "c")
    out = root / "c" / "out"
    name = "ft-kill"
    storage = Path(cfg.workdir).resolve() / "ray_train" / name
    log: dict = {}

    def first_checkpoint() -> bool:
        # Registered, not merely uploading: a step-* folder appears before Ray Train records it, and
        # a kill in between restarts from scratch. The controller's snapshot lists registered ones.
        try:
            snap = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(snap.get("latest_checkpoint_result")) and any(out.glob("attempt-*.json"))

    def worker_node() -> str:
        return json.loads(sorted(out.glob("attempt-*.json"), key=os.path.getmtime)[0].read_text())["node"]

    hook = _kill_when(cluster, first_checkpoint, worker_node, 90, log)
    facts = _train(cfg, name, out, workers=1, max_failures=1, sleep=0.4)
    hook.join(timeout=5)
    facts.update(killed="killed_node" in log, **log)
    return facts


def main(root: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    root_p = Path(root)
    # Quick failure detection: the default health check takes ~15 s to declare a node dead.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address  # what init_ray joins, as under `ray job submit`
    ray.init(address=cluster.address, log_to_driver=False)
    results = {}
    try:
        for name, fn in (("across", scenario_across_nodes), ("shard", scenario_shard_kill), ("train", scenario_train_kill)):
            t0 = time.time()
            try:
                results[name] = fn(cluster, root_p)
            except Exception:
                results[name] = {"error": traceback.format_exc()[-3000:]}
            results[name]["seconds"] = round(time.time() - t0, 1)
            (root_p / "facts.json").write_text(json.dumps(results, indent=1))
            if name == "shard" and len(cluster.worker_nodes) < 2:
                cluster.add_node(num_cpus=1)  # a replacement, as the autoscaler would bring
                cluster.wait_for_nodes()
    finally:
        ray.shutdown()
        cluster.shutdown()


# ----------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ft")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, str(root)], env=env, capture_output=True, text=True, timeout=400,
                          start_new_session=True)
    path = root / "facts.json"
    assert path.is_file(), f"the cluster run wrote nothing (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    out = json.loads(path.read_text())
    print("fault scenarios:", {k: v.get("seconds") for k, v in out.items()}, f"total {time.time() - t0:.0f}s")
    return out


def _ok(facts: dict, name: str) -> dict:
    f = facts.get(name)
    assert f is not None, f"scenario {name} did not run"
    assert "error" not in f, f["error"]
    return f


pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


def test_stage_wider_than_a_node_runs_across_nodes(facts):
    f = _ok(facts, "across")
    ranks = {a["rank"]: a["node"] for a in f["attempts"]}
    assert sorted(ranks) == [0, 1] and all(a["world"] == 2 for a in f["attempts"])
    assert ranks[0] != ranks[1] and set(ranks.values()) == set(f["nodes"])
    # DDP kept the replicas in step: both ranks end with identical weights.
    assert f["finals"]["final-rank0.json"] == f["finals"]["final-rank1.json"]
    assert f["metrics_step"] == TOTAL_STEPS and f["runs"] == ["FINISHED"]


def test_node_killed_during_sharding_gives_the_same_dataset(facts):
    f = _ok(facts, "shard")
    assert f["killed"], "the fault hook never fired (sharding finished before the first record?)"
    assert 1 <= f["seen_at_kill"] < f["units"], "the node was not removed while units were still pending"
    assert f["digest"] == f["ref_digest"] and f["clips"] == f["ref_clips"] > 0
    assert f["runs"] == ["FINISHED"]  # one run for the stage, not one per retry


def test_node_killed_during_training_resumes_from_checkpoint(facts):
    f = _ok(facts, "train")
    assert f["killed"], "the fault hook never fired"
    first, *rest = f["attempts"]
    assert first["start"] == 0 and rest, "no second attempt after the node was removed"
    assert rest[-1]["start"] >= CKPT_EVERY and rest[-1]["node"] != f["killed_node"]  # resumed elsewhere, from a checkpoint
    assert f["metrics_step"] == TOTAL_STEPS and f["checkpoint"]
    assert f["finals"]["final-rank0.json"] == reference_weights()  # same result as an undisturbed run
    assert f["runs"] == ["FINISHED"]  # one MLflow run, resumed, no orphan left RUNNING


if __name__ == "__main__":
    main(sys.argv[1])
