"""Lineage queries over the runs' tags.

- upstream: from a run (its id or any unique prefix of it) or an output path (such as a bundle) to every run it came from and
  every dataset digest those runs read or wrote (following ``spresso.upstream.*``);
- downstream of data: from a dataset digest (or a prefix of one, >= 8 hex digits) to every run
  that read or wrote it (``spresso.input.*.digest`` / ``spresso.output.*.digest``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from spresso.core.errors import SpressoError
from spresso.pipeline.runids import (
    all_runs,
    ambiguous,
    looks_like_run_id,
    matching_runs,
)
from spresso.runtime.tracking import TAG_STAGE, mlflow_client

_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_IO_TAG = re.compile(r"^spresso\.(input|output)\.(.+)\.(uri|digest)$")


@dataclass
class RunLineage:
    run_id: str
    stage: str
    instance: str
    status: str
    depth: int
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (uri, digest)
    outputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)  # read name -> run id


@dataclass
class DigestUse:
    run_id: str
    stage: str
    role: str  # input | output
    name: str
    uri: str
    digest: str


def _io(tags: dict[str, str], role: str) -> dict[str, tuple[str, str]]:
    out: dict[str, list[str]] = {}
    for k, v in tags.items():
        m = _IO_TAG.match(k)
        if m and m.group(1) == role:
            pair = out.setdefault(m.group(2), ["", ""])
            pair[0 if m.group(3) == "uri" else 1] = v
    return {k: (u, d) for k, (u, d) in sorted(out.items())}


def upstream_lineage(uri: str, run_id: str) -> list[RunLineage]:
    """The run and every run upstream of it, breadth first (depth 0 = the run itself)."""
    client = mlflow_client(uri)
    seen: dict[str, RunLineage] = {}
    frontier = [(run_id, 0)]
    while frontier:
        rid, depth = frontier.pop(0)
        if rid in seen:
            continue
        try:
            run = client.get_run(rid)
        except Exception:
            raise SpressoError(f"no MLflow run {rid} in {uri}") from None
        tags = run.data.tags
        ups = {k[len("spresso.upstream."):]: v for k, v in tags.items() if k.startswith("spresso.upstream.")}
        seen[rid] = RunLineage(rid, tags.get(TAG_STAGE, "?"), tags.get("spresso.pipeline.stage", tags.get(TAG_STAGE, "?")),
                               run.info.status, depth, _io(tags, "input"), _io(tags, "output"), ups)
        frontier.extend((u, depth + 1) for u in sorted(set(ups.values())))
    return list(seen.values())


def runs_for_path(uri: str, path: str) -> list[str]:
    """Runs whose recorded output contains ``path`` (the output itself or a file inside it),
    the most specific output first."""
    target = path if "://" in path else str(Path(path).resolve())
    hits: list[tuple[int, float, str]] = []
    for run in all_runs(mlflow_client(uri)):
        for _, (out_uri, _) in _io(run.data.tags, "output").items():
            norm = out_uri if "://" in out_uri else str(Path(out_uri).resolve())
            if target == norm or target.startswith(norm.rstrip("/") + "/"):
                hits.append((len(norm), run.info.start_time or 0, run.info.run_id))
    return [rid for _, _, rid in sorted(hits, reverse=True)]


def runs_using_digest(uri: str, digest: str) -> list[DigestUse]:
    digest = digest.lower()
    out = []
    for run in all_runs(mlflow_client(uri)):
        tags = run.data.tags
        for role in ("input", "output"):
            for name, (u, d) in _io(tags, role).items():
                if d and d.startswith(digest):
                    out.append(DigestUse(run.info.run_id, tags.get(TAG_STAGE, "?"), role, name, u, d))
    return sorted(out, key=lambda x: (x.role != "output", x.stage, x.run_id))


def lineage(uri: str, target: str) -> tuple[str, list]:
    """Dispatch on what ``target`` is: ("runs", [RunLineage...]) or ("digest", [DigestUse...])."""
    t = target.strip()
    if looks_like_run_id(t):
        # A run id or any unique prefix of one (12 digits, as `runs compare` prints); a hex string that
        # names no run may still be a dataset digest's prefix.
        hits = matching_runs(uri, t)
        if len(hits) > 1:
            raise ambiguous(t, hits)
        if hits:
            return "runs", upstream_lineage(uri, hits[0])
    if "/" in t or "://" in t or Path(t).exists():
        runs = runs_for_path(uri, t)
        if not runs:
            raise SpressoError(f"no run recorded an output at {t}")
        return "runs", upstream_lineage(uri, runs[0])
    if _HEX.match(t.lower()):
        uses = runs_using_digest(uri, t)
        if not uses:
            raise SpressoError(f"no run read or wrote a dataset with digest {t}")
        return "digest", uses
    raise SpressoError(f"'{target}' is not a run id (or a unique prefix of one), an output path or a dataset digest")


def format_lineage(kind: str, rows: list) -> str:
    lines = []
    if kind == "runs":
        for r in rows:
            pad = "  " * r.depth
            lines.append(f"{pad}{r.instance}  run {r.run_id}  {r.status}")
            for name, (u, d) in r.inputs.items():
                lines.append(f"{pad}    in  {name}: {d[:16]}  {u}")
            for name, (u, d) in r.outputs.items():
                lines.append(f"{pad}    out {name}: {d[:16]}  {u}")
        digests = sorted({d for r in rows for io in (r.inputs, r.outputs) for _, d in io.values() if d})
        lines.append(f"{len(rows)} run(s), {len(digests)} dataset digest(s)")
    else:
        for u in rows:
            lines.append(f"{u.role:6s} {u.stage:20s} run {u.run_id}  {u.name}  {u.uri}")
    return "\n".join(lines)
