"""Audio embedding backends for FAD, KAD and embedding cosine similarity, behind one interface.

``EmbeddingModel.embed(waves [B, n] at model.sample_rate) -> np.float32 [B, F, D]`` gives F
frame embeddings per clip (F depends only on n); ``embed_from(waves, sr)`` resamples first
(soxr) and ``clip_embeddings`` averages frames. Backends:

- ``aisfx`` (offline default): the sound-effects CNN of Ma & Lerch (ISMIR 2022) whose checkpoint
  ships inside the ``aisfx`` wheel. The checkpoint is a pickle; it is opened with
  ``torch.load(weights_only=True)`` and only numpy's scalar reconstructor allow-listed, so no
  arbitrary code can run. The mel front end is ours (torch), following the package's settings.
- ``vggish``: pure-torch VGGish (Hershey et al., 2017) loading a state dict from a local file.
- ``clap``: LAION-CLAP audio tower via ``transformers`` from a local Hugging Face directory.

Nothing is ever downloaded. See docs/evaluation.md for files, windows and padding.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from spresso.audio.io import resample
from spresso.core.errors import SpressoError

try:
    from numpy._core.multiarray import scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar  # type: ignore[no-redef]

log = logging.getLogger(__name__)

BACKENDS = ("aisfx", "vggish", "clap")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_waves(waves: Any) -> np.ndarray:
    if hasattr(waves, "detach"):
        waves = waves.detach().to("cpu").float().numpy()
    arr = np.asarray(waves, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise SpressoError(f"embedding input must be waves [B, n] with n > 0, got shape {arr.shape}")
    return arr


class EmbeddingModel(ABC):
    """One audio embedding network: frames of embeddings per clip at the model's own rate."""

    name: str
    sample_rate: int
    dim: int

    def __init__(self, device: str | None = None, batch_size: int = 16):
        self.device = device or _default_device()
        self.batch_size = batch_size

    @abstractmethod
    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:
        """waves float32 [b, n] at self.sample_rate -> [b, F, D] float32."""

    def embed(self, waves: Any) -> np.ndarray:
        """waves [B, n] (numpy or torch) at ``self.sample_rate`` -> frame embeddings float32 [B, F, D]."""

        x = _as_waves(waves)
        out = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                out.append(self._embed_batch(x[start : start + self.batch_size]))
        return np.concatenate(out, axis=0)

    def embed_from(self, waves: Any, sample_rate: int) -> np.ndarray:
        """Like :meth:`embed` for audio at another rate (resampled with soxr first)."""

        return self.embed(resample(_as_waves(waves), sample_rate, self.sample_rate))

    @staticmethod
    def clip_embeddings(frames: np.ndarray) -> np.ndarray:
        """[B, F, D] -> [B, D]: the mean frame, used for cosine similarity between clips."""
        return np.asarray(frames).mean(axis=1)


