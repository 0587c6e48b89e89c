"""Stage 1 of the diffusion autoencoder: train g_psi, f_phi, the audio-down streams and LoRA together.

EDM2 loss on normalised x0 from the x0 cache with z = g_psi(x0) as conditioning, captions
dropped with probability 0.8 (the decoder must learn to rely on z), AdamW 1e-4, global batch 32,
on Ray Train with checkpoints, resume and MLflow (rank 0), one run per operating point ``dae.t``.

Pieces, each usable alone:
- :class:`DAETrainer`: one optimisation step, checkpoint state and restore (shared with stage 3);
- :func:`dae_loop`: the per-worker loop of stages 1 and 3; :func:`train_loop`: stage 1's;
- :data:`TRAIN_STAGE1` / :func:`train_stage1`: the stage.
The model comes from :func:`spresso.diffusion.checkpoints.dae_from_dit` (a pretrained DiT).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from spresso.config import SpressoConfig
from spresso.config.layout import dit_dir, stage_output
from spresso.core.checkpoint import (
    has_checkpoint,
    load_optimizer,
    load_state,
    load_strict,
    load_weights,
    optimizer_tensors,
    read_checkpoint_config,
    save_checkpoint,
)
from spresso.core.digest import digest_json, digest_tree
from spresso.core.errors import SpressoError
from spresso.core.rates import frame_rate
from spresso.core.storage import absolute
from spresso.data.captions import build_caption_cache
from spresso.data.latent_batches import LatentCaptionDataset, caption_caches, train_rows
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.autoencoder import DiffusionAutoencoder, set_trainable
from spresso.diffusion.checkpoints import CHECKPOINT_KIND, dae_from_dit
from spresso.diffusion.edm2 import EDM2Loss
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.padding import frame_mask
from spresso.train.diffusion_batch import batch_inputs, set_lr, warmup_lr
from spresso.train.dit import X0_IDENTITY, open_x0_cache
from spresso.train.driver import LoggedInput, StageInputs, TrainingStage, run_training
from spresso.train.feed import latent_batches, latent_feeds
from spresso.train.loop import StepResult, run_steps, worker_setup
from spresso.train.sigma_buckets import SigmaBuckets
from spresso.train.z_stats import z_stats_metrics

log = logging.getLogger(__name__)
STAGE = "train_stage1"


# -- the trainer ---------------------------------------------------------------------------------------
class DAETrainer:
    """One step of stage 1 (z = g_psi(x0)) or stage 3 (z given: z_q or z), plus checkpoint state."""

    def __init__(self, model: DiffusionAutoencoder, cfg: SpressoConfig, stage: str, normalizer: LatentNormalizer,
                 device: torch.device | str = "cpu", *, prepare: Callable | None = None, autocast=None):
        self.cfg, self.stage = cfg, stage
        self.tc = cfg.dae.stage1 if stage == "stage1" else cfg.dae.stage3
        self.device = torch.device(device)
        self.model_raw = model.to(self.device)
        train_ad = bool(getattr(self.tc, "train_audio_down", False))
        self.params = set_trainable(self.model_raw, stage, train_ad)
        self.model = prepare(self.model_raw) if prepare is not None else self.model_raw
        dc = cfg.dit.diffusion
        self.loss_fn = EDM2Loss(dc.P_mean, dc.P_std, dc.sigma_data)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.tc.lr, betas=tuple(self.tc.betas), weight_decay=self.tc.weight_decay)
        self.normalizer = normalizer
        self.autocast = autocast
        self.step = 0

    def lr_at(self, step: int) -> float:
        return warmup_lr(self.tc, step)

    def train_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                   z: torch.Tensor | None = None) -> tuple[dict[str, float], object]:
        """One AdamW step; stage 1 encodes z from the batch's x0, stage 3 takes ``z`` (normalised-x0 units of z)."""
        self.model.train()
        self.step += 1
        set_lr(self.optimizer, self.lr_at(self.step))
        y, text = batch_inputs(batch, self.normalizer, self.device)
        drop = (torch.rand(y.shape[0], generator=generator) < self.tc.text_dropout).to(self.device)
        cond = {"z_from": y} if z is None else {"z": z.to(self.device).float()}
        if self.model_raw.mask_padding:  # the clip's padding leaves the loss and the attention
            if "valid_frames" not in batch:
                raise SpressoError("dae.encoder.mask_padding needs each clip's valid_frames in the batch (x0 cache arrays)")
            valid = batch["valid_frames"].to(self.device)
            cond.update(valid_frames=valid, frame_mask=frame_mask(valid, y.shape[-1]))
        ctx = self.autocast() if self.autocast is not None else torch.autocast(self.device.type, enabled=False)
        with ctx:
            out = self.loss_fn(self.model, y, text=text, drop=drop, generator=generator, **cond)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip)
        self.optimizer.step()
        return {"loss": float(out.loss.detach()), "mse": float(out.mse.mean()), "grad_norm": float(grad_norm),
                "lr": self.lr_at(self.step), "text_dropped": float(drop.float().mean())}, out

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict, dict]:
        """(weights, optimiser tensors, JSON state); weights are the whole unmerged model (LoRA kept separate)."""
        weights = {k: v.detach().cpu() for k, v in self.model_raw.state_dict().items()}
        tensors, meta = optimizer_tensors(self.optimizer)
        return weights, {k: v.detach().cpu() for k, v in tensors.items()}, {"step": self.step, "optim": meta}

    def restore(self, directory: str | Path) -> int:
        tensors, meta = load_state(directory)
        if not meta:
            raise SpressoError(f"{directory}: no training state to resume from")
        load_strict(self.model_raw, load_weights(directory), what=f"{self.stage} checkpoint {directory}")
        load_optimizer(self.optimizer, tensors, meta["optim"])
        self.step = int(meta["step"])
        return self.step


