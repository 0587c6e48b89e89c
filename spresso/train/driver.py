"""The one driver of every Ray Train stage: a stage is a :class:`TrainingStage` declaration.

A declaration names what differs between stages (its config section, the loop each worker runs,
how its inputs are found, what else its result depends on, where its checkpoint goes);
:func:`run_training` is the skeleton they share, written once:

    find inputs -> cache key -> reuse an identical finished run -> join Ray -> TrainJob
    -> the stage's MLflow run (log inputs) -> fit on Ray Train -> publish the final checkpoint -> log it

The cache key hashes the stage's config (its training section without run knobs, see
:func:`spresso.config.scaling.key_settings`, plus the settings ``key_config`` names) and the
identity of its inputs. A rerun with the same key reuses the finished run when the published
checkpoint is still the one it logged; an unfinished run of the same key is resumed (Ray Train
restores its latest checkpoint, and its MLflow run is reopened).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from spresso.config import Section, SpressoConfig
from spresso.config.budget import ShareName, time_limit_seconds
from spresso.config.scaling import key_settings
from spresso.core import storage
from spresso.core.checkpoint import STATE_FILE, STATE_META_FILE, has_checkpoint
from spresso.core.digest import digest_json, digest_tree
from spresso.core.storage import absolute
from spresso.runtime import find_finished_run, init_ray, stage_run, tracking_uri
from spresso.runtime.placement import require_local_resources
from spresso.runtime.tracking import StageRun, ensure_experiment
from spresso.train.clock import CLOCK_FILE
from spresso.train.feed import FEEDS_KEY, Feed
from spresso.train.harness import (
    TrainJob,
    copy_checkpoint,
    fit,
    resumable_run_id,
    worker_needs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedInput:
    """One input the stage's MLflow run records (lineage): ``run.log_input(name, uri, digest, context)``."""

    name: str
    uri: str
    digest: str
    context: str = "input"


@dataclass(frozen=True)
class StageInputs:
    """What a stage's ``find_inputs`` found and checked, before anything trains."""

    key: dict[str, Any]  # the inputs' identity: hashed into the cache key
    loop_config: dict[str, Any] = field(default_factory=dict)  # what the loop reads (paths, digests)
    logged: tuple[LoggedInput, ...] = ()
    upstream: dict[str, Optional[str]] = field(default_factory=dict)  # stage -> MLflow run that made an input
    params: dict[str, Any] = field(default_factory=dict)  # extra MLflow params of the run
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags of the run


# publish(result, final, run) -> digest of the published checkpoint
Publish = Callable[[Any, Any, StageRun], str]


