"""The z stage (`spresso precompute-z`): run the frozen stage-1 encoder g_psi over the x0 cache.

Same machinery and guarantees as the x0 cache (:func:`~spresso.data.precompute.fill_cache`:
Ray Data actors, whole-block writes by the driver, ``done``, resume, lineage in attrs):

- ``<dae.checkpoint_dir>/t<t>/z.zarr``: ``z`` [N, 64, T'] float32 (T' = ceil(T / t)),
  ``valid_frames`` [N] int32 (z frames that see real audio: ceil(valid x0 frames / t)),
  ``split`` [N] str; attrs ``stage1_digest``, ``x0_digest``, ``t``, ``frame_rate``.
  This is stage 2's input (``qinco2.vectors_path``).
- ``.../zq_m<m>.zarr``: ``zq`` [N, 64, T'] float32, the frozen quantizer's reconstruction of z
  with its first m codebooks, and ``codes`` [N, T', m] int32 (stage 3's input; z_q is a
  deterministic function of z, so 40 epochs reuse one beam search per clip).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from spresso.config import SpressoConfig
from spresso.config.layout import stage_output
from spresso.core.checkpoint import has_checkpoint, read_checkpoint_config
from spresso.core.digest import digest_tree
from spresso.core.errors import SpressoError
from spresso.core.rates import frame_rate
from spresso.core.storage import absolute
from spresso.data.latents import cache_digest
from spresso.data.precompute import ROW, fill_cache
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.checkpoints import CHECKPOINT_KIND, load_dae
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.padding import frame_mask
from spresso.models.latent_encoder import pooled_frames
from spresso.quant import load_quantizer
from spresso.runtime import find_finished_run, stage_run, tracking_uri
from spresso.runtime.tracking import ensure_experiment

log = logging.getLogger(__name__)
STAGE = "precompute_z"


class CacheBlockSource:
    """Block ``[start, stop)`` of a clip cache -> ``row`` plus the named arrays (read in Ray Data tasks)."""

    def __init__(self, path: str, arrays: tuple[str, ...]):
        self.path, self.arrays = str(path), tuple(arrays)

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        cache = ClipCache.open(self.path, mode="r")
        out = {ROW: np.arange(start, stop, dtype=np.int64)}
        for name in self.arrays:
            out[name] = cache.read(name, slice(start, stop))
        return out


class EncodeZ:
    """Ray Data actor: the stage-1 encoder g_psi on normalised x0 (float32, no autocast)."""

    def __init__(self, checkpoint_dir: str):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, info = load_dae(checkpoint_dir, map_location=self.device)
        self.encoder = model.encoder.eval()  # only g_psi is kept (the denoiser is freed)
        self.mask_padding = model.mask_padding
        meta = info["meta"]
        self.normalizer = LatentNormalizer(meta["x0_mean"], meta["x0_std"], model.denoiser.sigma_data)
        self.t = model.t

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x0 = torch.from_numpy(np.asarray(batch["x0"], dtype=np.float32)).to(self.device)
        frames = np.asarray(batch["valid_frames"], dtype=np.int64)
        # a model trained with mask_padding encodes each clip's real frames only
        mask = frame_mask(torch.from_numpy(frames), x0.shape[-1]).to(self.device) if self.mask_padding else None
        with torch.inference_mode():
            z = self.encoder(self.normalizer.normalize(x0), mask).float().cpu().numpy()
        valid = -(-frames // self.t)
        return {ROW: batch[ROW], "z": z, "valid_frames": valid.astype(np.int32), "split": batch["split"]}


class QuantizeZ:
    """Ray Data actor: z -> (codes with the first m codebooks, z_q) with the frozen quantizer the qinco2 stage shipped."""

    def __init__(self, quantizer_dir: str, m: int, beam: int | None = None):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.q = load_quantizer(quantizer_dir, device=self.device)  # QINCo2 or RQ, as the qinco2 stage shipped
        if m > self.q.M:
            raise SpressoError(f"stage 3 wants m={m} codebooks; the quantizer at {quantizer_dir} has {self.q.M}")
        self.m, self.beam = int(m), beam

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        z = torch.from_numpy(np.asarray(batch["z"], dtype=np.float32)).transpose(1, 2)  # [B, T', 64]
        codes = self.q.encode(z, self.m, beam=self.beam)
        zq = self.q.decode(codes).float().transpose(1, 2).cpu().numpy()
        return {ROW: batch[ROW], "zq": zq, "codes": codes.cpu().numpy().astype(np.int32)}


def z_cache_path(cfg: SpressoConfig) -> str:
    return cfg.path(f"{cfg.dae.folder()}/z.zarr")


def zq_cache_path(cfg: SpressoConfig, m: int) -> str:
    return cfg.path(f"{cfg.dae.folder()}/zq_m{m}.zarr")


def _x0_cache(cfg: SpressoConfig) -> ClipCache:
    path = cfg.path(cfg.audioae.latents_path)
    if not ClipCache.exists(path):
        raise SpressoError(f"no x0 cache at {path}: run `spresso precompute-latents` first")
    x0 = ClipCache.open(path, mode="r")
    if not x0.complete:
        raise SpressoError(f"x0 cache {path} is unfinished: rerun `spresso precompute-latents`")
    return x0


def precompute_z(cfg: SpressoConfig, stage1_dir: str | None = None, *, overwrite: bool = False, replace_stale: bool = False, max_blocks: int | None = None,
                 parent_run_id: str | None = None, progress: bool = True) -> str:
    """Fill (or finish) the z cache of operating point ``cfg.dae.t``; return its path."""

    stage1_dir = str(stage1_dir or stage_output(cfg, "stage1"))
    if not has_checkpoint(stage1_dir):
        raise SpressoError(f"no stage-1 checkpoint at {stage1_dir}: run `spresso train stage1` first")
    info = read_checkpoint_config(stage1_dir, CHECKPOINT_KIND)
    t = int(info["meta"]["t"])
    if t != cfg.dae.t:
        raise SpressoError(f"the stage-1 checkpoint at {stage1_dir} is for t={t}, not dae.t={cfg.dae.t}")
    z_channels = int(info["config"]["dae"]["encoder"]["z_channels"])
    x0 = _x0_cache(cfg)
    (C, T), _ = x0.row_spec("x0")
    attrs = {"stage1_digest": digest_tree(stage1_dir), "x0_digest": cache_digest(x0), "t": t, "frame_rate": frame_rate(t),
             "stage1_run_id": info.get("meta", {}).get("mlflow_run_id", "")}
    arrays = {"z": ((z_channels, pooled_frames(T, t)), "float32"), "valid_frames": ((), "int32"), "split": ((), "str")}
    cache = ClipCache.create(z_cache_path(cfg), x0.keys, arrays, cfg.dae.zcache.chunk_clips, attrs, overwrite=overwrite,
                             replace_stale=replace_stale)
    key = cache_digest(cache)
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    if cache.complete and find_finished_run(uri, ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir), STAGE, key):
        log.info("z cache %s is complete and recorded; reusing it", cache.path)
        return cache.path
    with stage_run(STAGE, cfg, key=key, parent_run_id=parent_run_id, extra_tags={"spresso.dae.t": str(t)}) as run:
        run.log_input("x0_cache", x0.path, attrs["x0_digest"])
        run.log_input("stage1", stage1_dir, attrs["stage1_digest"], context="model")
        zc = cfg.dae.zcache
        report = fill_cache(cache, CacheBlockSource(x0.path, ("x0", "valid_frames", "split")), EncodeZ,
                            {"checkpoint_dir": absolute(stage1_dir)}, batch_size=zc.batch_size, pool=zc,
                            runtime=cfg.runtime, max_blocks=max_blocks, progress=progress, desc=f"z t={t}")
        run.log_metrics({"rows_written": report.rows_written, "blocks_written": report.blocks_written, "seconds": report.seconds})
        if cache.complete:
            run.log_output("z_cache", cache.path, cache_digest(cache))
    return cache.path


def precompute_zq(cfg: SpressoConfig, quantizer_dir: str, m: int, *, beam: int | None = None, progress: bool = True,
                  z_path: str | None = None) -> str:
    """Fill (or finish) the z_q cache (first m codebooks of the frozen quantizer) for stage 3; return its path.
    ``z_path``: the z cache to quantize (default: this point's, ``z_cache_path(cfg)``)."""

    zpath = z_path or z_cache_path(cfg)
    if not ClipCache.exists(zpath) or not ClipCache.open(zpath, mode="r").complete:
        raise SpressoError(f"no complete z cache at {zpath}: run `spresso precompute-z` first")
    z = ClipCache.open(zpath, mode="r")
    (d, Tz), _ = z.row_spec("z")
    attrs = {"z_digest": cache_digest(z), "quantizer_digest": digest_tree(quantizer_dir), "m": int(m), "beam": beam}
    arrays = {"zq": ((d, Tz), "float32"), "codes": ((Tz, int(m)), "int32")}
    cache = ClipCache.create(zq_cache_path(cfg, m), z.keys, arrays, z.chunk_rows, attrs, overwrite=True if _stale(zq_cache_path(cfg, m), attrs) else False)
    zc = cfg.dae.zcache
    fill_cache(cache, CacheBlockSource(z.path, ("z",)), QuantizeZ, {"quantizer_dir": absolute(quantizer_dir), "m": int(m), "beam": beam},
               batch_size=zc.batch_size, pool=zc, runtime=cfg.runtime, progress=progress, desc=f"z_q m={m}")
    return cache.path


def _stale(path: str, attrs: dict) -> bool:
    """A z_q cache made from another z or quantizer is derived data: replace it rather than refuse."""
    if not ClipCache.exists(path):
        return False
    old = ClipCache.open(path, mode="r").attrs
    return any(old.get(k) != v for k, v in attrs.items())
