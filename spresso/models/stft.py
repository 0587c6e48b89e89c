"""STFT / ISTFT with "same" framing: exactly ``n // hop`` frames and ``T * hop`` samples back.

torch.stft(center=True) gives ``1 + n // hop`` frames (one too many for a 100 Hz latent), so we
pad ``(n_fft - hop) / 2`` samples on each side ourselves (reflect) and frame without centring:
``1 + (n + n_fft - hop - n_fft) // hop = n // hop`` frames, frame t centred on sample
``t * hop + hop / 2``. The inverse overlap-adds the frames, divides by the summed squared window
(the least-squares ISTFT, as in Vocos) and trims the same ``(n_fft - hop) / 2`` samples from
each end, giving exactly ``T * hop`` samples. torch.istft cannot do this: it checks the NOLA
condition over the whole padded signal, whose outermost sample has window weight 0.

Spectral ops run in float32 even under bf16 autocast (FFTs and the window envelope lose too much
precision in bf16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spresso.core.errors import SpressoError


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


class STFT(nn.Module):
    """Complex STFT ``[B, n] -> [B, n_fft // 2 + 1, n // hop]`` with "same" framing."""

    def __init__(self, n_fft: int = 960, hop: int = 480):
        super().__init__()
        if (n_fft - hop) % 2:
            raise ValueError("n_fft - hop must be even for symmetric 'same' padding")
        self.n_fft, self.hop, self.pad = n_fft, hop, (n_fft - hop) // 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def check_length(self, n: int) -> int:
        if n <= 0 or n % self.hop:
            raise SpressoError(f"audio length {n} is not a positive multiple of the hop ({self.hop} samples)")
        return n // self.hop

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise SpressoError(f"expected a waveform batch [B, n], got shape {tuple(wave.shape)}")
        self.check_length(wave.shape[-1])
        with _no_autocast(wave.device):
            x = wave.float()
            # reflect needs pad < n; the shortest legal input (one hop) is still longer than pad.
            x = F.pad(x.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
            return torch.stft(x, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)


class ISTFT(nn.Module):
    """Inverse of :class:`STFT`: ``[B, n_fft // 2 + 1, T] -> [B, T * hop]``."""

    def __init__(self, n_fft: int = 960, hop: int = 480):
        super().__init__()
        self.n_fft, self.hop, self.pad = n_fft, hop, (n_fft - hop) // 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        with _no_autocast(spec.device):
            spec = spec.to(torch.complex64)
            T = spec.shape[-1]
            frames = torch.fft.irfft(spec, n=self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
            out_len = (T - 1) * self.hop + self.n_fft
            # Overlap-add with fold: frames [B, n_fft, T] -> [B, 1, 1, out_len].
            y = F.fold(frames, output_size=(1, out_len), kernel_size=(1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
            env = F.fold(
                self.window.square()[None, :, None].expand(1, -1, T),
                output_size=(1, out_len), kernel_size=(1, self.n_fft), stride=(1, self.hop),
            )[0, 0, 0]
            y = y[:, self.pad : out_len - self.pad]
            env = env[self.pad : out_len - self.pad]
            # Inside the trimmed region the envelope is >= window[pad]^2 = 0.25 for Hann 960/480.
            return y / env.clamp_min(1e-8)
