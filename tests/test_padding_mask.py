"""dae.encoder.mask_padding: a clip's zero padding leaves the loss, g_psi and the DiT's keys; off, nothing changes."""
import pytest
import torch
from test_conditioned_dit import C, LoRASettings, R, pretrained, text

from spresso.config.dae import LatentEncoderConfig
from spresso.diffusion.autoencoder import build_dae
from spresso.diffusion.edm2 import EDM2Loss
from spresso.diffusion.padding import frame_mask, token_mask
from spresso.models.latent_encoder import LatentEncoder, average_pool

torch.set_num_threads(1)
T, VALID = 24, torch.tensor([24, 9])  # the second clip: 9 real frames, 15 of padding


def dae(mask_padding: bool, t: int = 4):
    enc = LatentEncoderConfig(z_channels=6, heads=2, depth=1, mask_padding=mask_padding)
    return build_dae(pretrained(), enc, t, LoRASettings(rank=R, alpha=R), "audio").eval()


def clips(padding_seed: int) -> torch.Tensor:
    x = torch.randn(2, C, T, generator=torch.Generator().manual_seed(0))
    # what fills the padding must not matter once it is masked (not a constant: LayerNorm maps any constant to 0)
    x[1, :, 9:] = torch.randn(C, T - 9, generator=torch.Generator().manual_seed(padding_seed))
    return x


def test_masks_mark_real_frames_and_tokens_that_hold_any_real_frame():
    assert frame_mask(VALID, 5 + 7).tolist()[1] == [True] * 9 + [False] * 3
    assert token_mask(VALID, T, 4).tolist() == [[True] * 6, [True, True, True, False, False, False]]
    assert token_mask(torch.tensor([1]), 10, 4).tolist() == [[True, False, False]]


def test_masked_pooling_averages_real_frames_and_zeroes_windows_of_padding():
    h = torch.arange(2 * 8 * 1, dtype=torch.float32).reshape(2, 8, 1)
    mask = frame_mask(torch.tensor([8, 3]), 8)
    out = average_pool(h, 4, mask)
    assert out[0, :, 0].tolist() == [1.5, 5.5]  # unmasked clip: the plain window means
    assert out[1, :, 0].tolist() == [9.0, 0.0]  # frames 8, 9, 10 of the second clip; the second window is padding


def test_with_the_setting_the_padding_changes_neither_z_nor_the_real_frames_output_nor_the_loss():
    torch.manual_seed(0)
    model = dae(True)
    a, b = clips(1), clips(2)
    z_a, z_b = model.encode(a, VALID), model.encode(b, VALID)
    assert torch.allclose(z_a[:, :, :3], z_b[:, :, :3], atol=1e-5)  # windows with real frames: the same z
    sigma = torch.tensor([0.7, 0.7])
    noisy_a, noisy_b = a + 0.7, b + 0.7
    with torch.no_grad():
        d_a = model(noisy_a, sigma, text(), z_from=a, valid_frames=VALID)
        d_b = model(noisy_b, sigma, text(), z_from=b, valid_frames=VALID)
    assert torch.allclose(d_a[1, :, :8], d_b[1, :, :8], atol=1e-4)  # 2 whole 4-frame patches of real audio
    assert torch.allclose(d_a[0], d_b[0], atol=1e-4)  # the other clip in the batch is untouched
    loss = EDM2Loss()
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    fixed = {"sigma": sigma, "noise": noise, "frame_mask": frame_mask(VALID, T), "text": text(), "valid_frames": VALID}
    with torch.no_grad():
        la, lb = loss(model, a, z_from=a, **fixed), loss(model, b, z_from=b, **fixed)
    # the real frames of clip 2 share patch 3 with padding frames, whose noisy input differs: near, not equal
    assert la.per_sample[0] == pytest.approx(float(lb.per_sample[0]), rel=1e-5)
    assert la.per_sample[1] == pytest.approx(float(lb.per_sample[1]), rel=0.05)


def test_without_the_setting_valid_frames_are_ignored_and_the_padding_counts():
    model = dae(False)
    a, b = clips(1), clips(2)
    assert torch.equal(model.encode(a, VALID), model.encode(a))
    z_a, z_b = model.encode(a, VALID), model.encode(b, VALID)
    assert (z_a[1, :, 2] - z_b[1, :, 2]).abs().max() > 0.1  # window 3: 1 real frame, 3 of padding, all averaged
    assert not torch.equal(z_a[1, :, :2], z_b[1, :, :2])  # and the padding leaks through attention


