"""Behaviour of the code that moved into the mutation-tested modules in the #14 refactor: the solver
dispatch and step counts (diffusion/sampler), D(x) written once (Denoiser.precondition), the
decoder's per-window crossfade (codec/windowing.window_weight) and `.spr` file I/O (codec/bitstream).
Each is checked against an explicit computation, so `make mutation` has something to kill with.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spresso.codec.bitstream import read_stream_file, write_stream_file
from spresso.codec.windowing import fade_in, plan_windows, window_weight, window_weights
from spresso.config.dit import RHO, SIGMA_MAX, SIGMA_MIN
from spresso.core.errors import SpressoError
from spresso.diffusion.edm2 import Denoiser, preconditioning
from spresso.diffusion.sampler import (
    SOLVERS,
    dpmpp_2m_sample,
    evaluations,
    heun_sample,
    karras_sigmas,
    sample,
)


def shrink(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The ideal denoiser of unit-variance Gaussian data: x / (1 + sigma^2)."""
    return x / (1 + sigma.view(-1, 1, 1) ** 2)


NOISE = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4))
ODD = dict(sigma_min=0.01, sigma_max=20.0, rho=5.0)  # not the defaults, so a dropped argument shows


def test_sample_dispatches_heun_with_every_setting():
    got = sample(shrink, NOISE, steps=4, solver="heun", **ODD)
    torch.testing.assert_close(got, heun_sample(shrink, noise=NOISE, steps=4, **ODD), rtol=0, atol=0)
    assert not torch.equal(got, heun_sample(shrink, noise=NOISE, steps=4))  # the settings matter


def test_sample_dispatches_dpmpp2m_with_every_setting_and_is_the_default():
    want = dpmpp_2m_sample(shrink, NOISE, karras_sigmas(4, **ODD))
    torch.testing.assert_close(sample(shrink, NOISE, steps=4, solver="dpmpp2m", **ODD), want, rtol=0, atol=0)
    default = dpmpp_2m_sample(shrink, NOISE, karras_sigmas(4, SIGMA_MIN, SIGMA_MAX, RHO))
    torch.testing.assert_close(sample(shrink, NOISE, steps=4), default, rtol=0, atol=0)
    assert not torch.equal(want, default)


def test_sample_refuses_an_unknown_solver_and_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown solver 'euler' \(choose from dpmpp2m, heun\)"):
        sample(shrink, NOISE, steps=2, solver="euler")
    assert SOLVERS == ("dpmpp2m", "heun")


def test_network_evaluations_per_solver():
    assert evaluations(64) == 127 == evaluations(64, "heun")
    assert evaluations(32, "dpmpp2m") == 32


def test_karras_sigmas_on_the_callers_device():
    sigmas = karras_sigmas(3, device="meta")
    assert sigmas.device.type == "meta" and sigmas.dtype == torch.float64 and sigmas.shape == (4,)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x, c_noise):
        return self.scale * x + c_noise.view(-1, 1, 1)


def test_precondition_is_d_of_x_written_out():
    den = Denoiser(Linear(), sigma_data=0.5, logvar_channels=8)
    x, sigma = torch.randn(2, 3, 4), torch.tensor([0.3, 2.0])
    c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1) for c in preconditioning(sigma, 0.5))
    want = c_skip * x + c_out * (0.7 * (c_in * x) + c_noise)
    got = den.precondition(den.net, x, sigma)
    assert isinstance(got, torch.Tensor)  # no log-variance unless asked
    torch.testing.assert_close(got, want)
    D, logvar = den.precondition(den.net, x, sigma, return_logvar=True)
    torch.testing.assert_close(D, want)
    assert logvar.shape == (2,)
    # A Python float sigma lands on x's device (here the meta device) and covers the whole batch.
    on_meta = den.to("meta").precondition(den.net, x.to("meta"), 0.3)
    assert on_meta.device.type == "meta" and on_meta.shape == x.shape


@pytest.mark.parametrize("n_windows,overlap", [(1, 40), (2, 40), (3, 40), (4, 0)])
def test_window_weight_is_one_row_of_window_weights(n_windows, overlap):
    window = 200
    plan = plan_windows(window + (n_windows - 1) * (window - overlap), window=window, overlap=overlap)
    assert plan.n_windows == n_windows
    rows = window_weights(plan)
    for k in range(n_windows):
        w = window_weight(plan, k)
        assert w.dtype == np.float32 and w.shape == (window,)
        np.testing.assert_allclose(w, rows[k], rtol=1e-6)
        explicit = np.ones(window)
        if overlap and n_windows > 1:
            if k > 0:
                explicit[:overlap] = fade_in(overlap, "hann")
            if k < n_windows - 1:
                explicit[window - overlap:] = fade_in(overlap, "hann")[::-1]
        np.testing.assert_allclose(w, explicit, rtol=1e-6)
    if overlap and n_windows > 1:
        linear = window_weight(plan, n_windows - 1, "linear")
        np.testing.assert_allclose(linear[:overlap], fade_in(overlap, "linear"), rtol=1e-6)
        assert not np.allclose(linear, window_weight(plan, n_windows - 1))
        with pytest.raises(SpressoError, match="unknown crossfade"):
            window_weight(plan, 0, "cubic")


def test_stream_files_round_trip_and_fail_in_one_line(tmp_path):
    path = tmp_path / "a.spr"
    write_stream_file(path, b"SPR\x02data")
    assert read_stream_file(path) == b"SPR\x02data"
    with pytest.raises(SpressoError, match=r"b\.spr: no such file$"):
        read_stream_file(tmp_path / "b.spr")
    with pytest.raises(SpressoError, match=r": is a directory, expected a \.spr file$"):
        read_stream_file(tmp_path)
    write_stream_file(tmp_path / "missing" / "c.spr", b"x")  # folders are made; the write is whole or nothing
    assert read_stream_file(tmp_path / "missing" / "c.spr") == b"x"
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SpressoError, match=r"file/c\.spr: cannot write there, .*file is a file, not a folder$"):
        write_stream_file(blocker / "c.spr", b"x")
    with pytest.raises(SpressoError, match=r"file/d\.spr: cannot read \(Not a directory\)$"):
        read_stream_file(blocker / "d.spr")
