"""Neural-codec baselines from their own packages with local weights: DAC and SQCodec.

Neither package is a dependency of spresso (DAC needs ``descript-audiotools`` and torchaudio,
SQCodec needs ``vector-quantize-pytorch`` and ``local-attention``): the adapters import them
lazily and ``available()`` reports "package not installed" or "weights not found" so the report
lists the row instead of failing. Weights are never downloaded and never unpickled beyond
tensors: files are read with ``torch.load(weights_only=True)`` and loaded strictly.

- DAC (Kumar et al., 2023): ``dac:WEIGHTS.pth,codebooks=2``. The released ``.pth`` holds
  ``{"state_dict": ..., "metadata": {"kwargs": DAC constructor arguments}}``; the model is built as
  ``dac.DAC(**kwargs)``. 44.1 kHz model: 86.1 frames/s x 10 bits x 2 codebooks = 1.72 kbps.
- SQCodec (Zhai et al., 2025): ``sqcodec:MODEL_DIR,config=0k75bps``. MODEL_DIR holds one
  ``<module>.pt`` state dict per trainable module (the layout ``sq_codec`` saves), the network
  is built from the package's bundled ``<config>.toml``.
"""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import torch

from spresso.codec.bitpack import pack_codes, unpack_codes
from spresso.core.errors import SpressoError
from spresso.eval.adapter import CodecAdapter, CodecInfo
from spresso.eval.baselines.audioae import torch_device


