"""`spresso shard` on real game sounds (../shared/data/sfx-dev: 8-48 kHz, mono/stereo, WAV/Ogg/oga).

A subset (a few files from every collection, plus planted bad files) keeps it within the CI budget.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spresso.config import load_config
from spresso.data.reader import (
    read_dataset_info,
    read_manifest,
    read_rejects,
    shard_paths,
)
from spresso.data.shard import shard

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.sfxdev]


@pytest.fixture(scope="module")
def subset(sfx_dev, tmp_path_factory):
    root = tmp_path_factory.mktemp("sfx") / "sfx-dev"
    picked = []
    for coll in sorted(p for p in sfx_dev.iterdir() if p.is_dir()):
        audio = sorted(p for p in coll.rglob("*") if p.suffix.lower() in (".wav", ".ogg", ".oga"))
        picked += audio[:: max(1, len(audio) // 6)][:6]
    for p in picked:
        dest = root / p.relative_to(sfx_dev)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
        for side in (p.with_suffix(".txt"), p.with_suffix(".json")):
            if side.exists():
                shutil.copy(side, dest.with_suffix(side.suffix))
    bad = root / "planted"
    bad.mkdir()
    real_wav = next(p for p in picked if p.suffix == ".wav").read_bytes()
    (bad / "cut_off.wav").write_bytes(real_wav[: len(real_wav) // 3])
    (bad / "garbage.ogg").write_bytes(np.random.default_rng(1).bytes(3000))
    (bad / "empty.oga").write_bytes(b"")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(48000 * 2, np.float32), 48000, format="WAV")
    (bad / "silence.wav").write_bytes(buf.getvalue())
    planted = {"cut_off.wav": "truncated", "garbage.ogg": "not decodable", "empty.oga": "empty file", "silence.wav": "digital silence"}
    return root, planted


def _cfg(tmp_path):
    return load_config(None, [f"workdir={tmp_path}", "data.clips_per_shard=4"])


def test_sfx_dev_shards(ray_local, subset, tmp_path):
    root, planted = subset
    ref_out = tmp_path / "ref"
    res = shard([str(root)], _cfg(tmp_path), output=str(ref_out), progress=False, track=False)
    assert res.files >= 20 and res.clips >= 20

    # every clip in the tars: 48 kHz mono FLAC of exactly 240000 samples; tars and manifest agree
    rows = read_manifest(str(ref_out)).to_pylist()
    seen = []
    for split in ("test", "train", "valid"):  # the manifest's order: split, then key
        for path in shard_paths(str(ref_out), split):
            with tarfile.open(path) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".flac"):
                        info = sf.info(io.BytesIO(tar.extractfile(m).read()))
                        assert (info.samplerate, info.channels, info.frames) == (48000, 1, 240000), m.name
                        seen.append((split, m.name[:-5], path[len(str(ref_out)) + 1:]))
    assert seen == [(r["split"], r["key"], r["shard"]) for r in rows]
    assert {r["source_rate"] for r in rows} >= {22050, 44100} and {r["source_channels"] for r in rows} == {1, 2}

    # planted bad files are rejected with their reasons; no real file is
    rejects = {Path(r["path"]).name: r["reason"] for r in read_rejects(str(ref_out)).to_pylist()}
    for name, reason in planted.items():
        assert reason in rejects.get(name, ""), (name, rejects.get(name))
    assert all(Path(r["path"]).parent.name == "planted" or "too short" in r["reason"]
               for r in read_rejects(str(ref_out)).to_pylist())

    # a rerun is a no-op
    again = shard([str(root)], _cfg(tmp_path), output=str(ref_out), progress=False, track=False)
    assert again.up_to_date and again.digest == res.digest

    # a run killed halfway (SIGKILL of the driver), then rerun, ends with the same shards and digest
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spresso.cli", "shard", "--input", str(root), "--output", str(out), "--no-progress",
         "--set", f"workdir={tmp_path}", "--set", "data.clips_per_shard=4"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / ".progress").glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    killed_midway = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists() or not killed_midway
    resumed = shard([str(root)], _cfg(tmp_path), output=str(out), progress=False, track=False)
    assert resumed.digest == res.digest
    assert read_dataset_info(str(out))["tars"] == read_dataset_info(str(ref_out))["tars"]
    tars = lambda d: {p.relative_to(d): p.read_bytes() for p in sorted(d.glob("*/shard-*.tar"))}  # noqa: E731
    assert tars(out) == tars(ref_out)
    assert not list(out.rglob("*.tmp-*"))
