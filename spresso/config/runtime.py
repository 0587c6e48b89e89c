"""Where stages run and where they log: Ray and MLflow settings."""
from __future__ import annotations

from spresso.config.base import Section


class RuntimeConfig(Section):
    # None: use RAY_ADDRESS when set, else start a local Ray sized for this machine.
    ray_address: str | None = None
    # CPUs for a local Ray (None: all cores of the machine).
    num_cpus: int | None = None
    # A local Ray starts its dashboard on 127.0.0.1: it serves the state API, which Ray Train's
    # placement-group cleaner polls every second (without it, a warning each second and leaked
    # placement groups when a trainer dies). Costs ~200 MB (PSS), ~1 s of start-up (measured).
    dashboard: bool = True
    # CPUs reserved per actor on CPU-only clusters: fractional so a pool never takes every CPU.
    actor_cpus: float = 0.5
    # None: MLFLOW_TRACKING_URI when set, else sqlite:///<workdir>/mlflow.db.
    mlflow_tracking_uri: str | None = None
    experiment: str = "spresso"
