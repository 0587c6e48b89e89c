"""The dry run's GPU-hour estimate is derived from the config the stages run with, and says which figures are assumed."""
from __future__ import annotations

import json

import pytest

from spresso.cli import main
from spresso.config import load_config
from spresso.core.errors import SpressoError
from spresso.pipeline import build_graph
from spresso.pipeline.cost import corpus_clips, stage_work
from spresso.pipeline.cost_table import load_cost_table
from spresso.pipeline.plan import estimates
from spresso.pipeline.registry import registry
from spresso.train.stage3 import total_steps


def _graph(*overrides):
    return build_graph(load_config("paper", list(overrides)), registry())


def test_step_counts_come_from_the_stage_settings():
    g = _graph()
    cfg = g.nodes["stage3@d96"].cfg
    _, train = corpus_clips(cfg)
    assert train == int(4860 * 3600 / 5 * 0.98)
    s3 = stage_work(g.nodes["stage3@d96"])
    assert s3.units == total_steps(cfg.dae.stage3, train) == 40 * (train // 32) and s3.workers == 8 and s3.gpus == 1
    dit = stage_work(g.nodes["train_dit"])
    assert (dit.units, dit.workers) == (400000, 16)
    assert stage_work(g.nodes["qinco2@d1320"]).units == 10 * (train * 56 // 8000)  # t = 9: 56 z frames per clip
    assert stage_work(g.nodes["qinco2@d96"]).units == 10 * (train * 5 // 8000)


def test_changing_a_step_count_changes_the_estimate_proportionally():
    base, doubled = estimates(_graph()), estimates(_graph("dae.stage1.steps=400000"))
    for n in base:
        ratio = 2.0 if n.startswith("stage1@") else 1.0
        assert doubled[n].gpu_hours == pytest.approx(base[n].gpu_hours * ratio), n
    halved = estimates(_graph("dae.stage3.epochs=20"))
    assert halved["stage3@d96"].gpu_hours == pytest.approx(base["stage3@d96"].gpu_hours / 2)


def test_assumed_figures_are_flagged_and_a_gpu_suite_json_replaces_them(tmp_path, capsys):
    assert main(["pipeline", "run", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s/unit ASSUMED" in out and "train_dit" in out.split("s/unit ASSUMED")[1]
    suite = {"suite": "gpu_suite", "smoke": False, "gpu": "NVIDIA H200", "date": "2026-11-29T00:00:00+00:00",
             "stages": {"train_dit": {"step_seconds": 0.3}}, "precompute": {"batch_seconds": 0.1}}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(suite))
    gpu, measured = load_cost_table(path)
    assert gpu == "NVIDIA H200" and not measured["train_dit"].assumed and "2026-11-29" in measured["train_dit"].source
    est = estimates(_graph(), measured)
    assert est["train_dit"].gpu_hours == pytest.approx(400000 * 0.3 * 16 / 3600)
    assert est["stage1@c11"].cost.assumed and not est["precompute_latents"].cost.assumed
    assert main(["pipeline", "run", "paper", "--dry-run", "--cost-table", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the total mixes two GPU types" in out
    assert "s/unit measured (gpu_suite suite.json (2026-11-29T00:00:00+00:00, NVIDIA H200)): precompute_latents, train_dit" in out
    path.write_text(json.dumps({**suite, "smoke": True}))
    with pytest.raises(SpressoError, match="--smoke"):
        load_cost_table(path)


def test_an_unset_corpus_size_is_reported_as_unknown_not_as_zero_hours(capsys):
    assert main(["pipeline", "run", "workstation", "--dry-run", "--set", "pipeline.inputs=[/data/my-sfx]"]) == 0
    out = capsys.readouterr().out
    assert "dataset: size unknown (reads /data/my-sfx)" in out and "0 h (pipeline.corpus_hours)" not in out
    assert main(["pipeline", "run", "paper", "--dry-run"]) == 0
    assert "dataset: 4860 h (pipeline.corpus_hours)" in capsys.readouterr().out
