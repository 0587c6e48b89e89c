"""MLflow for every stage: one run per stage, with its config, metrics and lineage.

Every stage calls :func:`stage_run`. It creates the run in the driver with the
``MlflowClient`` (explicit run ids, no global "active run"), so a Ray Train worker can log to
the same run by id (:meth:`StageRun.attach`) and a restarted attempt never leaves an orphan.

Lineage recorded on each run (DESIGN.md §3):
- the config (params, flattened, and ``config.yaml`` as an artifact);
- inputs: ``mlflow`` dataset inputs with their digests, and tags ``spresso.input.<name>.*``;
- outputs: tags ``spresso.output.<name>.uri`` / ``.digest`` (MLflow has no dataset-output API);
- upstream runs: tags ``spresso.upstream.<stage>`` = run id;
- the stage name and cache key: ``spresso.stage``, ``spresso.key``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from spresso import __version__
from spresso.config import load_config
from spresso.core.errors import SpressoError

TAG_STAGE = "spresso.stage"
TAG_KEY = "spresso.key"
TAG_CODE = "spresso.code_version"
TAG_NOTE = "spresso.note"  # one line a stage leaves for the pipeline summary (e.g. the qinco2 stage losing to RQ)


def tracking_uri(workdir: str, configured: str | None = None) -> str:
    """The MLflow store: the configured URI, else MLFLOW_TRACKING_URI, else SQLite in the workdir."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if "://" in workdir:
        raise SpressoError(
            f"workdir {workdir} is remote: set MLFLOW_TRACKING_URI (or runtime.mlflow_tracking_uri) to an MLflow server"
        )
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def local_store_path(uri: str) -> Path | None:
    """The file or folder behind a local store URI (``sqlite:///…``, ``file:…``, a bare path); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    if "://" in uri or uri.startswith("sqlite:") or uri.split(":")[0] in ("databricks", "databricks-uc", "uc"):
        return None
    return Path(uri)


def existing_tracking_uri(workdir: str, configured: str | None = None, source: str = "the config",
                          hint: str = "give --set workdir=DIR, MLFLOW_TRACKING_URI or --tracking-uri") -> str:
    """The MLflow store a read-only command queries, found the way :func:`tracking_uri` finds it, but never
    created: MLflow's client makes a new empty SQLite file (and the workdir) for a missing one, so a query run
    from the wrong folder would leave a stray store and answer "no runs". A missing local store is a one-line
    error saying where it looked."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = configured or env
    if uri:
        where = "--tracking-uri / runtime.mlflow_tracking_uri" if configured else "MLFLOW_TRACKING_URI"
        path = local_store_path(uri)
        if path is not None and not path.exists():
            raise SpressoError(f"no MLflow store at {path.resolve()} (from {where})")
        return uri
    if "://" in workdir:
        raise SpressoError(
            f"workdir {workdir} is remote: set MLFLOW_TRACKING_URI (or runtime.mlflow_tracking_uri) to an MLflow server"
        )
    db = Path(workdir).resolve() / "mlflow.db"
    if not db.is_file():
        rel = "" if Path(workdir).is_absolute() else f", relative to {Path.cwd()}"
        raise SpressoError(f"no MLflow store at {db} (workdir '{workdir}' of {source}{rel}): run from the folder the "
                           f"pipeline ran in, or {hint}")
    return f"sqlite:///{db}"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The library's version plus a digest of its Python sources.

    A content digest rather than the git commit: editing docs, tests or configs must not
    invalidate every cached stage, and an uncommitted change to the library must.
    """

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


def mlflow_client(uri: str):
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, workdir: str) -> str:
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        # Keep artifacts in the workdir (a folder or a bucket) rather than in ./mlruns of whatever cwd;
        # a tracking server decides for itself.
        artifact_location = (f"{workdir.rstrip('/')}/mlartifacts" if "://" in workdir
                             else (Path(workdir).resolve() / "mlartifacts").as_uri())
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


@dataclass
class StageRun:
    """A handle on one stage's MLflow run; picklable, so it can travel to Ray workers."""

    run_id: str
    tracking_uri: str
    experiment_id: str
    stage: str
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def attach(cls, run_id: str, tracking_uri: str) -> "StageRun":
        run = mlflow_client(tracking_uri).get_run(run_id)
        return cls(run_id, tracking_uri, run.info.experiment_id, run.data.tags.get(TAG_STAGE, ""))

    @property
    def client(self):
        return mlflow_client(self.tracking_uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_input(self, name: str, uri: str, digest: str, context: str = "input") -> None:
        """Record a dataset this stage read: an MLflow dataset input plus plain tags."""

        try:
            with warnings.catch_warnings():
                # Local paths match two equivalent registered sources; MLflow picks one and warns.
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                source = resolve_dataset_source(uri)
        except Exception:
            source = HTTPDatasetSource(uri)
        ds = MetaDataset(source=source, name=name, digest=digest[:36])
        entity = DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        try:
            self.client.log_inputs(self.run_id, datasets=[entity])
        except Exception:
            # Two stages logging the same dataset at once (parallel branches) race to insert its
            # row; the loser's retry finds the row and links it.
            time.sleep(0.2)
            self.client.log_inputs(self.run_id, datasets=[entity])
        self.set_tags({f"spresso.input.{name}.uri": uri, f"spresso.input.{name}.digest": digest})

    def log_output(self, name: str, uri: str, digest: str) -> None:
        """Record an output: MLflow has no dataset-output API, so tags carry uri and digest."""
        self.outputs[name] = {"uri": uri, "digest": digest}
        self.set_tags({f"spresso.output.{name}.uri": uri, f"spresso.output.{name}.digest": digest})

    def log_upstream(self, upstream: Mapping[str, str]) -> None:
        self.set_tags({f"spresso.upstream.{k}": v for k, v in upstream.items()})


def find_finished_run(uri: str, experiment_id: str, stage: str, key: str):
    """The newest FINISHED run of ``stage`` with cache key ``key``, or None."""
    runs = mlflow_client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STAGE}` = '{stage}' and tags.`{TAG_KEY}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Any,
    *,
    key: str | None = None,
    upstream: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> Iterator[StageRun]:
    """Open (or resume) the MLflow run of one stage; FINISHED on success, FAILED on error.

    ``config`` is a :class:`~spresso.config.SpressoConfig`: its workdir, runtime settings and
    full contents are used and logged.
    """
    uri = tracking_uri(config.workdir, config.runtime.mlflow_tracking_uri)
    exp_id = ensure_experiment(uri, config.runtime.experiment, config.workdir)
    client = mlflow_client(uri)
    tags = {TAG_STAGE: stage, TAG_CODE: code_version()}
    if key:
        tags[TAG_KEY] = key
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags.update(extra_tags or {})
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        run = StageRun(resume_run_id, uri, exp_id, stage)
    else:
        created = client.create_run(exp_id, run_name=run_name or stage, tags=tags)
        run = StageRun(created.info.run_id, uri, exp_id, stage)
        cfg_dict = config.to_dict()
        run.log_params(flatten(cfg_dict))
        run.log_text(config.to_yaml(), "config.yaml")
    if upstream:
        run.log_upstream(upstream)
    try:
        yield run
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):
            run.set_tags({"spresso.error": f"{type(err).__name__}: {err}"[:5000]})
            client.set_terminated(run.run_id, status=status)
        raise
    else:
        client.set_terminated(run.run_id, status="FINISHED")


