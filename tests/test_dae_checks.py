"""The diffusion-autoencoder checks (spresso.eval.dae_checks) on tiny random models (codec_toys sizes)."""
import numpy as np
import pytest
import torch
from codec_toys import C, make_checkpoints

from spresso.core.errors import SpressoError
from spresso.data.latents import latent_arrays
from spresso.data.zarr_cache import ClipCache
from spresso.eval import dae_checks as dc
from spresso.models.audioae import load_audioae
from spresso.quant import load_qinco2

torch.set_num_threads(1)
FRAMES = 200  # 2 s of x0 at 100 Hz: 2 z frames at t = 100
SETTINGS = dc.DecodeSettings(steps=2, solver="dpmpp2m", seed=3)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("dae-checks")
    ck = make_checkpoints(root)
    s1 = dc.load_stage(ck["stage"], "stage1")
    # A second, different "stage-3" model: the same checkpoint with its f_phi perturbed.
    s3 = dc.load_stage(ck["stage"], "stage3")
    with torch.no_grad():
        s3.model.net.f_phi.weight.add_(torch.randn_like(s3.model.net.f_phi.weight))
    q = load_qinco2(ck["qinco2"])
    return {"root": root, "audioae": load_audioae(ck["audioae"]), "s1": s1, "s3": s3, "q": q}


def x0_cache(path, n=6):
    keys = [f"clip{i:02d}" for i in range(n)]
    cache = ClipCache.create(path, keys, {k: v for k, v in latent_arrays(C, FRAMES).items() if k in ("x0", "valid_frames", "split")},
                             chunk_rows=n, attrs={"frame_rate": 100})
    g = np.random.default_rng(0)
    split = np.asarray(["valid" if i % 2 else "train" for i in range(n)])
    cache.write_block(0, n, x0=g.standard_normal((n, C, FRAMES)).astype(np.float16),
                      valid_frames=np.asarray([FRAMES, 150, FRAMES, 60, FRAMES, FRAMES], np.int32)[:n], split=split)
    return path


def test_select_clips_is_seeded_and_stays_in_split(tmp_path):
    path = x0_cache(tmp_path / "x0.zarr")
    a = dc.select_clips(str(path), 2, seed=1)
    b = dc.select_clips(str(path), 2, seed=1)
    assert np.array_equal(a.rows, b.rows) and set(a.rows) <= {1, 3, 5}
    assert a.x0.shape == (2, C, FRAMES) and a.hop == 480 and a.audio is None and "AudioAE" in a.audio_note
    everything = dc.select_clips(str(path), 50, seed=0)  # capped at the split's size
    assert list(everything.rows) == [1, 3, 5] and list(everything.valid_samples()) == [150 * 480, 60 * 480, FRAMES * 480]
    with pytest.raises(SpressoError, match="no finished rows"):
        dc.select_clips(str(path), 2, split="test")


def test_checks_table_structure_and_withheld_z_differs(toys, tmp_path):
    clips = dc.select_clips(str(x0_cache(tmp_path / "x0.zarr")), 3, seed=0)
    # Fake "real audio" (the clips' AudioAE decoding plus noise) to exercise the second reference.
    g = np.random.default_rng(1)
    ae = dc.Scorer(toys["audioae"], clips).references["ae"]
    clips.audio = (ae + 0.01 * ae.std() * g.standard_normal(ae.shape)).astype(np.float32)
    s1 = toys["s1"]
    z = dc.encode_z(s1, clips.x0)
    assert z.shape == (3, 6, 2)
    # The withheld-z path really drops the conditioning; z and z_q really condition; all seeded.
    x_z = dc.decode_x0(s1, z, FRAMES, 3, SETTINGS)
    x_none = dc.decode_x0(s1, None, FRAMES, 3, SETTINGS)
    zq = dc.quantize_z(toys["q"], z, 3)
    x_zq = dc.decode_x0(s1, zq, FRAMES, 3, SETTINGS)
    assert zq.shape == z.shape and not torch.allclose(zq, z)
    assert (x_z - x_none).abs().max() > 1e-3 and (x_z - x_zq).abs().max() > 1e-4
    torch.testing.assert_close(dc.decode_x0(s1, z, FRAMES, 3, SETTINGS), x_z)

    points = [dc.PointModels("c", s1), dc.PointModels("d", toys["s1"], toys["q"], 3, toys["s3"])]
    points[0].stage1 = dc.StageModel(s1.model, s1.normalizer, "stage1")
    result = dc.run_checks(points, clips, toys["audioae"], SETTINGS, batch=2)
    labels = [r.label for r in result.rows]
    assert labels == ["-/audioae/original", "-/audioae/constant", "c/stage1/z", "c/stage1/withheld", "d/stage1/z", "d/stage1/withheld",
                      "d/stage1/z_q", "d/stage3/z_q", "d/stage3/z"]
    assert result.columns() == ["mel_ae", "si_sdr_ae", "mel_audio", "si_sdr_audio"]
    assert set(result.rows[0].scores) == {"mel_audio", "si_sdr_audio"}  # the AudioAE row vs itself is meaningless
    for r in result.rows[1:]:
        assert all(r.scores[c].shape == (3,) and np.isfinite(r.scores[c]).all() for c in result.columns())
    by = {r.label: r for r in result.rows}
    assert not np.allclose(by["c/stage1/z"].scores["mel_ae"], by["c/stage1/withheld"].scores["mel_ae"])
    assert not np.allclose(by["d/stage3/z_q"].scores["mel_ae"], by["d/stage1/z_q"].scores["mel_ae"])
    # Both points share one stage-1 model and t: the same rows, bit for bit (paired, seeded noise).
    np.testing.assert_array_equal(by["c/stage1/z"].scores["si_sdr_ae"], by["d/stage1/z"].scores["si_sdr_ae"])
    # The AudioAE row against the noisy "real" audio: about 0 mel error, high SI-SDR.
    assert by["-/audioae/original"].mean("si_sdr_audio") > 20

    checks = [c.check for c in result.comparisons]
    assert checks == ["conditioning.c", "conditioning.d", "stage3.d"]  # one t only: no frame-rate comparison
    comp = result.comparisons[0]
    # With real audio at hand the verdict is taken against it, not against the AudioAE decoding.
    assert comp.reference == "audio"
    assert comp.holds == (comp.delta("mel_audio") < 0 and comp.delta("si_sdr_audio") > 0)
    assert 0 <= comp.wins("mel_ae") <= 3
    lo, hi = comp.interval("si_sdr_audio")
    assert lo <= comp.delta("si_sdr_audio") <= hi
    table = dc.format_table(result)
    for needle in labels + checks + ["holds", "d_mel_ae", "AudioAE-decoded", "bootstrap"]:
        assert needle in table
    metrics = result.metrics()
    assert "c.stage1.withheld.mel_ae" in metrics and "check.stage3.d.holds" in metrics
    assert "check.stage3.d.ci_low_si_sdr_audio" in metrics and "-.audioae.constant.si_sdr_ae" in metrics
    assert all(np.isfinite(v) for v in metrics.values())
    assert '"comparisons"' in result.to_json()


