"""EDM2 preconditioning/loss and the Heun sampler against values written out by hand (mutation-run gaps).

Public API only: preconditioning, loss_weight, FourierFeatures, LogVariance, Denoiser, sample_sigma,
EDM2Loss; karras_sigmas, guided, heun_sample, evaluations.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from spresso.diffusion.edm2 import (
    Denoiser,
    EDM2Loss,
    FourierFeatures,
    LogVariance,
    loss_weight,
    preconditioning,
    sample_sigma,
)
from spresso.diffusion.sampler import evaluations, guided, heun_sample, karras_sigmas
from spresso.models.text_encoder import TextEmbedding

torch.set_num_threads(1)


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- EDM2 ------------------------------------------------------------------------------------------
def test_preconditioning_and_weight_by_hand():
    c_skip, c_out, c_in, c_noise = preconditioning(torch.tensor([0.5, 2.0]), sigma_data=1.0)
    torch.testing.assert_close(c_skip, torch.tensor([1 / 1.25, 1 / 5]))
    torch.testing.assert_close(c_out, torch.tensor([0.5 / math.sqrt(1.25), 2 / math.sqrt(5)]))
    torch.testing.assert_close(c_in, torch.tensor([1 / math.sqrt(1.25), 1 / math.sqrt(5)]))
    torch.testing.assert_close(c_noise, torch.tensor([math.log(0.5) / 4, math.log(2.0) / 4]))
    ints = preconditioning(torch.tensor([2]))  # integer sigmas are promoted, default sigma_data 0.5
    assert all(c.dtype == torch.float32 for c in ints)
    torch.testing.assert_close(ints[0], torch.tensor([0.25 / 4.25]))
    scalar = preconditioning(3.0, 0.5)
    torch.testing.assert_close(scalar[1], torch.tensor(1.5 / math.sqrt(9.25)))
    torch.testing.assert_close(loss_weight(torch.tensor([2.0]), 0.5), torch.tensor([4.25 / 1.0]))
    torch.testing.assert_close(loss_weight(torch.tensor([0.5])), torch.tensor([0.5 / 0.0625]))
    torch.testing.assert_close(loss_weight(torch.tensor([1.0]), 2.0), torch.tensor([5.0 / 4.0]))


def test_fourier_features_and_logvariance():
    f = FourierFeatures(6, seed=3)
    g = torch.Generator().manual_seed(3)
    freqs, phases = 2 * math.pi * torch.randn(6, generator=g), 2 * math.pi * torch.rand(6, generator=g)
    torch.testing.assert_close(f.freqs, freqs)
    torch.testing.assert_close(f.phases, phases)
    x = torch.tensor([0.0, 0.7], dtype=torch.float64)
    torch.testing.assert_close(f(x), (x.float()[:, None] * freqs + phases).cos() * math.sqrt(2))
    assert f(x).dtype == torch.float32 and "freqs" not in f.state_dict() and "phases" not in f.state_dict()
    torch.testing.assert_close(FourierFeatures(4).freqs, 2 * math.pi * torch.randn(4, generator=torch.Generator().manual_seed(0)))
    u = LogVariance(8)
    assert u.fourier.freqs.shape == (8,) and u.linear.in_features == 8 and u.linear.out_features == 1
    torch.testing.assert_close(u(torch.tensor([0.1, -0.3])), torch.zeros(2))  # zero-initialised
    torch.testing.assert_close(u.fourier.freqs, FourierFeatures(8, seed=1).freqs)
    with torch.no_grad():
        u.linear.weight.fill_(0.5)
        u.linear.bias.fill_(0.25)
    c = torch.tensor([0.2])
    torch.testing.assert_close(u(c), u.fourier(c).sum(-1) * 0.5 + 0.25)
    assert LogVariance().linear.in_features == 128


class Probe(torch.nn.Module):
    """F(x_in, c_noise) = 3 x_in + c_noise, recording its inputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, c_noise, **cond):
        self.calls.append((x.clone(), c_noise.clone(), cond))
        return 3 * x + c_noise.view(-1, *([1] * (x.dim() - 1)))


def test_denoiser_wraps_the_network_exactly():
    net = Probe()
    den = Denoiser(net, sigma_data=0.5, logvar_channels=4)
    assert den.sigma_data == 0.5 and den.logvar.linear.in_features == 4
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    sigma = torch.tensor([0.3, 4.0])
    out = den(x, sigma, extra=7)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, 0.5)
    xi, cn, cond = net.calls[-1]
    torch.testing.assert_close(xi, x.float() * c_in.view(-1, 1, 1))
    torch.testing.assert_close(cn, c_noise)
    assert cond == {"extra": 7}
    torch.testing.assert_close(out, c_skip.view(-1, 1, 1) * x.float() + c_out.view(-1, 1, 1) * (3 * xi + cn.view(-1, 1, 1)))
    assert out.dtype == torch.float32
    one = den(x, torch.tensor(0.3))  # one sigma for the batch
    torch.testing.assert_close(one[0], out[0])
    assert net.calls[-1][1].shape == (2,)
    D, u = den(x, sigma, return_logvar=True)
    torch.testing.assert_close(D, out)
    torch.testing.assert_close(u, torch.zeros(2))
    assert Denoiser(Probe()).sigma_data == 0.5 and Denoiser(Probe()).logvar.linear.in_features == 128


