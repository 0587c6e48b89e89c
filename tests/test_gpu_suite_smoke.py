"""`benchmarks/gpu_suite.py --smoke`: the GPU suite's code paths run on a CPU at toy sizes and write every row.

The figures are meaningless here; what is checked is that the script cannot rot: every stage, the
quantizer, precompute and decode rows are in the JSON, and every stage's loss check ran and passed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402  (benchmarks/gpu_suite.py)

STAGES = {"train_audioae", "train_dit", "stage1", "stage3", "qinco2"}


def test_gpu_suite_smoke_writes_every_row(tmp_path):
    out = tmp_path / "tmp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] is True and r["torch"] and r["gpu"] and r["date"] and r["failures"] == []
    assert set(r["stages"]) == STAGES
    for name, row in r["stages"].items():
        assert row["steps_per_s"] > 0 and row["samples_per_s"] > 0 and row["step_seconds"] > 0, name
        assert "peak_memory_GiB" in row
    dit = r["stages"]["train_dit"]
    assert dit["step_TFLOP"] > 0 and "strategy" in dit
    # the DiT step as the paper preset runs it (blocks compiled) and with the other setting, side by side
    assert dit["compiled"] is True and dit["other_compile_setting"]["compiled"] is False
    assert dit["other_compile_setting"]["step_seconds"] > 0 and dit["other_compile_setting"]["step_TFLOP"] == dit["step_TFLOP"]
    assert {c["stage"] for c in r["loss_checks"]} == STAGES and all(c["falls"] for c in r["loss_checks"])
    q = r["quantizer_encode"]
    assert q["qinco2_encode_vectors_per_s"] > 0 and q["faiss_rq_encode_vectors_per_s"] > 0 and q["faiss_backend"]
    assert r["precompute"]["clips_per_s"] > 0 and r["precompute_z"]["clips_per_s"] > 0
    rows = [(d["solver"], d["steps"]) for d in r["decode"]]
    assert [s for s, _ in rows] == ["heun", "dpmpp2m", "dpmpp2m", "dpmpp2m"] and len(set(rows)) == 4
    assert r["decode"][0]["rel_l2_to_reference"] == 0 and all(d["ms_per_clip"] > 0 for d in r["decode"])
    assert "GPU suite" in proc.stdout and "decode 5 s at 1 Hz" in proc.stdout
    # each part was saved as it finished (a run cut short keeps its figures); a finished run removes that file
    assert "decode: done" in proc.stderr and not (tmp_path / "tmp.json.partial").exists()


def test_a_run_cut_short_keeps_the_parts_that_finished(tmp_path, monkeypatch):
    partial = tmp_path / "suite.json.partial"

    def stop(*_args, **_kwargs):
        raise KeyboardInterrupt  # as a timeout's kill would: no JSON at the end

    monkeypatch.setattr(gpu_suite, "bench_precompute", stop)
    try:
        gpu_suite.run_suite(smoke=True, partial=partial)
    except KeyboardInterrupt:
        pass
    r = json.loads(partial.read_text())
    assert set(r["stages"]) == STAGES and r["quantizer_encode"]["qinco2_encode_vectors_per_s"] > 0
    assert "precompute" not in r and "decode" not in r


def test_a_loss_that_does_not_fall_or_a_broken_part_fails_the_run():
    assert gpu_suite.loss_check("x", [1.0, 0.9, 0.8, 0.7])["falls"]
    assert not gpu_suite.loss_check("x", [1.0, 1.0, 1.1, 1.2])["falls"]
    assert not gpu_suite.loss_check("x", [1.0, float("nan"), 0.5, 0.4])["falls"]
    result = {"loss_checks": [gpu_suite.loss_check("stage1", [1.0, 1.0, 1.0, 1.0])],
              "stages": {"train_dit": {"error": "RuntimeError: boom"}}, "quantizer_encode": {}, "precompute": {}, "precompute_z": {}, "decode": []}
    assert gpu_suite.failures(result) == ["stage1: the loss did not fall", "stage train_dit: RuntimeError: boom"]
    assert gpu_suite.gpu_peak("NVIDIA H100 80GB HBM3")[0] == 989 and gpu_suite.gpu_peak("NVIDIA H100 PCIe")[0] == 756
    assert gpu_suite.gpu_peak("NVIDIA H200")[0] == 989 and gpu_suite.gpu_peak("NVIDIA A100-SXM4-40GB")[0] == 312


def test_profile_mode_reports_batch_scaling_and_top_ops(tmp_path):
    """`--profile` (where the DiT step's and QINCo2 encode's time goes) runs its code paths at toy sizes."""
    out = tmp_path / "prof.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--profile", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prof = json.loads(out.read_text())["profile"]
    for mode in ("eager", "compiled"):
        rows = prof["dit"][mode]
        assert rows["batch_2"]["samples_per_s"] > 0 and rows["batch_4"]["samples_per_s"] > 0, mode
        assert rows["profile"]["wall_seconds"] > 0 and rows["profile"]["top"], mode
    assert prof["qinco2_encode"]["vectors"] > 0 and prof["qinco2_encode"]["top"]
    assert "DiT eager: samples/s by batch" in proc.stdout and "QINCo2 encode of" in proc.stdout
    assert not (tmp_path / "prof.json.partial").exists()  # a finished run removes its per-part file