# ---------------------------------------------------------------------------- front ends
def htk_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def htk_mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def triangular_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, unit_sum: bool) -> np.ndarray:
    """[n_fft//2+1, n_mels] HTK-mel triangles (peak 1), optionally each scaled to sum to 1."""
    bins_mel = htk_mel(np.linspace(0.0, sr / 2.0, n_fft // 2 + 1))
    edges = np.linspace(htk_mel(fmin), htk_mel(fmax), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rise = (bins_mel[:, None] - lower[None]) / (center - lower)[None]
    fall = (upper[None] - bins_mel[:, None]) / (upper - center)[None]
    w = np.clip(np.minimum(rise, fall), 0.0, None)
    if unit_sum:
        w = w / np.maximum(w.sum(axis=0, keepdims=True), 1e-12)
    return w.astype(np.float32)


def frames_of(n: int, frame: int, hop: int) -> int:
    return 1 + max(0, n - frame) // hop


# ---------------------------------------------------------------------------- aisfx
class AisfxEmbedding(EmbeddingModel):
    """The aisfx sound-effects CNN (9-layer CNN, 512-d), frames of 100 mel frames (~2.3 s) at hop 50.

    Front end as in the package: 44.1 kHz, peak-normalised clip, 2048-sample Hann STFT with hop
    1024 (centred), 96 HTK-mel power bands 0-22050 Hz with unit-sum triangles,
    log10(1e4 x + 1), divided by 9.4578 (the package's 'original' normalisation). Clips shorter
    than one block are zero-padded (in the spectrogram domain, as the package does).
    """

    name = "aisfx"
    sample_rate = 44100
    dim = 512
    n_fft, hop, n_mels = 2048, 1024, 96
    block, block_hop = 100, 50
    spec_max = 9.457798957824707

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str | None = None, batch_size: int = 16):
        super().__init__(device, batch_size)

        self.net = build_aisfx_net()
        path = Path(checkpoint) if checkpoint else aisfx_checkpoint_path()
        state = load_aisfx_state(path)
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise SpressoError(f"aisfx checkpoint {path} does not match the network: {str(err).splitlines()[0]}") from None
        self.net.to(self.device).eval()
        self.mel = torch.from_numpy(triangular_filters(self.sample_rate, self.n_fft, self.n_mels, 0.0, 22050.0, True)).to(self.device)
        self.window = torch.hann_window(self.n_fft, periodic=False, device=self.device)

    def _spectrogram(self, x):
        peak = x.abs().amax(dim=1, keepdim=True)
        x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant", return_complex=True)
        power = spec.abs().pow(2).transpose(1, 2)  # [b, T, bins]
        return torch.log10(1e4 * (power @ self.mel) + 1.0) / self.spec_max  # [b, T, 96]

    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:
        spec = self._spectrogram(torch.from_numpy(waves).to(self.device))
        t = spec.shape[1]
        if t < self.block:
            spec = torch.nn.functional.pad(spec, (0, 0, 0, self.block - t))
        blocks = spec.unfold(1, self.block, self.block_hop).transpose(2, 3)  # [b, nb, 100, 96]
        b, nb = blocks.shape[:2]
        emb = self.net(blocks.reshape(b * nb, self.block, self.n_mels))
        return emb.reshape(b, nb, -1).float().cpu().numpy()


def aisfx_checkpoint_path() -> Path:
    """The checkpoint inside the installed aisfx wheel (found without importing the package)."""

    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise SpressoError("the aisfx package is not installed (pip install --no-deps aisfx==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "checkpoint.pth"
    if not path.is_file():
        raise SpressoError(f"aisfx checkpoint missing at {path}")
    return path


def load_aisfx_state(path: Path) -> dict:
    """The embedding-network weights from aisfx's checkpoint, a pickled (state_dict, datasets) tuple.

    Loaded with weights_only=True; the one extra allowed global is numpy's scalar
    reconstructor (the dataset table holds numpy ints), which builds a number from a dtype and
    bytes and cannot call anything else. The classifier heads are dropped.
    """

    allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    allowed += [type(np.dtype(t)) for t in ("int64", "int32", "float64", "float32")]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise SpressoError(f"cannot load aisfx checkpoint {path} safely: {str(err).splitlines()[0]}") from None
    weights = obj[0] if isinstance(obj, (tuple, list)) else obj
    prefix = "embedding_net."
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not state:
        raise SpressoError(f"{path} holds no embedding_net weights")
    return state


def build_aisfx_net():
    """The aisfx embedding CNN (random init); the class comes from the installed package."""
    try:
        # lazy: optional package, aisfx backend only
        from aisfx.models.cnn2d import EmbeddingNet
    except ImportError as err:
        raise SpressoError(f"the aisfx package is not importable: {err}") from None
    # The released model X-Sequential-CE: max pooling, kernel 3, stride 1, 64 first-layer channels.
    return EmbeddingNet("max", 3, 1, 64)


# ---------------------------------------------------------------------------- VGGish
def build_vggish(final_relu: bool = True):
    """VGGish in torch with the module names of the common torch port's state dict
    (``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``), so its .pth loads strictly."""

    class VGGish(nn.Module):
        def __init__(self):
            super().__init__()
            layers: list[nn.Module] = []
            c = 1
            for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                    c = v
            self.features = nn.Sequential(*layers)
            head: list[nn.Module] = [nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, 128)]
            if final_relu:
                head.append(nn.ReLU(True))
            self.embeddings = nn.Sequential(*head)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, 1, 96, 64]
            x = self.features(x)  # [N, 512, 6, 4]
            # flatten in TensorFlow's NHWC order: the original weights were trained that way
            return self.embeddings(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))

    return VGGish()


class VGGishEmbedding(EmbeddingModel):
    """VGGish (128-d) from a local state-dict file; one embedding per 0.96 s example (no overlap).

    Front end as the original: 16 kHz, 25 ms periodic-Hann frames (400) with 10 ms hop, 512-point
    |STFT| magnitude, 64 HTK-mel bands 125-7500 Hz, log(mel + 0.01), examples of 96 frames.
    A trailing partial example is dropped; a clip shorter than one example (0.975 s) is
    zero-padded to one. No PCA/quantisation post-processing (FAD uses the raw embedding).
    """

    name = "vggish"
    sample_rate = 16000
    dim = 128
    win, hop, n_fft, n_mels, example = 400, 160, 512, 64, 96

    def __init__(self, checkpoint: str | os.PathLike, device: str | None = None, batch_size: int = 16, final_relu: bool = True):
        super().__init__(device, batch_size)

        self.net = build_vggish(final_relu)
        load_state_dict_file(self.net, checkpoint, "VGGish")
        self.net.to(self.device).eval()
        fb = triangular_filters(self.sample_rate, self.n_fft, self.n_mels, 125.0, 7500.0, False)
        fb[0] = 0.0  # the DC bin carries no band energy in the original front end
        self.mel = torch.from_numpy(fb).to(self.device)
        self.window = torch.hann_window(self.win, periodic=True, device=self.device)

    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(waves).to(self.device)
        need = self.win + self.hop * (self.example - 1)
        if x.shape[1] < need:
            x = torch.nn.functional.pad(x, (0, need - x.shape[1]))
        frames = x.unfold(1, self.win, self.hop) * self.window  # [b, T, 400], no centring
        mag = torch.fft.rfft(frames, n=self.n_fft).abs()
        logmel = torch.log(mag @ self.mel + 0.01)  # [b, T, 64]
        n_ex = logmel.shape[1] // self.example
        ex = logmel[:, : n_ex * self.example].reshape(x.shape[0] * n_ex, 1, self.example, self.n_mels)
        return self.net(ex).reshape(x.shape[0], n_ex, -1).float().cpu().numpy()


