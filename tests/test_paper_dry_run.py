"""`spresso pipeline run paper --dry-run` starts nothing, and refuses an invalid sweep in one line.

(The DAG, resources and GPU-hour estimate it prints are checked in test_pipeline_dag.py.)
"""
from __future__ import annotations

import pytest

from spresso.cli import main


def _forbid(monkeypatch, target: str, name: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run called {target}.{name}")

    monkeypatch.setattr(f"{target}.{name}", refuse)


def test_dry_run_starts_no_ray_no_run_and_writes_nothing(monkeypatch, tmp_path, capsys):
    import mlflow
    import ray  # noqa: F401  (so ray.init exists to forbid)

    for target, name in (("ray", "init"), ("spresso.runtime.ray_runtime", "init_ray"), ("spresso.runtime.tracking", "stage_run"),
                         ("mlflow", "start_run"), ("mlflow.tracking.MlflowClient", "create_run"),
                         ("spresso.pipeline", "run_pipeline")):
        _forbid(monkeypatch, target, name)
    work = tmp_path / "work"  # local instead of s3:// so "nothing written" can be checked
    assert main(["pipeline", "run", "paper", "--dry-run", "--set", f"workdir={work}"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing started" in out and "train_dit" in out and "GPU-hours" in out
    assert not work.exists() and not list(tmp_path.iterdir())
    assert mlflow.active_run() is None


@pytest.mark.parametrize("override, message", [
    ("pipeline.points=[{name: x, t: 9, K: 1024}]", "discrete: set K and m"),
    ("dit.train.nope=1", "nope"),
])
def test_dry_run_rejects_an_invalid_sweep_in_one_line(override, message, capsys):
    assert main(["pipeline", "run", "paper", "--dry-run", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
