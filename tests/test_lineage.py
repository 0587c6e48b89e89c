"""Lineage records and queries: bundle -> every upstream run and digest; digest -> every run using it."""
from __future__ import annotations

from pipeline_toys import STAGES, toy_config

from spresso.cli import main
from spresso.pipeline import run_pipeline
from spresso.pipeline.compare import compare_runs
from spresso.pipeline.lineage import lineage, runs_using_digest, upstream_lineage


def test_lineage_queries_and_compare(tmp_path, mlflow_env, capsys):
    cfg = toy_config(tmp_path / "w", points=[{"name": "c11", "t": 9, "continuous": True},
                                             {"name": "d96", "t": 100, "K": 4096, "m": 8}])
    res = run_pipeline(cfg, STAGES, progress=False)
    assert res.ok
    out = res.outcomes

    # from a bundle path (a file inside the recorded output works too) to every upstream run
    bundle = out["report@d96"].outputs["bundle"].uri
    kind, rows = lineage(mlflow_env, bundle)
    assert kind == "runs"
    by_stage = {r.instance: r for r in rows}
    assert set(by_stage) == {"report@d96", "finetune@d96", "quantize@d96", "encode@d96", "fit", "make_data"}
    assert by_stage["report@d96"].depth == 0 and by_stage["make_data"].depth == 3  # shortest path: report <- encode <- fit <- make_data
    assert by_stage["fit"].inputs["data"] == (out["make_data"].outputs["data"].uri, out["make_data"].outputs["data"].digest)
    assert by_stage["make_data"].inputs["raw"][0] == str(tmp_path / "w" / "raw")
    assert by_stage["quantize@d96"].upstream == {"z": out["encode@d96"].run_id}
    assert [r.run_id for r in upstream_lineage(mlflow_env, out["fit"].run_id)] == [out["fit"].run_id, out["make_data"].run_id]

    # from a dataset digest to every run that wrote or read it
    data_digest = out["make_data"].outputs["data"].digest
    uses = runs_using_digest(mlflow_env, data_digest[:12])
    assert [(u.role, u.stage, u.run_id) for u in uses] == [("output", "make_data", out["make_data"].run_id),
                                                           ("input", "fit", out["fit"].run_id)]
    z = out["encode@c11"].outputs["z"].digest
    readers = {u.stage for u in runs_using_digest(mlflow_env, z) if u.role == "input"}
    assert readers == {"report"}

    assert main(["lineage", out["quantize@d96"].outputs["codes"].digest, "--tracking-uri", mlflow_env]) == 0
    text = capsys.readouterr().out
    assert "output quantize" in text and "input  finetune" in text
    assert main(["lineage", "0" * 32, "--tracking-uri", mlflow_env]) == 2
    assert capsys.readouterr().err.startswith("error: no run read or wrote")

    # runs compare: a table with the requested metric and the MLflow UI compare link
    cmp = compare_runs(mlflow_env, "toy", ["loss"], stage="fit")
    assert cmp.run_ids == [out["fit"].run_id]
    assert "0.1" in cmp.table.splitlines()[1]
    assert cmp.url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=") and out["fit"].run_id in cmp.url
    assert main(["runs", "compare", "-e", "toy", "-m", "bitrate", "--tracking-uri", mlflow_env]) == 0
    text = capsys.readouterr().out
    assert "bitrate" in text.splitlines()[0] and "96" in text and "compare-runs" in text
    assert main(["runs", "compare", "-e", "nope", "--tracking-uri", mlflow_env]) == 2