def _package_missing(module: str, pip_name: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"package {pip_name} is not installed"
    return None


def _safe_torch_load(path: Path, what: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise SpressoError(f"cannot load {what} weights {path} safely: {str(err).splitlines()[0]}") from None


def _strict(module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SpressoError(f"{what} weights do not match the network: {str(err).splitlines()[0]}") from None


def _codes_stream(codes: np.ndarray, bits: int) -> bytes:
    """codes [n_q, T] -> uint16 n_q, uint32 T, then the codes bit-packed at ``bits`` each."""

    return np.array([codes.shape[0]], "<u2").tobytes() + np.array([codes.shape[1]], "<u4").tobytes() + pack_codes(codes.T, bits)


def _read_codes_stream(data: bytes, bits: int) -> np.ndarray:
    nq = int(np.frombuffer(data[:2], "<u2")[0])
    t = int(np.frombuffer(data[2:6], "<u4")[0])
    return np.asarray(unpack_codes(data[6:], t, nq, bits)).reshape(t, nq).T.astype(np.int64)


class DACAdapter(CodecAdapter):
    def __init__(self, weights: str, codebooks: int = 2, sample_rate: int = 44100, device: str | None = None):
        if codebooks < 1:
            raise SpressoError(f"DAC needs at least one codebook, got {codebooks}")
        self.weights, self.codebooks, self.device = Path(weights), int(codebooks), device
        self._model = None
        hop, bits = 512, 10  # the released 44.1 kHz model; replaced by the loaded model's own values
        self.info = CodecInfo("DAC", f"{codebooks} codebooks", sample_rate, frame_rate_hz=sample_rate / hop,
                              nominal_bitrate_bps=codebooks * bits * sample_rate / hop)

    def available(self) -> tuple[bool, str]:
        missing = _package_missing("dac", "descript-audio-codec")
        if missing:
            return False, missing
        if not self.weights.is_file():
            return False, f"DAC weights not found at {self.weights}"
        return True, ""

    @property
    def model(self):
        if self._model is None:
            self._model = load_dac(self.weights, torch_device(self.device))
            m = self._model
            bits = int(math.log2(m.quantizer.codebook_size)) if hasattr(m, "quantizer") else 10
            self.bits = bits
            self.info = CodecInfo("DAC", f"{self.codebooks} codebooks", int(m.sample_rate), frame_rate_hz=m.sample_rate / m.hop_length,
                                  nominal_bitrate_bps=self.codebooks * bits * m.sample_rate / m.hop_length)
        return self._model

    def encode(self, wave: np.ndarray) -> bytes:
        m = self.model
        x = torch.from_numpy(np.asarray(wave, np.float32))[None, None].to(next(m.parameters()).device)
        with torch.inference_mode():
            x = m.preprocess(x, m.sample_rate)
            codes = m.encode(x, n_quantizers=self.codebooks)[1][0, : self.codebooks]
        return _codes_stream(codes.cpu().numpy(), self.bits)

    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        m = self.model
        codes = torch.from_numpy(_read_codes_stream(data, self.bits))[None].to(next(m.parameters()).device)
        with torch.inference_mode():
            y = m.decode(m.quantizer.from_codes(codes)[0])[0, 0].float().cpu().numpy()
        return y[:num_samples] if y.size >= num_samples else np.pad(y, (0, num_samples - y.size))


def load_dac(path: str | Path, device="cpu"):
    """``dac.DAC`` from a local ``.pth`` ({"state_dict", "metadata": {"kwargs"}}), tensors only, strict."""
    import dac  # lazy: optional package, only for the DAC baseline

    obj = _safe_torch_load(Path(path), "DAC")
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise SpressoError(f"{path} is not a DAC checkpoint (no state_dict)")
    kwargs = (obj.get("metadata") or {}).get("kwargs") or {}
    try:
        model = dac.DAC(**kwargs)
    except TypeError as err:
        raise SpressoError(f"{path}: DAC metadata kwargs do not fit dac.DAC: {err}") from None
    _strict(model, obj["state_dict"], f"DAC {path}")
    return model.to(device).eval()


def _nominal_bps(config: str) -> float | None:
    """'0k75bps' -> 750, '6kbps' -> 6000, '12kbps_24khz' -> 12000."""
    m = re.match(r"(\d+)k(\d*)bps", config)
    return float(f"{m.group(1)}.{m.group(2) or 0}") * 1000 if m else None


class SQCodecAdapter(CodecAdapter):
    def __init__(self, model_dir: str, config: str = "0k75bps", device: str | None = None):
        self.model_dir, self.config, self.device = Path(model_dir), config, device
        sr = 24000 if "24khz" in config else 16000
        self._codec = None
        self.bits = 0
        self.info = CodecInfo("SQCodec", config, sr, nominal_bitrate_bps=_nominal_bps(config))

    def available(self) -> tuple[bool, str]:
        missing = _package_missing("sq_codec", "sq-codec")
        if missing:
            return False, missing
        if not self.model_dir.is_dir() or not any(self.model_dir.glob("*.pt")):
            return False, f"SQCodec weights not found in {self.model_dir} (<module>.pt files)"
        return True, ""

    @property
    def codec(self):
        if self._codec is None:
            self._codec = load_sqcodec(self.model_dir, self.config, torch_device(self.device))
            q = self._codec.network.quantizer
            size = getattr(q, "codebook_size", None)
            hop = int(self._codec.config.network_config.hop_length)
            sr = int(self._codec.config.sample_rate)
            self.bits = int(math.ceil(math.log2(size))) if size else int(round(self.info.nominal_bitrate_bps * hop / sr))
            self.info = CodecInfo("SQCodec", self.config, sr, frame_rate_hz=sr / hop, nominal_bitrate_bps=self.bits * sr / hop)
        return self._codec

    def encode(self, wave: np.ndarray) -> bytes:
        c = self.codec
        x = torch.from_numpy(np.asarray(wave, np.float32))[None].to(next(c.network.parameters()).device)
        with torch.inference_mode():
            _, indices = c.encode_audio(x)
        return _codes_stream(indices.reshape(1, -1).cpu().numpy(), self.bits)

    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        c = self.codec
        idx = torch.from_numpy(_read_codes_stream(data, self.bits)).to(next(c.network.parameters()).device)
        with torch.inference_mode():
            y = c.decode_audio(indices=idx)[0].float().cpu().numpy()
        return y[:num_samples] if y.size >= num_samples else np.pad(y, (0, num_samples - y.size))


def load_sqcodec(model_dir: str | Path, config: str, device="cpu"):
    """An ``sq_codec.SQCodec`` built from the package's bundled config, every module's weights
    loaded strictly from ``<model_dir>/<module>.pt`` (the package itself would download them)."""
    import sq_codec  # lazy: optional package, only for the SQ-Codec baseline

    toml = Path(sq_codec.CONFIG_DIR) / f"{config}.toml"
    if not toml.is_file():
        raise SpressoError(f"SQCodec has no config {config!r}; choose one of {', '.join(sq_codec.list_models())}")
    codec = sq_codec.SQCodec(sq_codec.SQCodecConfig(config_file=toml, model_dir=Path(model_dir)))
    for name, module in codec.network.trainable_modules.items():
        path = Path(model_dir) / f"{name}.pt"
        if not path.is_file():
            raise SpressoError(f"SQCodec weights for module {name!r} missing: {path}")
        _strict(module, _safe_torch_load(path, "SQCodec"), f"SQCodec {path}")
    codec.network.to(device).eval()
    return codec
