"""A procedural sound-effect corpus: the embedded default's data and a test corpus.

``synth_corpus(out_dir, minutes, seed)`` writes files like a real SFX library: impacts,
whooshes, engines, rain, footsteps, beeps, sirens, explosions, water, wind/bird ambiences,
UI clicks; lengths from a fraction of a second to a minute; 16 / 22.05 / 32 / 44.1 / 48 kHz;
mono and stereo; WAV, FLAC and Ogg/Vorbis; each with a caption in a sidecar ``.txt``.
Everything is drawn from ``numpy.random.default_rng(seed)``, and the files are byte-identical
for a seed (Ogg stream serial numbers, which libsndfile draws at random, are fixed).
"""
from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from scipy import signal

RATES = (16000, 22050, 32000, 44100, 48000)
FORMATS = (("wav", "PCM_16"), ("wav", "FLOAT"), ("flac", "PCM_16"), ("flac", "PCM_24"), ("ogg", "VORBIS"))


@dataclass(frozen=True)
class SynthFile:
    path: str  # relative to the corpus folder
    category: str
    caption: str
    seconds: float
    sample_rate: int
    channels: int


# --------------------------------------------------------------------------- building blocks
def _env_exp(n: int, sr: int, decay_s: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (decay_s * sr))


def _band(x: np.ndarray, sr: int, lo: float | None, hi: float | None, order: int = 2) -> np.ndarray:
    nyq = sr / 2
    if lo and hi:
        sos = signal.butter(order, [lo / nyq, min(hi / nyq, 0.99)], "bandpass", output="sos")
    elif hi:
        sos = signal.butter(order, min(hi / nyq, 0.99), "lowpass", output="sos")
    else:
        sos = signal.butter(order, lo / nyq, "highpass", output="sos")
    return signal.sosfilt(sos, x)