def test_the_loss_mask_averages_over_real_frames_only():
    y = torch.zeros(2, C, T)
    out_full = torch.zeros(2, C, T)
    out_full[1, :, 9:] = 5.0  # wrong only on the padding of clip 2
    denoiser = lambda x, s, return_logvar=False, **kw: (out_full, torch.zeros(x.shape[0]))  # noqa: E731
    sigma, noise = torch.tensor([1.0, 1.0]), torch.zeros(2, C, T)
    masked = EDM2Loss()(denoiser, y, sigma=sigma, noise=noise, frame_mask=frame_mask(VALID, T))
    plain = EDM2Loss()(denoiser, y, sigma=sigma, noise=noise)
    assert masked.per_sample.tolist() == [0.0, 0.0] and masked.mse.tolist() == [0.0, 0.0]
    assert plain.per_sample[1] > 0 and plain.mse[1] == pytest.approx(25.0 * 15 / 24)


def test_the_setting_is_stored_with_the_encoder_and_old_configs_read_as_off():
    cfg = LatentEncoderConfig()
    assert cfg.mask_padding is True  # the default since it measured better at 1 Hz (README)
    tree = cfg.model_dump(mode="json")
    assert LatentEncoderConfig.stored(tree).mask_padding is True
    tree.pop("mask_padding")
    assert LatentEncoderConfig.stored(tree).mask_padding is False
    assert isinstance(dae(True).encoder, LatentEncoder) and dae(True).mask_padding and not dae(False).mask_padding


def test_the_codec_decoder_masks_padding_like_the_model_and_only_for_a_model_that_masks():
    from spresso.codec.fast_decode import CachedDenoiser
    from spresso.diffusion.reconstruct import null_text

    for mask_padding in (True, False):
        model = dae(mask_padding)
        x, s = clips(1), torch.tensor([3.0, 0.3])
        z = model.encode(x, VALID)
        with torch.no_grad():
            ref = model(x, s, null_text(model, 2, "cpu"), z, drop=torch.ones(2, dtype=torch.bool), valid_frames=VALID)
            unmasked = model(x, s, null_text(model, 2, "cpu"), z, drop=torch.ones(2, dtype=torch.bool))
        torch.testing.assert_close(CachedDenoiser(model, z, T, valid_frames=VALID)(x, s), ref)
        assert torch.equal(ref, unmasked) is not mask_padding  # the masks change the output only when the model masks


def test_codec_windows_know_their_signal_frames():
    from spresso.codec import windowing as win

    short = win.plan_for_signal(48000 * 3 // 2)  # 1.5 s: one window, 150 of its 500 frames are signal
    assert win.plan_x0_frames(short, range(short.n_windows)) == [150]
    long = win.plan_for_signal(48000 * 12)
    frames = win.plan_x0_frames(long, range(long.n_windows))
    assert frames[:-1] == [500] * (long.n_windows - 1) and 0 < frames[-1] <= 500
    assert -(-frames[-1] // 100) == win.last_window_frames(long, 100)  # the z frames a stream keeps of that window


def test_a_bundle_that_masks_padding_encodes_a_short_sound_from_its_signal_frames_only(tmp_path):
    import numpy as np
    from codec_toys import make_bundle

    import spresso
    from spresso.codec import windowing as win

    codec = spresso.load(make_bundle(tmp_path, continuous=True, mask_padding=True))
    assert codec.dae.mask_padding
    wave = np.random.default_rng(0).standard_normal(48000 * 3 // 2).astype(np.float32) * 0.1
    data = codec.encode(wave, 48000)
    window = win.cut(wave, win.plan_for_signal(wave.shape[0]))
    masked, seen = codec.encode_windows(np.array(window), None, [150]), codec.encode_windows(np.array(window), None)
    stream = spresso.codec.bitstream.decode_stream(data)
    np.testing.assert_allclose(stream.z, masked[0][:, : stream.n_frames].astype(np.float16), rtol=1e-3, atol=1e-3)
    assert not np.allclose(masked[0][:, :2], seen[0][:, :2], atol=1e-4)  # the padding would have changed z
    out, sr = codec.decode(data, steps=1)
    assert out.shape == wave.shape and np.isfinite(out).all() and sr == 48000
