"""Per-clip quality metrics: SI-SDR, embedding cosine similarity, mel distance, bitrates.

Every function takes a batch ``[B, n]`` (or one clip ``[n]``) of numpy arrays or torch tensors
and returns one value per clip as ``np.ndarray[B]`` (float64), so callers average, bootstrap or
cache them per clip. Set-level metrics (FAD, KAD) live in :mod:`spresso.eval.fad` and
:mod:`spresso.eval.kad`.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from spresso.core.errors import SpressoError
from spresso.core.rates import bitrate_bps
from spresso.models.mel import multiscale_mel_distance


def _as_batch(x: Any, name: str) -> np.ndarray:
    """numpy/torch [B, n] or [n] -> float64 numpy [B, n] (no grad, on CPU)."""
    if hasattr(x, "detach"):  # torch tensor without importing torch here
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise SpressoError(f"{name} must have shape [B, n] or [n], got {tuple(arr.shape)}")
    return arr


def si_sdr(estimate: Any, reference: Any, eps: float = 1e-8) -> np.ndarray:
    """Scale-invariant SDR in dB per clip, zero-mean variant (Le Roux et al., 2019).

    Both signals are made zero-mean, then the reference is scaled by the optimal
    alpha = <s_hat, s> / ||s||^2 so that the target is s_t = alpha s and the noise
    e = s_hat - s_t; SI-SDR = 10 log10(||s_t||^2 / ||e||^2). Invariant to rescaling
    (including a sign flip) of the estimate and to a DC offset on either side.

    ``eps`` keeps silent or perfect clips finite: a silent reference gives about 0 dB
    divided by eps, i.e. a large negative / undefined value is avoided; a perfect
    estimate gives a large positive value (~ 10 log10(||s||^2 / eps)).

    Accepts numpy arrays or torch tensors of shape [B, n] or [n]; returns np.ndarray[B].
    """
    est = _as_batch(estimate, "estimate")
    ref = _as_batch(reference, "reference")
    if est.shape != ref.shape:
        raise SpressoError(f"estimate {est.shape} and reference {ref.shape} must have the same shape")
    if est.shape[1] == 0:
        raise SpressoError("si_sdr needs at least one sample per clip")
    est = est - est.mean(axis=1, keepdims=True)
    ref = ref - ref.mean(axis=1, keepdims=True)
    alpha = (est * ref).sum(axis=1, keepdims=True) / ((ref * ref).sum(axis=1, keepdims=True) + eps)
    target = alpha * ref
    noise = est - target
    return 10.0 * np.log10(((target**2).sum(axis=1) + eps) / ((noise**2).sum(axis=1) + eps))


def cosine_similarity(a: Any, b: Any, eps: float = 1e-8) -> np.ndarray:
    """Cosine similarity per row between two embedding batches [B, D] (e.g. CLAP of original vs
    reconstruction; clip embeddings are the mean of frame embeddings). Returns np.ndarray[B]."""
    x = _as_batch(a, "embeddings a")
    y = _as_batch(b, "embeddings b")
    if x.shape != y.shape:
        raise SpressoError(f"embedding batches differ in shape: {x.shape} vs {y.shape}")
    num = (x * y).sum(axis=1)
    return num / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), eps)


def mel_distance(estimate: Any, reference: Any) -> np.ndarray:
    """Multi-scale log-mel L1 distance per clip (the AudioAE training loss, DAC recipe).

    The one implementation lives in :func:`spresso.models.mel.multiscale_mel_distance` (it is
    also the training loss); it is imported lazily so the other metrics work without torch
    models loaded. Computed clip by clip so the result is per clip whatever reduction it uses.
    """

    est = _as_batch(estimate, "estimate")
    ref = _as_batch(reference, "reference")
    if est.shape != ref.shape:
        raise SpressoError(f"estimate {est.shape} and reference {ref.shape} must have the same shape")
    out = np.empty(est.shape[0], dtype=np.float64)
    with torch.no_grad():
        for i in range(est.shape[0]):
            e = torch.from_numpy(est[i : i + 1]).float()
            r = torch.from_numpy(ref[i : i + 1]).float()
            out[i] = float(torch.as_tensor(multiscale_mel_distance(e, r)).mean())
    return out


def nominal_bitrate_bps(m: int, K: int, t: int) -> float:
    """The operating point's nominal bitrate, m x log2(K) x (100 / t) bits/s (see spresso.core.rates)."""
    return bitrate_bps(m, K, t)


def actual_bitrate_bps(num_bytes: int | float, duration_seconds: float) -> float:
    """Bits per second actually spent: the whole encoded file (header included) over the audio's duration."""
    if duration_seconds <= 0:
        raise SpressoError(f"duration must be positive to compute a bitrate, got {duration_seconds}")
    if num_bytes < 0:
        raise SpressoError(f"byte count must be non-negative, got {num_bytes}")
    return 8.0 * float(num_bytes) / float(duration_seconds)


def file_bitrate_bps(paths: list[str | os.PathLike], durations_seconds: list[float]) -> float:
    """Actual bitrate of a set of encoded files: total bytes (headers included) x 8 / total seconds."""
    if len(paths) != len(durations_seconds) or not paths:
        raise SpressoError("file_bitrate_bps needs one duration per file and at least one file")
    total = 0
    for p in paths:
        try:
            total += os.path.getsize(p)
        except OSError as err:
            raise SpressoError(f"cannot stat encoded file {p}: {err.strerror}") from None
    return actual_bitrate_bps(total, math.fsum(durations_seconds))