# Paul Kellet's "economy" pinking filter: -3 dB/octave within about 1 dB over the audio band.
# A filter (not an FFT) because FFTs of arbitrary, often prime, lengths are slow.
_PINK_B = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
_PINK_A = [1.0, -2.494956002, 2.017265875, -0.522189400]


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pink (1/f) noise, peak-normalised."""
    out = signal.lfilter(_PINK_B, _PINK_A, rng.standard_normal(n))
    return out / (np.abs(out).max() + 1e-9)


def _place(out: np.ndarray, event: np.ndarray, start: int) -> None:
    end = min(out.size, start + event.size)
    if end > start:
        out[start:end] += event[: end - start]


# --------------------------------------------------------------------------- sound generators
# Each returns (mono wave, caption). Captions describe what one hears, like a library's metadata.
def impact(rng, sr, seconds):
    n = int(seconds * sr)
    material = rng.choice(["metal", "wood", "stone", "glass", "plastic"])
    f0 = {"metal": 420, "wood": 180, "stone": 90, "glass": 1200, "plastic": 300}[material] * rng.uniform(0.7, 1.4)
    decay = {"metal": 0.6, "wood": 0.08, "stone": 0.06, "glass": 0.35, "plastic": 0.05}[material] * rng.uniform(0.6, 1.5)
    t = np.arange(n) / sr
    x = np.zeros(n)
    hits = int(rng.integers(1, 4))
    for h in range(hits):
        start = int(h * rng.uniform(0.08, 0.3) * sr)
        m = n - start
        if m <= 0:
            break
        tt = t[:m]
        modes = sum(np.sin(2 * np.pi * f0 * k * (1 + 0.013 * k * k) * tt + rng.uniform(0, 6)) / k for k in (1, 2.3, 3.9, 5.4))
        click = _band(rng.standard_normal(m), sr, 800, 9000) * _env_exp(m, sr, 0.004)
        x[start:] += (0.6 ** h) * (modes * _env_exp(m, sr, decay) + click)
    weight = rng.choice(["light", "heavy", "sharp", "dull"])
    repeat = "a single" if hits == 1 else ("two" if hits == 2 else "three")
    cap = f"{repeat} {weight} {material} impact" + ("" if hits == 1 else "s") + (" with a ringing tail" if decay > 0.3 else "")
    return x, cap


def whoosh(rng, sr, seconds):
    n = int(seconds * sr)
    noise = rng.standard_normal(n)
    lo, hi = rng.uniform(200, 800), rng.uniform(2500, 8000)
    centre = np.geomspace(lo, hi, n) if rng.random() < 0.5 else np.geomspace(hi, lo, n)
    # Sweep a resonant band through the noise in short blocks (time-varying filter).
    out = np.zeros(n)
    block = max(256, n // 64)
    for s in range(0, n, block):
        c = centre[min(s + block // 2, n - 1)]
        out[s : s + block] = _band(noise[max(0, s - 2048) : s + block], sr, c / 1.6, c * 1.6)[-min(block, n - s):]
    env = np.sin(np.pi * np.linspace(0, 1, n)) ** rng.uniform(1.5, 4)
    speed = "fast" if seconds < 1.2 else "slow"
    return out * env, f"a {speed} whoosh {'rising' if centre[0] < centre[-1] else 'falling'} in pitch, like something swinging past"


def engine(rng, sr, seconds):
    n = int(seconds * sr)
    t = np.arange(n) / sr
    kind = rng.choice(["car", "motorbike", "truck", "propeller plane", "generator"])
    base = {"car": 35, "motorbike": 55, "truck": 22, "propeller plane": 45, "generator": 30}[kind] * rng.uniform(0.8, 1.2)
    rev = rng.random() < 0.5
    rpm = base * (1 + (0.8 * np.clip(t / max(seconds, 1e-3), 0, 1) if rev else 0.05 * np.sin(2 * np.pi * 0.3 * t)))
    phase = 2 * np.pi * np.cumsum(rpm) / sr
    x = sum(np.sin(k * phase) / k ** 0.8 for k in range(1, 12))
    x *= 0.6 + 0.4 * np.sign(np.sin(phase / 2))  # firing pulses
    x += 0.3 * _band(rng.standard_normal(n), sr, 80, 1500)
    fade = np.minimum(1, np.minimum(t / 0.3, (seconds - t) / 0.3))
    return x * fade, f"a {kind} engine {'revving up' if rev else 'idling'}"


def rain(rng, sr, seconds):
    n = int(seconds * sr)
    density = rng.choice(["light", "steady", "heavy"])
    bed = _band(_pink(rng, n), sr, 400, 9000) * {"light": 0.15, "steady": 0.3, "heavy": 0.5}[density]
    drops_per_s = {"light": 20, "steady": 70, "heavy": 200}[density]
    impulses = np.zeros(n)
    k = rng.poisson(drops_per_s * seconds)
    impulses[rng.integers(0, n, k)] = rng.uniform(0.2, 1.0, k) * rng.choice([-1, 1], k)
    drop = np.sin(2 * np.pi * 2500 * np.arange(int(0.01 * sr)) / sr) * _env_exp(int(0.01 * sr), sr, 0.002)
    x = bed + signal.fftconvolve(impulses, drop)[:n]
    surface = rng.choice(["on a roof", "on leaves", "on a window", "on pavement"])
    return x, f"{density} rain falling {surface}"


def footsteps(rng, sr, seconds):
    n = int(seconds * sr)
    surface = rng.choice(["gravel", "wood", "snow", "concrete", "grass"])
    pace = rng.choice(["walking", "running"])
    step = (0.55 if pace == "walking" else 0.3) * rng.uniform(0.85, 1.15)
    x = np.zeros(n)
    t = rng.uniform(0.05, 0.3)
    while t < seconds - 0.1:
        m = int(0.15 * sr)
        tex = rng.standard_normal(m)
        lo, hi = {"gravel": (800, 8000), "wood": (100, 1500), "snow": (1500, 10000), "concrete": (200, 4000), "grass": (1000, 6000)}[surface]
        ev = _band(tex, sr, lo, min(hi, sr / 2.2)) * _env_exp(m, sr, 0.03) * rng.uniform(0.6, 1.0)
        _place(x, ev, int(t * sr))
        t += step * rng.uniform(0.9, 1.1)
    return x, f"footsteps {pace} on {surface}"


def beeps(rng, sr, seconds):
    n = int(seconds * sr)
    t = np.arange(n) / sr
    kind = rng.choice(["sine", "square"])
    count = max(1, int(seconds / rng.uniform(0.2, 0.6)))
    x = np.zeros(n)
    seg = n // count
    freqs = rng.choice([440, 660, 880, 1000, 1320, 1760], count)
    for i, f in enumerate(freqs):
        on = int(seg * 0.6)
        tt = t[:on]
        tone = np.sin(2 * np.pi * f * tt) if kind == "sine" else np.sign(np.sin(2 * np.pi * f * tt)) * 0.5
        ramp = np.minimum(1, np.minimum(tt / 0.005, (tt[-1] - tt + 1e-9) / 0.005)) if on else tone
        _place(x, tone * ramp, i * seg)
    what = "an electronic beep" if count == 1 else f"{count} electronic beeps"
    return x, f"{what}, {kind} tone" + (", like a device alert" if count > 2 else "")


def siren(rng, sr, seconds):
    n = int(seconds * sr)
    t = np.arange(n) / sr
    style = rng.choice(["wailing", "two-tone"])
    if style == "wailing":
        f = 900 + 500 * np.sin(2 * np.pi * t / rng.uniform(2, 4))
    else:
        f = np.where((t // 0.6) % 2 == 0, 700.0, 950.0)
    ph = 2 * np.pi * np.cumsum(f) / sr
    x = np.sin(ph) + 0.3 * np.sin(3 * ph)
    return x, f"a {style} emergency siren"


def explosion(rng, sr, seconds):
    n = int(seconds * sr)
    boom = _band(rng.standard_normal(n), sr, None, 400, order=4) * _env_exp(n, sr, seconds / 4)
    crack = _band(rng.standard_normal(n), sr, 1000, 10000) * _env_exp(n, sr, 0.05)
    debris = np.zeros(n)
    for _ in range(int(rng.integers(5, 30))):
        m = int(0.04 * sr)
        _place(debris, _band(rng.standard_normal(m), sr, 2000, 9000) * _env_exp(m, sr, 0.01) * 0.3, int(rng.uniform(0.2, 0.9) * n))
    size = "distant" if rng.random() < 0.4 else "large"
    return 3 * boom + crack + debris, f"a {size} explosion with rumbling debris"


def water(rng, sr, seconds):
    n = int(seconds * sr)
    x = 0.2 * _band(_pink(rng, n), sr, 300, 5000)
    for _ in range(int(seconds * rng.uniform(5, 25))):
        m = int(0.03 * sr)
        f = rng.uniform(400, 1500)
        tt = np.arange(m) / sr
        bub = np.sin(2 * np.pi * f * (1 + 3 * tt) * tt) * _env_exp(m, sr, 0.008)
        _place(x, bub * rng.uniform(0.1, 0.5), int(rng.integers(0, max(1, n - m))))
    return x, rng.choice(["a bubbling stream of water", "water pouring and splashing", "a babbling brook"])


def ambience(rng, sr, seconds):
    n = int(seconds * sr)
    t = np.arange(n) / sr
    wind = _band(_pink(rng, n), sr, 60, 1200) * (0.6 + 0.4 * np.sin(2 * np.pi * t / rng.uniform(4, 11)))
    place = rng.choice(["forest", "field", "city park", "mountain"])
    x = wind * 0.5
    birds = rng.random() < 0.7
    if birds:
        for _ in range(int(seconds * rng.uniform(0.3, 1.5))):
            m = int(rng.uniform(0.05, 0.2) * sr)
            tt = np.arange(m) / sr
            f = rng.uniform(2500, 6000) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(10, 40) * tt))
            chirp = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.sin(np.pi * tt / tt[-1]) ** 2
            _place(x, 0.2 * chirp, int(rng.integers(0, max(1, n - m))))
    return x, f"{place} ambience, wind" + (" with birds chirping" if birds else " blowing")


def ui_click(rng, sr, seconds):
    n = int(seconds * sr)
    x = np.zeros(n)
    k = int(rng.integers(1, 5))
    for i in range(k):
        m = int(0.02 * sr)
        ev = _band(rng.standard_normal(m), sr, 1500, min(12000, sr / 2.2)) * _env_exp(m, sr, 0.002)
        _place(x, ev, int(i * n / k))
    return x, f"{'a user interface click' if k == 1 else f'{k} quick button clicks'}"


# category: (generator, min seconds, max seconds, relative frequency)
CATEGORIES: dict[str, tuple[Callable, float, float, float]] = {
    "impacts": (impact, 0.3, 3.0, 3),
    "whooshes": (whoosh, 0.4, 2.5, 2),
    "engines": (engine, 3.0, 40.0, 1.5),
    "rain": (rain, 5.0, 60.0, 1),
    "footsteps": (footsteps, 2.0, 20.0, 1.5),
    "beeps": (beeps, 0.2, 4.0, 2),
    "sirens": (siren, 2.0, 15.0, 0.7),
    "explosions": (explosion, 1.5, 8.0, 1),
    "water": (water, 3.0, 45.0, 0.8),
    "ambiences": (ambience, 10.0, 60.0, 1),
    "ui": (ui_click, 0.1, 0.8, 1.5),
}


SINGULAR = {"impacts": "impact", "whooshes": "whoosh", "engines": "engine", "beeps": "beep", "sirens": "siren",
            "explosions": "explosion", "ambiences": "ambience", "ui": "ui_click"}


# --------------------------------------------------------------------------- deterministic Ogg
def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _ogg_crc_table()


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for b in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) ^ b) & 0xFF]
    return crc


def fix_ogg_serial(data: bytes, serial: int) -> bytes:
    """Set every page's stream serial number and recompute its CRC (the Ogg page checksum).

    libsndfile draws the serial at random; fixing it makes the file bytes a function of the audio.
    """
    out = bytearray(data)
    pos = 0
    while pos + 27 <= len(out):
        if out[pos : pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        nseg = out[pos + 26]
        size = 27 + nseg + sum(out[pos + 27 : pos + 27 + nseg])
        struct.pack_into("<I", out, pos + 14, serial)
        struct.pack_into("<I", out, pos + 22, 0)
        struct.pack_into("<I", out, pos + 22, _ogg_crc(bytes(out[pos : pos + size])))
        pos += size
    return bytes(out)


# --------------------------------------------------------------------------- the corpus
def _encode(wave: np.ndarray, sr: int, fmt: str, subtype: str, serial: int) -> bytes:
    buf = io.BytesIO()
    frames = np.ascontiguousarray(wave.T)
    with sf.SoundFile(buf, "w", sr, frames.shape[1], subtype, format=fmt.upper()) as f:
        # Block writes: libsndfile 1.2's Vorbis encoder crashes on one multi-million-frame write.
        for s in range(0, frames.shape[0], 1 << 16):
            f.write(frames[s : s + (1 << 16)])
    data = buf.getvalue()
    if fmt == "ogg":
        return fix_ogg_serial(data, serial)
    return zero_wav_peak_time(data) if fmt == "wav" else data


def zero_wav_peak_time(data: bytes) -> bytes:
    """Zero the timestamp libsndfile puts in a float WAV's PEAK chunk (it is the wall clock)."""
    out = bytearray(data)
    pos = 12  # after "RIFF" <size> "WAVE"
    while pos + 8 <= len(out):
        cid, size = bytes(out[pos : pos + 4]), struct.unpack_from("<I", out, pos + 4)[0]
        if cid == b"PEAK":
            struct.pack_into("<I", out, pos + 12, 0)  # PEAK = version (4 bytes), timestamp (4 bytes), ...
        pos += 8 + size + (size & 1)
    return bytes(out)


