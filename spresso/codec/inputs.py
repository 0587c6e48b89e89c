"""What the codec accepts as audio, by explicit rules; anything else is a one-line :class:`CodecError`.

Arrays (NumPy or torch, either layout):
- ``[n]`` is mono. ``[channels, n]`` (spresso's layout) and ``[n, channels]`` (soundfile's, what
  ``soundfile.read`` returns) are both accepted: ``channels_last=True``/``False`` says which; left
  at None, the axis of at most :data:`MAX_CHANNELS` is the channels when the other is longer, and a
  shape where both or neither could be (``[2, 30]``, ``[100, 100]``) is refused with a hint.
- Float samples are taken as they are (float16/bfloat16 are widened); integer PCM is scaled to
  +-1: int8/int16/int32 by 2^(bits-1), uint8 around its midpoint 128. Other integer widths, bool,
  complex and object arrays are refused. Torch tensors are detached and moved to the CPU.
- A path (str, Path, bytes) where an array belongs is refused, naming ``encode_file``.
Sample rates: integers :data:`MIN_RATE`..:data:`MAX_RATE` Hz (what the decoder can restore).

Channels to mono (:func:`downmix`): the mid, the mean of the channels; when that cancels (its
energy more than 20 dB below the loudest channel's, e.g. L = -R), the loudest channel instead.
Digital silence is judged on the channels, before the downmix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spresso.codec.errors import CodecError, refuse_silence

MAX_CHANNELS = 64
MIN_RATE, MAX_RATE = 1000, 768000
CANCEL_RATIO = 0.01  # mid energy below 1% (-20 dB) of the loudest channel's: the channels cancel
_PCM_SCALE = {np.dtype(np.int8): 2.0 ** 7, np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31}


def check_rate(sr) -> int:
    """The sample rate as an int, or a one-line error (a 1 Hz file would give a stream nothing can decode)."""
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) and not (isinstance(sr, float) and sr.is_integer()):
        raise CodecError(f"sample rate must be an integer number of Hz, got {sr!r}")
    if not MIN_RATE <= int(sr) <= MAX_RATE:
        raise CodecError(f"sample rate must be {MIN_RATE}..{MAX_RATE} Hz, got {int(sr)}")
    return int(sr)


def _as_numpy(wave) -> np.ndarray:
    if isinstance(wave, (str, Path, bytes, bytearray)):
        raise CodecError(f"expected an audio array, got a {type(wave).__name__} (a file?): read it first, "
                         "or use codec.encode_file(path)")
    if torch.is_tensor(wave):
        t = wave.detach().cpu()
        if t.is_complex():
            raise CodecError(f"audio must be real, got a {t.dtype} tensor")
        return (t.float() if t.is_floating_point() else t).numpy()
    try:
        return np.asarray(wave)
    except (TypeError, ValueError) as err:
        raise CodecError(f"expected an audio array, got {type(wave).__name__} ({str(err).splitlines()[0]})") from None


def _as_float(w: np.ndarray) -> np.ndarray:
    if w.dtype in _PCM_SCALE:
        return (w.astype(np.float32) / np.float32(_PCM_SCALE[w.dtype])).astype(np.float32)
    if w.dtype == np.uint8:
        return (w.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(w.dtype, np.floating):
        return w.astype(np.float32, copy=False)
    raise CodecError(f"audio must be float, or int8/int16/int32/uint8 PCM; got dtype {w.dtype}")


def _channels_first(w: np.ndarray, channels_last: bool | None) -> np.ndarray:
    if w.ndim == 1:
        return w[None]
    if w.ndim != 2:
        raise CodecError(f"audio must be [samples], [channels, samples] or [samples, channels]; got shape {w.shape}")
    if channels_last is None and 1 in w.shape:  # one row or one column: a single channel
        channels_last = w.shape[0] != 1
    if channels_last is None:
        rows_ch, cols_ch = w.shape[0] <= MAX_CHANNELS, w.shape[1] <= MAX_CHANNELS
        if rows_ch == cols_ch:
            raise CodecError(f"cannot tell channels from samples in shape {w.shape}: pass channels_last=True for "
                             "[samples, channels] (soundfile's layout) or channels_last=False for [channels, samples]")
        channels_last = cols_ch
    w = w.T if channels_last else w
    if w.shape[0] > MAX_CHANNELS:
        raise CodecError(f"{w.shape[0]} channels (at most {MAX_CHANNELS}); is the layout right? (channels_last)")
    return w


def as_channels(wave, channels_last: bool | None = None) -> np.ndarray:
    """Any accepted array -> float32 [channels, n], finite, not empty (the module's rules)."""
    w = _as_numpy(wave)
    if w.ndim == 0:
        raise CodecError(f"expected an audio array, got a scalar ({type(wave).__name__})")
    if w.dtype == np.bool_ or not np.issubdtype(w.dtype, np.number) or np.issubdtype(w.dtype, np.complexfloating):
        raise CodecError(f"audio must be float, or int8/int16/int32/uint8 PCM; got dtype {w.dtype}")
    if w.size == 0:
        raise CodecError("empty audio: nothing to encode")
    w = _channels_first(w, channels_last)
    w = _as_float(w)
    if not np.isfinite(w).all():
        raise CodecError("audio holds NaN or Inf samples")
    return w


@dataclass(frozen=True)
class Downmix:
    """How channels become mono: ``channel`` None is the mid (mean), else that channel alone."""

    channels: int
    channel: int | None = None

    def describe(self) -> str:
        if self.channels == 1:
            return "mono"
        name = "stereo" if self.channels == 2 else f"{self.channels} channels"
        if self.channel is None:
            return f"{name} -> mono (mid: mean of the channels)"
        which = ("left", "right")[self.channel] if self.channels == 2 else f"channel {self.channel + 1}"
        return f"{name} -> mono ({which} channel: the channels cancel in the mid)"

    def apply(self, w: np.ndarray) -> np.ndarray:
        """[channels, n] -> [n] float32."""
        if self.channels == 1:
            return w[0]
        if self.channel is not None:
            return np.ascontiguousarray(w[self.channel])
        return w.mean(axis=0, dtype=np.float32)


def choose_downmix(channel_energy, mid_energy: float, channel_peak) -> Downmix:
    """The rule from sums of squares per channel and of the mid, and peaks per channel (also refuses silence)."""
    energy = np.asarray(channel_energy, np.float64)
    refuse_silence(float(np.max(channel_peak)))
    if energy.shape[0] == 1:
        return Downmix(1)
    loud = int(np.argmax(energy))
    if mid_energy < CANCEL_RATIO * energy[loud]:
        return Downmix(energy.shape[0], loud)
    return Downmix(energy.shape[0])


def downmix(w: np.ndarray) -> tuple[np.ndarray, Downmix]:
    """[channels, n] float32 -> (mono [n], the rule used)."""
    mid = w.mean(axis=0, dtype=np.float32) if w.shape[0] > 1 else w[0]
    energy = np.einsum("cn,cn->c", w, w, dtype=np.float64)
    rule = choose_downmix(energy, float(np.dot(mid.astype(np.float64), mid)), np.abs(w).max(axis=1))
    return (mid if rule.channel is None else rule.apply(w)), rule


def check_int(value, name: str, lo: int, hi: int) -> int:
    """An integer lo..hi (numpy ints too); floats such as 3.5, strings such as "3" and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CodecError(f"{name} must be an integer {lo}..{hi}, got {value!r} ({type(value).__name__})")
    if not lo <= int(value) <= hi:
        raise CodecError(f"{name} must be {lo}..{hi}, got {int(value)}")
    return int(value)


def check_number(value, name: str) -> float:
    """A finite real number (numpy floats too); strings and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise CodecError(f"{name} must be a finite number, got {value!r}")
    return float(value)
