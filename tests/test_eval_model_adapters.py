"""The harness's adapters for our own models (stage 1, the faiss-RQ ablation, a codec bundle), on toy checkpoints."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from codec_toys import T_POOL, ZC, make_checkpoints, shared_bundle

import spresso
from spresso.core.errors import SpressoError
from spresso.eval.adapter import roundtrip
from spresso.eval.baselines import build_adapter
from spresso.eval.baselines.dae import save_rq
from spresso.eval.baselines.neural import load_sqcodec
from spresso.quant import FaissRQ

torch.set_num_threads(2)
N = 240000  # one 5 s clip at 48 kHz


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ck"))


def clip(seed=0):
    return (np.random.default_rng(seed).standard_normal(N) * 0.1).astype(np.float32)


def frames_per_clip():
    return math.ceil(500 / T_POOL)  # z frames of a 5 s clip (x0 at 100 Hz, pooled by t)


def test_stage1_adapter_stores_float16_z_and_decodes_a_clip(checkpoints):
    a = build_adapter(f"stage1:{checkpoints['stage']},audioae={checkpoints['audioae']},steps=2")
    assert a.available() == (True, "")
    assert a.info.frame_rate_hz == pytest.approx(100 / T_POOL)
    r = roundtrip(a, clip())
    assert r.reconstruction.shape == (N,) and np.isfinite(r.reconstruction).all() and np.abs(r.reconstruction).max() > 0
    assert r.num_bytes >= ZC * frames_per_clip() * 2  # float16 z: 2 bytes per value, plus its shape
    assert r.num_bytes <= ZC * frames_per_clip() * 2 + 16
    data = a.encode(clip())
    v0, v1 = a.decode_variation(data, N, 0), a.decode_variation(data, N, 1)
    assert not np.allclose(v0, v1)  # other seeds are other renditions
    np.testing.assert_array_equal(v0, a.decode(data, N))  # seed 0 is the decode


def test_rq_adapter_codes_at_m_bits_per_frame_and_checks_m(checkpoints, tmp_path):
    z = np.random.default_rng(0).standard_normal((3000, ZC)).astype(np.float32)
    save_rq(FaissRQ(ZC, 4, 16, beam=4, train_type="default").train(z), tmp_path / "rq")
    spec = f"rq:{checkpoints['stage']},audioae={checkpoints['audioae']},rq={tmp_path / 'rq'},m=3,steps=2"
    a = build_adapter(spec)
    assert a.available() == (True, "")
    assert a.info.nominal_bitrate_bps == pytest.approx(3 * 4 * 100 / T_POOL)  # m x log2 K x frame rate
    r = roundtrip(a, clip())
    assert r.reconstruction.shape == (N,) and np.isfinite(r.reconstruction).all()
    assert r.num_bytes == 4 + math.ceil(frames_per_clip() * 3 * 4 / 8)  # frame count + packed codes
    too_many = build_adapter(spec.replace("m=3", "m=5"))
    ok, why = too_many.available()
    assert not ok and "m=5" in why
    assert not build_adapter(spec.replace(str(tmp_path / "rq"), str(tmp_path / "none"))).available()[0]


def test_bundle_adapter_describes_its_point_and_round_trips():
    bundle = shared_bundle()
    a = build_adapter(f"spresso:{bundle},steps=2")
    assert a.available() == (True, "")
    assert a.info.frame_rate_hz == pytest.approx(100 / T_POOL) and a.info.nominal_bitrate_bps > 0
    assert "t=100" in a.info.variant and "m=3" in a.info.variant
    r = roundtrip(a, clip())
    assert r.reconstruction.shape == (N,) and np.isfinite(r.reconstruction).all()

    assert r.num_bytes == len(spresso.load(bundle).encode(clip(), 48000))  # the .spr bytes, header included
    peeled = build_adapter(f"spresso:{bundle},codebooks=1,steps=2")
    assert "m=1" in peeled.info.variant and peeled.info.nominal_bitrate_bps < a.info.nominal_bitrate_bps
    assert len(peeled.encode(clip())) < len(a.encode(clip()))


def test_sqcodec_loader_reloads_saved_random_weights_strictly(tmp_path):
    """No real SQCodec weights here: a randomly initialised network, saved per module, loads back exactly."""
    sq_codec = pytest.importorskip("sq_codec")

    torch.manual_seed(0)
    ref = sq_codec.SQCodec(sq_codec.SQCodecConfig(config_file=Path(sq_codec.CONFIG_DIR) / "0k75bps.toml"))
    ref.network.eval()
    for name, module in ref.network.trainable_modules.items():
        torch.save(module.state_dict(), tmp_path / f"{name}.pt")
    a = build_adapter(f"sqcodec:{tmp_path},config=0k75bps")
    assert a.available() == (True, "")
    loaded = load_sqcodec(tmp_path, "0k75bps")
    for name, module in ref.network.trainable_modules.items():
        for k, v in module.state_dict().items():
            assert torch.equal(loaded.network.trainable_modules[name].state_dict()[k].cpu(), v), (name, k)
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)  # 1 s at its 16 kHz
    data = a.encode(wave)
    assert a.info.sample_rate == 16000 and a.info.frame_rate_hz == pytest.approx(16000 / 360)
    assert a.decode(data, wave.size).shape == wave.shape
    # The same codes decode to the same audio through the reference network (the stream carries them exactly).
    with torch.inference_mode():
        _, idx = ref.encode_audio(torch.from_numpy(wave)[None])
        expected = ref.decode_audio(indices=idx)[0].numpy()[: wave.size]
    np.testing.assert_allclose(a.decode(data, wave.size), expected, atol=1e-5)
    # A module file of another network is refused with one line.
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "decoder.pt")
    with pytest.raises(SpressoError, match="do not match"):
        load_sqcodec(tmp_path, "0k75bps")
    with pytest.raises(SpressoError, match="no config"):
        load_sqcodec(tmp_path, "nonsense")
