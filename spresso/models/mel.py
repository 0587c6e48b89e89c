"""Multi-scale log10-mel spectrograms and the multi-scale mel distance (DAC's reconstruction loss).

Seven scales: windows 32, 64, ..., 2048 samples, hop = window / 4, 5, 10, ..., 320 mel bands
(Slaney mel scale and area normalisation, as librosa's default that DAC uses), magnitude
(power 1) spectra, ``log10(max(mel, 1e-5))``. The distance of one item is the sum over scales of
the mean absolute log-mel difference; the training loss is its batch mean.

``multiscale_mel_distance(est, ref)`` is also the evaluation metric (lower is better).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

DAC_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_MELS = (5, 10, 20, 40, 80, 160, 320)
CLAMP_EPS = 1e-5


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=64)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular Slaney-normalised filters ``[n_mels, n_fft // 2 + 1]`` (float32).

    At the smallest windows some low filters fall between FFT bins and are all zero; such a band
    contributes ``log10(eps)`` to both signals, i.e. nothing to the distance.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / (upper - lower))  # equal area per filter
    return fb.astype(np.float32)


class MelSpectrogram(nn.Module):
    """``wave [B, n] -> log10 mel [B, n_mels, frames]`` at one scale (float32 even under autocast)."""

    def __init__(self, sample_rate: int, window: int, n_mels: int, hop: int | None = None):
        super().__init__()
        self.window_length, self.hop = window, hop or window // 4
        self.register_buffer("window", torch.hann_window(window), persistent=False)
        self.register_buffer("fb", torch.from_numpy(mel_filterbank(sample_rate, window, n_mels)), persistent=False)

    def magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            # Zero ("constant") centre padding: reflect padding fails on clips shorter than the window.
            spec = torch.stft(
                wave.float(), self.window_length, self.hop, window=self.window,
                center=True, pad_mode="constant", return_complex=True,
            )
            return torch.matmul(self.fb, spec.abs())

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log10(self.magnitude(wave).clamp_min(CLAMP_EPS))


class MultiScaleMel(nn.Module):
    """The seven DAC scales; ``distance(est, ref) -> [B]``."""

    def __init__(self, sample_rate: int = 48000, windows=DAC_WINDOWS, n_mels=DAC_MELS):
        super().__init__()
        if len(windows) != len(n_mels):
            raise ValueError("windows and n_mels must have the same length")
        self.scales = nn.ModuleList(MelSpectrogram(sample_rate, w, m) for w, m in zip(windows, n_mels))

    def distance(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if est.shape != ref.shape or est.dim() != 2:
            raise ValueError(f"mel distance needs two [B, n] tensors of one shape, got {tuple(est.shape)} and {tuple(ref.shape)}")
        total = est.new_zeros(est.shape[0], dtype=torch.float32)
        for scale in self.scales:
            total = total + (scale(est) - scale(ref)).abs().mean(dim=(1, 2))
        return total

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The training loss: batch mean of :meth:`distance`."""
        return self.distance(est, ref).mean()


@lru_cache(maxsize=8)
def _cached(sample_rate: int) -> MultiScaleMel:
    return MultiScaleMel(sample_rate)


def multiscale_mel_distance(est: torch.Tensor, ref: torch.Tensor, sample_rate: int = 48000) -> torch.Tensor:
    """Multi-scale log10-mel L1 distance per item: ``est, ref [B, n] -> [B]`` (lower is better)."""
    est = torch.as_tensor(est)
    ref = torch.as_tensor(ref)
    module = _cached(sample_rate).to(est.device)
    return module.distance(est, ref)
