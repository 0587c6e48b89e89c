"""Runtime conventions shared by every stage: the Ray connection and MLflow stage runs."""
from spresso.runtime.ray_runtime import actor_cpus, assigned_cpus, cpu_count, init_ray
from spresso.runtime.tracking import (
    StageRun,
    find_finished_run,
    stage_run,
    tracking_uri,
)

__all__ = ["StageRun", "actor_cpus", "assigned_cpus", "cpu_count", "find_finished_run", "init_ray", "stage_run", "tracking_uri"]
