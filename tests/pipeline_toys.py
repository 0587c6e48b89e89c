"""Toy stages for the pipeline tests: the real DAG's shape, tiny files instead of models.

A stage fails when ``<workdir>/fail-<instance>`` exists (works in threads and Ray workers).
"""
from __future__ import annotations

import json
from pathlib import Path

from spresso.config import config_from_dict
from spresso.config.pipeline import StageResources
from spresso.core.digest import digest_file
from spresso.pipeline import Stage, StageResult


def _maybe_fail(cfg, ctx):
    if (Path(cfg.workdir) / f"fail-{ctx.stage}").exists():
        raise RuntimeError(f"injected failure in {ctx.stage}")


def _write(ctx, name, payload) -> Path:
    out = Path(ctx.outputs[name])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, sort_keys=True))
    return out


def _read(ctx, name):
    return json.loads(Path(ctx.inputs[name].uri).read_text())


def make_data(cfg, ctx):
    _maybe_fail(cfg, ctx)
    files = sorted(p.name for p in Path(ctx.inputs["raw"].uri).iterdir())
    _write(ctx, "data", {"files": files, "rate": cfg.data.sample_rate})
    # the engine digests what was written when the stage does not log it


def fit(cfg, ctx):
    _maybe_fail(cfg, ctx)
    data = _read(ctx, "data")
    out = _write(ctx, "model", {"data": data, "steps": cfg.audioae.steps})
    ctx.run.log_metrics({"loss": 1.0 / cfg.audioae.steps})
    ctx.run.log_output("model", str(out), digest_file(out))  # logged by the stage itself


def encode(cfg, ctx):
    _maybe_fail(cfg, ctx)
    out = _write(ctx, "z", {"model": _read(ctx, "model"), "t": ctx.point.t})
    return {"z": digest_file(out)}


def quantize(cfg, ctx):
    _maybe_fail(cfg, ctx)
    out = _write(ctx, "codes", {"z": _read(ctx, "z"), "K": ctx.point.K})
    return StageResult(outputs={"codes": (str(out), digest_file(out))})


def finetune(cfg, ctx):
    _maybe_fail(cfg, ctx)
    _write(ctx, "decoder", {"codes": _read(ctx, "codes"), "m": ctx.point.m})


def report(cfg, ctx):
    _maybe_fail(cfg, ctx)
    got = {k: _read(ctx, k) for k in ("z", "decoder") if k in ctx.inputs}
    ctx.run.log_metrics({"bitrate": ctx.point.bitrate_bps()})
    _write(ctx, "bundle", {"inputs": sorted(got), "point": ctx.point.name})


STAGES = [
    Stage("make_data", make_data, external={"raw": "raw"}, writes={"data": "data/data.json"},
          config_keys=("data.sample_rate",), resources=StageResources(cpus=1)),
    Stage("fit", fit, reads={"data": "make_data.data"}, writes={"model": "fit/model.json"},
          config_keys=("audioae.steps",), resources=StageResources(cpus=1, gpus=1, workers=2, steps=100, step_seconds=36)),
    Stage("encode", encode, reads={"model": "fit.model"}, writes={"z": "enc/{point}/z.json"}, point_keys=("t",)),
    Stage("quantize", quantize, reads={"z": "encode.z"}, writes={"codes": "q/{point}/codes.json"},
          point_keys=("t", "K"), discrete_only=True),
    Stage("finetune", finetune, reads={"codes": "quantize.codes"}, writes={"decoder": "ft/{point}/dec.json"},
          point_keys=("m",), discrete_only=True),
    Stage("report", report, reads={"z": "encode.z", "decoder": "finetune.decoder?"},
          writes={"bundle": "bundle/{point}/bundle.json"}),
]


def toy_config(workdir: Path, points=None, **pipeline):
    raw = workdir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (raw / f"clip{i}.wav").write_bytes(bytes([i]) * 10)
    tree = {
        "workdir": str(workdir),
        "runtime": {"experiment": "toy"},
        "audioae": {"steps": 10},
        "pipeline": {
            "shared": ["make_data", "fit"],
            "branch": ["encode", "quantize", "finetune", "report"],
            "points": points if points is not None else [
                {"name": "c11", "t": 9, "continuous": True},
                {"name": "d1k", "t": 9, "K": 1024, "m": 12},
                {"name": "d96", "t": 100, "K": 4096, "m": 8},
            ],
            "executor": "local",
            "max_parallel": 2,
            **pipeline,
        },
    }
    return config_from_dict(tree)
