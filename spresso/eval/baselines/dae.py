"""Our diffusion autoencoder without QINCo2: continuous z (stage 1), and faiss RQ codes (the ablation).

``Stage1Adapter``: wave -> AudioAE x0 -> normalise -> g_psi -> z (stored as float16, the cost of
an unquantized latent) -> Heun sampler conditioned on z -> AudioAE decoder.
``RQAdapter``: the same with z replaced by faiss ResidualQuantizer codes (m codebooks of K
entries, bit-packed), decoded through a stage-3 model; the RQ must be trained on the same z
cache as QINCo2 (:func:`train_rq_on_z` / :func:`save_rq` / :func:`load_rq`; safetensors + JSON).
Both decode stochastically: ``decode_variation`` draws other noise seeds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

from spresso.codec.bitpack import pack_codes, unpack_codes
from spresso.core.checkpoint import has_checkpoint, read_checkpoint_config
from spresso.core.errors import CheckpointError, SpressoError
from spresso.core.rates import (
    bitrate_bps,
    compression_ratio,
    continuous_bitrate_bps,
    frame_rate,
)
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.checkpoints import load_dae
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.reconstruct import reconstruct_audio
from spresso.eval.adapter import CodecAdapter, CodecInfo
from spresso.eval.baselines.audioae import (
    float16_stream,
    pad_to,
    read_float16_stream,
    torch_device,
)
from spresso.models.audioae import load_audioae
from spresso.quant import FaissRQ

RQ_FILE, RQ_META = "rq.safetensors", "rq.json"


class _DAEBase(CodecAdapter):
    stochastic = True

    def __init__(self, dae_dir: str, audioae_dir: str, steps: int = 32, device: str | None = None):
        self.dae_dir, self.audioae_dir, self.steps, self.device = str(dae_dir), str(audioae_dir), int(steps), device
        self._loaded = None
        self.t = self._read_t()

    def _read_t(self) -> int | None:
        try:
            return int(read_checkpoint_config(self.dae_dir)["meta"]["t"])
        except (CheckpointError, OSError, KeyError, ValueError, TypeError):
            return None

    def available(self) -> tuple[bool, str]:
        if self.t is None:
            return False, f"no diffusion-autoencoder checkpoint at {self.dae_dir}"
        if not has_checkpoint(self.audioae_dir):
            return False, f"no AudioAE checkpoint at {self.audioae_dir}"
        return True, ""

    def _load(self):
        if self._loaded is None:
            device = torch_device(self.device)
            model, info = load_dae(self.dae_dir, map_location=device)
            sigma_data = float(info["config"].get("dit", {}).get("diffusion", {}).get("sigma_data", 0.5))
            normalizer = LatentNormalizer(info["meta"]["x0_mean"], info["meta"]["x0_std"], sigma_data)
            self._loaded = (model, normalizer, load_audioae(self.audioae_dir, map_location=device), device)
        return self._loaded

    def _z(self, wave: np.ndarray):
        """wave -> z [d, T'] (float32 numpy) and the x0 frame count."""
        model, normalizer, audioae, device = self._load()
        x = torch.from_numpy(pad_to(np.asarray(wave, np.float32), audioae.hop))[None].to(device)
        with torch.inference_mode():
            x0 = audioae.encode(x)
            z = model.encode(normalizer.normalize(x0))
        return z[0].float().cpu().numpy(), x0.shape[-1]

    def _decode_z(self, z: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        model, normalizer, audioae, device = self._load()
        frames = math.ceil(num_samples / audioae.hop)
        out = reconstruct_audio(model, normalizer, audioae, z=torch.from_numpy(z)[None].to(device), frames=frames,
                                steps=self.steps, seed=seed)
        return out[0].cpu().numpy()[:num_samples]

    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        return self.decode_variation(data, num_samples, 0)


class Stage1Adapter(_DAEBase):
    def __init__(self, dae_dir: str, audioae_dir: str, steps: int = 32, device: str | None = None):
        super().__init__(dae_dir, audioae_dir, steps, device)
        t = self.t or 1
        self.info = CodecInfo("S-PRESSO continuous", f"t={t} (stage 1, z unquantized, {steps} steps)", 48000,
                              frame_rate_hz=frame_rate(t) if self.t else None, compression=compression_ratio(t) if self.t else None)

    def encode(self, wave: np.ndarray) -> bytes:
        z, _ = self._z(wave)
        return float16_stream(z)

    def decode_variation(self, data: bytes, num_samples: int, seed: int) -> np.ndarray:
        return self._decode_z(read_float16_stream(data), num_samples, seed)

    @property
    def continuous_bitrate_bps(self) -> float | None:
        return continuous_bitrate_bps(64, self.t) if self.t else None


class RQAdapter(_DAEBase):
    def __init__(self, dae_dir: str, audioae_dir: str, rq_dir: str, m: int, steps: int = 32, device: str | None = None):
        super().__init__(dae_dir, audioae_dir, steps, device)
        self.rq_dir, self.m = str(rq_dir), int(m)
        meta = _read_rq_meta(self.rq_dir)
        self.K = int(meta["K"]) if meta else 0
        t = self.t or 1
        self.info = CodecInfo("S-PRESSO faiss RQ (ablation)", f"t={t} K=2^{int(math.log2(self.K)) if self.K else '?'} M={m}", 48000,
                              frame_rate_hz=frame_rate(t) if self.t else None,
                              nominal_bitrate_bps=bitrate_bps(m, self.K, t) if self.t and self.K else None,
                              compression=compression_ratio(t) if self.t else None)
        self._rq = None

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if not ok:
            return ok, why
        meta = _read_rq_meta(self.rq_dir)
        if meta is None:
            return False, f"no saved faiss RQ at {self.rq_dir} ({RQ_META} + {RQ_FILE})"
        if not 1 <= self.m <= int(meta["M"]):
            return False, f"the RQ at {self.rq_dir} has {meta['M']} codebooks; m={self.m} is out of range"
        return True, ""

    @property
    def rq(self):
        if self._rq is None:
            self._rq = load_rq(self.rq_dir)
        return self._rq

    def encode(self, wave: np.ndarray) -> bytes:
        z, _ = self._z(wave)
        codes = self.rq.encode(z.T, self.m)  # [T', m]
        bits = int(math.log2(self.K))
        return np.array([codes.shape[0]], "<u4").tobytes() + pack_codes(codes, bits)

    def decode_variation(self, data: bytes, num_samples: int, seed: int) -> np.ndarray:
        n_frames = int(np.frombuffer(data[:4], "<u4")[0])
        codes = unpack_codes(data[4:], n_frames, self.m, int(math.log2(self.K)))
        z = self.rq.decode(np.asarray(codes).reshape(n_frames, self.m)).T.astype(np.float32)
        return self._decode_z(np.ascontiguousarray(z), num_samples, seed)


# -- saving and loading the RQ (no pickles: codebooks in safetensors, the rest in JSON) ---------
def _read_rq_meta(directory: str) -> dict | None:
    try:
        meta = json.loads((Path(directory) / RQ_META).read_text())
        return meta if (Path(directory) / RQ_FILE).is_file() and {"d", "M", "K"} <= set(meta) else None
    except (OSError, ValueError):
        return None


def save_rq(rq, directory: str | Path, meta: dict | None = None) -> Path:
    """Write a trained :class:`~spresso.quant.FaissRQ` as codebooks + normalisation (safetensors) and JSON."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"codebooks": torch.from_numpy(np.ascontiguousarray(rq.codebooks(), np.float32)),
               "mean": torch.from_numpy(np.asarray(rq.mean, np.float32))}, str(out / RQ_FILE))
    (out / RQ_META).write_text(json.dumps({"d": rq.d, "M": rq.M, "K": rq.K, "beam": rq.beam, "std": float(rq.std), **(meta or {})}))
    return out


def load_rq(directory: str | Path):
    """A :class:`~spresso.quant.FaissRQ` with the saved codebooks (ready to encode/decode)."""
    meta = _read_rq_meta(str(directory))
    if meta is None:
        raise SpressoError(f"no saved faiss RQ at {directory}")
    arrays = load_file(str(Path(directory) / RQ_FILE))
    rq = FaissRQ(int(meta["d"]), int(meta["M"]), int(meta["K"]), beam=int(meta.get("beam", 32)))
    try:
        return rq.set_trained(arrays["codebooks"], arrays["mean"], float(meta["std"]))
    except ValueError as err:
        raise SpressoError(f"{directory}: {err}") from None


def train_rq_on_z(z_cache: str, directory: str | Path, M: int, K: int, *, beam: int = 32, max_vectors: int = 100_000,
                  seed: int = 0, split: str = "train") -> Path:
    """Train the ablation's RQ on the same z frames QINCo2 was trained on (the z cache, train split)."""
    cache = ClipCache.open(z_cache, mode="r")
    rows = cache.rows_where("split", split)
    if rows.size == 0:
        raise SpressoError(f"{z_cache} has no finished {split} rows")
    z = np.asarray(cache.read("z", rows), np.float32)  # [N, d, T']
    valid = np.asarray(cache.read("valid_frames", rows)).astype(int)
    # only the frames that cover real audio, as QINCo2 is trained (padding would skew the codebooks)
    frames = np.concatenate([z[i, :, : max(1, v)].T for i, v in enumerate(valid)])
    rng = np.random.default_rng(seed)
    if frames.shape[0] > max_vectors:
        frames = frames[rng.choice(frames.shape[0], max_vectors, replace=False)]
    rq = FaissRQ(frames.shape[1], M, K, beam=beam).train(frames)
    return save_rq(rq, directory, {"z_cache": str(z_cache), "split": split, "vectors": int(frames.shape[0])})
