"""The evaluation harness: sets, baseline adapters, caching, the table/plot/HTML outputs, the CLI."""
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from spresso.cli import main
from spresso.config import SpressoConfig, load_config
from spresso.config.audioae import AudioAEModelConfig
from spresso.core.checkpoint import save_checkpoint
from spresso.core.errors import SpressoError
from spresso.eval.adapter import roundtrip
from spresso.eval.baselines import build_adapter, parse_spec, spec_fingerprint
from spresso.eval.baselines.dae import load_rq, save_rq
from spresso.eval.baselines.neural import load_dac
from spresso.eval.harness import Harness, HarnessSettings, run_evaluation
from spresso.eval.listening import trials_from_folder
from spresso.eval.sets import from_folder, sample_indices
from spresso.models.audioae import AudioAE
from spresso.quant import FaissRQ

torch.set_num_threads(1)


def _tone(seconds=2.0, sr=48000, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 330 * t) * np.exp(-t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


# -- sets -----------------------------------------------------------------------------------------
def test_sample_indices_are_seeded_sorted_and_bounded():
    a, b = sample_indices(100, 10, 3), sample_indices(100, 10, 3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and a.size == 10
    assert not np.array_equal(a, sample_indices(100, 10, 4))
    assert sample_indices(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(SpressoError):
        sample_indices(0, 3, 0)


def test_folder_set_is_deterministic_five_second_clips(sfx_dev):
    a = from_folder(sfx_dev, 3, seed=1)
    b = from_folder(sfx_dev, 3, seed=1)
    assert [c.key for c in a.clips] == [c.key for c in b.clips] and a.digest == b.digest
    assert all(c.wave.shape == (240000,) and c.wave.dtype == np.float32 and 0 < c.valid_samples <= 240000 for c in a.clips)
    assert all("." not in c.key for c in a.clips)
    assert from_folder(sfx_dev, 3, seed=2).digest != a.digest
    with pytest.raises(SpressoError, match="does not exist"):
        from_folder(sfx_dev / "nope", 3)


# -- adapters --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kbps,sr", [(6, 48000), (6, 16000), (12, 48000)])
def test_opus_roundtrip_length_alignment_and_bitrate(kbps, sr):
    rng = np.random.default_rng(0)
    env = np.repeat(rng.uniform(0, 1, 40) ** 2, 2400).astype(np.float32)  # bursts: not periodic, unambiguous lag
    x = (0.3 * env * rng.standard_normal(env.size)).astype(np.float32)
    a = build_adapter(f"opus:{kbps}" + ("" if sr == 48000 else f",sr={sr}"))
    assert a.available() == (True, "") and a.info.sample_rate == sr and a.info.nominal_bitrate_bps == kbps * 1000
    rt = roundtrip(a, x)
    assert rt.reconstruction.shape == x.shape and rt.reconstruction.dtype == np.float32
    # the whole Ogg file, headers included: near the target, never wildly off
    assert 0.5 * kbps * 1000 < rt.actual_bitrate_bps < 1.6 * kbps * 1000
    # aligned: without the 312-sample pre-skip applied the best lag would be ~312; SILK leaves a few samples
    lags = range(-400, 401, 2)
    corr = [float(np.dot(np.roll(rt.reconstruction, -k)[2000:-2000], x[2000:-2000])) for k in lags]
    assert abs(list(lags)[int(np.argmax(corr))]) <= 8


def test_opus_rejects_bad_settings():
    with pytest.raises(SpressoError, match="Opus runs at"):
        build_adapter("opus:6,sr=44100")
    with pytest.raises(SpressoError, match="bitrate"):
        build_adapter("opus:0.1")


def test_specs_parse_and_absent_codecs_say_why(tmp_path):
    assert parse_spec("rq:/a,audioae=/b,rq=/c,m=4") == ("rq", "/a", {"audioae": "/b", "rq": "/c", "m": "4"})
    for bad in ("nokind", "zip:1", "opus:6,bogus=1", "opus:6,sr"):
        with pytest.raises(SpressoError):
            build_adapter(bad)
    dac = build_adapter(f"dac:{tmp_path}/weights.pth")
    ok, why = dac.available()
    assert not ok and ("not installed" in why or "not found" in why)
    assert dac.info.nominal_bitrate_bps == pytest.approx(1722.7, abs=0.1)  # 2 x 10 bits x 44100/512
    sq = build_adapter(f"sqcodec:{tmp_path}")
    assert not sq.available()[0] and sq.info.nominal_bitrate_bps == 750
    assert not build_adapter(f"audioae:{tmp_path}/none").available()[0]
    assert not build_adapter(f"spresso:{tmp_path}/none.bundle").available()[0]
    assert not build_adapter(f"stage1:{tmp_path},audioae={tmp_path}").available()[0]
    # the cache key follows the files a spec names
    (tmp_path / "w.pth").write_bytes(b"1")
    f1 = spec_fingerprint(f"dac:{tmp_path}/w.pth")
    (tmp_path / "w.pth").write_bytes(b"22")
    assert spec_fingerprint(f"dac:{tmp_path}/w.pth") != f1


def test_rq_ablation_quantizer_saves_and_reloads_exactly(tmp_path):
    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    rq = FaissRQ(8, 3, 16, beam=4, train_type="default").train(x)
    back = load_rq(save_rq(rq, tmp_path / "rq"))
    codes = rq.encode(x[:50], 2)
    assert np.array_equal(back.encode(x[:50], 2), codes)
    np.testing.assert_allclose(back.decode(codes), rq.decode(codes), rtol=1e-5, atol=1e-5)


def test_dac_loader_builds_from_metadata_and_loads_strictly(tmp_path, monkeypatch):
    """DAC itself cannot be installed here (audiotools needs torchaudio): exercise our loader against
    a stand-in module exposing DAC's documented constructor, and the real checkpoint layout."""

    class FakeDAC(torch.nn.Module):
        def __init__(self, latent_dim=4, sample_rate=44100):
            super().__init__()
            self.sample_rate, self.hop_length = sample_rate, 512
            self.proj = torch.nn.Linear(latent_dim, latent_dim)

    monkeypatch.setitem(sys.modules, "dac", types.SimpleNamespace(DAC=FakeDAC))
    torch.manual_seed(0)
    ref = FakeDAC(latent_dim=6)
    torch.save({"state_dict": ref.state_dict(), "metadata": {"kwargs": {"latent_dim": 6}}}, tmp_path / "w.pth")
    model = load_dac(tmp_path / "w.pth")
    assert torch.equal(model.proj.weight, ref.proj.weight)
    torch.save({"state_dict": ref.state_dict(), "metadata": {"kwargs": {"latent_dim": 5}}}, tmp_path / "bad.pth")
    with pytest.raises(SpressoError, match="do not match"):
        load_dac(tmp_path / "bad.pth")


# -- end to end ------------------------------------------------------------------------------------
def _tiny_audioae(path: Path) -> Path:
    cfg = SpressoConfig()
    cfg.audioae.model = AudioAEModelConfig(width=32, blocks=1, intermediate=64)
    torch.manual_seed(0)
    model = AudioAE.from_config(cfg.audioae.model)
    save_checkpoint(path, model.state_dict(), kind="audioae", config=cfg.to_dict())
    return path


@pytest.mark.slow
def test_eval_end_to_end_table_plot_html_and_cache_reuse(sfx_dev, tmp_path, mlflow_env, ray_local):
    ae = _tiny_audioae(tmp_path / "ae")
    cfg = load_config("demo", [f"workdir={tmp_path}/work", "eval.n_boot=10", "eval.example_clips=1", "eval.seed=3"])

    codecs = {"ae": f"audioae:{ae}", "opus6": "opus:6", "dac": f"dac:{tmp_path}/dac.pth"}
    result, run_id = run_evaluation(cfg, codecs, folder=str(sfx_dev), num_clips=3, progress=False)
    out = result.out_dir
    table = (out / "table.md").read_text()
    assert "| AudioAE |" in table and "| Opus | 6 kbps |" in table and "not available: " in table
    assert (out / "table.csv").read_text().count("\n") == 4
    assert (out / "rate_quality_si_sdr.png").stat().st_size > 1000
    html = (out / "index.html").read_text()
    assert html.count("<audio") == 3 and "spectrograms/000_00.png" in html  # original + 2 codecs, 1 clip
    trials = trials_from_folder(out / "listening")
    assert len(trials) == 1 and set(trials[0].conditions) == {"ae", "opus6"}
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    opus = rows["Opus"]["metrics"]
    assert set(opus) == {"fad_aisfx", "kad_aisfx", "aisfx_cos", "si_sdr", "mel"}
    assert opus["si_sdr"]["low"] <= opus["si_sdr"]["value"] <= opus["si_sdr"]["high"]
    assert 3 < rows["Opus"]["actual_bitrate_bps"] / 1000 < 9
    assert result.codecs["ae"].computed == 3 and result.codecs["opus6"].computed == 3

    # adding a codec computes only that codec
    codecs["opus12"] = "opus:12"
    again, run2 = run_evaluation(cfg, codecs, folder=str(sfx_dev), num_clips=3, progress=False)
    assert run2 != run_id
    assert {n: r.computed for n, r in again.codecs.items()} == {"ae": 0, "opus6": 0, "dac": 0, "opus12": 3}
    assert again.codecs["opus6"].row.metrics["si_sdr"].value == result.codecs["opus6"].row.metrics["si_sdr"].value
    # 12 kbps Opus is closer to the original than 6 kbps Opus
    assert again.codecs["opus12"].row.metrics["mel"].value < again.codecs["opus6"].row.metrics["mel"].value

    # the MLflow run holds the report; listening-test accepts the output folder
    arts = {a.path for a in MlflowClient().list_artifacts(run2, "report")}
    assert {"report/index.html", "report/table.md", "report/table.csv", "report/listening"} <= arts

    assert main(["listening-test", "--eval", str(out), "--out", str(tmp_path / "lt")]) == 0
    assert (tmp_path / "lt" / "index.html").is_file()
    assert main(["listening-test", "--eval", run2, "--out", str(tmp_path / "lt2")]) == 0


def _trained_audioae() -> Path | None:
    # Only a checkpoint someone names: the few-minute demo AudioAE (work/demo) is not trained enough
    # to be the upper bound on SI-SDR (measured on these 4 clips: -10.4 dB, Opus 6/8 kbps -1.6/+0.35 dB).
    # configs/audioae-cpu.yaml trains one that is (21 min on one core; +0.59 dB here), see the README.
    cand = os.environ.get("SPRESSO_AUDIOAE_CKPT")
    return Path(cand) if cand and (Path(cand) / "config.json").is_file() else None


@pytest.mark.slow
def test_trained_audioae_beats_every_lossy_codec_on_si_sdr(sfx_dev, tmp_path):
    """The paper's ordering (AudioAE is the upper bound). Needs a *trained* AudioAE: random weights
    cannot score better, so this runs only when SPRESSO_AUDIOAE_CKPT names one."""
    ckpt = _trained_audioae()
    if ckpt is None:
        pytest.skip("no trained AudioAE checkpoint: train configs/audioae-cpu.yaml and set SPRESSO_AUDIOAE_CKPT to its audioae/final")

    s = from_folder(sfx_dev, 4, seed=0)
    h = Harness(s, {"ae": f"audioae:{ckpt}", "opus6": "opus:6", "opus8": "opus:8"}, tmp_path / "cache",
                HarnessSettings(n_boot=10, example_clips=0), use_ray=False)
    rows = h.run(progress=False).codecs
    assert rows["ae"].row.metrics["si_sdr"].value > max(rows[n].row.metrics["si_sdr"].value for n in ("opus6", "opus8"))
