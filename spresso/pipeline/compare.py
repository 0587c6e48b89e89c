"""`runs compare`: a table of runs and their metrics, and the MLflow UI's compare view for them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

from spresso.core.errors import SpressoError
from spresso.pipeline.runids import resolve_run_id
from spresso.runtime.tracking import TAG_STAGE, mlflow_client

DEFAULT_UI = "http://127.0.0.1:5000"


@dataclass
class Comparison:
    table: str
    url: str
    run_ids: list[str]


def ui_base(uri: str) -> str:
    """The MLflow UI serving ``uri``: the server itself, or where `mlflow ui` listens by default."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI


def compare_url(uri: str, experiment_ids: list[str], run_ids: list[str]) -> str:
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    exps = quote(json.dumps(experiment_ids, separators=(",", ":")))
    return f"{ui_base(uri)}/#/compare-runs?runs={runs}&experiments={exps}"


def compare_runs(uri: str, experiment: str | None = None, metrics: list[str] | None = None, stage: str | None = None,
                 parent: str | None = None, max_runs: int = 30, status: str | None = None) -> Comparison:
    client = mlflow_client(uri)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            known = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise SpressoError(f"no MLflow experiment '{experiment}' (experiments: {known})")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    filters = []
    if stage:
        filters.append(f"tags.`{TAG_STAGE}` = '{stage}'")
    if parent:
        parent = resolve_run_id(uri, parent)  # 12 digits, as this table prints them, are enough
        filters.append(f"tags.`mlflow.parentRunId` = '{parent}'")
    if status:
        filters.append(f"attributes.status = '{status.upper()}'")
    runs = client.search_runs(exp_ids, filter_string=" and ".join(filters), order_by=["attributes.start_time DESC"],
                              max_results=max_runs)
    if not runs:
        raise SpressoError("no runs match")
    available = sorted({k for r in runs for k in r.data.metrics})
    if not metrics:  # every metric any of these runs has, up to a readable number of columns
        metrics = available[:8]
    else:
        metrics = [name for want in metrics for name in select_metrics(want, available, len(runs))]
    header = ["run", "stage", "name", "status", *metrics]
    rows = [header]
    for r in runs:
        tags = r.data.tags
        rows.append([r.info.run_id[:12], tags.get(TAG_STAGE, "-"), tags.get("spresso.pipeline.stage", r.info.run_name or "-"),
                     r.info.status, *(_fmt(r.data.metrics.get(m)) for m in metrics)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
    ids = [r.info.run_id for r in runs]
    return Comparison(table, compare_url(uri, sorted({r.info.experiment_id for r in runs}), ids), ids)


def metric_matches(want: str, name: str) -> bool:
    """``want`` names ``name`` exactly, or is its last dotted part(s) with any ``_suffix`` left off:
    ``fad`` and ``fad_aisfx`` match ``d96.fad_aisfx`` (every point's), ``d96.fad`` matches only d96's;
    ``fad`` does not match ``d96.fad_aisfx.low`` (the interval's bounds are asked for by their own name)."""
    if name == want:
        return True
    starts = [0] + [i + 1 for i, c in enumerate(name) if c == "."]
    return any(name[i:] == want or (name[i:].startswith(want + "_") and "." not in name[i + len(want):]) for i in starts)


def select_metrics(want: str, available: list[str], n_runs: int) -> list[str]:
    """The metric columns ``want`` asks for; a one-line error listing the names there are when none matches."""
    hits = [name for name in available if metric_matches(want, name)]
    if hits:
        return [want] if want in hits else hits
    names = ", ".join(available[:60]) + (f" ... ({len(available) - 60} more)" if len(available) > 60 else "")
    raise SpressoError(f"no metric '{want}' in these {n_runs} runs; their metrics: {names or 'none'}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"
