"""The codec people use: ``codec.encode(wave, sr) -> bytes`` and ``codec.decode(data) -> (wave, sr)``.

    codec = spresso.load("work/demo/bundles/d96")       # or "models:/spresso@champion"
    data = codec.encode(wave, 44100, kbps=0.1)          # any layout: [n], [ch, n], soundfile's [n, ch]
    wave48, sr = codec.decode(data, steps=16, seed=3)   # 48 kHz; original_rate=True restores 44.1 kHz
    takes, sr = codec.decode(data, variations=4)        # 4 different renditions [4, n] (footsteps)

Encoding: downmix to mono (the mid; the loudest channel when the channels cancel), soxr to 48 kHz, cut into 5 s windows overlapping by 0.5 s
(:mod:`.windowing`), then per window AudioAE -> normalised x0 -> g_psi -> z -> codes of the bundle's
quantizer (QINCo2, or RQ where the qinco2 stage shipped it; the header says which) with the first
m codebooks (or z as float16 for a continuous bundle), windows batched on the device.
Decoding: codes -> z_q -> diffusion (DPM-Solver++(2M) by default, :mod:`spresso.diffusion.sampler`,
with the step-invariant cache of :mod:`.fast_decode`) -> x0 ->
AudioAE decoder, windows overlap-added with the Hann crossfade. Both go window by window in
batches over a signal held in memory; ``encode_file``/``decode_to_file`` (:mod:`.streaming`) do the
same from and to files block by block, for recordings of any length in bounded memory.

The window-level steps both paths share are public methods of :class:`Codec` (``prepare``,
``encode_windows``, ``stream_bytes``, ``sampler_settings``, ``window_z``, ``window_noise``,
``decode_windows``): :mod:`.streaming` and the benchmarks build on them.

What counts as audio (layouts, dtypes, rates, the stereo rule) is :mod:`.inputs`. Empty input,
NaN/Inf, digital silence (every channel's peak below -120 dBFS: a silent file carries nothing to
code, and a generative decoder would not give silence back), an ambiguous shape and a rate the
decoder cannot restore are refused with one line; every stream is parsed once more after encoding,
so an encode never yields a stream its own bundle refuses.
Noise for window k of variation v comes from its own generator seeded by (seed, v, k), so a
decode is reproducible whatever the batch size or device batching.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from spresso.audio.io import resample
from spresso.codec import bitstream as bs
from spresso.codec import streaming
from spresso.codec import windowing as win
from spresso.codec.bundle import BundleParts, load_bundle, quantizer_kind
from spresso.codec.errors import CodecError
from spresso.codec.fast_decode import CachedDenoiser
from spresso.codec.inputs import Downmix, as_channels, check_int, check_rate, downmix
from spresso.codec.variable_rate import resolve_codebooks
from spresso.config.dit import RHO, SIGMA_MAX, SIGMA_MIN
from spresso.core.rates import frame_rate
from spresso.diffusion.sampler import SOLVERS, sample


@dataclass
class _Job:
    item: int
    variation: int
    window: int


def _seed(*parts: int) -> int:
    """A 63-bit seed from (seed, variation, window): independent streams that never collide by addition."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class Codec:
    """A loaded bundle plus the encode/decode procedures. Models in eval mode on ``device``."""

    def __init__(self, parts: BundleParts, device: str | torch.device | None = None, *, batch_size: int | None = None,
                 compile: bool = False, bf16: bool | None = None):
        self.parts = parts
        self.manifest = parts.manifest
        self.device = pick_device(device)
        if self.device.type == "cpu":
            # Late sampler steps drive activations into denormal floats, which x86 CPUs handle
            # in microcode: flushing them to zero roughly halves CPU decode time (measured) and
            # does not change the audio audibly (they are below 1e-38).
            torch.set_flush_denormal(True)
        self.audioae = parts.audioae.to(self.device).eval()
        self.dae = parts.dae.to(self.device).eval()
        self.quantizer = parts.quantizer.to(self.device).eval() if parts.quantizer is not None else None
        self.normalizer = parts.normalizer
        self._silence_z: torch.Tensor | None = None  # computed on first use (silence_z)
        self.batch_size = (16 if self.device.type == "cuda" else 4) if batch_size is None else check_int(batch_size, "batch size", 1, 4096)
        # bf16 for the DiT on a GPU (the AudioAE and quantizer stay in float32: cheap, and phase-sensitive).
        self.bf16 = self.device.type == "cuda" if bf16 is None else bool(bf16)
        if compile:
            # Compile each transformer block (shapes are fixed: 5 s windows), so the cached conditioning can change freely.
            for block in self.dae.net.dit.blocks():
                block.compile(dynamic=False)

    @classmethod
    def from_path(cls, path: str | Path, **kw) -> "Codec":
        return cls(load_bundle(path), **kw)

    # ----------------------------------------------------------------------- properties
    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def mode(self) -> str:
        return self.manifest["mode"]

    @property
    def t(self) -> int:
        return int(self.manifest["t"])

    @property
    def K(self) -> int | None:
        return self.manifest.get("K")

    @property
    def M(self) -> int | None:
        return self.manifest.get("M")

    @property
    def quantizer_kind(self) -> str | None:
        """``qinco2`` or ``rq`` (discrete bundles; a stream's header names the same one), None when continuous."""
        return quantizer_kind(self.manifest)

    @property
    def default_m(self) -> int | None:
        return self.manifest.get("m")

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])

    @property
    def frames_per_window(self) -> int:
        """z frames per 5 s window: ceil(500 / t)."""
        return win.frames_per_window(self.t)

    @property
    def silence_z(self) -> torch.Tensor:
        """z [C, T'] of an all-zero window: what a stream's dropped padding frames are decoded from."""
        if self._silence_z is None:
            zeros = np.zeros((1, win.WINDOW_SAMPLES), np.float32)
            self._silence_z = torch.from_numpy(self.encode_windows(zeros, None)[0]).to(self.device)
        return self._silence_z

    def codebooks_for(self, kbps: float | None = None, codebooks: int | None = None) -> int | None:
        if self.mode == "continuous":
            if kbps is not None or codebooks is not None:
                raise CodecError("this is a continuous bundle (float16 z): --kbps/--codebooks apply to discrete bundles only")
            return None
        if kbps is None and codebooks is None:
            return int(self.default_m)
        return resolve_codebooks(int(self.K), self.t, int(self.M), kbps=kbps, codebooks=codebooks)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # --------------------------------------------------------------------------- encode
    def prepare(self, wave, sr, *, channels_last: bool | None = None) -> np.ndarray:
        """One signal checked, downmixed and resampled: mono float32 at 48 kHz (:meth:`prepare_described`)."""
        return self.prepare_described(wave, sr, channels_last=channels_last)[0]

    def prepare_described(self, wave, sr, *, channels_last: bool | None = None) -> tuple[np.ndarray, Downmix, int]:
        """(mono float32 at 48 kHz, the downmix rule used, the source's sample count) for one signal in any layout, dtype and rate that
        :mod:`.inputs` accepts; one-line :class:`CodecError` for the rest (empty, NaN/Inf, digital silence,
        an ambiguous shape, a rate the decoder cannot restore). Exactly :func:`.windowing.model_length` samples,
        the length the decoder plans its windows for."""
        rate = check_rate(sr)
        w = as_channels(wave, channels_last)
        mono, rule = downmix(w)
        return _fit(resample(mono, rate, self.sample_rate), win.model_length(w.shape[1], rate)), rule, w.shape[1]

    @torch.no_grad()
    def encode_windows(self, windows: np.ndarray, m: int | None, valid_frames: Sequence[int] | None = None) -> np.ndarray:
        """5 s windows at 48 kHz [b, 240000] -> codes [b, T', m] (int64) with m codebooks, or z [b, C, T']
        (float32) for ``m=None`` (a continuous bundle). One device batch: the caller sizes it. ``valid_frames``:
        each window's x0 frames that see the signal (:func:`.windowing.window_x0_frames`), for a model that
        masks padding; None: every frame is signal."""
        wave = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        x0 = self.audioae.encode(wave)
        z = self.dae.encode(self.normalizer.normalize(x0), self._valid(valid_frames))
        if m is None:
            return z.float().cpu().numpy()
        return self.quantizer.encode(z.float().transpose(1, 2), m).cpu().numpy()

    def encode(self, wave, sr: int, kbps: float | None = None, codebooks: int | None = None, *,
               channels_last: bool | None = None, progress: bool = False) -> bytes:
        """One signal -> `.spr` bytes. ``wave``: [n], [channels, n] or [n, channels] (soundfile's layout;
        ``channels_last`` says which when the shape does not, see :mod:`.inputs`), float or integer PCM."""
        return self.encode_batch([(wave, sr)], kbps=kbps, codebooks=codebooks, channels_last=channels_last,
                                 progress=progress)[0]

    def encode_batch(self, items: Sequence[tuple], kbps: float | None = None, codebooks: int | None = None, *,
                     channels_last: bool | None = None, progress: bool = False) -> list[bytes]:
        """Several (wave, sr) at once; their windows share device batches."""
        return self.encode_batch_described(items, kbps, codebooks, channels_last=channels_last, progress=progress)[0]

    def encode_batch_described(self, items: Sequence[tuple], kbps: float | None = None, codebooks: int | None = None, *,
                               channels_last: bool | None = None, progress: bool = False) -> tuple[list[bytes], list[Downmix]]:
        """:meth:`encode_batch` plus how each item's channels became mono (what the command line prints)."""
        m = self.codebooks_for(kbps, codebooks)
        prepared, plans, rules, counts = [], [], [], []
        for wave, sr in items:
            mono, rule, count = self.prepare_described(wave, sr, channels_last=channels_last)
            plans.append(win.plan_for_signal(mono.shape[0]))
            prepared.append(mono)
            rules.append(rule)
            counts.append(count)
        T = self.frames_per_window
        outs = [np.empty((p.n_windows, T, m), np.int64) if m is not None else np.empty((p.n_windows, 0, T), np.float32)
                for p in plans]
        views = [win.cut(w, p) for w, p in zip(prepared, plans)]
        jobs = [(i, k) for i, p in enumerate(plans) for k in range(p.n_windows)]
        for batch in tqdm(list(_chunks(jobs, self.batch_size)), desc="encode", disable=not progress, leave=False):
            res = self.encode_windows(np.stack([views[i][k] for i, k in batch]), m,
                                      [win.window_x0_frames(plans[i], k) for i, k in batch])
            for (i, k), r in zip(batch, res):
                if m is None and outs[i].shape[1] == 0:
                    outs[i] = np.empty((plans[i].n_windows,) + r.shape, np.float32)
                outs[i][k] = r
        return [self.stream_bytes(out, plan, n, int(sr), m) for (_, sr), plan, out, n in zip(items, plans, outs, counts)], rules

    def stream_bytes(self, out: np.ndarray, plan: win.WindowPlan, sample_count: int, sample_rate: int, m: int | None) -> bytes:
        """Per-window codes [n_win, T', m] (or z [n_win, C, T']) of one signal -> `.spr` bytes (the current format).

        ``sample_count``/``sample_rate``: the original signal's, stored in the header. Windows one after another, without the last window's frames that only saw its zero padding.
        """
        common = dict(model_id=self.model_id, time_factor=self.t, sample_count=sample_count, sample_rate=sample_rate,
                      overlap=plan.overlap // win.X0_HOP)
        keep = win.stream_frames(plan, self.t, bs.FORMAT_VERSION)
        if m is None:  # [n_win, C, T'] -> [C, n_win * T']
            stream = bs.Stream.continuous(np.concatenate(list(out), axis=1)[:, :keep], **common)
        else:
            stream = bs.Stream.discrete(out.reshape(-1, m)[:keep], int(self.K), quantizer=self.quantizer_kind, **common)
        data = bs.encode_stream(stream)
        self.parse(data)  # a stream this bundle cannot decode is an encoder bug: say so now, not at decode time
        return data

    def encode_file(self, path: str | Path, kbps: float | None = None, codebooks: int | None = None, *,
                    allow_partial: bool = False, progress: bool = False) -> bytes:
        """An audio file of any length -> `.spr` bytes, read block by block (bounded memory). A file cut short
        (a WAV missing sample data, an Ogg without its last page) is refused unless ``allow_partial``."""
        return streaming.encode_file(self, path, kbps, codebooks, allow_partial=allow_partial, progress=progress)

    # --------------------------------------------------------------------------- decode
    def parse(self, data) -> bs.Stream:
        """Verify a stream and that it fits this bundle (one-line :class:`BitstreamError`/`CodecError`)."""
        stream = bs.decode_stream(data, expected_model_id=self.model_id)
        if stream.mode != self.mode:
            raise CodecError(f"a {stream.mode} stream cannot be decoded by a {self.mode} bundle")
        if stream.time_factor != self.t:
            raise CodecError(f"stream frame rate {stream.frame_rate:.4g} Hz does not match the model's {frame_rate(self.t):.4g} Hz")
        if stream.mode == "discrete":
            if stream.quantizer != self.quantizer_kind:
                raise CodecError(f"stream holds {stream.quantizer} codes, this bundle's quantizer is {self.quantizer_kind}")
            if stream.K != self.K:
                raise CodecError(f"stream codebook size K={stream.K} does not match the model's K={self.K}")
            if stream.m > self.M:
                raise CodecError(f"stream has {stream.m} codebooks, the model only {self.M}")
        elif stream.channels != self.dae.encoder.z_channels:
            raise CodecError(f"stream z has {stream.channels} channels, the model {self.dae.encoder.z_channels}")
        plan = win.plan_for_stream(stream.sample_count, stream.sample_rate, stream.overlap)
        if stream.overlap * win.X0_HOP >= win.WINDOW_SAMPLES:
            raise CodecError(f"stream overlap of {stream.overlap} frames is not shorter than a window")
        need = win.stream_frames(plan, self.t, stream.version)
        if stream.n_frames != need:
            raise CodecError(f"stream holds {stream.n_frames} frames; {plan.n_windows} window(s) of {plan.n_samples} samples "
                             f"at {frame_rate(self.t):.4g} Hz need {need} (format version {stream.version})")
        return stream

    def window_z(self, stream: bs.Stream, windows: Sequence[int]) -> torch.Tensor:
        """z [b, C, T'] of the given windows (indices into a parsed stream) on the device; frames the stream dropped (last window's padding) from :attr:`silence_z`."""
        T = self.frames_per_window
        spans = [(k * T, min((k + 1) * T, stream.n_frames)) for k in windows]
        if stream.codes is not None:
            codes = np.concatenate([stream.codes[lo:hi] for lo, hi in spans])[None]  # [1, frames, m]
            z = self.quantizer.decode(torch.from_numpy(codes).to(self.device)).float()[0].T  # [C, frames]
        else:
            z = torch.from_numpy(np.concatenate([stream.z[:, lo:hi] for lo, hi in spans], axis=1).astype(np.float32)).to(self.device)
        parts, at = [], 0
        for lo, hi in spans:
            part = z[:, at:at + hi - lo]
            at += hi - lo
            if hi - lo < T:
                part = torch.cat([part, self.silence_z[:, hi - lo:].to(part.dtype)], dim=1)
            parts.append(part)
        return torch.stack(parts)

    def _valid(self, valid_frames: Sequence[int] | None) -> torch.Tensor | None:
        return None if valid_frames is None else torch.as_tensor(list(valid_frames), device=self.device)

    def window_noise(self, seed: int, windows: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Initial noise [b, C, frames] for (variation, window) pairs, each from its own generator seeded by
        (seed, variation, window): a decode is the same whatever the batching."""
        C, frames = self.normalizer.channels, win.WINDOW_SAMPLES // win.X0_HOP
        return torch.stack([torch.randn(C, frames, generator=torch.Generator().manual_seed(_seed(seed, v, k)))
                            for v, k in windows]).to(self.device)

    @torch.no_grad()
    def decode_windows(self, z: torch.Tensor, noise: torch.Tensor, steps: int, solver: str, rho: float,
                       valid_frames: Sequence[int] | None = None) -> np.ndarray:
        """One device batch: z [b, C, T'] (:meth:`window_z`) and noise (:meth:`window_noise`) -> 5 s windows
        [b, 240000] at 48 kHz, before the crossfade. Take steps/solver/rho from :meth:`sampler_settings`;
        ``valid_frames`` as for :meth:`encode_windows`."""
        frames = win.WINDOW_SAMPLES // win.X0_HOP
        den = CachedDenoiser(self.dae, z, frames, autocast=self._autocast if self.bf16 else None,
                             valid_frames=self._valid(valid_frames))
        s = self.manifest.get("sampler", {})
        y = sample(den, noise, steps=steps, solver=solver, sigma_min=s.get("sigma_min", SIGMA_MIN),
                   sigma_max=s.get("sigma_max", SIGMA_MAX), rho=rho)
        return self.audioae.decode(self.normalizer.denormalize(y)).float().cpu().numpy()

    def sampler_settings(self, steps: int | None, solver: str | None, rho: float | None) -> tuple[int, str, float]:
        """Steps, solver and rho: the caller's, else the bundle's, validated."""
        sampler = self.manifest.get("sampler", {})
        steps = check_int(steps if steps is not None else int(sampler.get("steps", 32)), "steps", 1, 1000)
        solver = solver or sampler.get("solver", "dpmpp2m")
        rho = float(rho if rho is not None else sampler.get("rho", RHO))
        if solver not in SOLVERS:
            raise CodecError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
        return steps, solver, rho

    def decode_to_file(self, data, path: str | Path, steps: int | None = None, seed: int = 0, variation: int = 0, *,
                       original_rate: bool = False, solver: str | None = None, rho: float | None = None,
                       subtype: str | None = None, progress: bool = False) -> tuple[int, int]:
        """`.spr` bytes -> an audio file, written as windows are decoded (bounded memory, any length).

        ``variation`` v gives the same audio as ``decode(..., variations=N)[v]``. Returns (samples, rate).
        """
        return streaming.decode_to_file(self, data, path, steps, seed, variation, original_rate=original_rate, solver=solver,
                              rho=rho, subtype=subtype, progress=progress)

    def decode(self, data, steps: int | None = None, seed: int = 0, variations: int = 1, *, original_rate: bool = False,
               solver: str | None = None, rho: float | None = None, progress: bool = False) -> tuple[np.ndarray, int]:
        """`.spr` bytes -> (wave [n] float32, or [variations, n] when variations > 1; sample rate)."""
        return self.decode_batch([data], steps, seed, variations, original_rate=original_rate, solver=solver, rho=rho,
                                 progress=progress)[0]

    def decode_batch(self, datas: Sequence, steps: int | None = None, seed: int = 0, variations: int = 1, *,
                     original_rate: bool = False, solver: str | None = None, rho: float | None = None,
                     progress: bool = False) -> list[tuple[np.ndarray, int]]:
        """Several streams at once; windows of every stream and variation share device batches."""
        steps, solver, rho = self.sampler_settings(steps, solver, rho)
        if not isinstance(variations, (int, np.integer)) or not 1 <= variations <= 1000:
            raise CodecError(f"variations must be 1..1000, got {variations!r}")
        streams = [self.parse(d) for d in datas]
        plans = [win.plan_for_stream(s.sample_count, s.sample_rate, s.overlap) for s in streams]
        outs = [[np.zeros(p.padded_samples, np.float32) for _ in range(variations)] for p in plans]
        fades = {}
        jobs = [_Job(i, v, k) for i, p in enumerate(plans) for v in range(variations) for k in range(p.n_windows)]
        for batch in tqdm(list(_chunks(jobs, self.batch_size)), desc="decode", disable=not progress, leave=False):
            z = torch.cat([self.window_z(streams[j.item], [j.window]) for j in batch])
            noise = self.window_noise(seed, [(j.variation, j.window) for j in batch])
            waves = self.decode_windows(z, noise, steps, solver, rho,
                                        [win.window_x0_frames(plans[j.item], j.window) for j in batch])
            for j, w in zip(batch, waves):
                plan = plans[j.item]
                weight = fades.setdefault((plan.overlap, j.window == 0, j.window == plan.n_windows - 1),
                                          win.window_weight(plan, j.window))
                start = j.window * plan.hop
                outs[j.item][j.variation][start:start + plan.window] += w * weight
        results = []
        for stream, plan, per_var in zip(streams, plans, outs):
            waves = [o[: plan.n_samples] for o in per_var]
            sr = self.sample_rate
            if original_rate:
                waves = [_fit(resample(w, self.sample_rate, stream.sample_rate), stream.sample_count) for w in waves]
                sr = stream.sample_rate
            results.append((waves[0] if variations == 1 else np.stack(waves), sr))
        return results


def pick_device(device: str | torch.device | None) -> torch.device:
    """The device asked for (default: cuda when available), or a one-line error when this machine has no such device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CodecError(f"unknown device {str(device)!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CodecError(f"device {str(device)!r}: no CUDA GPU is available here (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise CodecError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise CodecError(f"device {str(device)!r}: MPS is not available here (use cpu)")
    elif dev.type == "meta" and isinstance(device, torch.device):
        pass  # the CPU-only device checks stand the accelerator in with meta; a typed "--device meta" is refused
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise CodecError(f"unsupported device {str(device)!r} (use cpu, cuda or cuda:N)")
    return dev


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    """Exactly n samples (soxr may be a sample short or long after a round trip)."""
    return wave[:n] if wave.shape[0] >= n else np.pad(wave, (0, n - wave.shape[0]))


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def load(path: str | Path, **kw) -> Codec:
    """A :class:`Codec` from a bundle folder (``spresso.load`` also resolves MLflow model URIs)."""
    kw["device"] = pick_device(kw.get("device"))  # before the weights are read: a wrong device fails at once
    return Codec.from_path(path, **kw)


__all__: Iterable[str] = ("Codec", "CodecError", "load")