def test_seeds_average_decodings_per_clip(toys, tmp_path):
    clips = dc.select_clips(str(x0_cache(tmp_path / "x0.zarr")), 3, seed=0)
    point = [dc.PointModels("c", toys["s1"])]
    single = [dc.run_checks(point, clips, toys["audioae"], dc.DecodeSettings(2, "dpmpp2m", seed), batch=2)
              for seed in (3, 3 + dc.SEED_STRIDE)]
    both = dc.run_checks(point, clips, toys["audioae"], dc.DecodeSettings(2, "dpmpp2m", 3, seeds=2), batch=2)
    for label in ("c/stage1/z", "c/stage1/withheld"):
        rows = [{r.label: r for r in res.rows}[label] for res in single]
        assert not np.allclose(rows[0].scores["mel_ae"], rows[1].scores["mel_ae"])  # the second draw is new noise
        expected = (rows[0].scores["si_sdr_ae"] + rows[1].scores["si_sdr_ae"]) / 2
        np.testing.assert_allclose({r.label: r for r in both.rows}[label].scores["si_sdr_ae"], expected, rtol=1e-6)
    assert "2 noise seeds" in both.settings.describe()


def test_constant_latent_row_scores_a_latent_that_knows_no_clip(toys, tmp_path):
    clips = dc.select_clips(str(x0_cache(tmp_path / "x0.zarr")), 3, seed=0)
    scorer = dc.Scorer(toys["audioae"], clips)
    const = scorer.constant_latent()
    assert const.shape == clips.x0.shape
    assert torch.equal(const[0], const[2]) and torch.allclose(const[..., 0], const[..., -1])
    torch.testing.assert_close(const[0, :, 0], clips.x0.mean(dim=(0, 2)))


def test_bootstrap_interval_and_reference_choice():
    def row(label, mel, sdr, audio=False):
        ref = "audio" if audio else "ae"
        return dc.Row(label, 4, "stage1", dc.FROM_Z, {f"mel_{ref}": np.asarray(mel), f"si_sdr_{ref}": np.asarray(sdr)})

    # Every clip better by exactly 1 dB: a zero-width interval at +1, clear of zero.
    comp = dc.Comparison("x", "", row("a", [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]), row("b", [2.0, 3.0, 4.0], [-1.0, 0.0, 1.0]))
    assert comp.reference == "ae" and comp.interval("si_sdr_ae") == pytest.approx((1.0, 1.0)) and comp.significant
    # Mixed signs: the mean holds but the interval straddles zero.
    comp = dc.Comparison("y", "", row("a", [0.0] * 4, [3.0, -2.0, 3.0, -2.0]), row("b", [1.0] * 4, [0.0] * 4))
    lo, hi = comp.interval("si_sdr_ae")
    assert comp.holds and lo < 0 < hi and not comp.significant
    # The real audio takes over the verdict when both rows have it.
    a, b = row("a", [1.0], [5.0]), row("b", [2.0], [0.0])
    a.scores.update(mel_audio=np.asarray([3.0]), si_sdr_audio=np.asarray([-9.0]))
    b.scores.update(mel_audio=np.asarray([2.0]), si_sdr_audio=np.asarray([-8.0]))
    comp = dc.Comparison("z", "", a, b)
    assert comp.reference == "audio" and not comp.holds  # it wins against the AudioAE decoding, loses against the audio


def test_frame_rate_comparison_orders_by_t(toys):
    def row(point, t, sdr):
        return dc.Row(point, t, "stage1", dc.FROM_Z, {"mel_ae": np.asarray([1.0, 1.0]), "si_sdr_ae": np.asarray(sdr)})

    rows = [row("slow", 100, [-5.0, -4.0]), row("fast", 9, [1.0, -6.0])]
    (comp,) = dc.compare(rows)
    assert comp.check == "frame_rate" and comp.better.point == "fast" and comp.worse.point == "slow"
    assert comp.delta("si_sdr_ae") == pytest.approx(2.0) and comp.wins("si_sdr_ae") == 1
    assert not comp.holds  # equal mel distance: not strictly better on both metrics
    with pytest.raises(SpressoError, match="no trained operating point"):
        dc.run_checks([], None, toys["audioae"])
