"""Seconds per step of each GPU stage, per GPU type, and where every figure comes from.

A figure is either *assumed* (a hand estimate, listed below, flagged in the dry run) or *measured*:
read from a ``benchmarks/gpu_suite.py`` JSON (``--cost-table FILE``), whose source names the file,
its date and its GPU. Units are those of :mod:`spresso.pipeline.cost`: one optimiser step at the
per-worker batch for training stages, one batch of the actor's ``batch_size`` clips for the caches,
one clip (all its decodes) for evaluate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spresso.core.errors import SpressoError

ASSUMED = "assumed"


@dataclass(frozen=True)
class StepCost:
    seconds: float
    source: str  # "assumed: ..." or "gpu_suite FILE (DATE, GPU)" or "config ..."

    @property
    def assumed(self) -> bool:
        return self.source.startswith(ASSUMED)


# Hand estimates (not measured anywhere) for A100-40GB at configs/paper.yaml's per-worker batches.
_A100 = {"train_audioae": 0.5, "precompute_latents": 0.25, "train_dit": 0.6, "stage1": 0.5, "precompute_z": 0.25,
         "qinco2": 0.1, "stage3": 0.5, "evaluate": 10.0}
ASSUMED_TABLE: dict[str, dict[str, float]] = {"A100-40GB": _A100, "A100-80GB": _A100}

# gpu_suite JSON -> stage: where its seconds per unit are.
_SUITE_STAGES = ("train_audioae", "train_dit", "stage1", "stage3", "qinco2")


def assumed_costs(gpu_type: str) -> dict[str, StepCost]:
    if gpu_type not in ASSUMED_TABLE:
        raise SpressoError(f"no assumed step times for GPU type {gpu_type!r} (known: {', '.join(ASSUMED_TABLE)}); "
                           f"measure with benchmarks/gpu_suite.py and pass --cost-table")
    return {stage: StepCost(s, f"{ASSUMED}: hand estimate for {gpu_type}") for stage, s in ASSUMED_TABLE[gpu_type].items()}


def load_cost_table(path: str | Path) -> tuple[str, dict[str, StepCost]]:
    """(GPU name, measured costs) from a gpu_suite JSON; one-line errors for anything else."""
    p = Path(path)
    try:
        r = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise SpressoError(f"--cost-table {p}: cannot read it as JSON ({str(err).splitlines()[0]})") from None
    if r.get("suite") != "gpu_suite":
        raise SpressoError(f"--cost-table {p}: not a benchmarks/gpu_suite.py result")
    if r.get("smoke"):
        raise SpressoError(f"--cost-table {p}: a --smoke run (toy sizes on a CPU) measures nothing")
    source = f"gpu_suite {p.name} ({r.get('date')}, {r.get('gpu')})"
    costs = {name: StepCost(float(r["stages"][name]["step_seconds"]), source) for name in _SUITE_STAGES if name in r.get("stages", {})}
    for stage, key in (("precompute_latents", "precompute"), ("precompute_z", "precompute_z")):
        if (r.get(key) or {}).get("batch_seconds"):
            costs[stage] = StepCost(float(r[key]["batch_seconds"]), source)
    return str(r.get("gpu")), costs


def step_costs(gpu_type: str, measured: dict[str, StepCost] | None = None) -> dict[str, StepCost]:
    """The assumed table for ``gpu_type`` with the measured figures in place of their stages'."""
    return {**assumed_costs(gpu_type), **(measured or {})}