def save_dae_checkpoint(directory: str | Path, state: tuple[dict, dict, dict], config: dict, meta: dict) -> Path:
    weights, tensors, state_meta = state
    return save_checkpoint(directory, weights, kind=CHECKPOINT_KIND, config=config, meta=meta, state=tensors, state_meta=state_meta)


def per_worker_batch(global_batch: int, world_size: int) -> int:
    if global_batch < world_size:
        raise SpressoError(f"global batch {global_batch} is smaller than the {world_size} workers")
    return global_batch // world_size


# -- the Ray Train loop (stages 1 and 3) ---------------------------------------------------------
def checkpoint_meta(cfg: SpressoConfig, stage: str, dit_info: dict, normalizer: LatentNormalizer, loop_config: dict) -> dict:
    dmeta = dit_info.get("meta", {})
    return {**normalizer.to_meta(), "stage": stage, "t": cfg.dae.t, "text_dims": list(dmeta.get("text_dims") or
            [dmeta["text_encoder"]["token_dim"], dmeta["text_encoder"]["pooled_dim"]]),
            "text_encoder": dmeta.get("text_encoder"), "frames": dmeta.get("frames"),
            "dit_config": dit_info.get("config", {}).get("dit"),
            "dit_dir": loop_config.get("dit_dir"), "dit_digest": loop_config.get("dit_digest"),
            "stage1_dir": loop_config.get("stage1_dir")}


