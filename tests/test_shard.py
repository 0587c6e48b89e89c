"""spresso shard: the pieces (cutting, keys, splits, captions, loudness, listing, planning) and the Ray job end to end."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyloudnorm as pyln
import pytest
import soundfile as sf
import webdataset
from mlflow.tracking import MlflowClient

from spresso.audio.io import AudioError
from spresso.audio.synth import synth_corpus
from spresso.cli import main
from spresso.config import load_config
from spresso.core.errors import SpressoError
from spresso.data.clips import (
    ClipSettings,
    clip_spans,
    integrated_loudness,
    process_source,
)
from spresso.data.reader import (
    iter_clips,
    read_dataset_info,
    read_failures,
    read_manifest,
    read_rejects,
    shard_paths,
)
from spresso.data.shard import plan_units, shard
from spresso.data.sources import (
    assign_split,
    caption_from_name,
    discover,
    job_sources,
    key_prefix,
    listing_jobs,
    read_sidecar,
    sources_table,
)

FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


# ------------------------------------------------------------------------------ pieces
def test_clip_spans_pad_and_min_seconds():
    assert clip_spans(12, 5, 2) == [(0, 5), (5, 5), (10, 2)]
    assert clip_spans(11, 5, 2) == [(0, 5), (5, 5)]  # remainder 1 < min: dropped
    assert clip_spans(3, 5, 2) == [(0, 3)]  # short file: one padded clip
    assert clip_spans(1, 5, 2) == []
    assert clip_spans(10, 5, 2) == [(0, 5), (5, 5)]


def test_keys_stable_unique_and_dot_free():
    a = key_prefix("sfx/Door.Slams/big.door.v2.wav")
    assert "." not in a and a == key_prefix("sfx/Door.Slams/big.door.v2.wav")
    assert a != key_prefix("sfx/Door.Slams/big.door.v2.flac")  # same stem, other file: other key
    assert a.startswith("door_slams_big_door_v2-")


def test_splits_are_stable_and_follow_fractions():
    ids = [f"lib/folder{i % 7}/file{i}.wav" for i in range(4000)]
    splits = [assign_split(s, FRACTIONS) for s in ids]
    assert splits == [assign_split(s, FRACTIONS) for s in ids]
    share = {k: splits.count(k) / len(ids) for k in FRACTIONS}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["valid"] - 0.1) < 0.02
    assert {assign_split(s, {"train": 1.0, "valid": 0.0, "test": 0.0}) for s in ids} == {"train"}


def test_captions_from_names_and_sidecars():
    assert caption_from_name("sfx/Big_Doors/doorSlam02.wav") == "big doors door slam"
    assert caption_from_name("sfx/123.wav") == "sfx"
    assert read_sidecar("  a dog\n barks  ", ".txt") == "a dog barks"
    assert read_sidecar(json.dumps({"text": "rain"}), ".json") == "rain"
    assert read_sidecar("not json", ".json") is None


def test_loudness_matches_pyloudnorm():
    rng = np.random.default_rng(0)
    for x in (0.1 * rng.standard_normal(240000), 0.5 * np.sin(2 * np.pi * 1000 * np.arange(240000) / 48000),
              np.concatenate([0.3 * rng.standard_normal(100000), np.zeros(140000)])):
        # pyloudnorm's filter is an approximation of BS.1770's; ours uses the standard's design.
        assert abs(integrated_loudness(x, 48000) - pyln.Meter(48000).integrated_loudness(x)) < 0.1
    assert integrated_loudness(np.zeros(48000), 48000) == float("-inf")


def _wav(wave, sr, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, wave.T if wave.ndim == 2 else wave, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_process_source_cuts_resamples_pads_and_drops_silence():
    sr = 44100
    t = np.arange(int(12.2 * sr)) / sr
    x = 0.2 * np.sin(2 * np.pi * 300 * t)
    x[int(4.8 * sr): int(10.2 * sr)] = 0  # the second 5 s clip is digital silence (margin: resampler ringing)
    stereo = np.stack([x, x])
    clips, silent = process_source(_wav(stereo, sr), key_prefix="p-abc", source_id="lib/a.wav", caption="hum",
                                   settings=ClipSettings())
    assert silent == 1 and [c.key for c in clips] == ["p-abc-00000", "p-abc-00002"]
    last = clips[1]
    wave, rate = sf.read(io.BytesIO(last.flac), dtype="float32")
    assert rate == 48000 and wave.shape == (240000,)
    assert last.meta["valid_samples"] == round(2.2 * 48000) and last.meta["offset_seconds"] == 10.0
    assert np.all(wave[last.meta["valid_samples"] + 10:] == 0)  # zero padding
    assert (last.meta["source_rate"], last.meta["source_channels"], last.meta["caption"]) == (sr, 2, "hum")
    with pytest.raises(AudioError, match="digital silence"):
        process_source(_wav(np.zeros(48000), 48000), key_prefix="s", source_id="s", caption="", settings=ClipSettings())
    with pytest.raises(AudioError, match="too short"):
        process_source(_wav(0.1 * np.ones(480), 48000), key_prefix="s", source_id="s", caption="", settings=ClipSettings())


def test_loudness_normalisation_hits_target_without_clipping():
    x = 0.01 * np.random.default_rng(1).standard_normal(5 * 48000)
    clips, _ = process_source(_wav(x, 48000, "FLOAT"), key_prefix="n", source_id="n", caption="",
                              settings=ClipSettings(loudness_normalize=True, target_lufs=-20.0, bit_depth=24))
    wave, _ = sf.read(io.BytesIO(clips[0].flac), dtype="float32")
    assert abs(integrated_loudness(wave, 48000) - (-20.0)) < 0.2 and np.abs(wave).max() < 1.0
    assert sf.info(io.BytesIO(clips[0].flac)).subtype == "PCM_24"


# ------------------------------------------------------------------------------ end to end
def _plant_bad_files(root: Path) -> dict[str, str]:
    bad = root / "bad"
    bad.mkdir()
    good = _wav(0.2 * np.sin(np.arange(96000) / 7.0), 48000)
    (bad / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (bad / "empty.flac").write_bytes(b"")
    (bad / "truncated.wav").write_bytes(good[: len(good) // 2])
    (bad / "notes.ogg").write_text("not audio at all\n" * 50)
    (bad / "nan.wav").write_bytes(_wav(np.array([0.1, np.nan] * 24000, np.float32), 48000, "FLOAT"))
    (bad / "silent.wav").write_bytes(_wav(np.zeros(96000), 48000))
    (bad / "zero.wav").write_bytes(_wav(np.zeros(0), 48000))
    return {"corrupt.wav": "not decodable", "empty.flac": "empty file", "truncated.wav": "truncated",
            "notes.ogg": "not decodable", "nan.wav": "NaN", "silent.wav": "digital silence", "zero.wav": "zero-length"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "lib"
    files = [f for f in synth_corpus(root, minutes=1.0, seed=5) if f.seconds >= 0.5]
    assert len(files) >= 4
    # Caption sources: a .json sidecar, a CSV row, and nothing (words from the names).
    f0, f1, f2 = (root / f.path for f in files[:3])
    f0.with_suffix(".txt").unlink()
    f0.with_suffix(".json").write_text(json.dumps({"caption": "json sidecar caption"}))
    f1.with_suffix(".txt").unlink()
    f2.with_suffix(".txt").unlink()
    csv = root.parent / "captions.csv"
    csv.write_text(f"path,caption\n{f1.relative_to(root)},\"csv caption, quoted\"\n")
    planted = _plant_bad_files(root)
    return root, csv, files, planted


def _cfg(tmp_path, **over):
    sets = [f"workdir={tmp_path}", "data.clips_per_shard=3"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(None, sets)  # built-in defaults: independent of edits to the presets


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def _tar_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/shard-*.tar"))}


@pytest.mark.slow
def test_shard_end_to_end(ray_local, mlflow_env, corpus, tmp_path):
    src, csv, files, planted = corpus
    cfg = _cfg(tmp_path)
    out = tmp_path / "shards"
    res = shard([str(src)], cfg, output=str(out), captions_csv=str(csv), progress=False)
    assert not res.up_to_date and res.clips > 0 and res.shards >= 3

    # the manifest is the dataset of per-tar pieces; manifest.parquet holds the same rows, in order
    manifest = read_manifest(str(out))
    pieces = sorted((out / ".manifest").glob("*.parquet"))
    assert [p.stem for p in pieces] == sorted(f"{t.parent.name}-{t.stem}" for t in out.glob("*/shard-*.tar"))
    assert pq.read_table(out / "manifest.parquet").equals(manifest)
    assert manifest.column_names[:4] == ["key", "split", "shard", "source"]
    info0 = read_dataset_info(str(out))
    assert info0["format_version"] == 2 and info0["failures"] == 0 and read_failures(str(out)).num_rows == 0

    # manifest and tars agree, clip by clip, in order

    rows = manifest.to_pylist()
    for split in ("train", "valid", "test"):
        paths = shard_paths(str(out), split)
        clips = list(iter_clips(paths))
        mrows = [r for r in rows if r["split"] == split]
        assert [c["key"] for c in clips] == [r["key"] for r in mrows]
        for c, r in zip(clips, mrows):
            assert c["wave"].shape == (240000,) and c["valid_samples"] == r["valid_samples"] and c["caption"] == r["caption"]
            assert r["shard"] in {p[len(str(out)) + 1:] for p in paths}
            assert "." not in c["key"]
        for p in paths:  # members of a key adjacent, .flac then .json
            names = tarfile.open(p).getnames()
            assert names == [n for k in dict.fromkeys(n.split(".")[0] for n in names) for n in (f"{k}.flac", f"{k}.json")]

    # our users' own tools read the shards: the WebDataset library and Ray Data, sample for sample
    train = shard_paths(str(out), "train")
    train_keys = [r["key"] for r in rows if r["split"] == "train"]
    samples = list(webdataset.WebDataset(train, shardshuffle=False))
    assert [s["__key__"] for s in samples] == train_keys
    assert all(json.loads(s["json"])["caption"] for s in samples)
    first = sf.read(io.BytesIO(samples[0]["flac"]), dtype="float32")[0]
    assert first.shape == (240000,)
    ray_rows = ray_local.data.read_webdataset(train, decoder=None).take_all()
    assert sorted(r["__key__"] for r in ray_rows) == sorted(train_keys)
    assert {bytes(r["flac"]) for r in ray_rows} == {s["flac"] for s in samples}

    # one source never crosses splits
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_source.values())

    # captions: json sidecar > csv > names; .txt sidecars elsewhere
    cap = {r["source"].split("/", 1)[1]: r["caption"] for r in rows}
    assert cap[files[0].path] == "json sidecar caption"
    assert cap[files[1].path] == "csv caption, quoted"
    assert cap[files[2].path] == caption_from_name("lib/" + files[2].path)
    assert cap[files[3].path] == files[3].caption

    # planted bad files: rejected with reasons, the rest sharded
    rejects = {Path(r["path"]).name: r["reason"] for r in read_rejects(str(out)).to_pylist()}
    for name, reason in planted.items():
        assert reason in rejects[name], (name, rejects.get(name))
    info = read_dataset_info(str(out))
    assert info["digest"] == res.digest and info["clips"] == len(rows) and info["rejects"] == len(rejects)

    # MLflow lineage
    run = MlflowClient(mlflow_env).get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["spresso.output.shards.digest"] == res.digest
    assert run.data.metrics["clips"] == len(rows) and run.data.metrics["rejects"] == len(rejects)
    assert len(run.inputs.dataset_inputs) == 1

    # a rerun is a no-op that rewrites nothing
    before = _snapshot(out)
    again = shard([str(src)], cfg, output=str(out), captions_csv=str(csv), progress=False)
    assert again.up_to_date and again.digest == res.digest and _snapshot(out) == before

    # one CPU gives the same dataset, byte for byte
    out1 = tmp_path / "one_cpu"
    solo = shard([str(src)], cfg, output=str(out1), captions_csv=str(csv), progress=False, num_cpus=1, track=False)
    assert solo.digest == res.digest and _tar_bytes(out1) == _tar_bytes(out)

    # an interrupted run (some tars and records missing, a half-written temp tar, no manifest) resumes
    tars = sorted(out1.glob("*/shard-*.tar"))
    for t in tars[:2]:
        t.unlink()
    for rec in sorted((out1 / ".progress").glob("*.json"))[-2:]:
        rec.unlink()
    (out1 / "train" / ".shard-000000.tar.tmp-dead").write_bytes(b"half")
    for name in ("dataset.json", "manifest.parquet"):
        (out1 / name).unlink()
    resumed = shard([str(src)], cfg, output=str(out1), captions_csv=str(csv), progress=False, track=False)
    assert not resumed.up_to_date and 2 <= resumed.processed_units <= 4
    assert resumed.digest == res.digest and _tar_bytes(out1) == _tar_bytes(out)
    assert not list(out1.rglob("*.tmp-*"))


def test_clear_errors_for_missing_input_and_unwritable_output(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    with pytest.raises(SpressoError, match="input not found"):
        shard([str(tmp_path / "nope")], cfg, output=str(tmp_path / "o"), track=False)
    audio = tmp_path / "in"
    audio.mkdir()
    (audio / "a.wav").write_bytes(_wav(0.1 * np.ones(48000), 48000))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpressoError, match="not writable"):
        shard([str(audio)], cfg, output=str(blocker / "out"), track=False)
    with pytest.raises(SpressoError, match="no audio files"):
        discover([str(_empty(tmp_path))], FRACTIONS)
    assert main(["shard", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), "--set", f"workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: input not found") and "\n" not in err


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    (d / "readme.md").write_text("no audio here")
    return d


def test_discover_globs_and_explicit_files(tmp_path):
    lib = tmp_path / "lib"
    (lib / "a").mkdir(parents=True)
    for name in ("a/x.wav", "a/y.flac", "b.ogg", "a/x.txt", "notes.md"):
        (lib / name).write_bytes(b"1")
    ids = sorted(s.source_id for s in discover([str(lib)], FRACTIONS))
    assert ids == ["lib/a/x.wav", "lib/a/y.flac", "lib/b.ogg"]
    srcs = {s.source_id: s for s in discover([str(lib / "a" / "*.wav")], FRACTIONS)}
    assert list(srcs) == ["a/x.wav"] and srcs["a/x.wav"].sidecars == (str(lib / "a" / "x.txt"),)
    # a file named explicitly is tried whatever its extension (and then rejected if not audio)
    assert [s.source_id for s in discover([str(lib / "notes.md")], FRACTIONS)] == ["lib/notes.md"]


def test_listing_jobs_split_folders_and_planning_is_order_free(tmp_path):
    lib = tmp_path / "lib"
    for name in ("top.wav", "a/x.wav", "a/deep/y.wav", "b/z.flac", "b/w.wav", "b/notes.md"):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(b"1")
    jobs = listing_jobs([str(lib), str(lib)])  # the same root twice: every file reached twice
    assert [(j["kind"], Path(j["folder"]).name) for j in jobs[:3]] == [("top", "lib"), ("tree", "a"), ("tree", "b")]
    tables = [sources_table(job_sources(j, {"train": 1.0, "valid": 0.0, "test": 0.0})) for j in jobs]
    estimates = [np.full(t.num_rows, 2) for t in tables]
    units, table = plan_units("train", tables, estimates, ClipSettings(), clips_per_shard=4)
    ids = table["source_id"].to_pylist()
    assert sorted(ids) == sorted(s.source_id for s in discover([str(lib)], {"train": 1.0, "valid": 0.0, "test": 0.0}))
    assert table["key_prefix"].to_pylist() == sorted(table["key_prefix"].to_pylist()) and len(set(ids)) == len(ids) == 5
    assert [(u.start, u.stop, u.est_clips) for u in units] == [(0, 2, 4), (2, 4, 4), (4, 5, 2)]
    again, _ = plan_units("train", tables[::-1], estimates[::-1], ClipSettings(), clips_per_shard=4)
    assert again == units  # whoever lists what, in whatever order: the same units and fingerprints
    # a folder inside an input, given too: each file once, with the id the later input gives it
    nested = [sources_table(job_sources(j, {"train": 1.0, "valid": 0.0, "test": 0.0}))
              for j in listing_jobs([str(lib), str(lib / "b")])]
    _, table = plan_units("train", nested, [np.full(t.num_rows, 2) for t in nested], ClipSettings(), 4)
    assert sorted(table["source_id"].to_pylist()) == ["b/w.wav", "b/z.flac", "lib/a/deep/y.wav", "lib/a/x.wav", "lib/top.wav"]
