"""Stage 3: finetune f_phi and the LoRA adapters on quantized z (z_q from the frozen QINCo2, first m codebooks).

Each sample is conditioned on z_q, except with probability ``keep_z`` (0.1) on the original z,
so the decoder stays good on unquantized z while adapting to the quantizer's error. g_psi and
the pretrained DiT stay frozen; the audio-down streams train only with ``train_audio_down``.
Runs for ``epochs`` (40) passes over the train split (``steps`` caps it).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from spresso.config import SpressoConfig
from spresso.config.layout import quantizer_dir
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute as _abs
from spresso.train.stage1 import (
    dae_from_dit,
    open_x0_inputs,
    per_worker_batch,
    run_stage,
    stage_output,
)

log = logging.getLogger(__name__)
STAGE = "train_stage3"


def mix_z(z: torch.Tensor, zq: torch.Tensor, keep_z: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: z with probability ``keep_z``, else z_q. Returns (conditioning, keep mask [B])."""
    if z.shape != zq.shape:
        raise ValueError(f"z {tuple(z.shape)} and z_q {tuple(zq.shape)} differ in shape")
    keep = torch.rand(z.shape[0], generator=generator) < keep_z
    return torch.where(keep.to(z.device)[:, None, None], z, zq), keep


class Stage3Dataset(torch.utils.data.Dataset):
    """x0 + caption embeddings + z + z_q of the same rows (four row-aligned caches)."""

    def __init__(self, x0_path: str, captions_path: str, z_path: str, zq_path: str, rows: np.ndarray):
        from spresso.data.zarr_cache import CacheDataset
        from spresso.train.dit import LatentCaptionDataset

        self.base = LatentCaptionDataset(x0_path, captions_path, rows)
        self.z = CacheDataset(z_path, ("z",), rows)
        self.zq = CacheDataset(zq_path, ("zq",), rows)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], **self.z[i], **self.zq[i]}

    def __getitems__(self, indices) -> list[dict]:
        return [{**a, **b, **c} for a, b, c in zip(self.base.__getitems__(indices), self.z.__getitems__(indices), self.zq.__getitems__(indices))]


def total_steps(tc, train_rows: int) -> int:
    """epochs x steps per epoch (global batch), capped by ``steps``."""
    per_epoch = max(1, train_rows // tc.batch_size)
    total = tc.epochs * per_epoch
    return min(total, tc.steps) if tc.steps else total


def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker`` of stage 3."""
    from spresso.config import config_from_dict
    from spresso.core.checkpoint import load_strict, load_weights
    from spresso.data.zarr_cache import ClipCache
    from spresso.diffusion.normalize import LatentNormalizer
    from spresso.train.dit import SigmaBuckets, resumed_stream, train_rows
    from spresso.train.harness import TrainContext
    from spresso.train.stage1 import DAETrainer, checkpoint_meta, run_steps

    ctx = TrainContext(loop_config)
    cfg: SpressoConfig = config_from_dict(loop_config["cfg"], "checkpointed config")
    tc = cfg.dae.stage3
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    torch.manual_seed(tc.seed + ctx.rank)
    x0_path = loop_config["x0_path"]
    normalizer = LatentNormalizer.from_attrs(ClipCache.open(x0_path, mode="r").attrs, cfg.dit.diffusion.sigma_data)
    model, dit_info = dae_from_dit(cfg, loop_config["dit_dir"], map_location=ctx.device)
    # Start from stage 1 (the same architecture: the DiT plus its adapters and audio-down streams).
    load_strict(model, load_weights(loop_config["stage1_dir"]), what=f"stage-1 checkpoint {loop_config['stage1_dir']}")
    trainer = DAETrainer(model, cfg, "stage3", normalizer, ctx.device, prepare=ctx.prepare_model, autocast=ctx.autocast)
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            trainer.restore(ckpt)
    start = trainer.step
    dataset = Stage3Dataset(x0_path, loop_config["captions_path"], loop_config["z_path"], loop_config["zq_path"],
                            train_rows(x0_path))
    stream, generator = resumed_stream(dataset, per_worker_batch(tc.batch_size, ctx.world_size), ctx, tc, start)

    def z_fn(batch, gen):
        z, keep = mix_z(batch["z"].float(), batch["zq"].float(), tc.keep_z, gen)
        return z, {"kept_z": float(keep.float().mean())}

    meta = checkpoint_meta(cfg, "stage3", dit_info, normalizer, loop_config)
    run_steps(ctx, trainer, stream, generator, start, tc, meta, loop_config["cfg"], desc="stage3", sigma_buckets=SigmaBuckets,
              total=loop_config["total_steps"], z_fn=z_fn)


def train_stage3(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False, encoder=None,
                 progress: bool = True) -> Path:
    """Quantize z with the first m codebooks (cached), then finetune; return the stage-3 checkpoint."""
    from spresso.config.layout import dit_dir
    from spresso.core.digest import digest_json, digest_tree
    from spresso.data.z_latents import precompute_zq, z_cache_path
    from spresso.data.zarr_cache import ClipCache
    from spresso.train.dit import split_rows

    try:
        point = cfg.dae.point()
    except ValueError as err:
        raise SpressoError(str(err)) from None
    stage1 = stage_output(cfg, "stage1")
    if not stage1.is_dir():
        raise SpressoError(f"no stage-1 checkpoint at {stage1}: run `spresso train stage1` first")
    qdir = quantizer_dir(cfg)
    if not Path(qdir).is_dir():
        raise SpressoError(f"no quantizer at {qdir}: run `spresso train qinco2` on {z_cache_path(cfg)} first (or set dae.quantizer_dir)")
    x0_path, x0, captions = open_x0_inputs(cfg, encoder, progress)
    zq_path = precompute_zq(cfg, qdir, point.m, beam=cfg.dae.stage3.quantize_beam, progress=progress)
    z_path = _abs(z_cache_path(cfg))
    rows = split_rows(x0_path, "train").size
    total = total_steps(cfg.dae.stage3, rows)
    inputs = {"stage1": digest_tree(stage1), "quantizer": digest_tree(qdir), "m": point.m,
              "z": ClipCache.open(z_path, mode="r").attrs, "text": captions.attrs}

    def log_inputs(run):
        run.log_input("stage1", str(stage1), inputs["stage1"], context="model")
        run.log_input("quantizer", qdir, inputs["quantizer"], context="model")
        run.log_input("z_cache", z_path, digest_json(inputs["z"]))
        run.log_params({"stage3.m": point.m, "stage3.K": point.K, "stage3.total_steps": total})

    dit = dit_dir(cfg)
    return run_stage(cfg, "stage3", train_loop, inputs,
                     {"x0_path": x0_path, "captions_path": _abs(captions.path), "dit_dir": dit, "dit_digest": digest_tree(dit),
                      "stage1_dir": str(stage1), "z_path": z_path, "zq_path": _abs(zq_path), "total_steps": total},
                     {}, parent_run_id=parent_run_id, force=force, log_inputs=log_inputs)