def dae_loop(loop_config: dict, stage: str, dataset: Callable[[dict], torch.utils.data.Dataset], *,
             init: Callable[[torch.nn.Module], None] | None = None, z_fn: Callable | None = None,
             total: int | None = None) -> None:
    """The per-worker loop of stage 1 or 3: model from the DiT (``init`` loads more weights), resume,
    batches of ``dataset(loop_config)``, ``total`` steps (default ``steps``) with logging and checkpoints.

    ``z_fn(batch, generator) -> (z, extra metrics)`` gives stage 3's conditioning; None: z = g_psi(x0).
    """
    ctx, cfg = worker_setup(loop_config, lambda c: (c.dae.stage1 if stage == "stage1" else c.dae.stage3).seed)
    tc = cfg.dae.stage1 if stage == "stage1" else cfg.dae.stage3
    x0_path = loop_config["x0_path"]
    normalizer = LatentNormalizer.from_attrs(ClipCache.open(x0_path, mode="r").attrs, cfg.dit.diffusion.sigma_data)
    model, dit_info = dae_from_dit(cfg, loop_config["dit_dir"], map_location=ctx.device)
    if init is not None:
        init(model)
    trainer = DAETrainer(model, cfg, stage, normalizer, ctx.device, prepare=ctx.prepare_model, autocast=ctx.autocast)
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            trainer.restore(ckpt)
            log.info("rank %d resumed %s from step %d", ctx.rank, stage, trainer.step)
    start = trainer.step
    stream, generator = latent_batches(loop_config, lambda: dataset(loop_config), per_worker_batch(tc.batch_size, ctx.world_size),
                                       rank=ctx.rank, world_size=ctx.world_size, seed=tc.seed, start=start,
                                       loader_workers=tc.loader_workers, prefetch_batches=tc.prefetch_batches)
    meta = checkpoint_meta(cfg, stage, dit_info, normalizer, loop_config)
    config_dict = loop_config["cfg"]
    if stage == "stage1" and ctx.is_main:
        ctx.log_metrics({"trainable_parameters": sum(p.numel() for p in trainer.params),
                         "total_parameters": sum(p.numel() for p in model.parameters())}, start)
    buckets = SigmaBuckets(sigma_data=cfg.dit.diffusion.sigma_data)

    def step(i: int) -> StepResult:
        batch = next(stream)
        z, extra = z_fn(batch, generator) if z_fn is not None else (None, {})
        scalars, out = trainer.train_step(batch, generator, z=z)
        scalars.update(extra)
        buckets.add(out.sigma, out.per_sample, out.mse)
        return StepResult(scalars, out.sigma.numel())

    def checkpoint(i: int, result: StepResult, extra: dict):
        state = trainer.state()
        step_meta = {**meta, "step": i}
        return {"loss": result.scalars["loss"]}, lambda d: save_dae_checkpoint(d, state, config_dict, step_meta)

    run_steps(ctx, desc=stage, start=start, total=int(total or tc.steps), log_every=tc.log_every,
              checkpoint_every=tc.checkpoint_every, step=step, checkpoint=checkpoint, window=buckets,
              after_step=z_report(ctx, trainer, x0_path) if stage == "stage1" else None)


def z_report(ctx, trainer: DAETrainer, x0_path: str) -> Callable[[int, bool], dict]:
    """Stage 1's ``after_step``: z's effective dimensionality (``z/...``) logged at every checkpoint (rank 0)."""
    tc = trainer.tc

    def after_step(i: int, last: bool) -> dict:
        if not ctx.is_main or tc.z_stats_clips <= 0 or not (i % tc.checkpoint_every == 0 or last):
            return {}
        metrics = z_stats_metrics(trainer.model_raw.encoder, trainer.normalizer, x0_path, max_clips=tc.z_stats_clips,
                                  mask_padding=trainer.model_raw.mask_padding)
        ctx.log_metrics(metrics, i)
        log.info("stage1 step %d: z top-4 energy %.3f, %d directions for 98%%", i,
                 metrics.get("z/energy_top4", float("nan")), int(metrics.get("z/dims_98", 0)))
        return metrics

    return after_step


def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker`` of stage 1: x0 and captions, z = g_psi(x0)."""
    dae_loop(loop_config, "stage1", lambda lc: LatentCaptionDataset(lc["x0_path"], lc["captions_path"], train_rows(lc["x0_path"])))


# -- the stage -----------------------------------------------------------------------------------
def dae_key_config(stage: str) -> Callable[[SpressoConfig], dict]:
    """What besides its training section determines a DAE stage: the operating point, the DAE's model settings."""
    def key_config(cfg: SpressoConfig) -> dict:
        d = cfg.dae
        return {"stage": stage, "t": d.t, "encoder": d.encoder.model_dump(mode="json"), "lora": d.lora.model_dump(mode="json"),
                "audio_down_init": d.audio_down_init, "diffusion": cfg.dit.diffusion.model_dump(mode="json")}

    return key_config


