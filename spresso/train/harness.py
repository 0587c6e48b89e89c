"""Ray Train for every training stage: one place for scaling, checkpoints, resume and MLflow.

The driver opens the stage's MLflow run (:func:`spresso.runtime.stage_run`), then calls
:func:`fit`. Inside ``train_loop_per_worker`` the loop builds a :class:`TrainContext`, which
gives rank/device, logs to that same MLflow run from rank 0 only, and saves checkpoints
(safetensors + JSON) through ``ray.train.report``.

Resume works at two levels:
- a worker that dies is restarted by Ray Train (``FailureConfig(max_failures)``) and the loop
  restores from :meth:`TrainContext.latest_checkpoint`;
- rerunning the command reuses the same ``RunConfig(name, storage_path)``, which Ray Train V2
  resumes from its latest checkpoint, and :func:`resumable_run_id` hands the driver the MLflow
  run of the unfinished attempt so no orphan run is left RUNNING.

``scaling.workers=0`` runs the loop in the driver process (fast tests); Ray then keeps checkpoints
in a temporary folder, so that mode does not resume.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import ray.train
import ray.train.torch
import torch
from mlflow.tracking import MlflowClient
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from spresso.config.scaling import ScalingSettings
from spresso.core import storage
from spresso.core.errors import SpressoError
from spresso.runtime.placement import accelerator_resources, label_selector
from spresso.runtime.tracking import StageRun
from spresso.train.clock import TrainClock

RUN_MARKER = "spresso_run.json"


@dataclass
class TrainJob:
    name: str  # stable per stage (and cache key): the Ray Train run name, used to resume
    loop: Callable[[dict], None]
    loop_config: dict
    storage_path: str
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    keep_checkpoints: int = 2
    datasets: dict = field(default_factory=dict)


def resumable_run_id(storage_path: str, name: str, tracking_uri: str) -> str | None:
    """The MLflow run of an earlier, unfinished attempt of this training run, if any."""
    fs, root = storage.filesystem(storage_path)
    marker = f"{root.rstrip('/')}/{name}/{RUN_MARKER}"
    if not fs.exists(marker):
        return None
    run_id = json.loads(fs.cat_file(marker))["mlflow_run_id"]
    try:
        status = MlflowClient(tracking_uri).get_run(run_id).info.status
    except Exception:
        return None
    return None if status == "FINISHED" else run_id


def _remember_run(storage_path: str, name: str, run_id: str) -> None:
    fs, root = storage.filesystem(storage_path)
    folder = f"{root.rstrip('/')}/{name}"
    fs.makedirs(folder, exist_ok=True)
    fs.pipe_file(f"{folder}/{RUN_MARKER}", json.dumps({"mlflow_run_id": run_id}).encode())


def scaling_config(scaling: ScalingSettings) -> ScalingConfig:
    """Ray Train's ScalingConfig from the config alone: workers of CPUs (+1 GPU), on ``label`` nodes,
    with ``accelerator`` (the resource ``accelerator_type:X`` per worker, which an autoscaler reads)."""
    resources = {"CPU": scaling.cpus_per_worker, **accelerator_resources(scaling.accelerator)}
    if scaling.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.use_gpu, resources_per_worker=resources,
                         label_selector=label_selector(scaling.label), accelerator_type=scaling.accelerator)


def worker_needs(scaling: ScalingSettings) -> dict[str, float]:
    """What all the workers of ``scaling`` hold together (a Ray Train run starts them all at once)."""
    if not scaling.workers:
        return {}
    one = {"CPU": scaling.cpus_per_worker, "GPU": 1.0 if scaling.use_gpu else 0.0,
           **accelerator_resources(scaling.accelerator)}
    return {k: v * scaling.workers for k, v in one.items()}


# Ray Train's local mode (scaling.workers=0) keeps the running loop's context in one process-global
# (ray.train.v2 train_fn_utils): two in-process fits on the pipeline's threads would report each
# other's checkpoints (a t=9 stage once finished with the t=100 run's weights). One at a time.
_IN_PROCESS_FIT = threading.Lock()


def fit(job: TrainJob, run: StageRun):
    """Run ``job`` with Ray Train's TorchTrainer and return its ``Result``."""
    with _IN_PROCESS_FIT if not job.scaling.workers else contextlib.nullcontext():
        return _train(job, run)


