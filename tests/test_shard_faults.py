"""`spresso shard` and I/O errors: retried by Ray, recorded as failures (not rejects) when they
persist, tried again by the next run; a corrupt file is still a reject; the driver only ever
receives small per-unit descriptors, never rows."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def _wav(path: Path, seconds: float, freq: float) -> None:
    t = np.arange(int(seconds * 48000)) / 48000
    buf = io.BytesIO()
    sf.write(buf, 0.2 * np.sin(2 * np.pi * freq * t), 48000, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue())


@pytest.mark.slow
def test_io_errors_are_retried_then_recorded_as_failures_and_retried_next_run(tmp_path):
    corpus = tmp_path / "lib"
    (corpus / "a").mkdir(parents=True)
    for i in range(4):
        _wav(corpus / "a" / f"tone_{i}.wav", 6.0, 200 + 50 * i)
    _wav(corpus / "a" / "flaky_once.wav", 6.0, 700)  # two I/O errors, then reads
    _wav(corpus / "a" / "dead_link.wav", 6.0, 900)  # I/O errors until healed
    (corpus / "a" / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ, "FLAKY_FS_STATE": str(state),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "shard_faults_probe.py"), str(corpus), str(tmp_path)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(next(line[6:] for line in proc.stdout.splitlines() if line.startswith("FACTS ")))
    first, second, third, fourth = facts["first"], facts["second"], facts["third"], facts["fourth"]

    # the flaky file failed twice, was retried by Ray and sharded; it is neither a reject nor a failure
    assert facts["reads"]["flaky_once.wav.reads"] == 3
    assert "flaky_once.wav" in first["sources"] and "flaky_once.wav" not in first["rejects"]
    assert "flaky_once.wav" not in first["failed"]
    # the corrupt file is a reject with its reason, never retried
    assert "not decodable" in first["rejects"]["corrupt.wav"] and "corrupt.wav.reads" not in facts["reads"]
    # the dead file: 1 + io_retries attempts, then one last salvage read; a failure, not a reject
    assert facts["reads"]["dead_link.wav.reads"] == 4
    assert list(first["failed"]) == ["dead_link.wav"] and "ConnectionError" in first["failed"]["dead_link.wav"]
    assert "dead_link.wav" not in first["rejects"] and "dead_link.wav" not in first["sources"]
    assert first["failures"] == first["info_failures"] == 1
    assert {f"tone_{i}.wav" for i in range(4)} <= set(first["sources"])

    # a rerun does not call it up to date while failures remain; once readable, the file is sharded
    assert not second["up_to_date"] and second["failures"] == 1 and second["processed"] >= 1
    assert not third["up_to_date"] and third["failures"] == 0 and third["failed"] == {}
    assert "dead_link.wav" in third["sources"] and third["clips"] > first["clips"] and third["digest"] != first["digest"]
    assert fourth["up_to_date"] and fourth["digest"] == third["digest"]

    # the driver received per-unit descriptors and summaries only: each well under 1 KB
    kinds = {kind for kind, _ in facts["received"]}
    sizes = [size for _, size in facts["received"]]
    assert kinds <= {"dict", "Unit", "UnitResult", "NoneType"}, kinds  # no table, array or list of rows
    assert sizes and max(sizes) < 1024, sorted(sizes)[-5:]