def _render(rng: np.random.Generator, category: str, seconds: float, sr: int, channels: int) -> tuple[np.ndarray, str]:
    gen = CATEGORIES[category][0]
    mono, caption = gen(rng, sr, seconds)
    mono = np.nan_to_num(np.asarray(mono, dtype=np.float64))
    if channels == 2:
        # A little width: independent slow gain per side plus a sub-millisecond delay.
        delay = int(rng.integers(0, max(1, int(0.0007 * sr))))
        right = np.concatenate([np.zeros(delay), mono[: mono.size - delay]])
        pan = rng.uniform(0.3, 0.7)
        wave = np.stack([mono * (1 - pan) * 2, right * pan * 2])
    else:
        wave = mono[None]
    peak = np.abs(wave).max()
    level = 10 ** (rng.uniform(-18, -1) / 20)  # library files are mastered to varied levels
    wave = wave * (level / peak) if peak > 0 else wave
    return wave.astype(np.float32), caption


def synth_corpus(out_dir: str | Path, minutes: float, seed: int = 0) -> list[SynthFile]:
    """Write about ``minutes`` of procedural sound effects to ``out_dir/<category>/``.

    Returns the files written (paths relative to ``out_dir``). The same seed writes the same bytes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    weights = np.array([CATEGORIES[c][3] for c in names])
    weights = weights / weights.sum()
    budget = minutes * 60.0
    total = 0.0
    files: list[SynthFile] = []
    index = 0
    while total < budget:
        category = names[rng.choice(len(names), p=weights)]
        lo, hi = CATEGORIES[category][1:3]
        seconds = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        seconds = round(min(seconds, max(budget - total, lo)), 3)
        sr = int(rng.choice(RATES))
        channels = int(rng.choice([1, 2], p=[0.6, 0.4]))
        fmt, subtype = FORMATS[rng.choice(len(FORMATS))]
        # Each file gets its own generator so its content does not depend on earlier draws' count.
        file_rng = np.random.default_rng([seed, index])
        wave, caption = _render(file_rng, category, seconds, sr, channels)
        rel = f"{category}/{SINGULAR.get(category, category)}_{index:04d}.{fmt}"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode(wave, sr, fmt, subtype, serial=(seed * 100003 + index) & 0x7FFFFFFF))
        path.with_suffix(".txt").write_text(caption + "\n")
        files.append(SynthFile(rel, category, caption, seconds, sr, channels))
        total += seconds
        index += 1
    return files


def corpus_summary(files: list[SynthFile]) -> dict:
    """Counts by category, rate, channels and format, plus total minutes: what `synth-corpus` prints."""
    def count(key):
        out: dict = {}
        for f in files:
            k = key(f)
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    return {
        "files": len(files),
        "minutes": round(sum(f.seconds for f in files) / 60, 2),
        "categories": count(lambda f: f.category),
        "sample_rates": count(lambda f: f.sample_rate),
        "channels": count(lambda f: f.channels),
        "formats": count(lambda f: Path(f.path).suffix[1:]),
    }


__all__ = ["CATEGORIES", "SynthFile", "corpus_summary", "fix_ogg_serial", "synth_corpus"]