def dae_inputs(cfg: SpressoConfig, inputs: dict, loop_config: dict, logged: tuple[LoggedInput, ...], *,
               upstream: dict | None = None, params: dict | None = None) -> StageInputs:
    """A DAE stage's inputs: keyed as ``{"inputs": ...}``, tagged and logged with its operating point."""
    return StageInputs(key={"inputs": inputs}, loop_config=loop_config, logged=logged, upstream=upstream or {},
                       params={"dae.t": cfg.dae.t, "dae.frame_rate": frame_rate(cfg.dae.t), **(params or {})},
                       tags={"spresso.dae.t": str(cfg.dae.t)})


def open_x0_inputs(cfg: SpressoConfig, encoder=None, progress: bool = True):
    """(x0 cache path, x0 cache, caption cache): checked, the caption cache built when missing."""
    x0_path, x0 = open_x0_cache(cfg)
    return x0_path, x0, build_caption_cache(cfg, encoder, progress=progress)


def find_inputs(cfg: SpressoConfig, *, encoder=None, progress: bool = True) -> StageInputs:
    """The pretrained DiT, the x0 cache and the caption cache."""
    dit = dit_dir(cfg)
    if not has_checkpoint(dit):
        raise SpressoError(f"no DiT checkpoint at {dit}: run `spresso train dit` first (or set dae.dit_dir)")
    x0_path, x0, captions = open_x0_inputs(cfg, encoder, progress)
    dit_digest = digest_tree(dit)
    x0_identity = {k: x0.attrs.get(k) for k in X0_IDENTITY}
    captions_path = absolute(captions.path)
    return dae_inputs(
        cfg, {"dit": dit_digest, "x0": x0_identity, "text": captions.attrs},
        {"x0_path": x0_path, "captions_path": captions_path, "dit_dir": dit, "dit_digest": dit_digest},
        (LoggedInput("x0_cache", x0_path, digest_json(x0_identity)),
         LoggedInput("captions", captions_path, digest_json(captions.attrs)),
         LoggedInput("dit", dit, dit_digest, context="model")),
        upstream={"train_dit": read_checkpoint_config(dit).get("meta", {}).get("mlflow_run_id"), "precompute_latents": None})


def dae_stage(stage: str, loop: Callable[[dict], None], find_inputs: Callable[..., StageInputs],
              caches: Callable[[dict], dict]) -> TrainingStage:
    """The declaration of DAE stage ``stage`` (stage1 / stage3): section ``dae.<stage>``, one run per operating point;
    ``caches(loop_config)``: the caches (path -> arrays) its Ray Data feed reads."""
    return TrainingStage(name=f"train_{stage}", section=lambda cfg: getattr(cfg.dae, stage), loop=loop,
                         find_inputs=find_inputs, key_config=dae_key_config(stage),
                         output=lambda cfg: stage_output(cfg, stage), job_name=lambda cfg: f"dae-{stage}-t{cfg.dae.t}",
                         feeds=latent_feeds(lambda cfg: getattr(cfg.dae, stage), caches), budget_share=stage)


TRAIN_STAGE1 = dae_stage("stage1", train_loop, find_inputs, lambda lc: caption_caches(lc["x0_path"], lc["captions_path"]))


def train_stage1(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False, encoder=None,
                 progress: bool = True) -> str:
    """Train stage 1 at operating point ``cfg.dae.t`` (or reuse an identical finished run); return its final checkpoint."""
    return run_training(TRAIN_STAGE1, cfg, parent_run_id=parent_run_id, force=force, encoder=encoder, progress=progress).final
