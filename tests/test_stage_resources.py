"""pipeline.resources reach every stage's ScalingConfig, actor pool and driver task, from the config alone."""
from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from spresso.cli import main
from spresso.config import load_config
from spresso.config.pipeline import StageResources
from spresso.config.runtime import RuntimeConfig
from spresso.config.scaling import ActorPoolSettings, ScalingSettings
from spresso.core.checkpoint import (
    load_state,
    load_strict,
    load_weights,
    save_checkpoint,
)
from spresso.core.errors import SpressoError
from spresso.data.precompute import fill_cache
from spresso.data.zarr_cache import ClipCache
from spresso.pipeline import build_graph
from spresso.pipeline.registry import registry
from spresso.pipeline.resources import DRIVER_CPUS, task_options
from spresso.pipeline.runner import invoke_ray
from spresso.pipeline.stage import Stage, StageContext, StageResult
from spresso.runtime import placement
from spresso.runtime.placement import NODE_LABEL, ray_options
from spresso.train.driver import StageInputs, TrainingStage
from spresso.train.harness import TrainContext, scaling_config


def paper_graph(*overrides: str):
    return build_graph(load_config("paper", list(overrides)), registry())


def test_pipeline_resources_reach_the_scaling_config_ray_train_builds():
    g = paper_graph("pipeline.resources.stage1.workers=2", "pipeline.resources.stage1.cpus=3")
    sc = scaling_config(g.nodes["stage1@c11"].run_cfg.dae.stage1.scaling)
    assert sc.num_workers == 2 and sc.use_gpu
    assert sc.resources_per_worker == {"CPU": 3, "GPU": 1, "accelerator_type:A100": 0.001}
    assert sc.label_selector == {NODE_LABEL: "a100"} and sc.accelerator_type == "A100"
    # The section keeps its own values for single-stage runs, and the cache key ignores them.
    cfg = load_config("paper")
    assert cfg.dae.stage1.scaling.workers == 8 and g.nodes["stage1@c11"].cfg.dae.stage1.scaling.workers == 8
    dit = scaling_config(g.nodes["train_dit"].run_cfg.dit.train.scaling)
    assert dit.num_workers == 16 and dit.resources_per_worker["CPU"] == 8


def test_resources_without_accelerator_ask_for_no_accelerator_and_workers_0_stays_in_process():
    g = paper_graph(*(f"pipeline.resources.qinco2.{k}" for k in ("cpus=2", "gpus=0", "workers=0", "label=null", "accelerator=null")))
    node = g.nodes["qinco2@d96"]
    scaling = node.run_cfg.qinco2.scaling
    assert (scaling.workers, scaling.use_gpu, scaling.label, scaling.accelerator) == (0, False, None, None)
    sc = scaling_config(scaling)
    assert sc.num_workers == 0 and sc.resources_per_worker == {"CPU": 2} and sc.label_selector is None
    # It trains in its own task, which then holds what the training needs (and is still retried).
    assert task_options(node.run_cfg, node.stage, node.resources) == {"num_cpus": 2, "num_gpus": 0.0, "max_retries": 2}


def test_an_accelerator_asks_for_the_accelerator_type_resource():
    assert ray_options(cpus=1, gpus=1, label="a100", accelerator="A100") == {
        "num_cpus": 1, "num_gpus": 1, "label_selector": {NODE_LABEL: "a100"}, "resources": {"accelerator_type:A100": 0.001}}
    assert scaling_config(ScalingSettings(workers=2, accelerator="H100")).resources_per_worker == {
        "CPU": 1.0, "accelerator_type:H100": 0.001}


def test_cache_pools_and_eval_tasks_take_the_resources():
    g = paper_graph("pipeline.resources.precompute_z={cpus: 2, gpus: 1, workers: 3, accelerator: L4}")
    zc = g.nodes["precompute_z@c11"].run_cfg.dae.zcache
    assert (zc.actors, zc.cpus_per_actor, zc.gpus_per_actor, zc.label, zc.accelerator) == (3, 2, 1, "a100", "L4")
    assert zc.chunk_clips == 256  # what the resources do not size stays as configured
    ev = g.nodes["evaluate@c11"].run_cfg.eval
    assert (ev.max_tasks, ev.cpus_per_task, ev.gpus_per_task, ev.label, ev.accelerator) == (1, 8, 1, "a100", "A100")
    data = g.nodes["shard"].run_cfg.data
    assert (data.worker_cpus, data.worker_label) == (1, "cpu")


