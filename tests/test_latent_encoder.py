"""The latent encoder g_psi: frame counts, the padding rule, decimated positions, depth presets."""
import pytest
import torch

from spresso.config import load_config
from spresso.config.dae import LatentEncoderConfig
from spresso.models import rope
from spresso.models.latent_encoder import (
    LatentEncoder,
    average_pool,
    build_latent_encoder,
    decimated_positions,
    pooled_frames,
    window_counts,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("t, T, expected", [(4, 500, 125), (9, 500, 56), (20, 500, 25), (100, 500, 5),
                                            (4, 7, 2), (9, 9, 1), (100, 1, 1), (1, 13, 13)])
def test_exact_frame_counts(t, T, expected):
    enc = LatentEncoder(in_channels=16, z_channels=8, t=t, depth=1, heads=2)
    z = enc(torch.randn(2, 16, T))
    assert pooled_frames(T, t) == expected == enc.frames_out(T)
    assert z.shape == (2, 8, expected)
    assert decimated_positions(T, t).shape == (expected,)


def test_short_last_window_is_the_mean_of_its_real_frames_only():
    h = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1)  # frames 0..9, t = 4: windows 0-3, 4-7, 8-9
    pooled = average_pool(h, 4)[0, :, 0]
    torch.testing.assert_close(pooled, torch.tensor([1.5, 5.5, 8.5]))  # not (8 + 9 + 0 + 0) / 4
    torch.testing.assert_close(window_counts(10, 4), torch.tensor([4.0, 4.0, 2.0]))


def test_decimated_positions_are_window_centres():
    # t = 9 (odd): integer centres 4, 13, ...; the last window of 500 frames holds 495..499 -> centre 497.
    p = decimated_positions(500, 9)
    assert p[0] == 4 and p[1] == 13 and p[-1] == 497
    # t = 4 (even): the centre lies between frames 1 and 2 -> 1.5 (RoPE takes real positions).
    torch.testing.assert_close(decimated_positions(12, 4), torch.tensor([1.5, 5.5, 9.5]))
    # The window's centre is the mean of its frame indices, the time its pooled value stands for.
    for T, t in ((500, 9), (37, 4), (500, 100)):
        frames = torch.arange(T, dtype=torch.float32).reshape(1, T, 1)
        torch.testing.assert_close(average_pool(frames, t)[0, :, 0], decimated_positions(T, t))
    # Where T is a multiple of t the DiT's own helper agrees (it floors T / t otherwise).
    # positions of a whole-window pooling agree with the DiT's patch centres (frame_positions)
    torch.testing.assert_close(decimated_positions(500, 20), rope.frame_positions(25, 20))


def test_encoder_is_causal_free_but_pools_locally():
    # A change confined to window 2's frames changes z mostly there; z is finite and per-window.
    torch.manual_seed(0)
    enc = LatentEncoder(in_channels=16, z_channels=8, t=5, depth=0)
    x = torch.randn(1, 16, 25)
    y = x.clone()
    y[..., 10:15] += 3.0
    diff = (enc(x) - enc(y)).abs().sum(1)[0]
    assert diff[2] > 0 and torch.all(diff[[0, 1, 3, 4]] == 0)  # depth 0: pooling only mixes within a window


def test_attention_mixes_frames_and_rope_makes_it_position_aware():
    torch.manual_seed(0)
    enc = LatentEncoder(in_channels=16, z_channels=8, t=5, depth=2, heads=2)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(1, 16, 25)
    y = x.clone()
    y[..., 10:15] += 3.0
    diff = (enc(x) - enc(y)).abs().sum(1)[0]
    assert torch.all(diff > 0)  # attention carries the change to every window
    # Shifting the content in time changes z by more than a shift (positions matter, not just content).
    assert not torch.allclose(enc(x)[..., :4], enc(torch.roll(x, 5, -1))[..., 1:], atol=1e-3)


def test_depth_presets_and_config():
    cfg = LatentEncoderConfig()
    assert [cfg.depth_for(t) for t in (4, 9, 20, 100)] == [6, 10, 12, 12]
    enc = build_latent_encoder(cfg, 9)
    assert len(enc.blocks) == 10 and enc.to_z.in_features == 128 and enc.to_z.out_features == 64
    demo = load_config("demo")
    assert demo.dae.encoder.depth_for(4) < 6  # demo presets stay CPU-sized
    assert load_config("paper").dae.encoder.depth_for(100) == 12
    assert [p.t for p in demo.dae.points] == [4, 9, 20, 100]


def test_bad_input_shape():
    enc = LatentEncoder(in_channels=16, z_channels=8, t=4, depth=1, heads=2)
    with pytest.raises(ValueError, match="expected x0"):
        enc(torch.randn(2, 12, 20))
