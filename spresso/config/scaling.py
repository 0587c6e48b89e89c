"""How a training stage runs on Ray Train, and which training settings are knobs outside its cache key.

Every training section (``audioae.train``, ``dit.train``, ``dae.stage1``, ``dae.stage3``, ``qinco2``)
embeds one :class:`ScalingSettings` as ``scaling:``::

    dit:
      train:
        scaling: {workers: 8, use_gpu: true, cpus_per_worker: 8, max_failures: 3}

Scaling and logging settings change how a run goes, not what it learns, so a stage's cache key
leaves them out: a field declared with :func:`run_knob` (and ``scaling`` itself) is dropped by
:func:`key_settings`. That is the only place that decides it; no stage keeps its own list.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from spresso.config.base import Section

RUN_KNOB = "run_knob"  # json_schema_extra flag on a field that does not enter the cache key


def run_knob(default: Any, **kwargs: Any) -> Any:
    """A pydantic ``Field`` for a setting that changes how a run goes, not its result (left out of the key)."""
    return Field(default, json_schema_extra={RUN_KNOB: True}, **kwargs)


class ScalingSettings(Section):
    """Ray Train scaling and fault tolerance of one training stage."""

    # Ray Train workers (DDP/FSDP ranks); 0 runs the loop in the driver process (fast tests, no resume).
    workers: int = Field(1, ge=0)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = Field(1.0, gt=0)  # also the loop's torch threads
    # Worker restarts from the latest checkpoint before the run fails. Default 0: a failure (often a
    # bug) surfaces at once; clusters with preemptible nodes set it (paper.yaml: 3, demo.yaml: 1).
    max_failures: int = Field(0, ge=0)


def scaling_field(**defaults: Any) -> Any:
    """The ``scaling`` field of a training section (``defaults`` differ from :class:`ScalingSettings`'s)."""
    return Field(default_factory=lambda: ScalingSettings(**defaults), json_schema_extra={RUN_KNOB: True})


def key_settings(section: Section) -> dict[str, Any]:
    """The section as JSON without its run knobs (scaling, logging, checkpoint cadence): what the key hashes."""
    knobs = {name for name, field in type(section).model_fields.items()
             if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(RUN_KNOB)}
    return section.model_dump(mode="json", exclude=knobs)