def test_driver_tasks_run_on_the_driver_label_with_retries():
    g = paper_graph("pipeline.driver_retries=5")
    for name in ("shard", "train_audioae", "precompute_latents", "train_dit", "stage1@c11", "qinco2@d96", "evaluate@d96"):
        node = g.nodes[name]
        assert task_options(node.run_cfg, node.stage, node.resources) == {
            "num_cpus": DRIVER_CPUS, "num_gpus": 0.0, "label_selector": {NODE_LABEL: "driver"}, "max_retries": 5}, name
    export = g.nodes["export@d96"]  # does its work itself: holds its CPU, on its own label
    assert task_options(export.run_cfg, export.stage, export.resources) == {
        "num_cpus": 1, "num_gpus": 0.0, "label_selector": {NODE_LABEL: "cpu"}, "max_retries": 5}


def test_dry_run_shows_where_each_stage_and_its_driver_run(capsys):
    assert main(["pipeline", "run", "paper", "--dry-run", "--set", "pipeline.driver_retries=4"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["train_dit"])
    assert row[2:6] == ["8", "1", "16", "a100/A100"]
    assert "on driver nodes (label spresso-node), retried up to 4 times" in out


@pytest.mark.parametrize("override, message", [
    ("pipeline.resources.stage1.gpu=1", "gpu"),
    ("pipeline.resources.stage1.gpus=2", "pipeline.resources.stage1.gpus: a training worker has 0 or 1 GPU"),
    ("pipeline.resources.precompute_latents.workers=0", "pipeline.resources.precompute_latents.workers"),
    ("pipeline.resources.shard.gpus=1", "pipeline.resources.shard: gpus do not apply"),
    ("pipeline.resources.nope={cpus: 1}", "unknown stage(s): nope"),
])
def test_bad_resources_are_one_line_errors(override, message, capsys):
    assert main(["pipeline", "run", "paper", "--dry-run", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err


class _Never:
    def __init__(self):
        raise AssertionError("no actor should start in this test")


def test_precompute_asks_for_gpus_from_the_config_without_looking_at_the_cluster(tmp_path, ray_local, monkeypatch):
    real_cluster_resources = ray.cluster_resources

    def no_sniffing():
        caller = inspect.stack()[1].frame.f_globals.get("__name__", "")
        assert not caller.startswith("spresso"), f"{caller} looked at the cluster's resources"
        return real_cluster_resources()

    asked = {}
    real_map_batches = ray.data.Dataset.map_batches

    def record(self, fn, **kwargs):
        if "compute" in kwargs:  # the model's actor pool: record what it asks for, start nothing
            asked.update(kwargs)
            raise KeyboardInterrupt
        return real_map_batches(self, fn, **kwargs)

    monkeypatch.setattr(ray, "cluster_resources", no_sniffing)
    monkeypatch.setattr(ray.data.Dataset, "map_batches", record)
    cache = ClipCache.create(tmp_path / "c.zarr", [f"k{i}" for i in range(4)], {"x": ((2,), np.float32)}, 2)
    pool = ActorPoolSettings(actors=3, gpus_per_actor=1, cpus_per_actor=2, label="a100", accelerator="A100")
    # A Ray this process did not start may autoscale: nothing is checked. (Said explicitly: an earlier test
    # in this process may have left a Ray that spresso started.)
    monkeypatch.setattr(placement, "started_local_ray", lambda: False)
    with pytest.raises(KeyboardInterrupt):
        fill_cache(cache, lambda a, b: {}, _Never, batch_size=1, pool=pool, runtime=RuntimeConfig())
    assert asked["num_gpus"] == 1 and asked["num_cpus"] == 2 and asked["compute"].max_size == 3
    assert asked["label_selector"] == {NODE_LABEL: "a100"} and asked["resources"] == {"accelerator_type:A100": 0.001}
    # On a local Ray this process started (fixed size, no GPU) the same request fails in one line
    # instead of queueing forever.
    monkeypatch.setattr(ray, "cluster_resources", real_cluster_resources)
    monkeypatch.setattr(placement, "started_local_ray", lambda: True)
    with pytest.raises(SpressoError, match="GPU=1.*local Ray does not have"):
        fill_cache(cache, lambda a, b: {}, _Never, batch_size=1, pool=pool, runtime=RuntimeConfig())


# ----------------------------------------------------------------------------- a driver lost, retried, resumed
def _die_once(cfg, ctx):
    marker = Path(cfg.workdir) / "died"
    if not marker.exists():
        marker.touch()
        os._exit(1)  # the process dies, as with its node: not an exception
    return StageResult({}, "run-id")


def test_a_driver_whose_process_dies_is_retried(tmp_path, ray_local):
    cfg = load_config("demo", [f"workdir={tmp_path}", "pipeline.driver_retries=1"])
    opts = task_options(cfg, Stage("toy", _die_once), StageResources())
    assert opts["max_retries"] == 1
    ctx = StageContext("toy", "toy", None, {}, {}, "k", None, None, ray_options={**opts, "num_cpus": 0.25})
    assert invoke_ray(_die_once, cfg, ctx).run_id == "run-id"
    assert (tmp_path / "died").exists()


def _toy_loop(config):
    """y = 3x, a checkpoint every step; kills the stage's driver process once, after checkpoint 3."""
    ctx = TrainContext(config)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    start = 0
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            load_strict(model, load_weights(ckpt))
            start = load_state(ckpt)[1]["step"]
    with open(config["log"], "a") as f:
        f.write(f"start {start} {time.time():.1f}\n")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 16)[:, None]
    for step in range(start, config["steps"]):
        if step == 3 and not Path(config["marker"]).exists():
            Path(config["marker"]).touch()
            time.sleep(3)  # let Ray Train record checkpoint 3
            os.kill(config["driver_pid"], signal.SIGKILL)
            time.sleep(60)  # this worker goes with its driver
        loss = ((model(x) - 3 * x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.report({"loss": loss.item()}, step + 1, save=lambda d, s=step + 1: save_checkpoint(
            d, model.state_dict(), kind="toy", config={}, state_meta={"step": s}))


def _toy_inputs(cfg, **_options):
    root = Path(cfg.workdir)
    return StageInputs(key={"toy": 1}, loop_config={"steps": 6, "log": str(root / "starts.txt"),
                                                    "marker": str(root / "killed"), "driver_pid": os.getpid()})


TOY = TrainingStage(name="toy_train", section=lambda cfg: cfg.dae.stage1, loop=_toy_loop, find_inputs=_toy_inputs,
                    key_config=lambda cfg: {}, output=lambda cfg: Path(cfg.workdir) / "toy" / "final",
                    job_name=lambda cfg: "toy")


def _train_toy(cfg, ctx):
    return StageResult({}, TOY.run(cfg).run_id)


@pytest.mark.slow
def test_a_training_driver_lost_with_its_process_is_retried_and_resumes_from_its_checkpoint(tmp_path, ray_local, mlflow_env):
    cfg = load_config("demo", [f"workdir={tmp_path}", f"runtime.mlflow_tracking_uri={mlflow_env}",
                               "dae.stage1.scaling={workers: 1, cpus_per_worker: 0.5}", "pipeline.driver_retries=1"])
    stage = Stage("toy_train", _train_toy, scales="dae.stage1.scaling")
    opts = task_options(cfg, stage, StageResources(workers=1))
    assert opts == {"num_cpus": DRIVER_CPUS, "num_gpus": 0.0, "max_retries": 1}
    result = invoke_ray(_train_toy, cfg, StageContext("toy_train", "toy_train", None, {}, {}, "k", None, None,
                                                       ray_options=opts))
    assert (tmp_path / "killed").exists()  # the first driver was killed at step 3
    starts = [int(line.split()[1]) for line in (tmp_path / "starts.txt").read_text().splitlines()]
    assert starts[0] == 0 and len(starts) == 2 and starts[1] >= 3  # the retried driver resumed, not from step 0
    assert "weight" in load_weights(tmp_path / "toy" / "final")  # published once the resumed run finished
    runs = MlflowClient(mlflow_env).search_runs([MlflowClient(mlflow_env).get_experiment_by_name(cfg.runtime.experiment).experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(result.run_id, "FINISHED")]  # its MLflow run, reopened
    # The killed driver's Ray Train run leaves its worker group's placement group (0.5 CPU here): Ray
    # Train's PlacementGroupCleaner asks the state API whether the controller died, and this test Ray has
    # no dashboard, so no state API ("Failed to query Ray Train Controller actor state"), and the cleaner
    # never learns that the controller died. Give it back so later tests get their CPUs.
    from ray_resources import release_placement_groups

    assert release_placement_groups() == 1


@pytest.mark.slow
def test_the_options_place_tasks_actors_and_two_train_workers_on_the_labelled_accelerator_node():
    """On a Ray whose node has the label and the accelerator resource, every kind of request runs."""
    probe = Path(__file__).with_name("placement_probe.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(probe.parents[1]), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"task": "a100", "map": ["a100"], "pool": ["a100"], "train": ["a100", "a100"],
                    "waits for {'label': 'cpu'}": True, "waits for {'accelerator': 'H100'}": True}
