"""Run ids as people type them: any unique prefix of the 32-hex-digit MLflow run id, like git's commits.

`runs compare` and `pipeline run` print 12 digits; `lineage` and `runs compare --parent` take those back.
"""
from __future__ import annotations

import re

from spresso.core.errors import SpressoError
from spresso.runtime.tracking import mlflow_client

RUN_ID_DIGITS = 32
MIN_PREFIX = 4  # as git: shorter prefixes match too much to mean anything
_HEX = re.compile(r"^[0-9a-f]+$")


def all_runs(client, experiment_ids: list[str] | None = None):
    """Every run of these experiments (all of them by default), page by page."""
    ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    token = None
    while True:
        page = client.search_runs(ids, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            break


def looks_like_run_id(text: str) -> bool:
    t = text.strip().lower()
    return MIN_PREFIX <= len(t) <= RUN_ID_DIGITS and bool(_HEX.match(t))


def matching_runs(uri: str, prefix: str) -> list[str]:
    """Ids of the runs that start with ``prefix`` (a full id is looked up directly)."""
    p = prefix.strip().lower()
    client = mlflow_client(uri)
    if len(p) == RUN_ID_DIGITS:
        try:
            return [client.get_run(p).info.run_id]
        except Exception:  # MLflow's RestException: no such run
            return []
    return sorted(r.info.run_id for r in all_runs(client) if r.info.run_id.startswith(p))


def resolve_run_id(uri: str, prefix: str) -> str:
    """The one run whose id starts with ``prefix``; a one-line error when none or several do."""
    if not looks_like_run_id(prefix):
        raise SpressoError(f"'{prefix}' is not a run id (at least {MIN_PREFIX} hex digits of one)")
    hits = matching_runs(uri, prefix)
    if not hits:
        raise SpressoError(f"no MLflow run {prefix} in {uri}")
    if len(hits) > 1:
        raise ambiguous(prefix, hits)
    return hits[0]


def ambiguous(prefix: str, hits: list[str]) -> SpressoError:
    shown = ", ".join(h[:12] for h in hits[:5]) + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
    return SpressoError(f"run id prefix {prefix} is ambiguous: {len(hits)} runs match ({shown}); give more digits")
