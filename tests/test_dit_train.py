"""DiT pretraining: a short Ray Train stage on a tiny synthetic x0 cache, checkpoints, resume state, generation."""
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from spresso.config import load_config
from spresso.data.zarr_cache import ClipCache
from spresso.models.text_encoder import TextEmbedding, TextEncoder

torch.set_num_threads(1)
C, T, N = 8, 24, 12


class HashEncoder(TextEncoder):
    """A deterministic stand-in for MiniLM (loading it costs ~10 s): embeddings from a caption hash."""

    name, token_dim, pooled_dim, max_tokens = "hash", 12, 10, 5

    def encode(self, captions):
        out = []
        for c in captions:
            g = torch.Generator().manual_seed(int(hashlib.sha1(c.encode()).hexdigest()[:8], 16))
            out.append(TextEmbedding(torch.randn(1, 5, 12, generator=g), torch.tensor([[True] * 3 + [False] * 2]),
                                     torch.randn(1, 10, generator=g)))
        return TextEmbedding.cat(out)


def overrides(tmp_path):
    return [
        f"workdir={tmp_path}", "runtime.num_cpus=2",
        "audioae.model.latent_dim=8", "audioae.model.width=16", "audioae.model.blocks=1", "audioae.model.intermediate=32",
        "dit.model.in_channels=8", "dit.model.width=32", "dit.model.heads=4", "dit.model.joint_blocks=1",
        "dit.model.single_blocks=1", "dit.model.patch=2",
        "dit.train.steps=4", "dit.train.batch_size=4", "dit.train.scaling.workers=1", "dit.train.scaling.cpus_per_worker=0.5", "dit.train.log_every=2",
        "dit.train.checkpoint_every=4", "dit.train.sample_every=4", "dit.train.num_samples=1", "dit.train.sample_steps=2",
        "dit.train.warmup_steps=2",
    ]


@pytest.fixture
def workdir(tmp_path):
    """A tiny x0 cache (ClipCache), its manifest captions and a tiny AudioAE checkpoint."""
    from spresso.core.checkpoint import save_checkpoint
    from spresso.models.audioae import AudioAE

    cfg = load_config("demo", overrides(tmp_path))
    keys = [f"clip{i:02d}" for i in range(N)]
    splits = ["train"] * 9 + ["valid"] * 3
    captions = [f"sound number {i}" for i in range(N)]
    order = sorted(range(N), key=lambda i: (splits[i], keys[i]))
    keys, splits, captions = [keys[i] for i in order], [splits[i] for i in order], [captions[i] for i in order]
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"key": keys, "split": splits, "caption": captions}), shards / "manifest.parquet")
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=C), rng.uniform(0.5, 2.0, size=C)
    x0 = (mean[None, :, None] + std[None, :, None] * rng.normal(size=(N, C, T))).astype(np.float16)
    cache = ClipCache.create(cfg.path(cfg.audioae.latents_path), keys,
                             {"x0": ((C, T), np.float16), "valid_frames": ((), np.int32), "split": ((), "str")}, 4,
                             {"frame_rate": 100.0, "audioae_digest": "test"})
    for a in range(0, N, 4):
        cache.write_block(a, a + 4, x0=x0[a:a + 4], valid_frames=np.full(4, T, np.int32), split=np.array(splits[a:a + 4], dtype=object))
    cache.update_attrs(x0_mean=mean.tolist(), x0_std=std.tolist())
    torch.manual_seed(0)
    ae = AudioAE.from_config(cfg.audioae.model)
    save_checkpoint(tmp_path / "audioae" / "final", ae.state_dict(), kind="audioae", config=cfg.to_dict())
    return cfg