def load_state_dict_file(module, path: str | os.PathLike, what: str) -> None:
    """Load a local .safetensors or .pt/.pth state dict strictly; pickles only with weights_only=True."""

    p = Path(path)
    if not p.is_file():
        raise SpressoError(f"{what} checkpoint not found: {p} (weights are never downloaded; give a local file)")
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except Exception as err:  # noqa: BLE001
        raise SpressoError(f"cannot load {what} checkpoint {p} safely: {str(err).splitlines()[0]}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SpressoError(f"{what} checkpoint {p} does not match the network: {str(err).splitlines()[0]}") from None


# ---------------------------------------------------------------------------- LAION-CLAP
class ClapEmbedding(EmbeddingModel):
    """LAION-CLAP audio embeddings (HTSAT tower + projection, L2-normalised as CLAP compares them).

    ``checkpoint`` is a local Hugging Face directory (``config.json``, ``model.safetensors``,
    optionally ``preprocessor_config.json``) such as a copy of ``laion/clap-htsat-unfused``;
    only the audio tower is instantiated. CLAP sees 10 s windows at 48 kHz: a clip is cut into
    non-overlapping 10 s windows (one embedding each); a window shorter than 10 s (every 5 s
    clip) is filled by repeating the clip and zero-padding the rest ("repeatpad", as in
    LAION-CLAP's own evaluation). Needs ``transformers``; never downloads.
    """

    name = "clap"
    sample_rate = 48000

    def __init__(self, checkpoint: str | os.PathLike, device: str | None = None, batch_size: int = 8):
        super().__init__(device, batch_size)
        p = Path(checkpoint)
        if not (p.is_dir() and (p / "config.json").is_file()):
            raise SpressoError(
                f"CLAP checkpoint must be a local Hugging Face directory with config.json and model.safetensors, got {p}"
            )
        try:
            # lazy: optional package, CLAP backend only
            from transformers import ClapAudioModelWithProjection, ClapFeatureExtractor

            # lazy: optional package, CLAP backend only
            from transformers.utils import logging as hf_logging
        except ImportError as err:
            raise SpressoError(f"the CLAP backend needs transformers: {err}") from None
        hf_logging.set_verbosity_error()  # the text tower's weights are deliberately not loaded
        try:
            self.net = ClapAudioModelWithProjection.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as err:
            raise SpressoError(f"cannot load CLAP from {p}: {str(err).splitlines()[0]}") from None
        self.net.to(self.device).eval()
        if (p / "preprocessor_config.json").is_file():
            self.features = ClapFeatureExtractor.from_pretrained(str(p), local_files_only=True)
        else:
            self.features = ClapFeatureExtractor()
        if not self.net.config.enable_fusion:
            self.features.truncation = "rand_trunc"  # never triggered: windows are <= 10 s
        self.features.padding = "repeatpad"
        self.window = int(self.features.nb_max_samples)
        self.dim = int(self.net.config.projection_dim)

    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:
        b, n = waves.shape
        n_win = max(1, math.ceil(n / self.window))
        chunks = [waves[i, w * self.window : (w + 1) * self.window] for i in range(b) for w in range(n_win)]
        # a final window of a long clip may be tiny; repeatpad fills it from itself
        chunks = [c if c.size else waves[i // n_win, -1:] for i, c in enumerate(chunks)]
        inputs = self.features(chunks, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        emb = self.net(**inputs).audio_embeds
        emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.reshape(b, n_win, -1).float().cpu().numpy()


def load_embedding_model(name: str, checkpoint: str | os.PathLike | None = None, device: str | None = None) -> EmbeddingModel:
    """Build a backend by name: ``aisfx`` (checkpoint optional), ``vggish`` / ``clap`` (local path required)."""
    if name == "aisfx":
        return AisfxEmbedding(checkpoint, device)
    if name in ("vggish", "clap"):
        if not checkpoint:
            raise SpressoError(f"the {name} embedding needs a local checkpoint path (weights are never downloaded)")
        return VGGishEmbedding(checkpoint, device) if name == "vggish" else ClapEmbedding(checkpoint, device)
    raise SpressoError(f"unknown embedding backend {name!r}; choose one of {', '.join(BACKENDS)}")
