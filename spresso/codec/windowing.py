"""Files of any length: cut into fixed windows that overlap, join decoded windows with a crossfade.

The codec's models see 5 s clips (240000 samples at 48 kHz). A longer file is cut into windows
starting every ``hop = window - overlap`` samples; the last one is zero-padded. Each window is
encoded and decoded on its own, so neighbouring windows disagree a little in their overlap (a
diffusion decoder is generative). Joining crossfades across the overlap so the output never jumps:

* ``"hann"`` (default): fade-in sin^2, fade-out cos^2 over the overlap. The two weights sum to 1
  (an unchanged signal comes back exactly) and have zero slope at both ends of the overlap, so the
  join has no corner either.
* ``"linear"``: triangular fades, also summing to 1; the slope changes abruptly at the ends.
* ``"equal_power"``: fade-in sin, fade-out cos: the *squared* weights sum to 1, which keeps the
  loudness of two *uncorrelated* renditions constant, but lifts a coherent (identical) signal by
  up to 3 dB mid-overlap. Use it only when the windows' contents are known not to be coherent.

Pure NumPy. The first window has no fade-in and the last no fade-out, so files shorter than one
window and the ends of a file need no special case.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spresso.core.errors import SpressoError

SAMPLE_RATE = 48000
WINDOW_SAMPLES = 5 * SAMPLE_RATE  # the models' clip length
DEFAULT_OVERLAP_SAMPLES = SAMPLE_RATE // 2  # 0.5 s: long enough to blend two renditions, 10% extra bits
FADES = ("hann", "linear", "equal_power")
X0_HOP = 480  # samples per x0 frame (10 ms); the .spr header stores the overlap in these units
DEFAULT_OVERLAP_FRAMES = DEFAULT_OVERLAP_SAMPLES // X0_HOP


def model_length(sample_count: int, sample_rate: int) -> int:
    """Samples at 48 kHz that cover ``sample_count`` samples at ``sample_rate`` (docs/bitstream.md, section 6)."""
    if sample_count < 1 or sample_rate < 1:
        raise SpressoError(f"need a positive length and rate, got {sample_count} samples at {sample_rate} Hz")
    return -(-sample_count * SAMPLE_RATE // sample_rate)  # exact integer ceil


@dataclass(frozen=True)
class WindowPlan:
    """Where each window of a signal of ``n_samples`` starts: ``starts[k] = k * hop``."""

    n_samples: int
    window: int = WINDOW_SAMPLES
    overlap: int = DEFAULT_OVERLAP_SAMPLES

    def __post_init__(self):
        if self.n_samples < 1:
            raise SpressoError(f"cannot cut an empty signal ({self.n_samples} samples) into windows")
        if self.window < 1:
            raise SpressoError(f"window must be at least 1 sample, got {self.window}")
        if not 0 <= self.overlap < self.window:
            raise SpressoError(f"overlap must be 0..{self.window - 1} samples (less than the window), got {self.overlap}")

    @property
    def hop(self) -> int:
        return self.window - self.overlap

    @property
    def n_windows(self) -> int:
        """Fewest windows that cover every sample: 1 + ceil((n - window) / hop)."""
        extra = max(0, self.n_samples - self.window)
        return 1 + -(-extra // self.hop)

    @property
    def starts(self) -> np.ndarray:
        return np.arange(self.n_windows, dtype=np.int64) * self.hop

    @property
    def padded_samples(self) -> int:
        return int(self.starts[-1]) + self.window


def plan_windows(n_samples: int, window: int = WINDOW_SAMPLES, overlap: int = DEFAULT_OVERLAP_SAMPLES) -> WindowPlan:
    return WindowPlan(int(n_samples), int(window), int(overlap))


def plan_for_signal(n_samples: int) -> WindowPlan:
    """The encoder's plan for a 48 kHz signal: one window alone needs no overlap, longer ones overlap 0.5 s."""
    return plan_windows(n_samples, overlap=DEFAULT_OVERLAP_SAMPLES if n_samples > WINDOW_SAMPLES else 0)


def plan_for_stream(sample_count: int, sample_rate: int, overlap_frames: int) -> WindowPlan:
    """The windows a stream's header implies: 48 kHz length from the original's, overlap in x0 frames."""
    return WindowPlan(model_length(sample_count, sample_rate), WINDOW_SAMPLES, overlap_frames * X0_HOP)


