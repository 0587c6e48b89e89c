"""Paths inside a submitted Ray job mean what they mean at the prompt, or the command stops.

`ray job submit --working-dir . -- python pipelines/<stage>.py ...` runs the entrypoint in Ray's
temporary copy of the working directory (on whichever node runs the job), not in the folder the
command was typed in. A relative ``work/demo`` then names a folder inside that copy: the stage
finds none of the earlier stages' outputs, and what it writes vanishes with the copy.

Refused rather than resolved: the job cannot know the folder it was submitted from (Ray ships a zip
of it and keeps no path), and on a real cluster that folder is on another machine anyway. So a
relative workdir, or a relative output, is a one-line error saying what works instead: an absolute
path (a local `ray start --head` sees the same disk), a folder every node shares, or a URL. A
relative *input* that exists in the copy is fine: it was shipped with the job (a config, a small
folder of audio), like the code.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from spresso.config import load_config
from spresso.core.errors import SpressoError

# Set by Ray's job supervisor in the environment of a submitted job's entrypoint (and so of its child
# processes); JSON with the job's runtime env and metadata (``job_submission_id``). Plain Ray drivers
# and Ray's worker processes do not have it.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Argument names (argparse dests) that hold local paths, by direction; RELATIVE_TO_WORKDIR: a command's
# arguments that are relative to the workdir, not to the current folder (checked with the workdir).
OUTPUTS = ("output", "out", "json_out")
INPUTS = ("input", "inputs", "vectors", "stage1", "stage", "quantizer", "audioae", "shards", "dit", "checkpoint",
          "folder", "captions", "model")
RELATIVE_TO_WORKDIR = {"export": ("out",)}
# Commands that only print and never touch the workdir.
NO_WORKDIR = ("config",)


def ray_job_id() -> str | None:
    """The submission id of the Ray job this process runs in (``"?"`` when Ray did not say), else None."""
    raw = os.environ.get(RAY_JOB_ENV)
    if not raw:
        return None
    try:
        meta = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return "?"
    return str(meta.get("job_submission_id") or "?")


def is_local_relative(path: str) -> bool:
    """Not a URL (s3://, models:/, runs:/) and not absolute."""
    return ":/" not in path and not os.path.isabs(os.path.expanduser(path))


def refuse(what: str, value: str, job: str) -> SpressoError:
    example = f"--set workdir=$PWD/{value}" if what == "workdir" else f"$PWD/{value}"
    return SpressoError(
        f"{what} '{value}' is relative, and this runs in Ray job {job}, inside Ray's temporary copy of "
        f"--working-dir ({os.getcwd()}): give an absolute path (e.g. {example}), a folder every node shares, "
        "or a URL (s3://...)")


def check_job_paths(args: argparse.Namespace) -> None:
    """In a submitted Ray job: refuse a relative workdir, a relative output, and a relative input that is not
    in the job's copy of the working directory. Outside a job: nothing."""
    job = ray_job_id()
    if job is None:
        return
    command = getattr(args, "command", None)
    exempt = RELATIVE_TO_WORKDIR.get(command, ())
    for dest, output in [(d, True) for d in OUTPUTS] + [(d, False) for d in INPUTS]:
        values = getattr(args, dest, None)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str) or dest in exempt or not is_local_relative(value):
                continue
            if output or not Path(value).exists():
                raise refuse("output" if output else "input", value, job)
    pipeline_config = getattr(args, "pipeline_config", None)
    config = pipeline_config or getattr(args, "config", None)
    # lineage / runs compare with --tracking-uri read only the store; a pipeline's status also reads the workdir
    if config is None or command in NO_WORKDIR or (getattr(args, "tracking_uri", None) and not pipeline_config):
        return
    cfg = load_config(config, getattr(args, "overrides", []))
    if is_local_relative(cfg.workdir):
        raise refuse("workdir", cfg.workdir, job)
