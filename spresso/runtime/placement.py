"""What a Ray task, actor or Train worker asks of the cluster, from the config: never from what the
driver happens to see.

Two conventions, shared with ``ray_cluster.yaml``, the KubeRay manifests and the local rehearsal:

- a node type carries the Ray node label ``spresso-node`` (``driver``, ``cpu``, ``a100``); a config
  ``label`` becomes the label selector ``{"spresso-node": label}``;
- an ``accelerator`` (``A100``) becomes the resource ``accelerator_type:A100`` at 0.001 per worker,
  Ray's own convention: GPU nodes advertise it, so asking for it makes an autoscaler start that
  node type (the rehearsal's fake nodes declare it, having no GPU).
"""
from __future__ import annotations

from typing import Any, Optional

import ray

from spresso.core.errors import SpressoError
from spresso.runtime.ray_runtime import started_local_ray

NODE_LABEL = "spresso-node"
ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_SHARE = 0.001


def label_selector(label: Optional[str]) -> Optional[dict[str, str]]:
    """``{"spresso-node": label}``, or None for any node."""
    return {NODE_LABEL: label} if label else None


def accelerator_resources(accelerator: Optional[str]) -> dict[str, float]:
    """The custom resource that asks for ``accelerator`` (empty for none)."""
    return {f"{ACCELERATOR_PREFIX}{accelerator}": ACCELERATOR_SHARE} if accelerator else {}


def ray_options(*, cpus: float, gpus: float = 0.0, label: Optional[str] = None,
                accelerator: Optional[str] = None) -> dict[str, Any]:
    """Options for ``ray.remote(...).options`` or Ray Data ``map_batches``/``map`` of one task or actor."""
    opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    selector = label_selector(label)
    if selector:
        opts["label_selector"] = selector
    extra = accelerator_resources(accelerator)
    if extra:
        opts["resources"] = extra
    return opts


def require_local_resources(need: dict[str, float], what: str) -> None:
    """On a local Ray this process started (fixed size, no autoscaler), fail in one line when ``need``
    can never be met.

    Decides nothing about what to ask for: a request the config makes that such a Ray cannot hold
    would only queue forever. On a cluster an autoscaler may provide it, so nothing is checked.
    """
    if not started_local_ray() or not ray.is_initialized():
        return
    have = ray.cluster_resources()
    short = {k: v for k, v in need.items() if v > 0 and have.get(k, 0.0) + 1e-9 < v}
    if short:
        asked = ", ".join(f"{k}={v:g}" for k, v in sorted(short.items()))
        raise SpressoError(f"{what} asks for {asked}, which this local Ray does not have "
                           "(change the config, or join a cluster with RAY_ADDRESS)")
