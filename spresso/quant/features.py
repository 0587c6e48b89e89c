"""Real-audio feature vectors for developing and testing the quantizer before z exists.

Log-mel frames of real recordings (48 kHz, window 1024, hop 480 = 100 frames/s, like x0),
projected to d dimensions by PCA. They are *not* AudioAE latents; they are real, correlated,
heavy-tailed audio features, which is what a quantizer test needs from them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from spresso.audio import AUDIO_EXTENSIONS, AudioError, load_mono


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 20.0, fmax: float | None = None) -> np.ndarray:
    """Triangular filters on the HTK mel scale: [n_mels, n_fft // 2 + 1]."""
    fmax = fmax or sr / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs) / np.maximum(hi - mid, 1e-9)
    return np.clip(np.minimum(up, down), 0, None).astype(np.float32)


def logmel_frames(wave: np.ndarray, sr: int = 48000, n_fft: int = 1024, hop: int = 480, n_mels: int = 80) -> np.ndarray:
    """[T, n_mels] log-mel frames of a mono signal."""
    if wave.shape[0] < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.shape[0]))
    n = 1 + (wave.shape[0] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(wave[idx] * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    return np.log(spec @ mel_filterbank(sr, n_fft, n_mels).T + 1e-6).astype(np.float32)


def audio_files(root: str | Path, limit: int | None = None) -> list[Path]:
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    return files[:limit] if limit else files


def pca_basis(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], components [D, d]) of the top-d principal directions."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:d].T


def audio_feature_vectors(files: Iterable[str | Path], d: int = 64, n_mels: int = 80, min_db: float = -60.0,
                          basis: tuple[np.ndarray, np.ndarray] | None = None, return_basis: bool = False):
    """Log-mel frames of the files (silent frames dropped), PCA-projected to d dims: [N, d] float32.

    ``basis`` reuses a PCA fitted elsewhere (e.g. on the training files for held-out files)."""
    frames = []
    for f in files:
        try:
            wave, _, _ = load_mono(f, 48000)
        except AudioError:
            continue
        mel = logmel_frames(wave, n_mels=n_mels)
        power_db = 10 * np.log10(np.mean(np.exp(mel), axis=1) + 1e-12)
        frames.append(mel[power_db > power_db.max() + min_db])  # silence adds nothing but duplicates
    x = np.concatenate(frames).astype(np.float64)
    mean, comp = basis if basis is not None else pca_basis(x, d)
    out = ((x - mean) @ comp).astype(np.float32)
    return (out, (mean, comp)) if return_basis else out
