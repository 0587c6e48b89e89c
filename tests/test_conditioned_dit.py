"""The conditioned DiT: audio-down stream, decimated positions, LoRA (frozen base, merge), stage parameters, learning."""
import copy
import math

import pytest
import torch

from spresso.codec.fast_decode import CachedDenoiser
from spresso.config.dae import LatentEncoderConfig, LoRASettings
from spresso.config.dit import DiTConfig, DiTModelConfig
from spresso.diffusion.autoencoder import build_dae, build_denoiser, set_trainable
from spresso.diffusion.edm2 import EDM2Loss
from spresso.diffusion.reconstruct import null_text
from spresso.models.conditioned_dit import (
    AUDIO_DOWN,
    ConditionedDiT,
    add_audio_down,
    merge_lora,
)
from spresso.models.dit import DiT
from spresso.models.mmdit import JointBlock, Stream, StreamInput
from spresso.models.rope import RotaryEmbedding
from spresso.models.text_encoder import TextEmbedding

torch.set_num_threads(1)
C, TD, PD, W, R = 8, 12, 10, 32, 4


def pretrained(joint=2, single=1) -> torch.nn.Module:
    """A 'pretrained' tiny denoiser: random weights so every path carries signal."""
    torch.manual_seed(0)
    cfg = DiTConfig(model=DiTModelConfig(in_channels=C, width=W, heads=4, joint_blocks=joint, single_blocks=single))
    den = build_denoiser(cfg, TD, PD)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in den.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return den


def dae(t=4, init="audio", z_attention="plain", **lora):
    enc = LatentEncoderConfig(z_channels=6, heads=2, depth=1, z_attention=z_attention)
    return build_dae(pretrained(), enc, t, LoRASettings(rank=R, alpha=R, **lora), init)


def text(B=2, seed=0) -> TextEmbedding:
    g = torch.Generator().manual_seed(seed)
    return TextEmbedding(torch.randn(B, 5, TD, generator=g), torch.ones(B, 5, dtype=torch.bool), torch.randn(B, PD, generator=g))


