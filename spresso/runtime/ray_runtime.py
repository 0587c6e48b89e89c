"""Connect to Ray: RAY_ADDRESS when set, else a local Ray sized for this machine."""
from __future__ import annotations

import logging
import os

import ray

from spresso.config.runtime import RuntimeConfig

log = logging.getLogger(__name__)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# The GCS address of the (fixed-size) local Ray that init_ray started, if it did. An address rather than
# a flag: after ray.shutdown() and another ray.init() elsewhere, a flag would still say "ours".
_STARTED = {"local": None}


def started_local_ray() -> bool:
    """Whether this process started its own local Ray (no autoscaler: what it has is all there is).

    False in a process that joined a cluster, and in Ray's worker processes (stage drivers run as
    Ray tasks on a cluster that may scale up).
    """
    return (_STARTED["local"] is not None and ray.is_initialized()
            and ray.get_runtime_context().gcs_address == _STARTED["local"])


def init_ray(cfg: RuntimeConfig | None = None, **kwargs):
    """Start or join Ray once per process and return the ``ray`` module.

    With ``cfg.ray_address`` or ``RAY_ADDRESS`` set we join that cluster (``ray job submit``
    sets it for the driver); otherwise a local Ray with ``num_cpus`` (default: all cores) starts.
    """

    cfg = cfg or RuntimeConfig()
    if ray.is_initialized():
        return ray
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    common = dict(ignore_reinit_error=True, log_to_driver=True)
    common.update(kwargs)
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **common)
    else:
        num_cpus = cfg.num_cpus or cpu_count()
        log.info("starting a local Ray with %d CPUs", num_cpus)
        # address="local": start our own, never silently join a `ray start` cluster another
        # process left running on this machine (it would also refuse num_cpus).
        common.setdefault("include_dashboard", cfg.dashboard)
        if common["include_dashboard"]:
            common.setdefault("dashboard_host", "127.0.0.1")  # never exposed beyond this machine
        ray.init(address="local", num_cpus=num_cpus, **common)
        _STARTED["local"] = ray.get_runtime_context().gcs_address
    return ray


def actor_cpus(cfg: RuntimeConfig | None = None) -> float:
    """CPUs to reserve per CPU actor: fractional, so an actor pool cannot take every core."""
    return (cfg or RuntimeConfig()).actor_cpus


def assigned_cpus() -> float | None:
    """CPUs Ray reserved for the calling task or actor; None outside a Ray worker (a driver, a plain process)."""
    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return ray.get_runtime_context().get_assigned_resources().get("CPU")