def frames_per_window(time_factor: int) -> int:
    """z frames of one 5 s window: ceil(500 / t) (the last pooling window may be partial)."""
    return -(-(WINDOW_SAMPLES // X0_HOP) // int(time_factor))


def last_window_frames(plan: WindowPlan, time_factor: int) -> int:
    """z frames of the last window that see the signal: ceil(ceil(a / 480) / t), a = its signal samples.

    The rest of that window is the encoder's zero padding. A sound effect is mostly shorter than one
    window: the dev corpus's median file, 1.4 s, needs 2 of 5 frames at 1 Hz and 35 of 125 at 25 Hz.
    The decoder puts the model's frames for silence in place of the rest.
    """
    a = plan.n_samples - int(plan.starts[-1])  # 1..window: the plan has no window of padding only
    x0_frames = -(-a // X0_HOP)
    return -(-x0_frames // int(time_factor))


def window_x0_frames(plan: WindowPlan, k: int) -> int:
    """x0 frames of window k that see the signal: all of them but in the last window, whose rest is padding
    (what a ``mask_padding`` model hides; spresso.diffusion.padding)."""
    a = min(plan.window, plan.n_samples - int(plan.starts[k]))
    return -(-a // X0_HOP)


def plan_x0_frames(plan: WindowPlan, windows) -> list[int]:
    """:func:`window_x0_frames` of each of the given windows."""
    return [window_x0_frames(plan, int(k)) for k in windows]


def stream_frames(plan: WindowPlan, time_factor: int, version: int = 2) -> int:
    """The frame count a stream of this plan holds: every window's frames (format version 1), or
    all but the last window's padding frames (versions 2 and 3; docs/bitstream.md, section 6)."""
    full = frames_per_window(time_factor)
    if version == 1:
        return plan.n_windows * full
    return (plan.n_windows - 1) * full + last_window_frames(plan, time_factor)


def cut(wave: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """Windows [n_windows, window] of a mono signal [n_samples], the last zero-padded.

    A read-only strided view of one padded copy (windows share their overlap), so a 2-hour file
    costs one extra copy of itself, not n_windows x 5 s; slice it to encode in batches.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1 or wave.shape[0] != plan.n_samples:
        raise SpressoError(f"expected a mono signal of {plan.n_samples} samples, got shape {wave.shape}")
    padded = np.zeros(plan.padded_samples, dtype=wave.dtype)
    padded[: plan.n_samples] = wave
    return np.lib.stride_tricks.sliding_window_view(padded, plan.window)[:: plan.hop]


def fade_in(length: int, fade: str = "hann") -> np.ndarray:
    """Weights rising from ~0 to ~1 over ``length`` samples (sample centres, so fade_in + fade_out == 1)."""
    if fade not in FADES:
        raise SpressoError(f"unknown crossfade {fade!r} (choose from {', '.join(FADES)})")
    x = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if fade == "linear":
        return x
    if fade == "hann":
        return np.sin(0.5 * np.pi * x) ** 2
    return np.sin(0.5 * np.pi * x)


def window_weights(plan: WindowPlan, fade: str = "hann") -> np.ndarray:
    """Weight of each sample of each window [n_windows, window]: 1 outside overlaps, fades inside."""
    rise = fade_in(plan.overlap, fade)  # validates ``fade`` even when there is nothing to fade
    w = np.ones((plan.n_windows, plan.window), dtype=np.float64)
    if plan.overlap and plan.n_windows > 1:
        fall = rise[::-1]  # time-reversed rise: sin^2 -> cos^2, sin -> cos, x -> 1 - x
        w[1:, : plan.overlap] *= rise
        w[:-1, plan.window - plan.overlap:] *= fall
    return w


def window_weight(plan: WindowPlan, k: int, fade: str = "hann") -> np.ndarray:
    """Crossfade weight of window k alone, float32 [window]: one row of :func:`window_weights`, as the
    decoder overlap-adds it window by window."""
    w = np.ones(plan.window, np.float32)
    if plan.overlap and plan.n_windows > 1:
        rise = fade_in(plan.overlap, fade).astype(np.float32)
        if k > 0:
            w[: plan.overlap] = rise
        if k < plan.n_windows - 1:
            w[plan.window - plan.overlap:] = rise[::-1]
    return w


def join(windows, plan: WindowPlan, fade: str = "hann") -> np.ndarray:
    """Overlap-add decoded windows ([n_windows, window] array or a sequence of windows) with a crossfade.

    Returns [n_samples] float32. For "hann" and "linear" the weights of overlapping windows sum
    to 1; dividing by that sum anyway removes the last rounding error, so an unchanged signal comes
    back bit-exact up to float32. For "equal_power" no division is done on purpose: its weights do
    not sum to 1 (see the module doc).
    """
    if len(windows) != plan.n_windows:
        raise SpressoError(f"expected {plan.n_windows} windows of {plan.window} samples, got {len(windows)}")
    w = window_weights(plan, fade)
    out = np.zeros(plan.padded_samples, dtype=np.float64)
    norm = np.zeros(plan.padded_samples, dtype=np.float64)
    for k, start in enumerate(plan.starts.tolist()):
        win = np.asarray(windows[k], dtype=np.float64)
        if win.shape != (plan.window,):
            raise SpressoError(f"window {k} has shape {win.shape}, expected ({plan.window},)")
        out[start: start + plan.window] += win * w[k]
        norm[start: start + plan.window] += w[k]
    if fade != "equal_power":
        out /= norm
    return out[: plan.n_samples].astype(np.float32)
