"""DAC's discriminators: multi-period (MPD) and multi-band multi-scale complex STFT (MB-MS-STFT).

Each sub-discriminator returns ``(logits, feature_maps)``; :class:`AudioDiscriminator` runs them
all on a ``[B, n]`` waveform and returns lists of both, which the GAN losses and feature matching
in :mod:`spresso.train.gan_losses` consume.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LEAK = 0.1


def _wn_conv2d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv2d(*args, **kwargs))


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator: the waveform folded into ``[n / p, p]``, 2-D convs along time."""

    def __init__(self, period: int, channels: list[int]):
        super().__init__()
        self.period = period
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            stride = 3 if i < len(channels) - 1 else 1  # last conv keeps the resolution
            layers.append(_wn_conv2d(c_in, c, (5, 1), (stride, 1), padding=(2, 0)))
            c_in = c
        self.convs = nn.ModuleList(layers)
        self.post = _wn_conv2d(c_in, 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = x.shape[-1]
        if n % self.period:
            x = F.pad(x, (0, self.period - n % self.period), mode="reflect")
        h = x.view(x.shape[0], 1, -1, self.period)
        fmaps = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LEAK)
            fmaps.append(h)
        h = self.post(h)
        fmaps.append(h)
        return h, fmaps


class BandedSTFTDiscriminator(nn.Module):
    """One STFT scale: real/imag channels, frequency split into bands with their own conv stacks.

    Splitting bands lets each conv stack specialise (low bands are tonal, high bands noisy), as in
    DAC's multi-band multi-scale STFT discriminator.
    """

    def __init__(self, window: int, bands: list[float], channels: int):
        super().__init__()
        self.window, self.hop = window, window // 4
        self.register_buffer("hann", torch.hann_window(window), persistent=False)
        n_bins = window // 2 + 1
        self.bands = [(int(lo * n_bins), int(hi * n_bins)) for lo, hi in zip(bands[:-1], bands[1:])]
        c = channels

        def stack() -> nn.ModuleList:
            return nn.ModuleList([
                _wn_conv2d(2, c, (3, 9), padding=(1, 4)),
                _wn_conv2d(c, c, (3, 9), (1, 2), padding=(1, 4)),
                _wn_conv2d(c, c, (3, 9), (1, 2), padding=(1, 4)),
                _wn_conv2d(c, c, (3, 9), (1, 2), padding=(1, 4)),
                _wn_conv2d(c, c, (3, 3), padding=(1, 1)),
            ])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.post = _wn_conv2d(c, 1, (3, 3), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(x.float(), self.window, self.hop, window=self.hann, center=True,
                              pad_mode="constant", return_complex=True)
        spec = torch.view_as_real(spec).permute(0, 3, 2, 1)  # [B, 2, frames, bins]
        fmaps, outs = [], []
        for (lo, hi), convs in zip(self.bands, self.band_convs):
            h = spec[..., lo:hi]
            for conv in convs:
                h = F.leaky_relu(conv(h), LEAK)
                fmaps.append(h)
            outs.append(h)
        h = self.post(torch.cat(outs, dim=-1))
        fmaps.append(h)
        return h, fmaps


class AudioDiscriminator(nn.Module):
    """All sub-discriminators: ``wave [B, n] -> (list of logits, list of feature-map lists)``."""

    def __init__(self, periods: list[int], mpd_channels: list[int], stft_windows: list[int], bands: list[float], stft_channels: int):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, list(mpd_channels)) for p in periods]
            + [BandedSTFTDiscriminator(w, list(bands), stft_channels) for w in stft_windows]
        )

    @classmethod
    def from_config(cls, cfg) -> "AudioDiscriminator":
        """From a :class:`~spresso.config.audioae.DiscriminatorConfig`."""
        return cls(cfg.periods, cfg.mpd_channels, cfg.stft_windows, cfg.bands, cfg.stft_channels)

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        # DAC's preprocessing: remove DC and peak-normalise, so D judges timbre and structure
        # rather than level (the mel loss already takes care of level).
        x = wave - wave.mean(dim=-1, keepdim=True)
        x = 0.8 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)
        x3 = x.unsqueeze(1)
        logits, fmaps = [], []
        for d in self.discriminators:
            out, fm = d(x3 if isinstance(d, PeriodDiscriminator) else x)
            logits.append(out)
            fmaps.append(fm)
        return logits, fmaps
