"""Where stages run and where they log: Ray and MLflow settings."""
from __future__ import annotations

from .base import Section


class RuntimeConfig(Section):
    # None: use RAY_ADDRESS when set, else start a local Ray sized for this machine.
    ray_address: str | None = None
    # CPUs for a local Ray (None: all cores of the machine).
    num_cpus: int | None = None
    # CPUs reserved per actor on CPU-only clusters: fractional so a pool never takes every CPU.
    actor_cpus: float = 0.5
    # None: MLFLOW_TRACKING_URI when set, else sqlite:///<workdir>/mlflow.db.
    mlflow_tracking_uri: str | None = None
    experiment: str = "spresso"