@pytest.mark.slow
def test_train_dit_stage_logs_and_checkpoints(workdir, mlflow_env, ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from spresso.core.checkpoint import load_strict, load_weights
    from spresso.diffusion.checkpoints import load_dit
    from spresso.diffusion.generate import generate_audio
    from spresso.train.dit import train_dit

    final = train_dit(workdir, encoder=HashEncoder(), progress=False)
    denoiser, info = load_dit(final)
    load_strict(denoiser, load_weights(final))  # strict: every EMA weight, nothing else
    assert info["meta"]["text_encoder"]["name"] == "hash" and info["meta"]["frames"] == T
    assert len(info["meta"]["x0_mean"]) == C

    client = MlflowClient(mlflow_env)
    [run] = client.search_runs([client.get_experiment_by_name(workdir.runtime.experiment).experiment_id],
                               filter_string="tags.`spresso.stage` = 'train_dit'")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert np.isfinite(metrics["loss"]) and any(k.startswith("loss_sigma/") for k in metrics)
    assert any(k.startswith("mse_ratio_sigma/") for k in metrics)
    held_out = {k: v for k, v in metrics.items() if k.startswith("valid_mse_ratio/sigma_")}
    assert len(held_out) == 8 and all(np.isfinite(v) and v > 0 for v in held_out.values())
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2  # logged at steps 2 and 4
    examples = [f.path for f in client.list_artifacts(run.info.run_id, "examples/step-0000004")]
    assert any(p.endswith(".png") for p in examples) and any(p.endswith(".flac") for p in examples)
    assert run.data.tags["spresso.output.checkpoint.uri"] == str(final)

    # Unchanged inputs and config: the finished run is reused, not retrained.
    assert train_dit(workdir, encoder=HashEncoder(), progress=False) == final
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # Text -> audio through the trained DiT and the AudioAE, seeded.
    outs = generate_audio(final, ["sound number 1", "sound number 1"], [tmp_path / "a.wav", tmp_path / "b.wav"],
                          audioae_dir=tmp_path / "audioae" / "final", steps=3, seed=5, encoder=HashEncoder())
    import soundfile as sf

    a, sr = sf.read(outs[0])
    assert sr == 48000 and a.shape == (T * 480,) and np.isfinite(a).all()


def test_trainer_checkpoint_roundtrip(workdir, tmp_path):
    from spresso.diffusion.normalize import LatentNormalizer
    from spresso.train.dit import DiTTrainer, save_dit_checkpoint

    dc = workdir.dit
    norm = LatentNormalizer([0.0] * C, [1.0] * C)
    g = torch.Generator().manual_seed(0)
    emb = HashEncoder().encode(["a", "b"])
    batch = {"x0": torch.randn(2, C, T), "text": emb.tokens, "text_mask": emb.mask, "pooled": emb.pooled}
    a = DiTTrainer(dc, (12, 10), norm)
    for _ in range(3):
        a.train_step(batch, g)
    save_dit_checkpoint(tmp_path / "ck", a.gather(), workdir.to_dict(), a.checkpoint_meta(T, HashEncoder().describe()))
    torch.manual_seed(123)
    b = DiTTrainer(dc, (12, 10), norm)
    assert b.restore(tmp_path / "ck") == 3
    for k, v in a.denoiser.state_dict().items():
        torch.testing.assert_close(b.denoiser.state_dict()[k], v)
    for k, v in a.ema.state_dict().items():
        torch.testing.assert_close(b.ema.state_dict()[k], v)
    assert b.ema.num_updates == 3
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert len(sa) == len(sb) and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    # The same next step from both: identical weights afterwards.
    ga, gb = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a.train_step(batch, ga), b.train_step(batch, gb)
    for k, v in a.denoiser.state_dict().items():
        torch.testing.assert_close(b.denoiser.state_dict()[k], v)


def test_sigma_buckets_against_trivial_denoiser():
    from spresso.diffusion.edm2 import preconditioning
    from spresso.train.sigma_buckets import SigmaBuckets

    b = SigmaBuckets()
    sigma = torch.tensor([0.05, 0.5, 0.5, 10.0])
    trivial = preconditioning(sigma)[1] ** 2
    b.add(sigma, torch.ones(4), trivial)  # a network as good as D = c_skip x
    m = b.metrics()
    assert m["mse_ratio_sigma/0-0.1"] == pytest.approx(1.0) and m["mse_ratio_sigma/0.3-1"] == pytest.approx(1.0)
    assert "loss_sigma/1-3" not in m and m["loss_sigma/3-inf"] == pytest.approx(1.0)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from spresso.cli import main

    rc = main(["generate", "--prompt", "metal door slam", "--out", str(tmp_path / "x.wav"), "--set", f"workdir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: DiT checkpoint not found") and "\n" not in err
    rc = main(["train", "dit", "--set", f"workdir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no x0 cache" in err


def test_held_out_report_equals_one_for_the_trivial_network(workdir):
    """At adaLN-zero init F = 0, so the network *is* the trivial denoiser c_skip x: every ratio is 1."""
    from spresso.data.captions import build_caption_cache
    from spresso.diffusion.normalize import LatentNormalizer
    from spresso.train.dit import DiTTrainer
    from spresso.train.dit_held_out import HELD_OUT_SIGMAS, held_out_sigma_report

    x0_path = workdir.path(workdir.audioae.latents_path)
    captions = build_caption_cache(workdir, HashEncoder(), progress=False)
    norm = LatentNormalizer.from_attrs(ClipCache.open(x0_path, mode="r").attrs, workdir.dit.diffusion.sigma_data)
    trainer = DiTTrainer(workdir.dit, (12, 10), norm)
    report = held_out_sigma_report(trainer.denoiser, norm, x0_path, str(captions.path), batch=2)
    assert len(report) == 2 * len(HELD_OUT_SIGMAS)
    for s in HELD_OUT_SIGMAS:
        assert report[f"valid_mse_ratio/sigma_{s:g}"] == pytest.approx(1.0, rel=1e-5)
    # A network that learned something different from c_skip x scores otherwise, on the same noise.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.denoiser.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    other = held_out_sigma_report(trainer.denoiser, norm, x0_path, str(captions.path), batch=2)
    assert any(abs(other[f"valid_mse_ratio/sigma_{s:g}"] - 1.0) > 1e-3 for s in HELD_OUT_SIGMAS)


@pytest.mark.slow
@pytest.mark.parametrize("feed", ["ray_data", "loader"])
def test_diffusion_loops_step_in_the_driver_with_either_feed(workdir, mlflow_env, ray_local, tmp_path, monkeypatch, feed):
    """scaling.workers=0 (the loop in the driver): the DiT, then stage 1 on it, take their first steps fed by
    the Ray dataset (feed: ray_data) or by today's in-worker reader (feed: loader)."""
    from spresso.core.checkpoint import has_checkpoint
    from spresso.train import feed as feeds
    from spresso.train.dit import train_dit
    from spresso.train.stage1 import train_stage1

    used = []
    for name in ("worker_stream", "resumed_stream"):
        real = getattr(feeds, name)
        monkeypatch.setattr(feeds, name, lambda *a, _real=real, _name=name, **k: used.append(_name) or _real(*a, **k))
    cfg = load_config("demo", overrides(tmp_path) + [
        "dit.train.scaling.workers=0", "dit.train.steps=2", "dit.train.num_samples=0", f"dit.train.feed={feed}",
        "dae.stage1.scaling.workers=0", "dae.stage1.steps=2", "dae.stage1.batch_size=4", "dae.stage1.log_every=1",
        f"dae.stage1.feed={feed}"])
    assert has_checkpoint(train_dit(cfg, encoder=HashEncoder(), progress=False))
    assert has_checkpoint(train_stage1(cfg, encoder=HashEncoder(), progress=False))
    assert used == [{"ray_data": "worker_stream", "loader": "resumed_stream"}[feed]] * 2
