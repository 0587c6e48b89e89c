"""`pipeline status`: where each stage stands, computed from MLflow and the current config.

- done / reused: a finished run carries the key the stage would have now (and its outputs
  exist); which of the two comes from the latest pipeline run's record;
- running: a run of this stage instance is RUNNING;
- failed: its latest run failed and nothing finished has its current key;
- stale: it finished before, but its key changed since (config, upstream data or code);
- pending: never run (or waits on an upstream stage that is not done).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from spresso.config import SpressoConfig
from spresso.core.errors import SpressoError
from spresso.pipeline.cache import TAG_INSTANCE, external_fingerprint, lookup, stage_key
from spresso.pipeline.graph import build_graph
from spresso.pipeline.registry import registry
from spresso.pipeline.runner import TAG_PIPELINE_ID, TAG_STATES, pipeline_id
from spresso.pipeline.stage import Artifact, Stage
from spresso.runtime.tracking import code_version, existing_tracking_uri, mlflow_client


@dataclass
class StageStatus:
    name: str
    state: str
    run_id: str | None = None
    note: str = ""


def _latest_states(client, exp_id: str, pid: str) -> dict[str, list[str]]:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_PIPELINE_ID}` = '{pid}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return {}
    try:
        return json.loads(runs[0].data.tags.get(TAG_STATES, "{}"))
    except json.JSONDecodeError:
        return {}


def pipeline_status(cfg: SpressoConfig, stages: Mapping[str, Stage] | Sequence[Stage] | None = None,
                    source: str = "the config") -> list[StageStatus]:
    """Every stage's state; reads the MLflow store and never creates one (a missing store is an error that
    says where it looked; ``source`` names the config in it)."""
    if stages is None:
        stages = registry()
    graph = build_graph(cfg, stages)
    uri = existing_tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri, source=source)
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(cfg.runtime.experiment)
    if exp is None:
        return [StageStatus(n, "pending", note="no runs yet") for n in graph.order]
    exp_id = exp.experiment_id
    last = _latest_states(client, exp_id, pipeline_id(cfg))
    code = code_version()
    artifacts: dict[str, dict[str, Artifact]] = {}
    out: list[StageStatus] = []
    for n in graph.order:
        node = graph.nodes[n]
        recent = client.search_runs([exp_id], filter_string=f"tags.`{TAG_INSTANCE}` = '{n}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        recent = recent[0] if recent else None
        if recent is not None and recent.info.status == "RUNNING":
            out.append(StageStatus(n, "running", recent.info.run_id))
            continue
        waiting = [p for p in graph.parents(n) if p not in artifacts]
        cached = None
        if not waiting:
            try:
                prints = {r: external_fingerprint(loc) for r, loc in node.external.items()}
            except SpressoError as err:
                out.append(StageStatus(n, "pending", note=str(err)))
                continue
            upstream = {read: artifacts[p][o] for read, (p, o) in node.upstream.items()}
            cached = lookup(uri, exp_id, node, stage_key(node, upstream, prints, code))
        if cached is not None:
            run_id, arts = cached
            artifacts[n] = arts
            recorded = last.get(n, ["", ""])
            state = "reused" if recorded[0] == "reused" and recorded[1] == run_id else "done"
            out.append(StageStatus(n, state, run_id))
            continue
        if recent is None:
            out.append(StageStatus(n, "pending", note=f"waits on {waiting[0]}" if waiting else "never run"))
        elif recent.info.status in ("FAILED", "KILLED"):
            out.append(StageStatus(n, "failed", recent.info.run_id, recent.data.tags.get("spresso.error", "")[:80]))
        else:
            why = f"upstream {waiting[0]} changed" if waiting else "config, inputs or code changed"
            out.append(StageStatus(n, "stale", recent.info.run_id, why))
    return out


def format_status(rows: list[StageStatus]) -> str:
    table = [("stage", "state", "mlflow run", "note")] + [(r.name, r.state, r.run_id or "-", r.note) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(3)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(t[:3], widths)) + "  " + t[3]).rstrip() for t in table)
