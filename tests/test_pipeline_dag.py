"""The stage DAG: derived order, branches per operating point, selection, errors, dry run, picture."""
from __future__ import annotations

import pytest
from pipeline_toys import STAGES, toy_config

from spresso.config import load_config
from spresso.core.errors import SpressoError
from spresso.pipeline import Stage, build_graph
from spresso.pipeline.plan import describe
from spresso.pipeline.registry import registry
from spresso.pipeline.render import layers, render_graph, to_dot


def test_order_and_branches_follow_reads_and_writes(tmp_path):
    g = build_graph(toy_config(tmp_path), STAGES)
    pos = {n: i for i, n in enumerate(g.order)}
    for producer, consumer, _ in g.edges():
        assert pos[producer] < pos[consumer]
    # one branch per point; the continuous one has no quantizer and its report drops the optional read
    assert [n for n in g.order if n.endswith("@c11")] == ["encode@c11", "report@c11"]
    assert g.parents("report@c11") == ["encode@c11"]
    assert g.parents("report@d96") == ["encode@d96", "finetune@d96"]
    assert g.parents("encode@d1k") == ["fit"]  # branch reads resolve to the shared producer
    assert g.nodes["quantize@d96"].upstream == {"z": ("encode@d96", "z")}  # ... and to their own branch first
    assert g.nodes["encode@d1k"].outputs["z"].endswith("enc/d1k/z.json")
    assert ("fit", "encode@d96", "fit.model") in g.edges()
    assert len(g) == 2 + 2 + 4 + 4


def test_selection(tmp_path):
    g = build_graph(toy_config(tmp_path), STAGES)
    assert g.select(only=["quantize"]) == {"quantize@d1k", "quantize@d96"}
    assert g.select(from_=["finetune@d96"]) == {"finetune@d96", "report@d96"}
    assert g.select(until=["encode@c11"]) == {"make_data", "fit", "encode@c11"}
    assert g.select(from_=["fit"], until=["@c11"]) == {"fit", "encode@c11", "report@c11"}
    with pytest.raises(SpressoError, match="no stage matches 'nope'"):
        g.select(only=["nope"])


def test_cycle_and_missing_producer_are_one_line_errors(tmp_path):
    cfg = toy_config(tmp_path, points=[])
    cfg.pipeline.shared = ["a", "b", "c"]
    cfg.pipeline.branch = []
    cyc = [Stage("a", print, reads={"x": "c.out"}, writes={"out": "a"}),
           Stage("b", print, reads={"x": "a.out"}, writes={"out": "b"}),
           Stage("c", print, reads={"x": "b.out"}, writes={"out": "c"})]
    with pytest.raises(SpressoError) as err:
        build_graph(cfg, cyc)
    assert str(err.value) == "cycle in the stage graph: a -> b -> c -> a"
    missing = [Stage("a", print, writes={"out": "a"}), Stage("b", print, reads={"x": "a.other"}, writes={"out": "b"}),
               Stage("c", print, writes={"out": "c"})]
    with pytest.raises(SpressoError, match=r"^stage 'b' reads 'a.other' but no stage in the pipeline writes it$"):
        build_graph(cfg, missing)
    cfg.pipeline.shared = ["a", "zzz"]
    with pytest.raises(SpressoError, match="unknown stage 'zzz'"):
        build_graph(cfg, missing)


def test_branch_overrides_are_validated(tmp_path):
    cfg = toy_config(tmp_path, points=[{"name": "p", "t": 9, "K": 256, "m": 4, "overrides": {"audioae.steps": 77}}])
    g = build_graph(cfg, STAGES)
    assert g.nodes["encode@p"].cfg.audioae.steps == 77 and g.nodes["fit"].cfg.audioae.steps == 10
    bad = toy_config(tmp_path, points=[{"name": "p", "t": 9, "K": 256, "m": 4, "overrides": {"audioae.nope": 1}}])
    with pytest.raises(SpressoError, match="unknown config key 'audioae.nope'"):
        build_graph(bad, STAGES)
    with pytest.raises(SpressoError, match="discrete: set K and m"):
        toy_config(tmp_path, points=[{"name": "p", "t": 9, "K": 256}])


def gpu_time_line(out: str) -> float:
    line = next(li for li in out.splitlines() if li.startswith("estimated GPU time:"))
    return float(line.split()[3])


