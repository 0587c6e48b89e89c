"""EDM Heun sampler: schedule, evaluation count, closed-form ideal denoisers, churn, CFG, seeding."""
import math

import pytest
import torch

from spresso.diffusion.sampler import evaluations, guided, heun_sample, karras_sigmas

torch.set_num_threads(1)


def test_karras_schedule():
    s = karras_sigmas(64)
    assert s.shape == (65,)
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002) and float(s[-1]) == 0
    assert torch.all(s[1:] < s[:-1])
    # rho = 7 spacing: sigma^(1/7) is linear in the step index.
    r = s[:-1] ** (1 / 7)
    torch.testing.assert_close(r[1:] - r[:-1], torch.full((63,), float(r[1] - r[0]), dtype=torch.float64))
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    assert karras_sigmas(7).shape == (8,)


@pytest.mark.parametrize("steps", [1, 5, 64])
def test_evaluation_count(steps):
    calls = []

    def D(x, sigma):
        calls.append(1)
        return torch.zeros_like(x)

    heun_sample(D, (2, 3), steps=steps, generator=torch.Generator().manual_seed(0))
    assert len(calls) == evaluations(steps) == 2 * steps - 1
    assert evaluations(64) == 127


def test_single_point_data_is_reached_exactly():
    target = torch.tensor([[0.3, -1.2, 2.0, 0.0]]).expand(5, 4)
    out = heun_sample(lambda x, s: target, (5, 4), steps=8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, target, atol=1e-5, rtol=0)


def test_gaussian_data_follows_the_exact_ode():
    # Data N(mu, s^2): ideal D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu); the probability-flow
    # ODE maps x_T = sigma_max * eps to mu + s / sqrt(s^2 + sigma_max^2) * (x_T - mu).
    mu, s = 0.7, 0.4
    D = lambda x, sigma: mu + s ** 2 / (s ** 2 + sigma.view(-1, 1) ** 2) * (x - mu)
    eps = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    exact = mu + s / math.sqrt(s ** 2 + 80.0 ** 2) * (80.0 * eps - mu)
    err = {n: float((heun_sample(D, noise=eps, steps=n) - exact).abs().max()) for n in (32, 64, 128)}
    assert err[64] < 1e-2  # the paper's 64 steps: within 1% of the data scale
    # Second order: doubling the steps divides the error by about 4.
    assert err[32] / err[64] > 3 and err[64] / err[128] > 3


def test_stochastic_sampling_has_the_data_distribution():
    mu, s = -0.5, 0.3
    D = lambda x, sigma: mu + s ** 2 / (s ** 2 + sigma.view(-1, 1) ** 2) * (x - mu)
    out = heun_sample(D, (8, 4000), steps=64, S_churn=10, S_min=0.01, S_max=50, generator=torch.Generator().manual_seed(3))
    assert float(out.mean()) == pytest.approx(mu, abs=0.01)
    assert float(out.std()) == pytest.approx(s, rel=0.03)


def test_seeded():
    D = lambda x, sigma: 0.5 * x / (1 + sigma.view(-1, 1))
    run = lambda seed: heun_sample(D, (2, 8), steps=4, S_churn=5, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(7), run(7))
    assert not torch.allclose(run(7), run(8))


def test_classifier_free_guidance_combines_both_branches():
    class Fake(torch.nn.Module):
        def forward(self, x, sigma, drop=None, text=None):
            cond = torch.where(drop.view(-1, 1), torch.full_like(x, 1.0), torch.full_like(x, 3.0)) if drop is not None else torch.full_like(x, 3.0)
            return cond + 0 * text.sum()

    text = torch.ones(2, 1)
    x, sigma = torch.zeros(2, 4), torch.ones(2)
    torch.testing.assert_close(guided(Fake(), 1.0, text=text)(x, sigma), torch.full((2, 4), 3.0))
    # D_u + w (D_c - D_u) = 1 + 2.5 * (3 - 1)
    torch.testing.assert_close(guided(Fake(), 2.5, text=text)(x, sigma), torch.full((2, 4), 6.0))
