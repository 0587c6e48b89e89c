"""`pipeline run --dry-run`: the DAG, what each stage will ask of the cluster, a GPU-hour estimate.

The estimate is derived, not typed: each stage's work (steps, batches, clips) and its workers and
GPUs come from the settings it will run with (:mod:`spresso.pipeline.cost`); seconds per unit come
from the per-GPU table (:mod:`spresso.pipeline.cost_table`), where every figure is either assumed
(flagged) or measured by ``benchmarks/gpu_suite.py`` (``--cost-table FILE``).
Cost = GPU-hours x ``pipeline.gpu_hour_usd``.
"""
from __future__ import annotations

from dataclasses import dataclass

from spresso.config.budget import budget_lines, stage_time_limit
from spresso.core.rates import frame_rate
from spresso.pipeline.cost import Work, corpus_clips, stage_work
from spresso.pipeline.cost_table import StepCost, step_costs
from spresso.pipeline.graph import PipelineGraph


@dataclass(frozen=True)
class Estimate:
    work: Work | None
    cost: StepCost | None
    limit_seconds: float | None = None  # a time-limited stage holds its GPUs at most this long

    @property
    def gpu_hours(self) -> float:
        if self.work is None or self.cost is None or not self.work.gpus:
            return 0.0
        seconds = self.work.gpu_seconds(self.cost.seconds)
        if self.limit_seconds is not None:
            seconds = min(seconds, self.limit_seconds * self.work.workers * self.work.gpus)
        return seconds / 3600.0


def estimates(graph: PipelineGraph, measured: dict[str, StepCost] | None = None) -> dict[str, Estimate]:
    """Per node: its work and seconds per unit (the resources' step_seconds > the measured > the assumed table)."""
    out = {}
    for n in graph.order:
        node = graph.nodes[n]
        table = step_costs(node.cfg.pipeline.gpu_type, measured)
        r = node.resources
        cost = (StepCost(r.step_seconds, f"assumed: pipeline.resources.{node.kind}.step_seconds") if r.step_seconds
                else table.get(node.kind))
        out[n] = Estimate(stage_work(node), cost, stage_time_limit(node.cfg, node.kind))
    return out


def gpu_hours(graph: PipelineGraph, measured: dict[str, StepCost] | None = None) -> dict[str, float]:
    return {n: e.gpu_hours for n, e in estimates(graph, measured).items()}


def _source(e: Estimate) -> str:
    if not e.gpu_hours:
        return "-"
    return "assumed" if e.cost.assumed else "measured"


def describe(graph: PipelineGraph, selected: set[str] | None = None, measured: dict[str, StepCost] | None = None) -> str:
    pc = next(iter(graph)).cfg.pipeline if len(graph) else None
    lines = [f"{len(graph)} stages in dependency order:"]
    rows = [("stage", "after", "cpus", "gpus", "workers", "node", "units", "s/unit", "source", "GPU-h", "")]
    est = estimates(graph, measured) if len(graph) else {}
    for n in graph.order:
        node = graph.nodes[n]
        r = node.resources
        e = est[n]
        mark = []
        if not node.stage.available():
            mark.append("not built yet")
        if selected is not None and n not in selected:
            mark.append("not selected")
        if e.work is not None and e.work.units is None and e.work.gpus:
            mark.append("size unknown: set pipeline.corpus_hours")
        node_kind = "/".join(x for x in (r.label, r.accelerator) if x) or "-"  # label/accelerator asked for
        work = f"{e.work.units} {e.work.unit}" if e.work is not None and e.work.units else "-"
        if e.limit_seconds is not None:
            work = f"{e.limit_seconds / 60:.0f} min" + (f" (<= {e.work.units} {e.work.unit})" if work != "-" else "")
        rows.append((n, ",".join(graph.parents(n)) or "-", f"{r.cpus:g}", f"{r.gpus:g}", str(r.workers), node_kind,
                     work, f"{e.cost.seconds:g}" if e.gpu_hours else "-", _source(e),
                     f"{e.gpu_hours:.1f}" if e.gpu_hours else "-", "; ".join(mark)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if pc is not None:
        lines.append(f"stage drivers (ray executor): on {pc.driver_label or 'any'} nodes (label spresso-node), "
                     f"retried up to {pc.driver_retries} times when their node dies")
        for p in pc.points:
            kind = "continuous" if p.continuous else f"K={p.K} m={p.m}"
            lines.append(f"operating point {p.name}: t={p.t} ({frame_rate(p.t):.3g} Hz) {kind} -> {p.bitrate_bps() / 1000:.3g} kbps")
        lines += budget_lines(next(iter(graph)).cfg)
        lines += cost_lines(graph, est, selected)
    return "\n".join(lines)


def cost_lines(graph: PipelineGraph, est: dict[str, Estimate], selected: set[str] | None) -> list[str]:
    pc = next(iter(graph)).cfg.pipeline
    clips, train = corpus_clips(next(iter(graph)).cfg)
    total = sum(e.gpu_hours for n, e in est.items() if selected is None or n in selected)
    if pc.corpus_hours:
        lines = [f"dataset: {pc.corpus_hours:g} h (pipeline.corpus_hours) = {clips:,} clips, {train:,} in train"]
    else:  # the epoch-based stages and caches are then not estimated; say so rather than print "0 h"
        read = f" (reads {', '.join(pc.inputs)})" if pc.inputs else ""
        lines = [f"dataset: size unknown{read}; set pipeline.corpus_hours for the epoch-based estimates"]
    sources: dict[str, list[str]] = {}
    for n, e in est.items():
        if e.gpu_hours:
            sources.setdefault(e.cost.source, []).append(n.split("@")[0])
    for source, stages in sources.items():
        flag = "ASSUMED" if source.startswith("assumed") else "measured"
        lines.append(f"s/unit {flag} ({source}): {', '.join(dict.fromkeys(stages))}")
    if any(e.gpu_hours and e.cost.assumed for e in est.values()):
        lines.append("assumed figures are hand estimates: measure them with benchmarks/gpu_suite.py and pass --cost-table FILE")
    lines.append(f"estimated GPU time: {total:.0f} {pc.gpu_type} GPU-hours "
                 f"(model: units x s/unit x gpus x workers per stage; about ${total * pc.gpu_hour_usd:,.0f} "
                 f"at ${pc.gpu_hour_usd:g}/GPU-hour)")
    return lines