def test_sample_sigma_is_exp_of_a_seeded_normal():
    s = sample_sigma(5, P_mean=-1.0, P_std=0.5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(s, (torch.randn(5, generator=torch.Generator().manual_seed(4)) * 0.5 - 1.0).exp())
    d = sample_sigma(3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(d, (torch.randn(3, generator=torch.Generator().manual_seed(1)) * 1.0 - 0.4).exp())


def test_edm2_loss_by_hand():
    den = Denoiser(Probe(), sigma_data=0.5, logvar_channels=4)
    with torch.no_grad():
        den.logvar.linear.bias.fill_(0.3)  # u = 0.3 everywhere
    y = torch.randn(2, 3)
    sigma, noise = torch.tensor([0.5, 2.0]), torch.randn(2, 3)
    out = EDM2Loss(P_mean=0.0, P_std=1.0, sigma_data=0.5)(den, y, sigma=sigma, noise=noise)
    with torch.no_grad():
        D = den(y + noise * sigma[:, None], sigma)
    sq = (D - y) ** 2
    w = loss_weight(sigma, 0.5)[:, None]
    per_sample = (w / math.exp(0.3) * sq + 0.3).mean(1)
    torch.testing.assert_close(out.per_sample, per_sample)
    torch.testing.assert_close(out.loss, per_sample.mean())
    torch.testing.assert_close(out.mse, sq.mean(1))
    torch.testing.assert_close(out.sigma, sigma)
    assert out.loss.requires_grad and not out.per_sample.requires_grad and not out.mse.requires_grad
    # drawn sigma and noise come from the generator, in that order
    g = torch.Generator().manual_seed(9)
    drawn = EDM2Loss(P_mean=0.7, P_std=0.2)(den, y, generator=torch.Generator().manual_seed(9))
    s = sample_sigma(2, 0.7, 0.2, generator=g)
    n = torch.randn(y.shape, generator=g)
    torch.testing.assert_close(drawn.sigma, s)
    torch.testing.assert_close(drawn.loss, EDM2Loss(0.7, 0.2)(den, y, sigma=s, noise=n).loss)
    loss = EDM2Loss()
    assert (loss.P_mean, loss.P_std, loss.sigma_data) == (-0.4, 1.0, 0.5)
    # the loss's own sigma_data weights the error, and the conditioning reaches the network
    net = Probe()
    den2 = Denoiser(net, sigma_data=2.0, logvar_channels=4)
    out2 = EDM2Loss(sigma_data=2.0)(den2, y, sigma=sigma, noise=noise, extra=5)
    assert net.calls[-1][2] == {"extra": 5}
    torch.testing.assert_close(out2.per_sample, (loss_weight(sigma, 2.0)[:, None] * out2.mse[:, None]).mean(1))


def test_denoiser_output_is_float32_whatever_the_sigma_dtype():
    den = Denoiser(Probe(), logvar_channels=4)
    x = torch.randn(2, 3)
    assert den(x, torch.tensor([0.5, 1.0], dtype=torch.float64)).dtype == torch.float32
    assert den(x, torch.tensor([1, 2])).dtype == torch.float32


# -- sampler ---------------------------------------------------------------------------------------
def test_karras_sigmas_by_hand():
    s = karras_sigmas(3, sigma_min=1.0, sigma_max=81.0, rho=2.0)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, torch.tensor([81.0, 25.0, 1.0, 0.0], dtype=torch.float64))  # sqrt: 9, 5, 1
    torch.testing.assert_close(karras_sigmas(1, 0.5, 10.0), torch.tensor([10.0, 0.0], dtype=torch.float64))
    d = karras_sigmas(2)
    torch.testing.assert_close(d, torch.tensor([80.0, 0.002, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=exactly("steps must be >= 1, got 0")):
        karras_sigmas(0)


def recorder(fn):
    calls = []

    def D(x, sigma):
        calls.append(sigma.clone())
        assert x.dtype == torch.float32 and sigma.dtype == torch.float32 and sigma.shape == (x.shape[0],)
        return fn(x, sigma)

    return D, calls


def test_heun_steps_by_hand():
    """Two steps on D(x; s) = x / (1 + s^2) (unit-variance Gaussian data), written out."""
    D, calls = recorder(lambda x, s: x / (1 + s[:, None] ** 2))
    noise = torch.tensor([[1.0, -2.0]])
    out = heun_sample(D, noise=noise, steps=2, sigma_min=0.5, sigma_max=2.0, rho=1.0)
    s0, s1 = 2.0, 0.5
    x = noise.double() * s0
    d0 = (x - x / (1 + s0 ** 2)) / s0
    x1 = x + (s1 - s0) * d0
    d1 = (x1 - x1 / (1 + s1 ** 2)) / s1
    x1 = x + (s1 - s0) * (0.5 * d0 + 0.5 * d1)
    d2 = (x1 - x1 / (1 + s1 ** 2)) / s1
    want = x1 + (0.0 - s1) * d2  # the last step is Euler, onto sigma = 0
    torch.testing.assert_close(out, want.float())
    assert out.dtype == torch.float32
    assert [float(c[0]) for c in calls] == [2.0, 0.5, 0.5]
    assert len(calls) == evaluations(2) == 3 and evaluations(64) == 127 and evaluations(1) == 1


def test_churn_raises_sigma_only_inside_the_window():
    D, calls = recorder(lambda x, s: x * 0)
    g = torch.Generator().manual_seed(0)
    heun_sample(D, noise=torch.ones(1, 2), steps=4, sigma_min=1.0, sigma_max=8.0, rho=1.0, S_churn=0.4,
                S_min=2.0, S_max=6.0, generator=g)
    sig = karras_sigmas(4, 1.0, 8.0, 1.0).tolist()  # 8, 5.667, 3.333, 1, 0
    gamma = 0.4 / 4
    hat = [s * (1 + gamma) if 2.0 <= s <= 6.0 else s for s in sig[:4]]
    want = [hat[0], sig[1], hat[1], sig[2], hat[2], sig[3], hat[3]]
    torch.testing.assert_close(torch.tensor([float(c[0]) for c in calls]), torch.tensor(want, dtype=torch.float32))
    calls.clear()
    heun_sample(D, noise=torch.ones(1, 2), steps=2, sigma_min=1.0, sigma_max=2.0, rho=1.0, S_churn=100.0,
                generator=torch.Generator().manual_seed(0))
    assert float(calls[0][0]) == pytest.approx(2.0 * math.sqrt(2))  # gamma capped at sqrt(2) - 1


def test_churn_noise_and_seeding():
    """With D = 0 one churned Euler step is x_hat (1 - s_next / s_hat): check x_hat's added noise."""
    D, _ = recorder(lambda x, s: torch.zeros_like(x))
    x0 = torch.ones(1, 3)
    g = torch.Generator().manual_seed(5)
    out = heun_sample(D, noise=x0, steps=1, sigma_min=1.0, sigma_max=2.0, S_churn=0.2, S_noise=0.5, generator=g)
    eps = torch.randn((1, 3), generator=torch.Generator().manual_seed(5)).double()
    s_hat = 2.0 * 1.2
    x_hat = x0.double() * 2.0 + math.sqrt(s_hat ** 2 - 4.0) * 0.5 * eps
    torch.testing.assert_close(out, (x_hat + (0 - s_hat) * x_hat / s_hat).float())  # = 0: lands on D
    a = heun_sample(lambda x, s: 0.5 * x, (2, 3), steps=3, generator=torch.Generator().manual_seed(1))
    b = heun_sample(lambda x, s: 0.5 * x, noise=torch.randn((2, 3), generator=torch.Generator().manual_seed(1)), steps=3)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=exactly("heun_sample needs a shape or a noise tensor")):
        heun_sample(lambda x, s: x)


def test_guidance_batches_both_branches_and_mixes_them():
    seen = {}

    def den(x, sigma, drop=None, scale=None, text=None):
        seen.update(x=x, sigma=sigma, drop=drop, scale=scale, text=text)
        base = torch.where(drop[:, None], torch.tensor(1.0), torch.tensor(3.0)) if drop is not None else torch.tensor(3.0)
        return x * 0 + base * scale[:, None]

    x, sigma, scale = torch.zeros(2, 4), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 10.0])
    text = TextEmbedding(torch.ones(2, 3, 5), torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 6))
    out = guided(den, 2.5, scale=scale, text=text)(x, sigma)
    assert seen["x"].shape == (4, 4) and seen["sigma"].tolist() == [1.0, 2.0, 1.0, 2.0]
    assert seen["drop"].tolist() == [False, False, True, True] and seen["scale"].tolist() == [1.0, 10.0, 1.0, 10.0]
    assert seen["text"].tokens.shape[0] == 4
    torch.testing.assert_close(out, (1.0 + 2.5 * (3.0 - 1.0)) * scale[:, None].expand(2, 4))
    plain = guided(den, scale=scale)(x, sigma)  # guidance 1 by default: one plain conditional call
    assert seen["drop"] is None and seen["x"].shape == (2, 4) and seen["sigma"] is sigma
    torch.testing.assert_close(plain, 3.0 * scale[:, None].expand(2, 4))
    guided(den, 2.0, scale=scale, text="not a tensor")(x, sigma)
    assert seen["text"] == "not a tensor"


def test_denoiser_uses_its_own_sigma_data():
    den = Denoiser(Probe(), sigma_data=2.0, logvar_channels=4)
    x, sigma = torch.randn(2, 3), torch.tensor([0.5, 3.0])
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, 2.0)
    want = c_skip[:, None] * x + c_out[:, None] * (3 * x * c_in[:, None] + c_noise[:, None])
    torch.testing.assert_close(den(x, sigma), want)