# The artifact folder of an export run that holds the bundle.
BUNDLE_ARTIFACT = "bundle"


def registry_tracking_uri(configured: str | None = None) -> str:
    """The store a ``models:/`` or ``runs:/`` URI is looked up in: the given URI, else MLFLOW_TRACKING_URI, else
    the demo's store (``work/demo/mlflow.db`` under the current folder, where `make demo` registers its bundles).
    Never MLflow's own default (``./mlflow.db``), which would be created empty wherever the call runs."""
    return existing_tracking_uri(load_config("demo").workdir, configured, source="configs/demo.yaml",
                                 hint="set MLFLOW_TRACKING_URI or pass tracking_uri=")


def download_bundle(uri: str, dst: str | Path | None = None, tracking_uri: str | None = None) -> str:
    """A local copy of the bundle behind ``models:/NAME@alias``, ``models:/NAME/<version>`` or ``runs:/<id>/<path>``,
    looked up in :func:`registry_tracking_uri` (``tracking_uri`` first)."""

    store = registry_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    dst = str(dst or tempfile.mkdtemp(prefix="spresso-bundle-"))
    fetch = functools.partial(mlflow.artifacts.download_artifacts, dst_path=dst, tracking_uri=store, registry_uri=store)
    try:
        if uri.startswith("models:/"):
            ref = uri[len("models:/"):].strip("/")
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            elif "/" in ref:
                name, version = ref.rsplit("/", 1)
                mv = client.get_model_version(name, version)
            else:
                raise SpressoError(f"{uri}: give a version or an alias (models:/NAME/3 or models:/NAME@champion)")
            if mv.run_id:
                return fetch(run_id=mv.run_id, artifact_path=BUNDLE_ARTIFACT)
            return fetch(artifact_uri=mv.source)
        return fetch(artifact_uri=uri)
    except SpressoError:
        raise
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpressoError(f"{uri}: cannot fetch the bundle from MLflow at {store} ({msg[:300]})") from None
