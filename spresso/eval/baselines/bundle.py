"""An S-PRESSO codec bundle (``spresso.load(path) -> Codec``) as an evaluation adapter.

The stream is exactly what ``Codec.encode`` writes (the .spr bitstream, header included), so
its size is the actual bitrate; decoding is seeded, and other seeds are the report's
"decoding variations". ``spresso.load`` imports the codec (torch) on first use only.
"""
from __future__ import annotations

import numpy as np

import spresso
from spresso.audio.io import resample
from spresso.core.bundle_io import read_bundle_manifest
from spresso.core.errors import BundleError
from spresso.core.rates import (
    bitrate_bps,
    compression_ratio,
    continuous_bitrate_bps,
    frame_rate,
)
from spresso.eval.adapter import CodecAdapter, CodecInfo


class BundleAdapter(CodecAdapter):
    stochastic = True

    def __init__(self, path: str, kbps: float | None = None, codebooks: int | None = None, steps: int = 32,
                 solver: str | None = None):
        self.path, self.kbps, self.codebooks, self.steps = str(path), kbps, codebooks, int(steps)
        self.solver = solver  # None: the bundle's own (the codec checks the name)
        self.bundle_name = self.path.rstrip("/").rsplit("/", 1)[-1]  # the bundle folder's name, local or URL
        self._codec = None
        variant = f"{kbps:g} kbps" if kbps else (f"{codebooks} codebooks" if codebooks else "full rate")
        self.info = CodecInfo("S-PRESSO", f"{self.bundle_name} {variant}", 48000,
                              nominal_bitrate_bps=kbps * 1000 if kbps else None)
        # The table is built in the driver, which never loads the weights: describe the
        # operating point from the bundle's manifest alone.
        try:
            self._describe_manifest(read_bundle_manifest(self.path), variant)
        except Exception:  # no or broken bundle: available() reports it
            pass

    def available(self) -> tuple[bool, str]:
        try:
            read_bundle_manifest(self.path)
        except BundleError as err:
            return False, str(err)
        return True, ""

    @property
    def codec(self):
        if self._codec is None:
            self._codec = spresso.load(self.path)
        return self._codec

    def _describe_manifest(self, manifest: dict, variant: str) -> None:
        t = int(manifest["t"])
        channels = int(manifest.get("configs", {}).get("encoder", {}).get("z_channels", 64))
        if manifest.get("mode") == "discrete":
            K, m = int(manifest["K"]), int(self.codebooks or manifest.get("m") or manifest["M"])
            nominal = self.kbps * 1000 if self.kbps else bitrate_bps(m, K, t)
            variant = f"{self.bundle_name} t={t} K=2^{K.bit_length() - 1} m={m}"
        else:
            nominal = continuous_bitrate_bps(channels, t)
            variant = f"{self.bundle_name} t={t} continuous float16"
        if self.solver is not None:  # a sampler row of the table: say which
            variant = f"{variant} {self.solver} {self.steps} steps"
        self.info = CodecInfo("S-PRESSO", variant, 48000, frame_rate_hz=frame_rate(t), nominal_bitrate_bps=nominal,
                              compression=compression_ratio(t, channels))

    def encode(self, wave: np.ndarray) -> bytes:
        return self.codec.encode(np.asarray(wave, np.float32), 48000, kbps=self.kbps, codebooks=self.codebooks)

    def decode_variation(self, data: bytes, num_samples: int, seed: int) -> np.ndarray:
        wave, sr = self.codec.decode(data, steps=self.steps, seed=seed, solver=self.solver)
        y = resample(np.asarray(wave, np.float32).reshape(-1), int(sr), 48000)
        return y[:num_samples] if y.size >= num_samples else np.pad(y, (0, num_samples - y.size))

    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        return self.decode_variation(data, num_samples, 0)
