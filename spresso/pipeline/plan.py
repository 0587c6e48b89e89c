"""`pipeline run --dry-run`: the DAG, what each stage will ask of the cluster, a GPU-hour estimate.

The estimate is a stated model, not a measurement: for each stage, configured
``steps x step_seconds x GPUs per worker x workers`` (``pipeline.resources.<stage>``); stages
without steps count zero. Cost = GPU-hours x ``pipeline.gpu_hour_usd``.
"""
from __future__ import annotations

from spresso.core.rates import frame_rate
from spresso.pipeline.graph import PipelineGraph


def gpu_hours(graph: PipelineGraph) -> dict[str, float]:
    return {n: graph.nodes[n].resources.gpu_hours() for n in graph.order}


def describe(graph: PipelineGraph, selected: set[str] | None = None) -> str:
    pc = next(iter(graph)).cfg.pipeline if len(graph) else None
    lines = [f"{len(graph)} stages in dependency order:"]
    rows = [("stage", "after", "cpus", "gpus", "workers", "node", "steps", "s/step", "GPU-h", "")]
    hours = gpu_hours(graph)
    for n in graph.order:
        node = graph.nodes[n]
        r = node.resources
        mark = []
        if not node.stage.available():
            mark.append("not built yet")
        if selected is not None and n not in selected:
            mark.append("not selected")
        node_kind = "/".join(x for x in (r.label, r.accelerator) if x) or "-"  # label/accelerator asked for
        rows.append((n, ",".join(graph.parents(n)) or "-", f"{r.cpus:g}", f"{r.gpus:g}", str(r.workers), node_kind,
                     str(r.steps) if r.steps else "-", f"{r.step_seconds:g}" if r.step_seconds else "-",
                     f"{hours[n]:.1f}" if hours[n] else "-", "; ".join(mark)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if pc is not None:
        lines.append(f"stage drivers (ray executor): on {pc.driver_label or 'any'} nodes (label spresso-node), "
                     f"retried up to {pc.driver_retries} times when their node dies")
        for p in pc.points:
            kind = "continuous" if p.continuous else f"K={p.K} m={p.m}"
            lines.append(f"operating point {p.name}: t={p.t} ({frame_rate(p.t):.3g} Hz) {kind} -> {p.bitrate_bps() / 1000:.3g} kbps")
        total = sum(hours[n] for n in graph.order if selected is None or n in selected)
        lines.append(f"estimated GPU time: {total:.0f} {pc.gpu_type} GPU-hours "
                     f"(model: steps x step_seconds x gpus x workers per stage; about ${total * pc.gpu_hour_usd:,.0f} "
                     f"at ${pc.gpu_hour_usd:g}/GPU-hour)")
    return "\n".join(lines)
