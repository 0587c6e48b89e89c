"""Runtime conventions shared by every stage: Ray connection, MLflow runs, digests."""
from .digest import digest_bytes, digest_file, digest_files, digest_json, digest_tree
from .ray_runtime import actor_cpus, cpu_count, init_ray
from .tracking import StageRun, find_finished_run, stage_run, tracking_uri

__all__ = [
    "StageRun", "actor_cpus", "cpu_count", "digest_bytes", "digest_file", "digest_files",
    "digest_json", "digest_tree", "find_finished_run", "init_ray", "stage_run", "tracking_uri",
]
