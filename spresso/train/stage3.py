"""Stage 3: finetune f_phi and the LoRA adapters on quantized z (z_q from the frozen QINCo2, first m codebooks).

Each sample is conditioned on z_q, except with probability ``keep_z`` (0.1) on the original z,
so the decoder stays good on unquantized z while adapting to the quantizer's error. g_psi and
the pretrained DiT stay frozen; the audio-down streams train only with ``train_audio_down``.
Runs for ``epochs`` (40) passes over the train split (``steps`` caps it). The loop is stage 1's
(:func:`spresso.train.stage1.dae_loop`), started from the stage-1 weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from spresso.config import SpressoConfig
from spresso.config.layout import dit_dir, quantizer_dir, stage_output
from spresso.core.checkpoint import has_checkpoint, load_strict, load_weights
from spresso.core.digest import digest_json, digest_tree
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute
from spresso.data.latent_batches import (
    LatentCaptionZDataset,
    caption_caches,
    split_rows,
    train_rows,
)
from spresso.data.z_latents import precompute_zq, z_cache_path
from spresso.data.zarr_cache import ClipCache
from spresso.train.driver import LoggedInput, StageInputs, run_training
from spresso.train.stage1 import dae_inputs, dae_loop, dae_stage, open_x0_inputs

STAGE = "train_stage3"


def mix_z(z: torch.Tensor, zq: torch.Tensor, keep_z: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: z with probability ``keep_z``, else z_q. Returns (conditioning, keep mask [B])."""
    if z.shape != zq.shape:
        raise ValueError(f"z {tuple(z.shape)} and z_q {tuple(zq.shape)} differ in shape")
    keep = torch.rand(z.shape[0], generator=generator) < keep_z
    return torch.where(keep.to(z.device)[:, None, None], z, zq), keep


def total_steps(tc, train_rows: int) -> int:
    """epochs x steps per epoch (global batch), capped by ``steps``."""
    per_epoch = max(1, train_rows // tc.batch_size)
    total = tc.epochs * per_epoch
    return min(total, tc.steps) if tc.steps else total


def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker`` of stage 3: from the stage-1 weights, conditioned on z_q (or z)."""
    keep_z = loop_config["keep_z"]

    def from_stage1(model: torch.nn.Module) -> None:
        # Stage 1's architecture exactly: the DiT plus its adapters and audio-down streams.
        load_strict(model, load_weights(loop_config["stage1_dir"]), what=f"stage-1 checkpoint {loop_config['stage1_dir']}")

    def z_fn(batch, generator):
        z, keep = mix_z(batch["z"].float(), batch["zq"].float(), keep_z, generator)
        return z, {"kept_z": float(keep.float().mean())}

    def dataset(lc: dict) -> LatentCaptionZDataset:
        return LatentCaptionZDataset(lc["x0_path"], lc["captions_path"], lc["z_path"], lc["zq_path"], train_rows(lc["x0_path"]))

    dae_loop(loop_config, "stage3", dataset, init=from_stage1, z_fn=z_fn, total=loop_config["total_steps"])


def find_inputs(cfg: SpressoConfig, *, encoder=None, progress: bool = True, stage1: str | None = None,
                quantizer: str | None = None, z: str | None = None, **_options) -> StageInputs:
    """Stage 1's checkpoint, the quantizer, z and z_q (quantized with the first m codebooks, cached), captions.

    ``stage1``, ``quantizer``, ``z``: where they are (default: this point's folders). The pipeline passes
    its upstream outputs: a point that reused another point's stage 1 (same t) finds it there."""
    try:
        point = cfg.dae.point()
    except ValueError as err:
        raise SpressoError(str(err)) from None
    stage1 = stage1 or stage_output(cfg, "stage1")
    if not has_checkpoint(stage1):
        raise SpressoError(f"no stage-1 checkpoint at {stage1}: run `spresso train stage1` first")
    qdir = quantizer or quantizer_dir(cfg)
    if not has_checkpoint(qdir):
        raise SpressoError(f"no quantizer at {qdir}: run `spresso train qinco2` on {z_cache_path(cfg)} first (or set dae.quantizer_dir)")
    x0_path, x0, captions = open_x0_inputs(cfg, encoder, progress)
    z_path = absolute(z or z_cache_path(cfg))
    zq_path = precompute_zq(cfg, qdir, point.m, beam=cfg.dae.stage3.quantize_beam, progress=progress, z_path=z_path)
    total = total_steps(cfg.dae.stage3, split_rows(x0_path, "train").size)
    inputs = {"stage1": digest_tree(stage1), "quantizer": digest_tree(qdir), "m": point.m,
              "z": ClipCache.open(z_path, mode="r").attrs, "text": captions.attrs}
    dit = dit_dir(cfg)
    return dae_inputs(
        cfg, inputs,
        {"x0_path": x0_path, "captions_path": absolute(captions.path), "dit_dir": dit, "dit_digest": digest_tree(dit),
         "stage1_dir": str(stage1), "z_path": z_path, "zq_path": absolute(zq_path), "total_steps": total,
         "keep_z": cfg.dae.stage3.keep_z},
        (LoggedInput("stage1", str(stage1), inputs["stage1"], context="model"),
         LoggedInput("quantizer", qdir, inputs["quantizer"], context="model"),
         LoggedInput("z_cache", z_path, digest_json(inputs["z"]))),
        params={"stage3.m": point.m, "stage3.K": point.K, "stage3.total_steps": total})


def feed_caches(lc: dict) -> dict[str, tuple[str, ...]]:
    """The caches of :class:`LatentCaptionZDataset`'s rows (path -> arrays), for the Ray Data feed."""
    return {**caption_caches(lc["x0_path"], lc["captions_path"]), lc["z_path"]: ("z",), lc["zq_path"]: ("zq",)}


TRAIN_STAGE3 = dae_stage("stage3", train_loop, find_inputs, feed_caches)


def train_stage3(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False, encoder=None,
                 progress: bool = True) -> Path:
    """Quantize z with the first m codebooks (cached), then finetune; return the stage-3 checkpoint."""
    return run_training(TRAIN_STAGE3, cfg, parent_run_id=parent_run_id, force=force, encoder=encoder, progress=progress).final