def nonzero_lora(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("t, T", [(4, 20), (9, 20), (20, 20), (100, 30)])
def test_shapes_and_z_dependence(t, T):
    model = dae(t).eval()
    x, sigma = torch.randn(2, C, T), torch.full((2,), 0.7)
    z = model.encode(x)
    assert z.shape == (2, 6, -(-T // t))
    out = model(x, sigma, text(), z)
    assert out.shape == (2, C, T) and torch.all(out.isfinite())
    assert (out - model(x, sigma, text(), z + 1.0)).abs().max() > 1e-4  # z is used
    assert (out - model(x, sigma, text(), None)).abs().max() > 1e-4  # and can be withheld
    with pytest.raises(ValueError, match="does not fit"):
        model(x, sigma, text(), z[..., :-1] if z.shape[-1] > 1 else torch.cat([z, z], -1))


def test_audio_down_uses_decimated_rope_positions():
    model = dae(t=4).eval()
    captured = {}

    def hook(module, args, kwargs):
        captured["positions"] = kwargs["extra"][AUDIO_DOWN].positions
    model.net.dit.register_forward_pre_hook(hook, with_kwargs=True)
    x = torch.randn(1, C, 10)
    model(x, torch.ones(1), text(1), model.encode(x))
    torch.testing.assert_close(captured["positions"], torch.tensor([1.5, 5.5, 8.5]))


def test_audio_down_starts_as_a_copy_of_the_audio_stream():
    model = dae()
    for i, block in enumerate(model.net.dit.joint):
        src = {k.replace(".base_layer.", "."): v for k, v in block.streams["audio"].state_dict().items() if "lora_" not in k}
        dst = block.streams[AUDIO_DOWN].state_dict()
        last = i == len(model.net.dit.joint) - 1
        assert block.streams[AUDIO_DOWN].pre_only == last
        for k, v in dst.items():
            torch.testing.assert_close(v, src[k][: v.shape[0]])
        assert not any("lora_" in n for n, _ in block.streams[AUDIO_DOWN].named_parameters())


def _stream_params(pre_only: bool) -> int:
    return sum(p.numel() for p in Stream(W, 4, pre_only=pre_only).parameters())


def test_only_the_intended_parameters_train_in_each_stage():
    model = dae()
    joint, single = 2, 1
    # LoRA: r (in + out) per adapted layer. Joint blocks: audio (qkv, proj, fc1, fc2) + text
    # (all four, but only qkv in the last block where text is pre-only); single blocks: audio.
    per = {"qkv": R * (W + 3 * W), "proj": R * 2 * W, "fc1": R * (W + 4 * W), "fc2": R * (4 * W + W)}
    full, qkv_only = sum(per.values()), per["qkv"]
    lora = joint * full + (joint - 1) * full + qkv_only + single * full
    f_phi = 6 * W + W
    audio_down = (joint - 1) * _stream_params(False) + _stream_params(True)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    logvar = sum(p.numel() for p in model.denoiser.logvar.parameters())
    counts = {}
    for stage, kw in (("stage1", {}), ("stage3", {}), ("stage3+ad", {"train_audio_down": True})):
        params = set_trainable(model, stage.split("+")[0], **kw)
        assert sum(p.numel() for p in params) == sum(p.numel() for p in model.parameters() if p.requires_grad)
        counts[stage] = sum(p.numel() for p in params)
    assert counts["stage1"] == encoder + f_phi + audio_down + lora + logvar
    assert counts["stage3"] == f_phi + lora + logvar
    assert counts["stage3+ad"] == f_phi + lora + logvar + audio_down
    # The pretrained base is frozen in both stages.
    set_trainable(model, "stage1")
    base = [n for n, p in model.named_parameters() if n in model.parameter_groups()["base"]]
    assert base and not any(dict(model.named_parameters())[n].requires_grad for n in base)
    with pytest.raises(ValueError):
        set_trainable(model, "stage2")


def test_lora_merge_gives_the_same_outputs_and_plain_dit_names():
    model = dae().eval()
    nonzero_lora(model)
    x, sigma = torch.randn(2, C, 16), torch.tensor([0.3, 2.0])
    z = model.encode(x)
    before = model(x, sigma, text(), z)
    merged = copy.deepcopy(model)
    merge_lora(merged)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x, sigma, text(), z), before, atol=1e-5, rtol=1e-5)
    # The merged DiT has exactly the layer names of a DiT built without peft (plus audio-down).
    plain = DiT(DiTModelConfig(in_channels=C, width=W, heads=4, joint_blocks=2, single_blocks=1), TD, PD)
    add_audio_down(plain)
    assert set(merged.net.dit.state_dict()) == set(plain.state_dict())
    # Adapters with B = 0 (fresh) leave the pretrained model unchanged.
    fresh, ref = dae().eval(), pretrained().eval()
    torch.testing.assert_close(fresh(x, sigma, text(), None), ref(x, sigma, text=text()), atol=1e-5, rtol=1e-5)


def test_random_init_and_missing_stream_errors():
    model = dae(init="random")
    block = model.net.dit.joint[0]
    assert not torch.equal(block.streams[AUDIO_DOWN].qkv.weight, block.streams["audio"].qkv.base_layer.weight)
    with pytest.raises(ValueError, match="audio_down"):
        ConditionedDiT(DiT(DiTModelConfig(in_channels=C, width=W, heads=4, joint_blocks=1, single_blocks=0), TD, PD), 6, 4)
    with pytest.raises(ValueError, match="matched no layer"):
        dae(targets=["nonexistent"])


def test_a_few_stage1_steps_lower_the_loss():
    torch.manual_seed(0)
    model = dae(t=4)
    params = set_trainable(model, "stage1")
    opt = torch.optim.AdamW(params, lr=3e-3)
    loss_fn = EDM2Loss()
    g = torch.Generator().manual_seed(0)
    # A tiny synthetic x0 set: 8 clips of smooth, clip-specific curves (z can tell them apart).
    tt = torch.linspace(0, 1, 24)
    freqs = torch.rand(8, C, 1, generator=g) * 6 + 1
    x0 = 0.5 * torch.sin(2 * torch.pi * freqs * tt + torch.rand(8, C, 1, generator=g) * 6)
    emb = text(8)
    fixed_sigma = torch.full((8,), 0.5)
    fixed_noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))

    def eval_loss():
        with torch.no_grad():
            return float(loss_fn(lambda x, s, **kw: model(x, s, emb, model.encode(x0), **kw), x0, sigma=fixed_sigma, noise=fixed_noise).loss)

    start = eval_loss()
    for _ in range(30):
        out = loss_fn(lambda x, s, **kw: model(x, s, emb, model.encode(x0), **kw), x0, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    end = eval_loss()
    assert end < start - 0.05, (start, end)
    # Gradients reached the encoder through z (stage 1 trains g_psi end to end).
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_z_key_bias_of_log_n_weighs_a_key_as_n_copies_of_it():
    """The "multiplicity" z attention: a logit bias of log(n) on a stream's keys equals repeating its tokens n times."""
    torch.manual_seed(0)
    block = JointBlock(W, 4, ("audio", "text", AUDIO_DOWN)).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    rope, c = RotaryEmbedding(W // 4), torch.randn(2, W)
    audio, z, txt = torch.randn(2, 12, W), torch.randn(2, 1, W), torch.randn(2, 3, W)
    pos = torch.arange(12).float()
    base = {"audio": StreamInput(audio, pos), "text": StreamInput(txt, None, torch.tensor([[1, 1, 0], [1, 1, 1]]).bool())}
    n = 6
    biased = block({**base, AUDIO_DOWN: StreamInput(z, torch.tensor([5.5]), key_bias=float(torch.log(torch.tensor(n))))}, c, rope)
    copies = block({**base, AUDIO_DOWN: StreamInput(z.expand(2, n, W), torch.full((n,), 5.5))}, c, rope)
    plain = block({**base, AUDIO_DOWN: StreamInput(z, torch.tensor([5.5]))}, c, rope)
    torch.testing.assert_close(biased["audio"], copies["audio"], atol=1e-5, rtol=1e-5)
    assert (biased["audio"] - plain["audio"]).abs().max() > 1e-3


def test_z_attention_setting_sets_the_bias_by_pooling_factor_and_old_configs_stay_plain():
    for t in (4, 20, 100):  # the tiny DiT has patch 1: a z token summarises t audio tokens
        assert dae(t, z_attention="multiplicity").net.z_key_bias == pytest.approx(math.log(t))
        assert dae(t).net.z_key_bias == 0.0  # the paper's plain attention is the default
    enc = LatentEncoderConfig(z_attention="multiplicity")
    assert enc.z_key_bias(100, 4) == pytest.approx(math.log(25)) and enc.z_key_bias(4, 4) == 0.0
    old = LatentEncoderConfig(z_channels=6).model_dump(mode="json")
    old.pop("z_attention")
    assert LatentEncoderConfig.stored(old).z_attention == "plain"
    assert LatentEncoderConfig.stored(enc.model_dump(mode="json")).z_attention == "multiplicity"


def test_z_key_bias_reaches_every_joint_block():
    model = dae(t=4, z_attention="multiplicity").eval()
    seen = []
    for block in model.net.dit.joint:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0][AUDIO_DOWN].key_bias))
    x = torch.randn(1, C, 12)
    model(x, torch.ones(1), text(1), model.encode(x))
    assert seen == [pytest.approx(math.log(4))] * len(model.net.dit.joint)


def test_cached_decoder_applies_the_z_key_bias_like_the_model():
    model = dae(t=4, z_attention="multiplicity").eval()
    x, s = torch.randn(2, C, 12), torch.tensor([3.0, 0.3])
    z = model.encode(x)
    with torch.no_grad():
        ref = model(x, s, null_text(model, 2, "cpu"), z, drop=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(CachedDenoiser(model, z, 12)(x, s), ref)
