"""AudioAE model: exact framing, batching, losses, discriminators and strict checkpoints."""
import numpy as np
import pytest
import torch

from spresso.config import load_config
from spresso.config.audioae import AudioAEModelConfig
from spresso.core.checkpoint import CheckpointError
from spresso.core.errors import SpressoError
from spresso.models.audioae import AudioAE, load_audioae
from spresso.models.discriminators import AudioDiscriminator
from spresso.models.mel import mel_filterbank, multiscale_mel_distance
from spresso.models.stft import ISTFT, STFT
from spresso.train.gan_losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)

torch.set_num_threads(1)
TINY = AudioAEModelConfig(width=32, blocks=1, intermediate=64)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AudioAE.from_config(TINY).eval()


@pytest.mark.parametrize("frames", [1, 2, 7, 100, 500])
def test_same_framing_exact_frames_and_samples(tiny, frames):
    wave = torch.randn(2, frames * 480)
    with torch.no_grad():
        x0 = tiny.encode(wave)
        assert x0.shape == (2, 128, frames)
        assert tiny.decode(x0).shape == (2, frames * 480)


def test_stft_istft_is_a_perfect_reconstruction():
    stft, istft = STFT(960, 480), ISTFT(960, 480)
    for n in (480, 4800, 48000):
        wave = torch.randn(3, n)
        spec = stft(wave)
        assert spec.shape == (3, 481, n // 480)
        assert torch.allclose(istft(spec), wave, atol=1e-5)


def test_batched_encode_decode_equals_one_by_one(tiny):
    torch.manual_seed(1)
    wave = torch.randn(3, 4800) * 0.3
    with torch.no_grad():
        batch = tiny.encode(wave)
        single = torch.cat([tiny.encode(w[None]) for w in wave])
        assert torch.allclose(batch, single, atol=1e-5)
        assert torch.allclose(tiny.decode(batch), torch.cat([tiny.decode(x[None]) for x in batch]), atol=1e-5)


def test_bad_lengths_and_shapes_are_one_line_errors(tiny):
    with pytest.raises(SpressoError, match="multiple of the hop"):
        tiny.encode(torch.zeros(1, 1000))
    with pytest.raises(SpressoError, match="multiple of the hop"):
        tiny.encode(torch.zeros(1, 0))
    with pytest.raises(SpressoError, match=r"\[B, n\]"):
        tiny.encode(torch.zeros(4800))
    with pytest.raises(SpressoError, match="latents"):
        tiny.decode(torch.zeros(1, 64, 10))


def convnext_parameters(c_in: int, dim: int, inter: int, blocks: int, k: int) -> int:
    """Parameters of a ConvNeXt backbone, written out: embed conv, 2 LayerNorms, and per block a depthwise
    conv, a LayerNorm, two pointwise linears and the layer scale."""
    block = (dim * k + dim) + 2 * dim + (dim * inter + inter) + (inter * dim + dim) + dim
    return (c_in * dim * k + dim) + 2 * dim + blocks * block + 2 * dim


def test_paper_preset_builds_a_vocos_sized_model_that_frames_exactly():
    cfg = load_config("paper").audioae.model
    model = AudioAE.from_config(cfg).eval()
    bins = cfg.n_fft // 2 + 1
    encoder = convnext_parameters(2 * bins, 512, 1536, 8, cfg.kernel_size) + 512 * 128 + 128
    decoder = convnext_parameters(128, 512, 1536, 8, cfg.kernel_size) + 512 * 2 * bins + 2 * bins
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    assert 13.0e6 < decoder < 14.0e6  # Vocos' 48 kHz-class decoder: about 13.5 M parameters
    with torch.no_grad():
        x0 = model.encode(torch.randn(1, 4800) * 0.1)
        assert x0.shape == (1, 128, 10) and torch.isfinite(x0).all()
        assert model.decode(x0).shape == (1, 4800)
    with pytest.raises(Exception, match="same"):
        AudioAEModelConfig(n_fft=961)


def test_mel_distance_zero_for_identity_and_log_gain():
    torch.manual_seed(2)
    ref = torch.randn(2, 9600) * 0.2
    d0 = multiscale_mel_distance(ref, ref)
    assert d0.shape == (2,) and torch.all(d0 == 0)
    # Halving the amplitude shifts every non-clamped log10-mel bin by log10(2): at most 7 x 0.301.
    d = multiscale_mel_distance(0.5 * ref, ref)
    assert torch.all(d > 0.8 * 7 * np.log10(2)) and torch.all(d <= 7 * np.log10(2) + 1e-4)
    assert multiscale_mel_distance(torch.zeros(1, 480), torch.randn(1, 480)).shape == (1,)
    fb = mel_filterbank(48000, 2048, 320)
    assert fb.shape == (320, 1025) and (fb.sum(1) > 0).mean() > 0.9


def test_discriminators_shapes_and_gradients():
    cfg = load_config("demo").audioae.disc
    disc = AudioDiscriminator.from_config(cfg)
    wave = torch.randn(2, 4800, requires_grad=True)
    logits, fmaps = disc(wave)
    assert len(logits) == len(cfg.periods) + len(cfg.stft_windows) == len(fmaps)
    assert all(l.shape[0] == 2 for l in logits)
    # period D: 5 convs + post; STFT D: 5 convs per band + post
    assert [len(f) for f in fmaps] == [6] * 5 + [5 * 5 + 1] * 3
    generator_adversarial_loss(logits).backward()
    assert wave.grad is not None and wave.grad.abs().sum() > 0


def test_gan_losses_values():
    ones, zeros = [torch.ones(2, 3)], [torch.zeros(2, 3)]
    assert discriminator_loss(ones, zeros, "lsgan") == 0
    assert discriminator_loss(zeros, ones, "lsgan") == 2
    assert generator_adversarial_loss(ones, "lsgan") == 0
    assert discriminator_loss([torch.full((2,), 1.0)], [torch.full((2,), -1.0)], "hinge") == 0
    assert discriminator_loss(zeros, zeros, "hinge") == 2
    assert generator_adversarial_loss(zeros, "hinge") == 1
    fm = feature_matching_loss([[torch.ones(3)]], [[torch.zeros(3)]])
    assert fm == 1
    with pytest.raises(ValueError):
        discriminator_loss(ones, zeros, "wgan")


def _save(tmp_path, model_cfg, name="ckpt"):
    from spresso.config import load_config
    from spresso.train.audioae import AudioAETrainer

    cfg = load_config("demo", [f"audioae.model.width={model_cfg.width}", f"audioae.model.blocks={model_cfg.blocks}",
                               f"audioae.model.intermediate={model_cfg.intermediate}"])
    trainer = AudioAETrainer(cfg.audioae)
    return trainer, trainer.save(tmp_path / name, cfg.to_dict())


def test_checkpoint_round_trip_strict(tmp_path):
    trainer, path = _save(tmp_path, TINY)
    loaded = load_audioae(path)
    wave = torch.randn(1, 2400)
    with torch.no_grad():
        assert torch.equal(loaded.encode(wave), trainer.model.eval().encode(wave))
    assert not loaded.training
    # Full training state comes back too (optimisers, schedulers, discriminators, step).
    from spresso.train.audioae import AudioAETrainer

    other = AudioAETrainer(load_config("demo", ["audioae.model.width=32", "audioae.model.blocks=1",
                                                 "audioae.model.intermediate=64"]).audioae)
    trainer.step = 7
    trainer.save(tmp_path / "s7", load_config("demo").to_dict())
    assert other.restore(tmp_path / "s7") == 7


def test_mismatched_checkpoint_is_a_checkpoint_error(tmp_path):
    _, path = _save(tmp_path, TINY)
    import json

    info = json.loads((path / "config.json").read_text())
    info["config"]["audioae"]["model"]["width"] = 48  # config claims a different model than the weights
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="shape mismatch|do not match"):
        load_audioae(path)
    info["kind"] = "dit"
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="expected 'audioae'"):
        load_audioae(path)
    with pytest.raises(CheckpointError):
        load_audioae(tmp_path / "nowhere")


def test_checkpoint_publish_and_load_from_a_url(tmp_path):
    """Remote storage (s3:// on a cluster) goes through fsspec; memory:// stands in for it."""
    import fsspec

    from spresso.train.driver import publish_checkpoint, published_digest

    trainer, path = _save(tmp_path, TINY)

    class Result:  # what copy_checkpoint needs from a Ray Train result
        class checkpoint:
            @staticmethod
            def to_directory(d):
                import shutil

                shutil.copytree(path, d)

    digest = publish_checkpoint(Result, "memory://aae/final")
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/aae/final", detail=False)) == ["config.json", "model.safetensors"]
    assert published_digest("memory://aae/final") == digest
    wave = torch.randn(1, 960)
    with torch.no_grad():
        assert torch.equal(load_audioae("memory://aae/final").encode(wave), trainer.model.eval().encode(wave))
