"""Registering a pipeline run's bundles in the MLflow model registry (``pipeline.registered_model``).

Runs after every pipeline run, on its export outcomes, whether the exports ran now or were reused:
an export reused from an earlier run (the DAG's cache) still gets its registry entry, and a bundle
already registered under its point's alias is not registered twice.
"""
from __future__ import annotations

import logging

from spresso.config import SpressoConfig
from spresso.core.errors import SpressoError
from spresso.pipeline.runner import DONE, REUSED, PipelineResult
from spresso.runtime.tracking import mlflow_client
from spresso.train.export import register_bundle

log = logging.getLogger(__name__)
CHAMPION = "champion"


def registered_run(uri: str, name: str, alias: str) -> str | None:
    """The run id behind ``models:/name@alias``, or None when the model or the alias does not exist yet."""
    try:
        return mlflow_client(uri).get_model_version_by_alias(name, alias).run_id
    except Exception:  # MLflow raises its own RestException for a missing model or alias
        return None


def register_bundles(cfg: SpressoConfig, result: PipelineResult) -> dict[str, str]:
    """Point ``models:/<pipeline.registered_model>@<point>`` (and ``@champion`` for the champion point) at each
    finished export's bundle; returns {alias: version} of the entries it changed."""
    name = cfg.pipeline.registered_model
    if not name:
        return {}
    try:
        changed = register_exports(result, name, cfg.pipeline.champion_point())
    except Exception as err:  # MLflow's own errors (permissions, a server gone) as one line
        msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SpressoError(f"registering the bundles as MLflow model '{name}' in {result.tracking_uri}: {msg[:300]}") from None
    for alias, version in changed.items():
        log.info("registered models:/%s@%s -> version %s", name, alias, version)
    return changed


def register_exports(result: PipelineResult, name: str, champion: str | None) -> dict[str, str]:
    client = mlflow_client(result.tracking_uri)
    changed: dict[str, str] = {}
    for outcome in result.outcomes.values():
        kind, _, point = outcome.name.partition("@")
        if kind != "export" or outcome.status not in (DONE, REUSED) or not outcome.run_id:
            continue
        if registered_run(result.tracking_uri, name, point) == outcome.run_id:
            version = client.get_model_version_by_alias(name, point).version
        else:
            model_id = client.get_run(outcome.run_id).data.tags.get("spresso.model_id", "")
            version = register_bundle(result.tracking_uri, name, outcome.run_id, model_id, alias=point)
            changed[point] = str(version)
        if point == champion and registered_run(result.tracking_uri, name, CHAMPION) != outcome.run_id:
            client.set_registered_model_alias(name, CHAMPION, str(version))
            changed[CHAMPION] = str(version)
    return changed
