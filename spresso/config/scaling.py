"""How a training stage runs on Ray Train, and which training settings are knobs outside its cache key.

Every training section (``audioae.train``, ``dit.train``, ``dae.stage1``, ``dae.stage3``, ``qinco2``)
embeds one :class:`ScalingSettings` as ``scaling:``::

    dit:
      train:
        scaling: {workers: 8, use_gpu: true, cpus_per_worker: 8, max_failures: 3}

Where the workers run is part of the same settings (:class:`Placement`): ``label`` picks nodes by
their Ray node label ``spresso-node`` (``cpu``, ``a100``, ``driver``), ``accelerator`` asks for an
accelerator type (``A100``), which also tells an autoscaler which node type to start. A pipeline
run replaces them with ``pipeline.resources.<stage>`` (:mod:`spresso.pipeline.resources`).

Scaling and logging settings change how a run goes, not what it learns, so a stage's cache key
leaves them out: a field declared with :func:`run_knob` (and ``scaling`` itself) is dropped by
:func:`key_settings`. That is the only place that decides it; no stage keeps its own list.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

from spresso.config.base import Section

RUN_KNOB = "run_knob"  # json_schema_extra flag on a field that does not enter the cache key


def run_knob(default: Any, **kwargs: Any) -> Any:
    """A pydantic ``Field`` for a setting that changes how a run goes, not its result (left out of the key)."""
    return Field(default, json_schema_extra={RUN_KNOB: True}, **kwargs)


class Placement(Section):
    """Which nodes a stage's Ray workers (or actors, or tasks) may run on; nothing set: any node."""

    # Value of the node label `spresso-node` the workers need (ray_cluster.yaml's node types: cpu, a100).
    label: Optional[str] = None
    # Accelerator type each worker needs (e.g. A100): the Ray resource `accelerator_type:A100`.
    accelerator: Optional[str] = None


class ScalingSettings(Placement):
    """Ray Train scaling and fault tolerance of one training stage."""

    # Ray Train workers (DDP/FSDP ranks); 0 runs the loop in the driver process (fast tests, no resume).
    workers: int = Field(1, ge=0)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = Field(1.0, gt=0)  # also the loop's torch threads
    # Worker restarts from the latest checkpoint before the run fails. Default 0: a failure (often a
    # bug) surfaces at once; clusters with preemptible nodes set it (paper.yaml: 3, demo.yaml: 1).
    max_failures: int = Field(0, ge=0)


class ActorPoolSettings(Placement):
    """The actor pool of a cache-filling stage: how many actors and what each one asks of the cluster."""

    actors: int = Field(1, ge=1)
    # CPUs per actor (null: runtime.actor_cpus, fractional so a pool never takes every core).
    cpus_per_actor: Optional[float] = Field(None, gt=0)
    # GPUs per actor: asked of the cluster (an autoscaler starts GPU nodes for them); 0: CPU actors.
    gpus_per_actor: float = Field(0.0, ge=0)


def scaling_field(**defaults: Any) -> Any:
    """The ``scaling`` field of a training section (``defaults`` differ from :class:`ScalingSettings`'s)."""
    return Field(default_factory=lambda: ScalingSettings(**defaults), json_schema_extra={RUN_KNOB: True})


def key_settings(section: Section) -> dict[str, Any]:
    """The section as JSON without its run knobs (scaling, logging, checkpoint cadence): what the key hashes.

    Unset (null) settings are left out too: a new optional setting whose null keeps the old behaviour
    (an EMA, a time limit) then leaves every existing cache key as it was, so adding one does not
    retrain every stage of every workdir. No two configs of one schema collide: a null field and a set
    one still differ by the key being there."""
    knobs = {name for name, field in type(section).model_fields.items()
             if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(RUN_KNOB)}
    return section.model_dump(mode="json", exclude=knobs, exclude_none=True)
