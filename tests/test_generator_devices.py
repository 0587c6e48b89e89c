"""A torch.Generator lives on one device: CUDA refuses `torch.randn(..., device="cuda", generator=cpu_gen)`.

CI has no GPU, so this check stands in for CUDA's: a TorchFunctionMode refuses any random draw whose
`device=` differs from its generator's, and the loss runs on a second device (PyTorch's `meta`)
with a CPU generator, as a Ray Train worker on `cuda:N` does with the CPU generator of its
resumable batch stream.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from spresso.diffusion.edm2 import EDM2Loss, sample_sigma, seeded_randn


class GeneratorDeviceCheck(TorchFunctionMode):
    """Raises, as CUDA does, when a generator is handed to a draw on another device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator, device = kwargs.get("generator"), kwargs.get("device")
        if generator is not None and device is not None and torch.device(device).type != generator.device.type:
            raise RuntimeError(f"{getattr(func, '__name__', func)}: a {generator.device.type} generator "
                               f"cannot draw on {torch.device(device).type}")
        return func(*args, **kwargs)


class TinyDenoiser(torch.nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.proj = torch.nn.Conv1d(channels, channels, 1)
        self.logvar = torch.nn.Linear(1, 1)

    def forward(self, x, sigma, return_logvar=False):
        out = self.proj(x)
        return (out, self.logvar(sigma[:, None].log())[:, 0]) if return_logvar else out


def test_the_check_refuses_a_draw_on_another_device():
    g = torch.Generator().manual_seed(0)
    with GeneratorDeviceCheck():
        try:
            torch.randn(3, device="meta", generator=g)
        except RuntimeError as err:
            assert "cpu generator cannot draw on meta" in str(err)
        else:
            raise AssertionError("the device check let a cross-device draw through")


def test_edm2_loss_draws_where_its_generator_lives():
    y = torch.randn(2, 4, 8, device="meta")
    net = TinyDenoiser().to("meta")
    with GeneratorDeviceCheck():
        out = EDM2Loss()(net, y, generator=torch.Generator().manual_seed(0))
        sigma = sample_sigma(5, device="meta", generator=torch.Generator().manual_seed(0))
    assert out.loss.device.type == "meta" and out.per_sample.shape == (2,)
    assert sigma.device.type == "meta" and sigma.shape == (5,)


def test_seeded_noise_is_the_generators_numbers_on_any_device():
    a = seeded_randn((3, 4), torch.Generator().manual_seed(7), "cpu")
    b = torch.randn((3, 4), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert seeded_randn((3, 4), torch.Generator().manual_seed(7), "meta").device.type == "meta"


def test_seeded_noise_without_a_generator_and_in_another_dtype():
    assert seeded_randn((2, 3), None, "meta").device.type == "meta"
    assert seeded_randn(4).shape == (4,) and seeded_randn(4).dtype == torch.float32
    wide = seeded_randn((2,), torch.Generator().manual_seed(1), "cpu", dtype=torch.float64)
    assert wide.dtype == torch.float64