@dataclass(frozen=True)
class TrainingStage:
    """A Ray Train stage, declared: everything :func:`run_training` needs to run it.

    - ``name``: the MLflow stage tag and run name (``train_dit``);
    - ``section``: its training section (``cfg.dit.train``): the scaling it runs with, and the
      settings its key hashes (all but the run knobs);
    - ``loop``: ``train_loop_per_worker(loop_config)``; ``loop_config`` holds ``cfg`` (the whole
      config as a dict), ``threads``, ``run_dir`` (the Ray Train run folder) and the inputs' entries;
    - ``find_inputs(cfg, **options) -> StageInputs``: finds and checks its inputs (one-line errors);
    - ``key_config(cfg) -> dict``: other settings its result depends on (model, diffusion ...);
    - ``output(cfg)``: where the final checkpoint is published (a Path, or a URL string);
    - ``job_name(cfg) -> str``: the Ray Train run name's prefix (the key's first 16 hex digits follow);
    - ``publish``: writes the final checkpoint from Ray's result (default: inference files only);
    - ``reuse``: look for a finished identical run first;
    - ``feeds(cfg, inputs) -> {name: Feed}``: the Ray datasets Ray Train splits between the workers
      (built after Ray is up; lazy, so the driver reads no clip data), their sizes go to the loop as
      ``loop_config["feeds"]``; none: the loop reads its inputs itself.

    GPUs come from the section's ``scaling`` only (``use_gpu``, ``accelerator``), never from what
    the driver sees: a driver on a CPU node asks the cluster for GPU workers.
    """

    name: str
    section: Callable[[SpressoConfig], Section]
    loop: Callable[[dict], None]
    find_inputs: Callable[..., StageInputs]
    key_config: Callable[[SpressoConfig], dict]
    output: Callable[[SpressoConfig], Any]
    job_name: Callable[[SpressoConfig], str]
    publish: Optional[Publish] = None
    reuse: bool = True
    feeds: Optional[Callable[[SpressoConfig, StageInputs], dict[str, Feed]]] = None
    budget_share: Optional[ShareName] = None  # its share of budget_hours (spresso.config.budget)

    def time_limit(self, cfg: SpressoConfig) -> Optional[float]:
        """Seconds it may train: its section's ``time_limit_minutes``, else its share of ``budget_hours``."""
        return time_limit_seconds(cfg, self.budget_share, getattr(self.section(cfg), "time_limit_minutes", None))

    def key(self, cfg: SpressoConfig, inputs: StageInputs) -> str:
        """The cache key: the stage's settings (without run knobs), its time limit and its inputs' identity."""
        limit = self.time_limit(cfg)
        timed = {} if limit is None else {"time_limit_s": round(limit, 3)}
        return digest_json({**self.key_config(cfg), "train": key_settings(self.section(cfg)), **timed, **inputs.key})

    def run(self, cfg: SpressoConfig, **kwargs: Any) -> "TrainOutcome":
        """Train this stage: :func:`run_training` (``parent_run_id``, ``force`` and ``find_inputs`` options)."""
        return run_training(self, cfg, **kwargs)


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`run_training` returns: the published checkpoint and the MLflow run behind it."""

    final: Any  # Path, or a URL string
    run_id: str
    reused: bool = False
    metrics: dict = field(default_factory=dict)  # the last metrics the loop reported


def training_needs(scaling, feeds: dict[str, Feed]) -> dict[str, float]:
    """What a training run holds at once: its workers, plus one read task when Ray Data feeds them (the
    tasks run beside the workers, so a local Ray the workers fill would queue them forever)."""
    need = worker_needs(scaling)
    if feeds:
        need["CPU"] = need.get("CPU", 0.0) + max(f.task_cpus for f in feeds.values())
    return need


def run_training(stage: TrainingStage, cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False,
                 **options: Any) -> TrainOutcome:
    """Train ``stage`` (or reuse an identical finished run of it) and publish its final checkpoint.

    ``options`` go to the stage's ``find_inputs`` (e.g. ``progress``, ``encoder``, ``vectors``).
    """
    storage.check_store(cfg.workdir)
    inputs = stage.find_inputs(cfg, **options)
    key = stage.key(cfg, inputs)
    final = stage.output(cfg)
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    if stage.reuse and not force:
        prev = find_finished_run(uri, ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir), stage.name, key)
        if prev is not None and published_digest(final) == prev.data.tags.get("spresso.output.checkpoint.digest"):
            log.info("%s: reusing run %s (inputs and config unchanged)", stage.name, prev.info.run_id)
            return TrainOutcome(final, prev.info.run_id, reused=True)
    init_ray(cfg.runtime)
    train_storage = absolute(cfg.path("ray_train"))
    name = f"{stage.job_name(cfg)}-{key[:16]}"
    scaling = stage.section(cfg).scaling
    feeds = stage.feeds(cfg, inputs) if stage.feeds is not None else {}
    require_local_resources(training_needs(scaling, feeds),
                            f"{stage.name}'s scaling" + (" and one Ray Data read task" if feeds else ""))
    limit = stage.time_limit(cfg)
    job = TrainJob(name=name, loop=stage.loop, storage_path=train_storage, scaling=scaling,
                   loop_config={"cfg": cfg.to_dict(), "threads": max(1, int(scaling.cpus_per_worker)),
                                "time_limit_s": limit,
                                "run_dir": f"{train_storage}/{name}", **inputs.loop_config,
                                FEEDS_KEY: {k: f.summary() for k, f in feeds.items()}},
                   datasets={k: f.dataset for k, f in feeds.items()})
    upstream = {k: v for k, v in inputs.upstream.items() if v} or None
    with stage_run(stage.name, cfg, key=key, parent_run_id=parent_run_id, upstream=upstream,
                   resume_run_id=resumable_run_id(train_storage, name, uri), extra_tags=inputs.tags or None) as run:
        params = {**inputs.params, **({"time_limit_minutes": round(limit / 60, 2)} if limit is not None else {})}
        if params:
            run.log_params(params)
        for item in inputs.logged:
            run.log_input(item.name, item.uri, item.digest, context=item.context)
        result = fit(job, run)
        digest = (stage.publish or publish_checkpoint)(result, final, run)
        run.log_output("checkpoint", str(final), digest)
    return TrainOutcome(final, run.run_id, metrics=dict(result.metrics or {}))


def strip_training_state(folder: Path) -> None:
    """Drop the optimiser/discriminator state: it stays in Ray's storage, the deliverable is the model."""
    for extra in (STATE_FILE, STATE_META_FILE, CLOCK_FILE):
        (folder / extra).unlink(missing_ok=True)


def publish_checkpoint(result, dest: str | Path, run: StageRun | None = None) -> str:
    """Copy the run's last checkpoint to ``dest`` (local or fsspec URL), inference files only; return its digest."""
    with tempfile.TemporaryDirectory() as tmp:
        local = copy_checkpoint(result, Path(tmp) / "final")
        strip_training_state(local)
        storage.replace_tree(local, dest)
        return digest_tree(local)


def published_digest(dest: str | Path) -> str | None:
    """Digest of a published checkpoint folder (local or URL), or None when it is absent."""
    return digest_tree(dest) if has_checkpoint(dest) else None
