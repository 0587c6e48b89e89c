"""Paths inside a submitted Ray job: a relative workdir or output is refused with a hint, because it
would name Ray's temporary copy of --working-dir (the README's `ray job submit` examples failed, or wrote
into that copy); absolute paths, URLs and inputs shipped with the job are taken as given."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from spresso.cli import main
from spresso.cli.jobpaths import RAY_JOB_ENV, ray_job_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_ray_job(monkeypatch, tmp_path):
    """This process as a submitted job's entrypoint sees it: Ray's env var, and a copy of the working dir as cwd."""
    monkeypatch.setenv(RAY_JOB_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"},
                                                "metadata": {"job_submission_id": "raysubmit_T", "job_name": "x"}}))
    copy = tmp_path / "_ray_pkg_x"
    (copy / "clips").mkdir(parents=True)
    monkeypatch.chdir(copy)
    return copy


def test_outside_a_job_nothing_is_checked(monkeypatch):
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    assert ray_job_id() is None


@pytest.mark.parametrize("argv, what", [
    (["precompute-latents", "--config", "demo"], "workdir 'work/demo'"),
    (["pipeline", "status", "demo"], "workdir 'work/demo'"),
    (["shard", "--input", "{tmp}/sfx", "--output", "work/demo/shards", "--set", "workdir={tmp}/w"],
     "output 'work/demo/shards'"),
    (["pipeline", "run", "demo", "--input", "missing", "--set", "workdir={tmp}/w", "--dry-run"], "input 'missing'"),
])
def test_relative_paths_in_a_job_are_refused_with_a_hint(in_ray_job, capsys, argv, what):
    assert main([a.format(tmp=in_ray_job.parent) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {what} is relative, and this runs in Ray job raysubmit_T")
    value = what.split("'")[1]
    example = f"--set workdir=$PWD/{value}" if what.startswith("workdir") else f"$PWD/{value}"
    assert f"absolute path (e.g. {example})" in err and "URL (s3://" in err
    assert list(in_ray_job.iterdir()) == [in_ray_job / "clips"]  # nothing written into the copy


def test_absolute_paths_urls_and_shipped_inputs_pass(in_ray_job, capsys):
    # a relative input that came with the job (clips/) is fine; the workdir is absolute; the dry run starts nothing
    assert main(["pipeline", "run", "demo", "--input", "clips", "--set", f"workdir={in_ray_job.parent / 'w'}",
                 "--dry-run"]) == 0
    assert "dry run: nothing started" in capsys.readouterr().out
    assert main(["config", "--set", "workdir=s3://bucket/w"]) == 0  # printing a config touches no workdir
    assert main(["export", "--set", "workdir=s3://b/w", "--out", "bundles/d96", "--stage", "/nope"]) == 2
    assert "relative" not in capsys.readouterr().err  # export's --out is relative to the workdir, not the copy


def _submit(address: str, env: dict, *entrypoint: str) -> tuple[bool, str]:
    sid = f"spresso-paths-{uuid.uuid4().hex[:8]}"
    cmd = ["ray", "job", "submit", f"--address={address}", f"--submission-id={sid}", "--working-dir", ".", "--",
           *entrypoint]
    deadline = time.time() + 90
    while True:  # the dashboard answers before its job agent is ready: retry until it accepts
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        log = done.stdout + done.stderr
        if "No available agent" not in log or time.time() > deadline:
            return f"Job '{sid}' succeeded" in log, log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readme_job_with_relative_paths_fails_in_one_line_on_a_real_ray(ray_head, tmp_path):
    address, env = ray_head
    env = {**env, "PYTHONPATH": str(REPO)}
    # The README's example as it stood: a relative workdir (the demo's) inside the job.
    ok, log = _submit(address, env, "python", "pipelines/precompute_latents.py", "--config", "demo")
    assert not ok and "error: workdir 'work/demo' is relative, and this runs in Ray job" in log, log[-3000:]
    assert "Traceback" not in log and "no AudioAE checkpoint" not in log
    ok, log = _submit(address, env, "python", "pipelines/shard_audio.py", "--config", "demo", "--input", str(tmp_path),
                      "--output", "work/demo/shards", "--set", f"workdir={tmp_path / 'w'}")
    assert not ok and "error: output 'work/demo/shards' is relative" in log, log[-3000:]
    assert not (tmp_path / "w").exists()
