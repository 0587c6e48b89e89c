"""Stages of the diffusion autoencoder: trainer steps and checkpoints, z cache, stage-3 mixing, decoding."""
import numpy as np
import pytest
import torch

from spresso.config import SpressoConfig
from spresso.config.dae import DAEConfig, LatentEncoderConfig, LoRASettings
from spresso.config.dit import DiTConfig, DiTModelConfig
from spresso.diffusion.autoencoder import build_dae, build_denoiser
from spresso.diffusion.checkpoints import load_dae
from spresso.diffusion.edm2 import loss_weight
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.reconstruct import reconstruct_latents
from spresso.models.text_encoder import TextEmbedding
from spresso.train.stage1 import DAETrainer, save_dae_checkpoint
from spresso.train.stage3 import mix_z, total_steps

torch.set_num_threads(1)
C, TD, PD, T = 8, 12, 10, 20


def config(t=4) -> SpressoConfig:
    dit = DiTConfig(model=DiTModelConfig(in_channels=C, width=32, heads=4, joint_blocks=2, single_blocks=1))
    dae = DAEConfig(t=t, encoder=LatentEncoderConfig(z_channels=6, heads=2, depth=1), lora=LoRASettings(rank=4, alpha=4))
    dae.stage1.warmup_steps = 0
    dae.stage1.lr = 3e-3
    return SpressoConfig(dit=dit, dae=dae)


def model_for(cfg):
    torch.manual_seed(0)
    den = build_denoiser(cfg.dit, TD, PD)
    with torch.no_grad():
        for p in den.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return build_dae(den, cfg.dae.encoder, cfg.dae.t, cfg.dae.lora)


def normalizer():
    return LatentNormalizer([0.1] * C, [2.0] * C)


def batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x0": torch.randn(B, C, T, generator=g) * 2 + 0.1, "text": torch.randn(B, 5, TD, generator=g),
            "text_mask": torch.ones(B, 5, dtype=torch.bool), "pooled": torch.randn(B, PD, generator=g),
            "valid_frames": torch.tensor([T, T // 2, T, 3][:B] + [T] * max(0, B - 4))}  # two padded clips


def meta(cfg):
    return {**normalizer().to_meta(), "stage": "stage1", "t": cfg.dae.t, "text_dims": [TD, PD],
            "dit_config": cfg.dit.model_dump(mode="json")}


def test_trainer_steps_checkpoint_roundtrip_and_resume(tmp_path):
    cfg = config()
    trainer = DAETrainer(model_for(cfg), cfg, "stage1", normalizer())
    frozen = {n: p.detach().clone() for n, p in trainer.model_raw.named_parameters() if not p.requires_grad}
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        scalars, _ = trainer.train_step(batch(), g)
    assert np.isfinite(scalars["loss"]) and trainer.step == 3
    for n, p in trainer.model_raw.named_parameters():  # the pretrained base did not move
        if n in frozen:
            assert torch.equal(p, frozen[n])
    save_dae_checkpoint(tmp_path / "ck", trainer.state(), cfg.to_dict(), meta(cfg))
    loaded, info = load_dae(tmp_path / "ck")
    assert info["meta"]["t"] == 4
    b = batch(2, seed=1)
    y = normalizer().normalize(b["x0"])
    text = TextEmbedding(b["text"], b["text_mask"], b["pooled"])
    trainer.model_raw.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(y, torch.ones(2), text, loaded.encode(y)),
                                   trainer.model_raw(y, torch.ones(2), text, trainer.model_raw.encode(y)))
    again = DAETrainer(model_for(cfg), cfg, "stage1", normalizer())
    assert again.restore(tmp_path / "ck") == 3
    s1, _ = trainer.train_step(batch(seed=2), torch.Generator().manual_seed(9))
    s2, _ = again.train_step(batch(seed=2), torch.Generator().manual_seed(9))
    assert abs(s1["loss"] - s2["loss"]) < 1e-4  # resumed optimiser state continues identically


def stage3_error(trainer, b, z, sigma, noise) -> float:
    """The weighted denoising error on fixed (sigma, noise) draws, text kept: the same draws before and after."""
    y = trainer.normalizer.normalize(b["x0"])
    text = TextEmbedding(b["text"], b["text_mask"], b["pooled"])
    with torch.no_grad():
        out = trainer.loss_fn(trainer.model_raw, y, sigma=sigma, noise=noise, text=text,
                              drop=torch.zeros(len(y), dtype=torch.bool), z=z)
    return float((loss_weight(sigma) * out.mse).mean())


def test_stage3_trains_only_f_phi_and_lora_on_given_z():
    cfg = config()
    cfg.dae.stage3.warmup_steps, cfg.dae.stage3.lr = 0, 1e-2  # a real step size: 8 steps must move the model
    trainer = DAETrainer(model_for(cfg), cfg, "stage3", normalizer())
    enc_before = [p.detach().clone() for p in trainer.model_raw.encoder.parameters()]
    z, b = torch.randn(4, 6, 5), batch()
    g = torch.Generator().manual_seed(123)
    sigma, noise = torch.tensor([0.2, 0.5, 1.0, 2.0]), torch.randn(b["x0"].shape, generator=g)
    before = stage3_error(trainer, b, z, sigma, noise)
    for i in range(8):  # training draws its own (sigma, noise); the comparison uses the fixed ones above
        trainer.train_step(b, torch.Generator().manual_seed(i), z=z)
    after = stage3_error(trainer, b, z, sigma, noise)
    assert all(torch.equal(a, b) for a, b in zip(enc_before, trainer.model_raw.encoder.parameters()))
    assert after < 0.95 * before, (before, after)  # deterministic: 1.416 -> 1.295


def test_stage3_mixing_rate_and_selection():
    z, zq = torch.zeros(20000, 2, 3), torch.ones(20000, 2, 3)
    mixed, keep = mix_z(z, zq, 0.1, torch.Generator().manual_seed(0))
    assert abs(keep.float().mean().item() - 0.1) < 0.01  # 3 sigma of a Binomial(20000, 0.1) is 0.0064
    assert torch.all(mixed[keep] == 0) and torch.all(mixed[~keep] == 1)
    assert mix_z(z[:5], zq[:5], 0.0)[1].sum() == 0 and mix_z(z[:5], zq[:5], 1.0)[1].all()
    cfg = config().dae.stage3
    cfg.batch_size, cfg.epochs = 8, 40
    assert total_steps(cfg, 100) == 40 * 12
    cfg.steps = 50
    assert total_steps(cfg, 100) == 50


def test_reconstruction_is_seeded_batchable_and_uses_z():
    cfg = config()
    model = model_for(cfg).eval()
    z = torch.randn(2, 6, 5)
    a = reconstruct_latents(model, normalizer(), z, T, steps=3, seed=7)
    b = reconstruct_latents(model, normalizer(), z, T, steps=3, seed=7)
    one = reconstruct_latents(model, normalizer(), z[:1], T, steps=3, seed=7)
    assert a.shape == (2, C, T) and torch.equal(a, b)
    torch.testing.assert_close(one[0], a[0], atol=1e-4, rtol=1e-4)  # batching does not change a clip's noise
    assert (a - reconstruct_latents(model, normalizer(), z + 2, T, steps=3, seed=7)).abs().max() > 1e-3
    assert reconstruct_latents(model, normalizer(), None, T, steps=2, batch=3).shape == (3, C, T)


@pytest.mark.slow
def test_z_cache_equals_direct_encoding(tmp_path, mlflow_env, ray_local):
    from spresso.data.latents import latent_arrays
    from spresso.data.z_latents import precompute_z
    from spresso.data.zarr_cache import ClipCache

    cfg = config()
    cfg.workdir = str(tmp_path)
    cfg.dae.zcache.chunk_clips = 2
    cfg.dae.zcache.batch_size = 3
    trainer = DAETrainer(model_for(cfg), cfg, "stage1", normalizer())
    stage1 = tmp_path / "dae" / "t4" / "stage1" / "final"
    save_dae_checkpoint(stage1, trainer.state(), cfg.to_dict(), meta(cfg))
    n = 5
    rng = np.random.default_rng(0)
    x0 = (rng.normal(size=(n, C, T)) * 2).astype(np.float16)
    cache = ClipCache.create(cfg.path(cfg.audioae.latents_path), [f"k{i}" for i in range(n)], latent_arrays(C, T), 2,
                             {"x0_mean": [0.1] * C, "x0_std": [2.0] * C})
    valid = np.array([20, 13, 1, 20, 8], dtype=np.int32)
    for a, b in cache.blocks():
        cache.write_block(a, b, x0=x0[a:b], valid_frames=valid[a:b], split=np.array(["train"] * (b - a)),
                          x0_sum=np.zeros((b - a, C)), x0_sqsum=np.zeros((b - a, C)))
    path = precompute_z(cfg, progress=False)
    zc = ClipCache.open(path, mode="r")
    assert zc.complete and zc.attrs["t"] == 4
    with torch.no_grad():  # the model masks padding (the default), so the cache's z is that of each clip's real frames
        direct = trainer.model_raw.encode(normalizer().normalize(torch.from_numpy(x0.astype(np.float32))),
                                          torch.from_numpy(valid))
    assert trainer.model_raw.mask_padding
    np.testing.assert_allclose(zc.read("z"), direct.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(zc.read("valid_frames"), [5, 4, 1, 5, 2])  # ceil(valid / t)
    assert precompute_z(cfg, progress=False) == path  # a rerun finds nothing to do