def test_paper_dry_run_lists_every_branch_and_gpu_hours(capsys):
    from spresso.cli import main

    assert main(["pipeline", "run", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    cfg = load_config("paper")
    g = build_graph(cfg, registry())
    assert len(g) == 4 + 4 * 4 + 3 * 6  # shared + continuous branches + discrete branches
    assert "qinco2@d96" in out and "qinco2@c11" not in out and "stage3@d300" in out
    # By hand from configs/paper.yaml (units x s/unit x GPUs x workers / 3600; s/unit: the assumed A100 table),
    # corpus 4860 h = 3 499 200 clips, 3 429 216 in train. Shared: audioae 400000*.5*8 + precompute_latents
    # ceil(3499200/64/8)=6835*.25*8 + dit 400000*.6*16 = 5 453 670 GPU-s. Each of the 7 branches: stage1
    # 200000*.5*8 + precompute_z 6835*.25*8 + evaluate 500 clips*3 samplers*10*1 = 828 670. Discrete: qinco2
    # 10 epochs of 3429216*ceil(500/t) frames // 8000 (t=9: 240040 steps, t=100: 21430 twice)*.1 = 28 290, stage3
    # 3 x 40*(3429216//32)=4286520*.5*8 = 51 438 240. Sum / 3600 = 17422.5.
    assert "estimated GPU time: 17422 A100-40GB GPU-hours" in out
    assert "0.096 kbps" in out and "1.33 kbps" in out and "dry run: nothing started" in out
    # Doubling stage 1's steps adds 7 branches x 200000 steps x 0.5 s x 8 GPUs = 1555.6 GPU-hours.
    assert main(["pipeline", "run", "paper", "--dry-run", "--set", "dae.stage1.steps=400000"]) == 0
    assert gpu_time_line(capsys.readouterr().out) == 18978


def test_picture_without_graphviz(tmp_path):
    g = build_graph(toy_config(tmp_path), STAGES)
    png = tmp_path / "dag.png"
    assert render_graph(g, png, {"fit": "done"}, engine="matplotlib") == "matplotlib"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dot = to_dot(g)
    assert '"encode@d96" -> "quantize@d96"' in dot and dot.count("->") == len(g.edges())
    assert layers(g)["report@d96"] == 5
    real = registry()
    assert "not built yet" not in describe(build_graph(load_config("demo"), real))  # every real stage is wired
    from dataclasses import replace

    missing = {**real, "evaluate": replace(real["evaluate"], fn="spresso.pipeline.registry:no_such_stage")}
    assert "not built yet" in describe(build_graph(load_config("demo"), missing))


def test_relative_inputs_resolve_in_the_workdir_first_then_where_typed(tmp_path, monkeypatch):
    from spresso.pipeline.registry import input_folder

    here, work = tmp_path / "here", tmp_path / "here" / "work"
    (work / "corpus").mkdir(parents=True)
    (tmp_path / "shared" / "sfx").mkdir(parents=True)
    monkeypatch.chdir(here)
    cfg = load_config("demo", [f"workdir={work}"])
    assert input_folder(cfg, "corpus") == str((work / "corpus").resolve())  # make demo's synthesised corpus
    assert input_folder(cfg, "../shared/sfx") == str((tmp_path / "shared" / "sfx").resolve())  # typed on the command line
    assert input_folder(cfg, "missing") == str((work / "missing").resolve())  # fails later under the workdir's name
    assert input_folder(cfg, "s3://bucket/sfx") == "s3://bucket/sfx"


def test_training_rows_are_one_adapter_over_their_declarations():
    """Every training stage is a row over its driver declaration (the generic adapter), named as it runs in MLflow."""
    from spresso.pipeline.registry import TrainingAdapter
    from spresso.train.driver import TrainingStage

    rows = {name: s for name, s in registry().items() if isinstance(s.fn, TrainingAdapter)}
    assert set(rows) == {"train_audioae", "train_dit", "stage1", "qinco2", "stage3"}
    names = {name: s.fn.resolve().name for name, s in rows.items()}
    assert all(isinstance(s.fn.resolve(), TrainingStage) for s in rows.values())
    assert names == {"train_audioae": "train_audioae", "train_dit": "train_dit", "stage1": "train_stage1",
                     "qinco2": "qinco2", "stage3": "train_stage3"}
    assert all(s.opens_run and s.uses_ray for s in rows.values())


def test_stage3_reads_its_upstream_where_the_dag_says_not_in_its_own_point_folder(tmp_path):
    """Two points with the same t share one stage-1 run: the second point's stage 3 must find it (and
    its z cache) where that run wrote them, not under its own point's folder."""
    import torch

    from spresso.core.checkpoint import save_checkpoint
    from spresso.core.errors import SpressoError
    from spresso.pipeline.stage import Artifact, StageContext
    from spresso.train.stage3 import find_inputs

    row = registry()["stage3"].fn
    ctx = StageContext("stage3@b", "stage3", None, {
        "stage1": Artifact("checkpoint", "/runs/a/stage1", "d1", "r1"), "z": Artifact("z_cache", "/runs/a/z.zarr", "d2", "r2"),
        "quantizer": Artifact("checkpoint", "/runs/b/qinco2", "d3", "r3")}, {}, "k", None, None)
    assert row.options(ctx) == {"stage1": "/runs/a/stage1", "z": "/runs/a/z.zarr", "quantizer": "/runs/b/qinco2"}

    cfg = load_config("demo", [f"workdir={tmp_path}/work", "dae.t=9", "dae.points=[{t: 9, K: 256, M: 8, m: 4}]"])
    elsewhere = save_checkpoint(tmp_path / "a" / "stage1", {"w": torch.zeros(1)}, kind="toy", config={})
    with pytest.raises(SpressoError, match="no stage-1 checkpoint at .*work"):
        find_inputs(cfg)  # its own folder has none
    with pytest.raises(SpressoError, match=f"no quantizer at {tmp_path}/q"):
        find_inputs(cfg, stage1=str(elsewhere), quantizer=str(tmp_path / "q"))  # found stage 1 where it was passed
