"""What the MLflow server holds after a rehearsal: the pipeline runs, one child run per stage, lineage."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from spresso.pipeline.cache import TAG_INSTANCE
from spresso.pipeline.runner import PIPELINE_STAGE, TAG_STATES
from spresso.runtime.tracking import TAG_STAGE

UPSTREAM = "spresso.upstream."


@dataclass
class StageRunInfo:
    run_id: str
    instance: str
    stage: str
    status: str
    seconds: float
    upstream: dict[str, str] = field(default_factory=dict)
    parent: str = ""


def pipeline_runs(experiment: str) -> list:
    """The experiment's pipeline (parent) runs, oldest first."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`{TAG_STAGE}` = '{PIPELINE_STAGE}'",
                              order_by=["attributes.start_time ASC"], max_results=100)


def states(parent) -> dict[str, str]:
    """stage instance -> done / reused / failed ..., as the pipeline recorded them on its run."""
    raw = MlflowClient().get_run(parent.info.run_id).data.tags.get(TAG_STATES, "{}")
    return {name: state for name, (state, _) in json.loads(raw).items()}


def stage_runs(experiment: str) -> list[StageRunInfo]:
    """Every stage run (not the pipeline runs), with its lineage tags, oldest first."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    out = []
    for run in client.search_runs([exp.experiment_id], f"tags.`{TAG_STAGE}` != '{PIPELINE_STAGE}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000):
        tags = run.data.tags
        end = run.info.end_time or run.info.start_time
        out.append(StageRunInfo(run.info.run_id, tags.get(TAG_INSTANCE, tags.get(TAG_STAGE, "?")), tags.get(TAG_STAGE, "?"),
                                run.info.status, (end - run.info.start_time) / 1000,
                                {k[len(UPSTREAM):]: v for k, v in tags.items() if k.startswith(UPSTREAM)},
                                tags.get("mlflow.parentRunId", "")))
    return out


def runs_per_instance(runs: list[StageRunInfo], parent_id: str) -> dict[str, int]:
    """How many runs each stage instance has under one pipeline run (the rehearsal wants one each)."""
    out: dict[str, int] = {}
    for run in runs:
        if run.parent == parent_id:
            out[run.instance] = out.get(run.instance, 0) + 1
    return out