def _train(job: TrainJob, run: StageRun):
    _remember_run(job.storage_path, job.name, run.run_id)
    scaling = job.scaling
    loop_config = dict(job.loop_config)
    loop_config["_mlflow"] = {"run_id": run.run_id, "tracking_uri": run.tracking_uri}
    loop_config["_use_gpu"] = scaling.use_gpu
    arrow_fs, storage_path = storage.arrow_filesystem(job.storage_path)
    trainer = TorchTrainer(
        job.loop,
        train_loop_config=loop_config,
        scaling_config=scaling_config(scaling),
        run_config=RunConfig(
            name=job.name,
            storage_path=storage_path,
            storage_filesystem=arrow_fs,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.keep_checkpoints),
        ),
        datasets=job.datasets or None,
    )
    return trainer.fit()


def copy_checkpoint(result, destination: str | Path) -> Path:
    """Copy the final checkpoint of a Ray Train result to a stable output folder."""
    destination = Path(destination)
    if result.checkpoint is None:
        raise SpressoError("training finished without reporting a checkpoint")
    tmp = destination.with_name(destination.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    result.checkpoint.to_directory(str(tmp))
    shutil.rmtree(destination, ignore_errors=True)
    tmp.rename(destination)
    return destination


class TrainContext:
    """What a training loop needs from Ray Train, built from its ``train_loop_config``."""

    def __init__(self, loop_config: dict):
        self.config = loop_config
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.is_main = self.rank == 0
        use_gpu = loop_config.get("_use_gpu", False) and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{self.local_rank}" if use_gpu else "cpu")
        # The training clock (time limit and the elapsed seconds of a resumed run): make_clock.
        self.clock: TrainClock | None = None
        self._resumed_elapsed = 0.0
        mlflow_info = loop_config.get("_mlflow")
        self.run = StageRun.attach(mlflow_info["run_id"], mlflow_info["tracking_uri"]) if (mlflow_info and self.is_main) else None

    def make_clock(self, total_steps: int) -> TrainClock:
        """The stage's :class:`TrainClock`: ``time_limit_s`` from the driver, elapsed seconds from the
        checkpoint resumed (call it after :meth:`latest_checkpoint`)."""
        self.clock = TrainClock(self.config.get("time_limit_s"), total_steps, self._resumed_elapsed)
        return self.clock

    # -- distributed helpers -------------------------------------------------------------
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP when there are several workers; else just move to the device."""
        if self.world_size > 1:
            return ray.train.torch.prepare_model(model, move_to_device=self.device)
        return model.to(self.device)

    def autocast(self):
        """bf16 autocast on GPU; nothing on CPU (bf16 matmuls on CPU are slow and lossy)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- logging ---------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log_metrics(metrics, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run is not None:
            self.run.log_artifact(path, artifact_path)

    # -- checkpoints -----------------------------------------------------------------------
    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The folder of the checkpoint to resume from, or None on a fresh start."""
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            self._resumed_elapsed = TrainClock.saved_elapsed(Path(d))
            yield Path(d)

    def report(self, metrics: dict[str, Any], step: int, save: Callable[[Path], None] | None = None) -> None:
        """Report metrics (every rank must call it); rank 0 also writes a checkpoint via ``save``."""
        metrics = {**metrics, "step": step}
        if save is not None and self.is_main:
            # Not a TemporaryDirectory: with scaling.workers=0 Ray keeps this very folder as the
            # checkpoint (no upload), so it must outlive the call; with workers, Ray deletes it
            # once it has been persisted to the storage path.
            tmp = tempfile.mkdtemp(prefix=f"spresso-ckpt-{step:09d}-")
            save(Path(tmp))
            if self.clock is not None:
                self.clock.save(Path(tmp))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step-{step:09d}",
                             delete_local_checkpoint_after_upload=True)
        else:
            ray.train.report(metrics)
