"""QINCo2 training on real-audio feature vectors: a few steps help; the Ray/MLflow stage end to end."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from spresso.quant import QINCo2, QINCo2Spec, residual_kmeans_init
from spresso.quant.features import audio_feature_vectors, audio_files
from spresso.quant.training import (
    TrainSettings,
    make_optimizer,
    relative_mse,
    reseed_unused,
    train_step,
)

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
D = 16


@pytest.fixture(scope="module")
def real_vectors(sfx_dev):
    """Log-mel frames of real dev-corpus SFX, PCA-projected to 16 dims (stand-ins for z frames)."""
    x = audio_feature_vectors(audio_files(sfx_dev)[::12], d=D)
    return x[np.random.default_rng(0).permutation(len(x))]


def test_few_training_steps_lower_validation_mse(real_vectors):
    train, val = real_vectors[:-3000], real_vectors[-3000:]
    torch.manual_seed(0)
    model = QINCo2(QINCo2Spec(d=D, K=32, M=3, L=1, de=64, dh=64, A=4, B=4))
    model.norm.fit(train)
    residual_kmeans_init(model, model.norm(torch.from_numpy(train)).numpy(), niter=10)
    xv = torch.from_numpy(val)
    before = relative_mse(val, model.decode(model.encode(xv)))
    s = TrainSettings(lr=2e-3, warmup_steps=2, total_steps=40, beam=4, candidates=4, grad_clip=1.0)
    opt, sched = make_optimizer(model, s)
    usage = torch.zeros(3, 32)
    rng = np.random.default_rng(0)
    for _ in range(40):
        xn = model.norm(torch.from_numpy(train[rng.choice(len(train), 1000, replace=False)]))
        info, codes = train_step(model, opt, sched, xn, s, usage=usage)
    model.eval()
    after = relative_mse(val, model.decode(model.encode(xv)))
    assert np.isfinite(info["loss_recon"])
    assert after < 0.97 * before, (before, after)


def test_reseed_unused_moves_dead_codewords_onto_residuals_and_keeps_live_ones():
    torch.manual_seed(0)
    K, M = 8, 3
    model = QINCo2(QINCo2Spec(d=4, K=K, M=M, L=1, de=8, dh=8, A=2, B=2))
    xn = torch.randn(64, 4)
    s = TrainSettings(lr=1e-2, warmup_steps=0, total_steps=4, beam=2, candidates=2, grad_clip=1.0)
    opt, sched = make_optimizer(model, s)
    _, codes = train_step(model, opt, sched, xn, s)  # fills AdamW's moments
    usage = torch.ones(M, K)
    dead = {0: [1, 5], 1: [], 2: [0, 7]}
    for m, rows in dead.items():
        usage[m, rows] = 0

    def books(m):
        return [model.codebook0] if m == 0 else [model.steps[m - 1].codebook, model.steps[m - 1].preselect]

    before = {(m, i): p.detach().clone() for m in range(M) for i, p in enumerate(books(m))}
    moments = {(m, i): opt.state[p]["exp_avg"].clone() for m in range(M) for i, p in enumerate(books(m))}
    with torch.no_grad():
        partials = model.decode_normalized(codes, partials=True)
        assert reseed_unused(model, opt, usage, xn, codes, generator=torch.Generator().manual_seed(1)) == 4
    for m, rows in dead.items():
        residual = xn if m == 0 else xn - partials[m - 1]
        live = [r for r in range(K) if r not in rows]
        for i, p in enumerate(books(m)):
            torch.testing.assert_close(p[live], before[m, i][live], rtol=0, atol=0)  # live codewords untouched
            assert torch.equal(opt.state[p]["exp_avg"][live], moments[m, i][live])
            for r in rows:  # each dead codeword now sits exactly on a residual of some training vector
                assert (residual - p[r]).abs().amax(1).min() < 1e-6
                assert not torch.equal(p[r], before[m, i][r])
                assert torch.all(opt.state[p]["exp_avg"][r] == 0) and torch.all(opt.state[p]["exp_avg_sq"][r] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("feed", ["ray_data", "loader"])  # batches from the Ray dataset, or read in the loop
def test_stage_trains_logs_and_quantizes(real_vectors, tmp_path, mlflow_env, ray_local, feed):
    import zarr
    from mlflow.tracking import MlflowClient

    from spresso.config import load_config
    from spresso.data.zarr_cache import ClipCache
    from spresso.quant import quantizer_kind
    from spresso.train.qinco2 import quantize_cache, train_qinco2

    # A clip cache of vectors laid out like the latent caches: [N clips, C, T frames].
    n, T = 60, 100
    x = real_vectors[: n * T].reshape(n, T, D).transpose(0, 2, 1)
    keys = [f"clip{i:03d}" for i in range(n)]
    cache = ClipCache.create(tmp_path / "z.zarr", keys, {"z": ((D, T), np.float32), "valid_frames": ((), np.int32)}, 20,
                             {"frame_rate": 100})
    for a in range(0, n, 20):
        cache.write_block(a, a + 20, z=x[a : a + 20], valid_frames=np.full(20, T - 10))
    cfg = load_config("demo", [
        f"workdir={tmp_path / 'work'}", "qinco2.d=16", "qinco2.K=16", "qinco2.M=3", "qinco2.L=1", "qinco2.de=32",
        "qinco2.dh=32", "qinco2.beam=4", "qinco2.candidates=4", "qinco2.batch_size=1000", "qinco2.epochs=2",
        "qinco2.valid_every=3", "qinco2.scaling.workers=0", "qinco2.val_fraction=0.2", "qinco2.kmeans_iters=5",
        "qinco2.rq_beam=4", "qinco2.rq_train_vectors=3000", "qinco2.warmup_steps=1", f"qinco2.feed={feed}",
    ])
    out = train_qinco2(cfg, vectors=str(tmp_path / "z.zarr"), array="z", rq_train_type="default")
    run = MlflowClient(mlflow_env).get_run(out["run_id"])
    m = run.data.metrics
    for k in ("val_mse_m1", "val_mse_m3", "rq_val_mse_m3", "entropy_step1", "rq_entropy_step3", "best_val_mse"):
        assert k in m, k
    assert m["val_mse_m3"] < m["val_mse_m2"] < m["val_mse_m1"] < 1.0
    assert 0 < m["entropy_step1"] <= 4.0
    assert run.data.tags["spresso.output.checkpoint.uri"].endswith("final")
    assert run.info.status == "FINISHED"
    # The held-out comparison with RQ (same vectors, beam) is part of the run: absolute numbers, table, choice.
    for k in ("heldout_rel_mse_qinco2_m3", "heldout_rel_mse_rq_m3", "ratio_to_rq_m3", "quantizer_shipped_rq"):
        assert k in m, k
    assert m["heldout_rel_mse_rq_m3"] < m["heldout_rel_mse_rq_m1"] < 1.0
    tags = run.data.tags
    assert tags["quantizer_loses_to_rq"] and tags["spresso.quantizer.shipped"] in ("qinco2", "rq")
    assert (tags["quantizer_loses_to_rq"] != "none") == (tags["spresso.quantizer.shipped"] == "rq")  # ship: best
    assert quantizer_kind(out["checkpoint"]) == tags["spresso.quantizer.shipped"]
    assert "quantizer_comparison.md" in [a.path for a in MlflowClient(mlflow_env).list_artifacts(out["run_id"])]

    codes_path = quantize_cache(out["checkpoint"], str(tmp_path / "z.zarr"), str(tmp_path / "codes.zarr"), array="z")
    codes = zarr.open_group(codes_path, mode="r")["codes_m3"][:]
    assert codes.shape == (n, T, 3) and codes.dtype == np.uint16 and codes.max() < 16
