"""Run a stage DAG: dependency order, concurrency, caching, failure isolation, one MLflow run each.

One MLflow parent run per pipeline invocation; each stage that runs is one child run
(``mlflow.parentRunId``) tagged with its key, instance name, upstream run ids and input/output
digests. Stages whose key matches a finished run with existing outputs are reused (no new run).
A failed stage marks its downstream ``skipped``; independent stages and branches go on.
Rerunning after a failure resumes: everything that finished is reused.

Where stages run:
- ``local``: ready stages run in driver threads, at most ``pipeline.max_parallel`` at once
  (each stage may itself use Ray: Ray Data, Ray Train);
- ``ray``: each ready stage is submitted at once as a Ray task (:func:`~spresso.pipeline.resources.task_options`:
  a light driver on ``pipeline.driver_label`` nodes whose workers ask Ray for theirs, or, for a
  stage that does its work itself, a task holding what it needs), retried ``pipeline.driver_retries``
  times when its node dies (the retried stage resumes); Ray queues what the cluster has no room
  for, an autoscaler starts nodes for it, and Ray places the rest.

Every stage runs with ``pipeline.resources.<kind>`` applied to the section it scales (``node.run_cfg``).
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import ray
from tqdm import tqdm

from spresso.config import SpressoConfig
from spresso.core import storage
from spresso.core.digest import digest_json
from spresso.core.errors import SpressoError
from spresso.pipeline.cache import (
    TAG_INSTANCE,
    TAG_PIPELINE_KEY,
    TAG_POINT,
    content_digest,
    external_fingerprint,
    lookup,
    path_exists,
    stage_key,
)
from spresso.pipeline.graph import PipelineGraph, StageNode, build_graph
from spresso.pipeline.registry import registry
from spresso.pipeline.resources import task_options
from spresso.pipeline.stage import Artifact, Stage, StageContext, StageResult
from spresso.runtime import StageRun, init_ray
from spresso.runtime.tracking import (
    TAG_NOTE,
    TAG_STAGE,
    code_version,
    ensure_experiment,
    mlflow_client,
    stage_run,
    tracking_uri,
)

log = logging.getLogger(__name__)

TAG_PIPELINE_ID = "spresso.pipeline.id"
TAG_STATES = "spresso.pipeline.states"
PIPELINE_STAGE = "pipeline"

DONE, REUSED, FAILED, SKIPPED, NOT_RUN, NOT_SELECTED = "done", "reused", "failed", "skipped", "not run", "not selected"


@dataclass
class StageOutcome:
    name: str
    status: str
    run_id: str | None = None
    key: str | None = None
    seconds: float = 0.0
    reason: str = ""
    outputs: dict[str, Artifact] = field(default_factory=dict)


@dataclass
class PipelineResult:
    parent_run_id: str
    tracking_uri: str
    outcomes: dict[str, StageOutcome]

    @property
    def ok(self) -> bool:
        return not any(o.status in (FAILED, SKIPPED, NOT_RUN) for o in self.outcomes.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes.values():
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def table(self) -> str:
        rows = [("stage", "status", "run", "time", "note")]
        for o in self.outcomes.values():
            rows.append((o.name, o.status, (o.run_id or "-")[:12], f"{o.seconds:.1f}s" if o.seconds else "-", o.reason[:120]))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + ("  " + r[4] if r[4] else "") for r in rows]
        return "\n".join(line.rstrip() for line in lines)


def run_note(uri: str, run_id: str | None) -> str:
    """The one-line note a stage left on its MLflow run (tag ``spresso.note``), or ""."""
    if not run_id:
        return ""
    try:
        return mlflow_client(uri).get_run(run_id).data.tags.get(TAG_NOTE, "")
    except Exception:  # the note is informative; never fail a pipeline over it
        return ""


def pipeline_id(cfg: SpressoConfig) -> str:
    """Identifies one pipeline (its workdir and stage layout) across invocations, for `status`."""
    pc = cfg.pipeline
    return digest_json({"workdir": cfg.workdir, "shared": pc.shared, "branch": pc.branch,
                        "points": [p.name for p in pc.points]})[:16]


def use_ray_tasks(cfg: SpressoConfig) -> bool:
    mode = cfg.pipeline.executor
    if mode == "auto":
        return bool(cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS"))
    return mode == "ray"


# ----------------------------------------------------------------------------- one stage
def _normalise(result: Any) -> StageResult:
    if result is None:
        return StageResult()
    if isinstance(result, StageResult):
        return result
    if isinstance(result, Mapping):
        return StageResult(outputs=dict(result))
    raise SpressoError(f"a stage returned {type(result).__name__}; expected StageResult, a dict of outputs or None")


def invoke_local(fn: Callable, cfg: SpressoConfig, ctx: StageContext) -> StageResult:
    """Run a stage in this process (the local executor's threads)."""
    return _normalise(fn(cfg, ctx))


def invoke_ray(fn: Callable, cfg: SpressoConfig, ctx: StageContext) -> StageResult:
    """Run a stage as a Ray task with ``ctx.ray_options`` (the ray executor)."""
    # Retried only when the task's process or node dies (an exception is the stage's failure).
    task = ray.remote(invoke_local).options(name=f"stage:{ctx.stage}", **ctx.ray_options)
    try:
        return ray.get(task.remote(fn, cfg, ctx))
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else None
        raise (cause or err) from None


def _record_outputs(node: StageNode, run_id: str, uri: str, result: StageResult) -> dict[str, Artifact]:
    """Every declared output with its digest: as the stage logged it, returned it, or as found on disk."""

    run = StageRun.attach(run_id, uri)
    tags = run.client.get_run(run_id).data.tags
    out: dict[str, Artifact] = {}
    for name, location in node.outputs.items():
        got = result.outputs.get(name)
        loc = tags.get(f"spresso.output.{name}.uri") or location
        digest = tags.get(f"spresso.output.{name}.digest")
        if isinstance(got, (tuple, list)):
            loc, digest = str(got[0]), str(got[1])
        elif isinstance(got, str):
            digest = got
        if not path_exists(loc):
            raise SpressoError(f"stage '{node.name}' finished without writing its output '{name}' ({loc})")
        if digest is None:
            digest = content_digest(loc)
        if tags.get(f"spresso.output.{name}.digest") != digest or tags.get(f"spresso.output.{name}.uri") != loc:
            run.log_output(name, loc, digest)
        out[name] = Artifact(name, loc, digest, run_id)
    return out


def _find_child_run(uri: str, experiment_id: str, parent_run_id: str, kind: str, since_ms: int) -> str | None:
    runs = mlflow_client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TAG_STAGE}` = '{kind}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs and runs[0].info.start_time >= since_ms - 1000 else None


def _lineage_tags(node: StageNode, key: str, inputs: Mapping[str, Artifact]) -> dict[str, str]:
    tags = {TAG_PIPELINE_KEY: key, TAG_INSTANCE: node.name}
    if node.point:
        tags[TAG_POINT] = node.point.name
    return tags


def _log_inputs(run, inputs: Mapping[str, Artifact]) -> None:
    for name, art in inputs.items():
        run.log_input(name, art.uri, art.digest)
    run.log_upstream({name: art.run_id for name, art in inputs.items() if art.run_id})


def execute_stage(node: StageNode, ctx: StageContext, invoke: Callable, uri: str, experiment_id: str) -> tuple[str, dict[str, Artifact]]:
    """Run one stage inside its MLflow run; return (run_id, outputs)."""
    fn = node.stage.resolve_fn()
    cfg = node.run_cfg or node.cfg
    tags = _lineage_tags(node, ctx.key, ctx.inputs)
    if node.stage.opens_run:
        t0 = int(time.time() * 1000)
        result = invoke(fn, cfg, ctx)
        run_id = result.run_id or _find_child_run(uri, experiment_id, ctx.parent_run_id or "", node.kind, t0)
        if run_id is None:
            raise SpressoError(f"stage '{node.name}' opens its own MLflow run but none was found under the pipeline run")
        run = StageRun.attach(run_id, uri)
        info = run.client.get_run(run_id)
        if ctx.parent_run_id and "mlflow.parentRunId" not in info.data.tags and info.info.start_time >= t0 - 1000:
            tags["mlflow.parentRunId"] = ctx.parent_run_id  # a stage that cannot take a parent: adopt its fresh run
        run.set_tags(tags)
        _log_inputs(run, ctx.inputs)
        return run_id, _record_outputs(node, run_id, uri, result)
    upstream = {name: art.run_id for name, art in ctx.inputs.items() if art.run_id}
    with stage_run(node.kind, cfg, key=ctx.key, upstream=upstream, parent_run_id=ctx.parent_run_id,
                   run_name=node.name, extra_tags=tags) as run:
        for name, art in ctx.inputs.items():
            run.log_input(name, art.uri, art.digest)
        result = invoke(fn, cfg, replace(ctx, run=run))
        return run.run_id, _record_outputs(node, run.run_id, uri, result)


# ----------------------------------------------------------------------------- the scheduler
class _Scheduler:
    def __init__(self, cfg: SpressoConfig, graph: PipelineGraph, run_set: set[str], forced: set[str],
                 parent, uri: str, experiment_id: str, ray_tasks: bool, max_parallel: int, progress: bool):
        self.cfg, self.graph, self.run_set, self.forced = cfg, graph, run_set, forced
        self.parent, self.uri, self.experiment_id = parent, uri, experiment_id
        self.invoke = invoke_ray if ray_tasks else invoke_local
        # Ray queues what does not fit: hand it every ready stage. Locally, bound the threads.
        self.capacity = len(graph) if ray_tasks else max_parallel
        self.code = code_version()
        self.outcomes: dict[str, StageOutcome] = {}
        self.progress = progress

    def _inputs(self, node: StageNode) -> dict[str, Artifact]:
        arts = {read: self.outcomes[p].outputs[o] for read, (p, o) in node.upstream.items()}
        return arts

    def _externals(self, node: StageNode) -> tuple[dict[str, Artifact], dict[str, str]]:
        arts, prints = {}, {}
        for read, loc in node.external.items():
            prints[read] = external_fingerprint(loc)
            arts[read] = Artifact(read, ",".join(loc) if isinstance(loc, list) else loc, prints[read], None)
        return arts, prints

    def _publish(self) -> None:
        states = {n: [o.status, o.run_id or ""] for n, o in self.outcomes.items()}
        try:
            self.parent.set_tags({TAG_STATES: json.dumps(states, separators=(",", ":"))[:8000]})
        except Exception as err:  # the table is informative; never fail a pipeline over it
            log.warning("could not record stage states on the pipeline run: %s", err)

    def _finish(self, outcome: StageOutcome, bar) -> None:
        if outcome.status in (DONE, REUSED) and not outcome.reason:
            outcome.reason = run_note(self.uri, outcome.run_id)  # a finished stage's warning joins the summary
        self.outcomes[outcome.name] = outcome
        msg = f"{outcome.name}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else "")
        (log.warning if outcome.status in (FAILED, SKIPPED, NOT_RUN) or outcome.reason else log.info)(msg)
        if bar is not None:
            bar.set_postfix_str(msg[:60])
            bar.update(1)
        self._publish()

    def run(self) -> dict[str, StageOutcome]:
        graph = self.graph
        needed = graph.ancestors(self.run_set)
        for n in graph.order:
            if n not in needed:
                self.outcomes[n] = StageOutcome(n, NOT_SELECTED)
        pending = [n for n in graph.order if n in needed]
        bar = tqdm(total=len(pending), desc="pipeline", unit="stage", disable=not self.progress)
        in_flight: dict[Future, tuple[str, str, float]] = {}
        keys_in_flight: set[str] = set()
        pool = ThreadPoolExecutor(max_workers=max(self.capacity, 1), thread_name_prefix="stage")
        try:
            while pending or in_flight:
                for n in list(pending):
                    node = graph.nodes[n]
                    parents = graph.parents(n)
                    bad = [p for p in parents if self.outcomes.get(p) and self.outcomes[p].status not in (DONE, REUSED)]
                    if bad:
                        pending.remove(n)
                        self._finish(StageOutcome(n, SKIPPED, reason=f"upstream {bad[0]} {self.outcomes[bad[0]].status}"), bar)
                        continue
                    if any(p not in self.outcomes for p in parents):
                        continue
                    try:
                        ext_arts, prints = self._externals(node)
                        inputs = {**self._inputs(node), **ext_arts}
                        key = stage_key(node, self._inputs(node), prints, self.code)
                        cached = None if n in self.forced else lookup(self.uri, self.experiment_id, node, key)
                    except SpressoError as err:
                        pending.remove(n)
                        self._finish(StageOutcome(n, FAILED, reason=str(err)), bar)
                        continue
                    if cached is not None:
                        pending.remove(n)
                        self._finish(StageOutcome(n, REUSED, cached[0], key, outputs=cached[1]), bar)
                        continue
                    if n not in self.run_set:
                        pending.remove(n)
                        self._finish(StageOutcome(n, NOT_RUN, key=key, reason="not selected and no finished run to reuse"), bar)
                        continue
                    if key in keys_in_flight:
                        continue  # an identical stage (another branch) is running: reuse it when it ends
                    if len(in_flight) >= self.capacity:
                        continue
                    ctx = StageContext(
                        stage=n, kind=node.kind, point=node.point, inputs=inputs, outputs=dict(node.outputs),
                        key=key, parent_run_id=self.parent.run_id, run=None, force=n in self.forced,
                        resources=node.resources,
                        ray_options=task_options(node.run_cfg or node.cfg, node.stage, node.resources),
                    )
                    pending.remove(n)
                    keys_in_flight.add(key)
                    log.info("%s: starting", n)
                    fut = pool.submit(execute_stage, node, ctx, self.invoke, self.uri, self.experiment_id)
                    in_flight[fut] = (n, key, time.perf_counter())
                if not in_flight:
                    if pending:  # cannot happen in a DAG; guard against a silent hang
                        raise SpressoError(f"pipeline stalled with stages pending: {', '.join(pending)}")
                    break
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for fut in finished:
                    n, key, t0 = in_flight.pop(fut)
                    keys_in_flight.discard(key)
                    seconds = time.perf_counter() - t0
                    try:
                        run_id, outputs = fut.result()
                    except Exception as err:  # a stage's failure is data here: its downstream is skipped
                        if not isinstance(err, SpressoError):
                            log.error("%s failed:\n%s", n, "".join(traceback.format_exception(err)))
                        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                        self._finish(StageOutcome(n, FAILED, self._failed_run(n), key, seconds, reason), bar)
                    else:
                        self._finish(StageOutcome(n, DONE, run_id, key, seconds, outputs=outputs), bar)
        finally:
            pool.shutdown(wait=True)
            bar.close()
        return {n: self.outcomes[n] for n in graph.order}

    def _failed_run(self, name: str) -> str | None:
        try:
            runs = mlflow_client(self.uri).search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.parent.run_id}' and tags.`{TAG_INSTANCE}` = '{name}'",
                order_by=["attributes.start_time DESC"], max_results=1)
            return runs[0].info.run_id if runs else None
        except Exception:
            return None


def run_pipeline(
    pipeline_cfg: SpressoConfig,
    stages: Mapping[str, Stage] | Sequence[Stage] | None = None,
    *,
    from_: Sequence[str] = (),
    until: Sequence[str] = (),
    only: Sequence[str] = (),
    force: Sequence[str] = (),
    progress: bool = True,
) -> PipelineResult:
    """Run (or resume) the pipeline; returns every stage's outcome.

    ``from_``/``until``/``only``/``force`` take selectors: an instance (``stage1@c11``), a
    stage kind (all its branches) or ``@point`` (a whole branch). Stages outside the selection
    that the selection needs are reused when they can be, else reported ``not run``.
    """
    if stages is None:
        stages = registry()
    cfg = pipeline_cfg
    storage.check_store(cfg.workdir)  # a missing bucket or refused credentials: one line, now
    graph = build_graph(cfg, stages)
    run_set = graph.select(from_, until, only)
    forced = {n for s in force for n in graph.match(s)}
    run_set |= forced
    ray_tasks = use_ray_tasks(cfg)
    if ray_tasks or any(graph.nodes[n].stage.uses_ray for n in graph.ancestors(run_set)):
        # Once, before any stage thread: two threads calling ray.init at once race.
        init_ray(cfg.runtime)
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    experiment_id = ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir)
    extra = {TAG_PIPELINE_ID: pipeline_id(cfg), "spresso.pipeline.selection": json.dumps(
        {"from": list(from_), "until": list(until), "only": list(only), "force": list(force)})}
    with stage_run(PIPELINE_STAGE, cfg, run_name="pipeline", extra_tags=extra) as parent:
        sched = _Scheduler(cfg, graph, run_set, forced, parent, uri, experiment_id, ray_tasks,
                           cfg.pipeline.max_parallel, progress)
        outcomes = sched.run()
        result = PipelineResult(parent.run_id, uri, outcomes)
        parent.log_metrics({f"stages_{k.replace(' ', '_')}": v for k, v in result.counts().items()})
        parent.log_text(result.table() + "\n", "pipeline_table.txt")
    if not result.ok:
        mlflow_client(uri).set_terminated(parent.run_id, status="FAILED")
    return result
