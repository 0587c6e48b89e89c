"""Stage cache keys and reuse.

key = digest of: the stage kind, the config values it declares (``config_keys``), the operating
point fields it declares (``point_keys``), its upstream outputs' content digests, the
fingerprints of its external inputs, and the code version. A stage is reused when a FINISHED
MLflow run carries the same key and every output that run recorded still exists; the digests
handed downstream are the ones that run recorded (its ``spresso.output.<name>.digest`` tags), so
an unchanged rerun reproduces the same keys all the way down.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import fsspec

from spresso.core import storage
from spresso.core.digest import digest_file, digest_json, digest_tree
from spresso.core.errors import SpressoError
from spresso.pipeline.graph import StageNode
from spresso.pipeline.stage import Artifact, config_value
from spresso.runtime.tracking import find_finished_run, mlflow_client

TAG_PIPELINE_KEY = "spresso.pipeline.key"
TAG_INSTANCE = "spresso.pipeline.stage"
TAG_POINT = "spresso.pipeline.point"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def path_exists(uri: str) -> bool:
    if not is_remote(uri):
        return _local(uri).exists()

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.exists(path)
    except Exception:  # no credentials / no filesystem package: cannot prove it is there
        return False


def content_digest(uri: str) -> str:
    """Digest of what a stage wrote at ``uri`` (file or folder), for stages that did not log one."""
    where = uri if is_remote(uri) else str(_local(uri))  # storage reads local paths and URLs alike
    return digest_file(where) if storage.is_file(where) else digest_tree(where)


def external_fingerprint(uri: str | list[str]) -> str:
    """A cheap fingerprint of an input outside the DAG (raw audio folders can hold terabytes).

    Local: relative names, sizes and modification times of every file. Remote: relative names,
    sizes and ETags (or modification times) from the listing alone, one request per 1000 objects.
    """
    if isinstance(uri, (list, tuple)):
        return digest_json([external_fingerprint(u) for u in uri])
    if is_remote(uri):
        listing = storage.list_details(uri)
        if not listing:
            raise SpressoError(f"input not found: {uri}")
        return digest_json(listing)
    p = _local(uri)
    if not p.exists():
        raise SpressoError(f"input not found: {uri}")
    if p.is_file():
        st = p.stat()
        return digest_json([p.name, st.st_size, st.st_mtime_ns])
    entries = []
    for root, _, files in os.walk(p):
        for f in files:
            st = os.stat(os.path.join(root, f))
            entries.append((os.path.relpath(os.path.join(root, f), p), st.st_size, st.st_mtime_ns))
    return digest_json(sorted(entries))


def key_material(node: StageNode, upstream: Mapping[str, Artifact], external: Mapping[str, str], code: str) -> dict[str, Any]:
    tree = node.cfg.to_dict()
    point = node.point
    return {
        "stage": node.kind,
        "config": {k: config_value(tree, k, node.name) for k in node.stage.config_keys},
        "point": {k: getattr(point, k) for k in node.stage.point_keys} if point else {},
        "upstream": {read: art.digest for read, art in sorted(upstream.items())},
        "external": dict(sorted(external.items())),
        "code": code,
    }


def stage_key(node: StageNode, upstream: Mapping[str, Artifact], external: Mapping[str, str], code: str) -> str:
    return digest_json(key_material(node, upstream, external, code))[:32]


def recorded_outputs(run, node: StageNode) -> dict[str, Artifact] | None:
    """The declared outputs a run recorded, or None when one is unrecorded or gone."""
    tags = run.data.tags
    out: dict[str, Artifact] = {}
    for name in node.stage.writes:
        uri = tags.get(f"spresso.output.{name}.uri")
        digest = tags.get(f"spresso.output.{name}.digest")
        if not uri or not digest or not path_exists(uri):
            return None
        out[name] = Artifact(name, uri, digest, run.info.run_id)
    return out


def _search_pipeline_key(uri: str, experiment_id: str, kind: str, key: str) -> list:
    # The key hashes the stage kind already. No filter on the run's own stage tag: a library
    # function may name its run differently from the DAG's kind (stage1 opens "train_stage1").
    return mlflow_client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PIPELINE_KEY}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )


def lookup(uri: str, experiment_id: str, node: StageNode, key: str) -> tuple[str, dict[str, Artifact]] | None:
    """A finished run of this stage with this key whose outputs still exist: (run_id, outputs)."""
    candidates = []
    if not node.stage.opens_run:
        run = find_finished_run(uri, experiment_id, node.kind, key)
        if run is not None:
            candidates.append(run)
    # Stages that open their own run keep their own spresso.key; the engine's key is a second tag.
    candidates += _search_pipeline_key(uri, experiment_id, node.kind, key)
    for run in candidates:
        outputs = recorded_outputs(run, node)
        if outputs is not None:
            return run.info.run_id, outputs
    return None
