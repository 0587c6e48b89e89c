"""EDM2 preconditioning, loss, sigma sampling, latent normalisation and the power EMA."""
import math

import pytest
import torch

from spresso.core.errors import SpressoError
from spresso.diffusion.edm2 import (
    Denoiser,
    EDM2Loss,
    loss_weight,
    preconditioning,
    sample_sigma,
)
from spresso.diffusion.ema import EMA, std_to_gamma
from spresso.diffusion.normalize import LatentNormalizer

torch.set_num_threads(1)


@pytest.mark.parametrize("sigma, expected", [
    # hand-computed with sigma_data = 0.5: (c_skip, c_out, c_in, c_noise)
    (0.5, (0.5, 0.25 / math.sqrt(0.5), 1 / math.sqrt(0.5), math.log(0.5) / 4)),
    (2.0, (0.25 / 4.25, 1.0 / math.sqrt(4.25), 1 / math.sqrt(4.25), math.log(2.0) / 4)),
    (0.002, (0.25 / (0.25 + 4e-6), 0.001 / math.sqrt(0.25 + 4e-6), 1 / math.sqrt(0.25 + 4e-6), math.log(0.002) / 4)),
])
def test_preconditioning_hand_computed(sigma, expected):
    got = preconditioning(torch.tensor(sigma, dtype=torch.float64), 0.5)
    for g, e in zip(got, expected):
        assert float(g) == pytest.approx(e, rel=1e-9)
    c_out = expected[1]
    assert float(loss_weight(torch.tensor(sigma, dtype=torch.float64))) == pytest.approx(1 / c_out ** 2, rel=1e-9)


class Zero(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = None

    def forward(self, x, c_noise, **cond):
        self.seen = (x.clone(), c_noise.clone())
        return x * self.w


def test_denoiser_applies_c_in_c_noise_and_skip():
    net = Zero()
    D = Denoiser(net, 0.5)
    x = torch.randn(3, 4, 5)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    out = D(x, sigma)
    c_skip, _, c_in, c_noise = preconditioning(sigma)
    torch.testing.assert_close(out, c_skip.view(-1, 1, 1) * x)  # F = 0 -> D = c_skip x
    torch.testing.assert_close(net.seen[0], c_in.view(-1, 1, 1) * x)
    torch.testing.assert_close(net.seen[1], c_noise)


def test_edm2_loss_value_and_logvar_gradient():
    D = Denoiser(Zero(), 0.5)
    y = torch.randn(2, 3, 4) * 0.5
    n = torch.randn(2, 3, 4)
    sigma = torch.tensor([0.3, 3.0])
    out = EDM2Loss()(D, y, sigma=sigma, noise=n)
    # u(sigma) = 0 at init: loss = lambda * mean (c_skip (y + sigma n) - y)^2
    c_skip = preconditioning(sigma)[0].view(-1, 1, 1)
    mse = ((c_skip * (y + sigma.view(-1, 1, 1) * n) - y) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(out.mse, mse)
    torch.testing.assert_close(out.per_sample, loss_weight(sigma) * mse)
    out.loss.backward()
    assert D.logvar.linear.bias.grad is not None and D.logvar.linear.bias.grad.abs() > 0


def test_learned_logvar_reaches_log_of_weighted_error():
    # For fixed errors, min_u  w e / exp(u) + u  is at u = ln(w e): the weighting learns the loss scale.
    D = Denoiser(Zero(), 0.5)
    opt = torch.optim.Adam(D.logvar.parameters(), lr=0.05)
    y, n, sigma = torch.randn(4, 2, 8) * 0.5, torch.randn(4, 2, 8), torch.full((4,), 1.0)
    for _ in range(300):
        out = EDM2Loss()(D, y, sigma=sigma, noise=n)
        opt.zero_grad(), out.loss.backward(), opt.step()
    target = math.log(float((loss_weight(sigma) * out.mse).mean()))
    u = float(D.logvar(preconditioning(sigma)[3]).mean().detach())
    assert u == pytest.approx(target, abs=0.05)


def test_sigma_is_log_normal():
    g = torch.Generator().manual_seed(0)
    s = sample_sigma(40000, -0.4, 1.2, generator=g).log()
    assert float(s.mean()) == pytest.approx(-0.4, abs=0.03)
    assert float(s.std()) == pytest.approx(1.2, abs=0.03)


def test_normalizer_roundtrip_and_scale():
    mean, std = torch.randn(4) * 3, torch.rand(4) + 0.5
    x0 = mean.view(-1, 1) + std.view(-1, 1) * torch.randn(2, 4, 20000)
    norm = LatentNormalizer.from_attrs({"x0_mean": mean.tolist(), "x0_std": std.tolist()}, 0.5)
    y = norm.normalize(x0)
    assert float(y.std()) == pytest.approx(0.5, rel=0.02)
    torch.testing.assert_close(norm.denormalize(y), x0, rtol=1e-4, atol=1e-4)
    with pytest.raises(SpressoError, match="x0_mean"):
        LatentNormalizer.from_attrs({})
    with pytest.raises(SpressoError, match="positive"):
        LatentNormalizer([0.0], [0.0])


def test_ema_power_profile():
    assert std_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's sigma_rel -> gamma
    assert std_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    m = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(m, std=0.10)
    T = 1000
    for t in range(1, T + 1):
        m.weight.data.fill_(float(t))
        ema.update(m)
    # Averaging weights proportional to t^gamma: E[t] = T (gamma + 1) / (gamma + 2).
    g = ema.gamma
    assert float(ema.shadow["weight"]) == pytest.approx(T * (g + 1) / (g + 2), rel=0.01)
    other = torch.nn.Linear(1, 1, bias=False)
    ema.copy_to(other)
    assert float(other.weight.detach()) == pytest.approx(float(ema.shadow["weight"]))
    # The first update copies the weights (beta_1 = 0): no bias toward the random init.
    fresh = torch.nn.Linear(2, 2)
    e2 = EMA(fresh, 0.05)
    before = fresh.weight.detach().clone()
    fresh.weight.data.add_(1.0)
    e2.update(fresh)
    torch.testing.assert_close(e2.shadow["weight"], before + 1.0)
