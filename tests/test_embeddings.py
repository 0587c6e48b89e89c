"""Embedding backends: the shipped aisfx checkpoint (loaded safely), VGGish and CLAP loaders
tested with randomly initialised models saved and reloaded."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spresso.core.errors import SpressoError
from spresso.eval.embeddings import (
    AisfxEmbedding,
    VGGishEmbedding,
    aisfx_checkpoint_path,
    build_vggish,
    load_aisfx_state,
    load_embedding_model,
)
from spresso.eval.metrics import cosine_similarity

torch.set_num_threads(2)


def _sounds(sr, seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)
    noise = 0.3 * rng.standard_normal(t.size) * (t < seconds / 2)
    return np.stack([tone, noise]).astype(np.float32), rng


@pytest.fixture(scope="module")
def aisfx():
    pytest.importorskip("aisfx", reason="aisfx not installed (pip install --no-deps aisfx==0.1.2)")
    return AisfxEmbedding(device="cpu")


def test_aisfx_embeds_frames_and_separates_sounds(aisfx):
    waves, rng = _sounds(44100, 5.0)
    frames = aisfx.embed(waves)
    assert frames.shape == (2, 3, 512) and frames.dtype == np.float32 and np.isfinite(frames).all()
    np.testing.assert_allclose(aisfx.embed(waves), frames, rtol=1e-5, atol=1e-5)  # deterministic (eval mode)
    clip = aisfx.clip_embeddings(frames)
    noise = rng.standard_normal(waves.shape).astype(np.float32)

    def similarity(other):
        return cosine_similarity(clip, aisfx.clip_embeddings(aisfx.embed(other)))

    np.testing.assert_allclose(similarity(0.3 * waves), 1.0, atol=1e-5)  # peak-normalised front end
    slight, strong = similarity(waves + 1e-4 * noise), similarity(waves + 1e-2 * noise)
    cross = cosine_similarity(clip, clip[::-1])
    assert (slight > 0.9).all() and (slight > strong).all() and (strong > cross).all()
    # short clips are padded to one block; other rates are resampled
    assert aisfx.embed(waves[:, :4410]).shape == (2, 1, 512)
    assert aisfx.embed_from(np.zeros((1, 48000 * 5), np.float32), 48000).shape == (1, 3, 512)


def test_aisfx_checkpoint_is_loaded_without_arbitrary_pickles(tmp_path):
    pytest.importorskip("aisfx")
    state = load_aisfx_state(aisfx_checkpoint_path())
    assert "conv_block1.conv1.weight" in state and not any(k.startswith("fc") for k in state)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "evil.pth"
    torch.save(({"embedding_net.x": torch.zeros(1)}, Evil()), bad)
    with pytest.raises(SpressoError, match="safely"):
        load_aisfx_state(bad)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(SpressoError, match="does not match"):
        AisfxEmbedding(checkpoint=_save_pickle(tmp_path / "wrong.pth"), device="cpu")


def _save_pickle(path):
    torch.save(({"embedding_net.conv_block1.conv1.weight": torch.zeros(1)}, {"ds": (0, 1)}), path)
    return path


def test_vggish_loads_a_saved_random_model(tmp_path):
    torch.manual_seed(0)
    net = build_vggish().eval()
    torch.save(net.state_dict(), tmp_path / "vggish.pth")
    save_file(net.state_dict(), str(tmp_path / "vggish.safetensors"))
    del net  # 72M parameters: keep one copy alive at a time
    model = load_embedding_model("vggish", tmp_path / "vggish.pth", device="cpu")
    waves, _ = _sounds(16000, 5.0)
    frames = model.embed(waves)
    assert frames.shape == (2, 5, 128)  # 5 s -> five non-overlapping 0.96 s examples
    assert model.embed(waves[:, :3000]).shape == (2, 1, 128)  # short clip zero-padded to one example
    # both formats reload the same saved weights: identical embeddings
    del model
    again = load_embedding_model("vggish", tmp_path / "vggish.safetensors", device="cpu")
    np.testing.assert_allclose(again.embed(waves), frames, rtol=1e-5, atol=1e-6)
    assert np.abs(frames).sum() > 0
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(SpressoError, match="does not match"):
        VGGishEmbedding(tmp_path / "bad.pth", device="cpu")


def test_missing_checkpoints_and_unknown_backend(tmp_path):
    with pytest.raises(SpressoError, match="local checkpoint"):
        load_embedding_model("vggish")
    with pytest.raises(SpressoError, match="not found"):
        load_embedding_model("vggish", tmp_path / "nope.pth")
    with pytest.raises(SpressoError, match="Hugging Face directory"):
        load_embedding_model("clap", tmp_path)
    with pytest.raises(SpressoError, match="unknown embedding"):
        load_embedding_model("openl3")


def test_clap_loads_a_saved_random_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ClapConfig(
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], hidden_size=32, patch_embeds_hidden_size=16,
                          projection_dim=16, num_hidden_layers=2, window_size=8, spec_size=256, num_mel_bins=64,
                          patch_stride=[4, 4], patch_size=4),
        text_config=dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=16, projection_dim=16),
        projection_dim=16,
    )
    full = transformers.ClapModel(cfg).eval()
    full.save_pretrained(tmp_path)
    transformers.ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(tmp_path)
    model = load_embedding_model("clap", tmp_path, device="cpu")
    waves, _ = _sounds(48000, 5.0)
    frames = model.embed(waves)
    assert frames.shape == (2, 1, 16)
    np.testing.assert_allclose(np.linalg.norm(frames, axis=-1), 1.0, rtol=1e-5)
    # same numbers as the full saved model's own audio path
    inputs = model.features(list(waves), sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        ref = full.get_audio_features(**inputs)
    ref = ref if torch.is_tensor(ref) else ref.pooler_output
    np.testing.assert_allclose(frames[:, 0], torch.nn.functional.normalize(ref, dim=-1).numpy(), atol=1e-5)
    long = np.concatenate([waves, waves, waves], axis=1)  # 15 s -> two 10 s windows
    assert model.embed(long).shape == (2, 2, 16)
