"""The AudioAE alone (encode to x0, decode): the upper bound of every S-PRESSO operating point.

Its "stream" is x0 stored as float16 (128 channels x 100 Hz x 16 bits = 204.8 kbps), which is
what a continuous latent would cost uncompressed; the table shows it without a nominal bitrate.
"""
from __future__ import annotations

import numpy as np
import torch

from spresso.core.checkpoint import has_checkpoint
from spresso.eval.adapter import CodecAdapter, CodecInfo
from spresso.models.audioae import load_audioae


def torch_device(device: str | None):
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def pad_to(wave: np.ndarray, multiple: int) -> np.ndarray:
    n = wave.shape[-1]
    return np.pad(wave, (0, (-n) % multiple)) if n % multiple else wave


def float16_stream(x) -> bytes:
    """A latent tensor [C, T] as a tiny self-describing stream: uint16 C, uint32 T, float16 values."""
    arr = np.asarray(x, dtype=np.float16)
    return np.array([arr.shape[0]], "<u2").tobytes() + np.array([arr.shape[1]], "<u4").tobytes() + arr.astype("<f2").tobytes()


def read_float16_stream(data: bytes) -> np.ndarray:
    c = int(np.frombuffer(data[:2], "<u2")[0])
    t = int(np.frombuffer(data[2:6], "<u4")[0])
    return np.frombuffer(data[6:], "<f2").reshape(c, t).astype(np.float32)


class AudioAEAdapter(CodecAdapter):
    def __init__(self, checkpoint_dir: str, device: str | None = None):
        self.checkpoint_dir = str(checkpoint_dir)
        self.device = device
        self._model = None
        self.info = CodecInfo("AudioAE", "continuous x0 (upper bound)", 48000, frame_rate_hz=100.0, compression=48000 / (100 * 128))

    def available(self) -> tuple[bool, str]:
        if not has_checkpoint(self.checkpoint_dir):
            return False, f"no AudioAE checkpoint at {self.checkpoint_dir}"
        return True, ""

    @property
    def model(self):
        if self._model is None:
            self._model = load_audioae(self.checkpoint_dir, map_location=torch_device(self.device))
        return self._model

    def encode(self, wave: np.ndarray) -> bytes:
        x = torch.from_numpy(pad_to(np.asarray(wave, np.float32), self.model.hop))[None].to(next(self.model.parameters()).device)
        with torch.inference_mode():
            return float16_stream(self.model.encode(x)[0].float().cpu().numpy())

    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        x0 = torch.from_numpy(read_float16_stream(data))[None].to(next(self.model.parameters()).device)
        with torch.inference_mode():
            out = self.model.decode(x0)[0].float().cpu().numpy()
        return out[:num_samples]
