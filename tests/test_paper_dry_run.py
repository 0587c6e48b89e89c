"""`spresso pipeline run paper --dry-run` starts nothing, and refuses an invalid sweep in one line.

(The DAG, resources and GPU-hour estimate it prints are checked in test_pipeline_dag.py.)
"""
from __future__ import annotations

import inspect

import fsspec
import pytest

from spresso.cli import main
from spresso.config import load_config
from spresso.core import storage
from spresso.pipeline import build_graph
from spresso.pipeline.registry import registry


def _forbid(monkeypatch, target: str, name: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run called {target}.{name}")

    monkeypatch.setattr(f"{target}.{name}", refuse)


def test_dry_run_starts_no_ray_no_run_and_touches_no_storage(monkeypatch, tmp_path, capsys):
    """The paper config as shipped (workdir s3://spresso-paper/work) validates and plans without opening,
    listing or writing anything: every fsspec entry point and every storage helper refuses to be called."""
    import mlflow
    import ray  # noqa: F401  (so ray.init exists to forbid)

    for target, name in (("ray", "init"), ("spresso.runtime.ray_runtime", "init_ray"), ("spresso.runtime.tracking", "stage_run"),
                         ("mlflow", "start_run"), ("mlflow.tracking.MlflowClient", "create_run"),
                         ("spresso.pipeline", "run_pipeline")):
        _forbid(monkeypatch, target, name)
    for name in ("open", "open_files", "filesystem", "get_fs_token_paths", "url_to_fs", "get_filesystem_class"):
        if hasattr(fsspec, name):
            _forbid(monkeypatch, "fsspec", name)
    _forbid(monkeypatch, "fsspec.core", "url_to_fs")
    # Every storage helper that reaches a filesystem (all but the pure path functions).
    touching = [name for name, fn in vars(storage).items() if inspect.isfunction(fn) and fn.__module__ == storage.__name__
                and not name.startswith("_") and name not in ("is_url", "absolute", "join")]
    assert {"filesystem", "open_file", "exists", "list_files", "write_bytes"} <= set(touching)
    for name in touching:
        _forbid(monkeypatch, "spresso.core.storage", name)
    monkeypatch.chdir(tmp_path)  # an s3:// path mistaken for a local one would be created here
    assert main(["pipeline", "run", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing started" in out and "train_dit" in out and "GPU-hours" in out
    assert not list(tmp_path.iterdir())
    assert mlflow.active_run() is None
    cfg = load_config("paper")
    assert cfg.workdir == "s3://spresso-paper/work" and storage.is_url(cfg.workdir)
    outputs = [uri for node in build_graph(cfg, registry()).nodes.values() for uri in node.outputs.values()]
    assert outputs and all(str(uri).startswith("s3://spresso-paper/work/") for uri in outputs), outputs[:3]


@pytest.mark.parametrize("override, message", [
    ("pipeline.points=[{name: x, t: 9, K: 1024}]", "discrete: set K and m"),
    ("dit.train.nope=1", "nope"),
])
def test_dry_run_rejects_an_invalid_sweep_in_one_line(override, message, capsys):
    assert main(["pipeline", "run", "paper", "--dry-run", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
