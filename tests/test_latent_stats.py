"""z's effective dimensionality: the metric itself, padding frames, and stage 1's held-out report."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spresso.config.dae import DAETrainConfig
from spresso.data.latents import latent_arrays
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.normalize import LatentNormalizer
from spresso.eval.latent_stats import effective_dimensionality, frame_vectors
from spresso.models.latent_encoder import LatentEncoder
from spresso.train.stage1 import z_report
from spresso.train.z_stats import encode_rows, z_stat_rows, z_stats_metrics

torch.set_num_threads(1)


def test_collapsed_z_has_all_energy_in_four_directions():
    g = np.random.default_rng(0)
    basis = np.linalg.qr(g.standard_normal((64, 4)))[0]  # 4 orthonormal directions in 64 channels
    z = g.standard_normal((5000, 4)) * [3, 2, 1.5, 1] @ basis.T + 1e-3 * g.standard_normal((5000, 64)) + 7.0
    r = effective_dimensionality(z)
    assert r["energy_top4"] > 0.999 and r["energy_top2"] < 0.95
    assert r["dims_98"] <= 4 and r["dims_90"] <= 3
    assert 2.0 < r["participation_ratio"] < 4.0


def test_isotropic_z_spreads_energy_over_all_channels():
    z = np.random.default_rng(1).standard_normal((20000, 64))
    r = effective_dimensionality(z)
    assert r["energy_top4"] == pytest.approx(4 / 64, abs=0.02)
    assert r["energy_top1"] == pytest.approx(1 / 64, abs=0.01)
    assert r["dims_90"] > 50 and r["participation_ratio"] > 55
    assert r["channels_below_1pct"] == 0 and r["channel_var_min"] / r["channel_var_max"] > 0.9


def test_dead_channels_are_counted_and_constant_z_is_fully_collapsed():
    z = np.random.default_rng(2).standard_normal((500, 8))
    z[:, :3] *= 1e-3
    r = effective_dimensionality(z)
    assert r["channels_below_1pct"] == 3 and r["channel_var_min"] < 1e-5
    assert effective_dimensionality(np.ones((10, 8)))["energy_top1"] == 1.0


def test_frame_vectors_keep_only_real_frames():
    z = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # [N=2, C=3, T'=4]
    v = frame_vectors(z, np.array([4, 1]))
    assert v.shape == (5, 3)
    assert np.array_equal(v[4], z[1, :, 0]) and np.array_equal(v[0], z[0, :, 0])
    assert frame_vectors(z).shape == (8, 3)


def x0_cache(path, n=8, C=8, T=40):
    keys = [f"clip{i}" for i in range(n)]
    arrays = {k: v for k, v in latent_arrays(C, T).items() if k in ("x0", "valid_frames", "split")}
    cache = ClipCache.create(path, keys, arrays, chunk_rows=n)
    g = np.random.default_rng(0)
    split = np.asarray(["valid" if i < 2 else "train" for i in range(n)])
    cache.write_block(0, n, x0=g.standard_normal((n, C, T)).astype(np.float16),
                      valid_frames=np.asarray([T, 10] + [T] * (n - 2), np.int32), split=split)
    return str(path)


def test_z_report_uses_valid_clips_and_tops_up_with_train_when_too_few(tmp_path):
    path = x0_cache(tmp_path / "x0.zarr")
    rows, held_out = z_stat_rows(path, 4, max_clips=100, min_frames=4)
    assert list(rows) == [0, 1] and held_out == 2  # 10 + 3 z frames >= 4: held-out only
    rows, held_out = z_stat_rows(path, 4, max_clips=5, min_frames=100)
    assert list(rows) == [0, 1, 2, 3, 4] and held_out == 2
    torch.manual_seed(0)
    enc = LatentEncoder(in_channels=8, z_channels=6, t=4, depth=1, heads=2)
    m = z_stats_metrics(enc, LatentNormalizer([0.0] * 8, [1.0] * 8), path, max_clips=100, min_frames=50)
    assert m["z/frames"] == 10 + 3 + 6 * 10 and m["z/held_out_frames"] == 13 and m["z/channels"] == 6
    assert 0 < m["z/energy_top1"] <= m["z/energy_top4"] <= 1 and enc.training  # mode restored


def test_stage1_logs_z_stats_at_checkpoints_on_rank_zero_only(tmp_path):
    path = x0_cache(tmp_path / "x0.zarr")
    torch.manual_seed(0)
    enc = LatentEncoder(in_channels=8, z_channels=6, t=4, depth=1, heads=2)
    tc = DAETrainConfig(steps=10, checkpoint_every=4, z_stats_clips=8)
    trainer = SimpleNamespace(tc=tc, model_raw=SimpleNamespace(encoder=enc, mask_padding=False), normalizer=LatentNormalizer([0.0] * 8, [1.0] * 8))
    logged = []
    ctx = SimpleNamespace(is_main=True, log_metrics=lambda m, i: logged.append((i, m)))
    hook = z_report(ctx, trainer, path)
    for i in range(1, 11):
        hook(i, i == 10)
    assert [i for i, _ in logged] == [4, 8, 10] and 0 < logged[0][1]["z/energy_top4"] <= 1
    ctx.is_main = False
    assert z_report(ctx, trainer, path)(4, False) == {}
    ctx.is_main, tc.z_stats_clips = True, 0
    assert z_report(ctx, trainer, path)(4, False) == {}


def test_z_of_a_padded_clip_with_mask_padding_is_the_z_of_its_real_frames_alone(tmp_path):
    path = x0_cache(tmp_path / "x0.zarr")  # clip 1: 10 real frames of 40
    torch.manual_seed(0)
    enc = LatentEncoder(in_channels=8, z_channels=6, t=4, depth=1, heads=2).eval()
    norm = LatentNormalizer([0.0] * 8, [1.0] * 8)
    z, frames = encode_rows(enc, norm, path, np.array([1]), mask_padding=True)
    seen, _ = encode_rows(enc, norm, path, np.array([1]))
    x0 = torch.from_numpy(ClipCache.open(path, mode="r").read("x0", np.array([1])).astype(np.float32))
    with torch.no_grad():
        alone = enc(norm.normalize(x0)[:, :, :10]).numpy()  # the clip cut to its real frames: 3 windows
    assert frames.tolist() == [3]
    np.testing.assert_allclose(z[0, :, :3], alone[0], atol=1e-5)
    assert not np.allclose(seen[0, :, :3], alone[0], atol=1e-3)  # unmasked, the padding changes z
