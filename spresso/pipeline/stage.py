"""A stage declaration: what it runs, what it reads and writes, what it needs, what its key hashes.

The DAG is never written down: :mod:`spresso.pipeline.graph` derives it by matching each
stage's ``reads`` (``<stage>.<output>``) with the stage that ``writes`` that output.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from spresso.config.pipeline import OperatingPoint, StageResources
from spresso.core.errors import SpressoError

if TYPE_CHECKING:  # pragma: no cover
    from spresso.config import SpressoConfig
    from spresso.runtime import StageRun

# A location: a path relative to the workdir (may contain {point}) or a function of (cfg, point).
Location = Union[str, Callable[["SpressoConfig", Optional[OperatingPoint]], str]]


@dataclass(frozen=True)
class Artifact:
    """A dataset or model a stage produced: where it is, its content digest, the run that made it."""

    name: str
    uri: str
    digest: str
    run_id: str | None = None


@dataclass
class StageResult:
    """What a stage function may return.

    ``outputs``: output name -> digest (or (uri, digest)) of what it wrote, when it did not log them
    itself. ``run_id``: the MLflow run the stage opened itself (``opens_run`` stages), when known.
    """

    outputs: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


@dataclass
class StageContext:
    """Everything a stage function gets besides the config."""

    stage: str  # instance name, e.g. "stage1@c11"
    kind: str  # declaration name, e.g. "stage1"
    point: OperatingPoint | None
    inputs: dict[str, Artifact]  # read name -> upstream artifact (or external path)
    outputs: dict[str, str]  # output name -> resolved location to write
    key: str
    parent_run_id: str | None
    run: "StageRun | None"  # None for stages that open their own MLflow run
    force: bool = False
    resources: StageResources = field(default_factory=StageResources)
    # Options of the stage's own Ray task on the ray executor (spresso.pipeline.resources.task_options).
    ray_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One kind of stage. The pipeline config lists it as shared (one instance) or as a branch
    stage (one instance per operating point, named ``<name>@<point>``).

    - ``fn``: ``fn(cfg, ctx) -> StageResult | dict | None``, or ``"module:function"`` imported lazily.
    - ``reads``: read name -> ``<stage>.<output>`` (another stage's named output). A reference
      ending in ``?`` is optional: dropped when the graph has no such stage (e.g. the quantizer
      of a continuous branch).
    - ``external``: read name -> location of a path outside the DAG (raw audio).
    - ``writes``: output name -> location.
    - ``config_keys``: dotted config paths its cache key hashes (e.g. ``"audioae"``, ``"data.splits"``).
    - ``point_keys``: operating-point fields its key hashes (``t``, ``K``, ``m``): changing ``m``
      reruns only the stages that list it and their downstream.
    - ``opens_run``: the function opens its own MLflow run (given ``ctx.parent_run_id``).
    - ``discrete_only``: left out of continuous branches.
    - ``uses_ray``: the function uses Ray itself (the runner starts Ray once, before any thread).
    - ``scales``: the dotted config section ``pipeline.resources.<name>`` is applied onto when given
      (``dit.train.scaling``, ``audioae.cache`` ...; see :mod:`spresso.pipeline.resources`).
    """

    name: str
    fn: Union[Callable[..., Any], str]
    reads: Mapping[str, str] = field(default_factory=dict)
    writes: Mapping[str, Location] = field(default_factory=dict)
    external: Mapping[str, Location] = field(default_factory=dict)
    resources: StageResources = field(default_factory=StageResources)
    config_keys: tuple[str, ...] = ()
    point_keys: tuple[str, ...] = ()
    discrete_only: bool = False
    opens_run: bool = False
    uses_ray: bool = False
    scales: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or "@" in self.name or "." in self.name:
            raise SpressoError(f"stage name '{self.name}' must be non-empty without '@' or '.'")
        clash = set(self.reads) & set(self.external)
        if clash:
            raise SpressoError(f"stage '{self.name}' names {sorted(clash)} both as read and external")

    def resolve_fn(self) -> Callable[..., Any]:
        if callable(self.fn):
            return self.fn
        module, _, attr = self.fn.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise SpressoError(f"stage '{self.name}' has no implementation yet ({self.fn} not found)") from None

    def available(self) -> bool:
        """Whether the stage's function can be imported (dry runs mark the ones not built yet)."""
        if callable(self.fn):
            return True
        try:
            self.resolve_fn()
        except SpressoError:
            return False
        return True


def resolve_location(loc: Location, cfg: "SpressoConfig", point: OperatingPoint | None) -> str | list[str]:
    """A location as a path or URL (a function may return a list: several external folders)."""
    if callable(loc):
        got = loc(cfg, point)
        return [str(x) for x in got] if isinstance(got, (list, tuple)) else str(got)
    rel = loc.format(point=point.name if point else "shared")
    return cfg.path(rel)


def config_value(tree: Mapping[str, Any], dotted: str, stage: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise SpressoError(f"stage '{stage}' keys on config '{dotted}', which the config does not have")
        node = node[part]
    return node
