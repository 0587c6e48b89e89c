"""Stage 1 of the diffusion autoencoder: train g_psi, f_phi, the audio-down streams and LoRA together.

EDM2 loss on normalised x0 from the x0 cache with z = g_psi(x0) as conditioning, captions
dropped with probability 0.8 (the decoder must learn to rely on z), AdamW 1e-4, global batch 32,
on Ray Train with checkpoints, resume and MLflow (rank 0), one run per operating point ``dae.t``.

Pieces, each usable alone:
- :func:`dae_from_dit` / :func:`load_dae`: the model from a pretrained DiT, or from a DAE checkpoint;
- :class:`DAETrainer`: one optimisation step, checkpoint state and restore (shared with stage 3);
- :func:`train_loop`: Ray Train's loop; :func:`train_stage1`: the stage driver.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch

from spresso.config import SpressoConfig
from spresso.config.layout import dit_dir, stage_output
from spresso.core.checkpoint import (
    load_optimizer,
    load_state,
    load_strict,
    load_weights,
    optimizer_tensors,
    save_checkpoint,
)
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute as _abs
from spresso.diffusion.autoencoder import DiffusionAutoencoder, set_trainable
from spresso.diffusion.checkpoints import CHECKPOINT_KIND, dae_from_dit
from spresso.diffusion.edm2 import EDM2Loss
from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.text_encoder import TextEmbedding

log = logging.getLogger(__name__)
STAGE = "train_stage1"


# -- models ---------------------------------------------------------------------------------------
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
        warm = self.tc.warmup_steps
        return self.tc.lr * min(1.0, step / warm) if warm else self.tc.lr

    def train_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                   z: torch.Tensor | None = None) -> tuple[dict[str, float], object]:
        """One AdamW step; stage 1 encodes z from the batch's x0, stage 3 takes ``z`` (normalised-x0 units of z)."""
        self.model.train()
        self.step += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        y = self.normalizer.normalize(batch["x0"].to(self.device))
        text = TextEmbedding(batch["text"].to(self.device).float(), batch["text_mask"].to(self.device).bool(),
                             batch["pooled"].to(self.device).float())
        drop = (torch.rand(y.shape[0], generator=generator) < self.tc.text_dropout).to(self.device)
        cond = {"z_from": y} if z is None else {"z": z.to(self.device).float()}
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


# -- the Ray Train loop ---------------------------------------------------------------------------
def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker`` of stage 1: resume, train ``dae.stage1.steps`` steps, log, checkpoint."""
    from spresso.config import config_from_dict
    from spresso.data.zarr_cache import ClipCache
    from spresso.train.dit import (
        LatentCaptionDataset,
        SigmaBuckets,
        resumed_stream,
        train_rows,
    )
    from spresso.train.harness import TrainContext

    ctx = TrainContext(loop_config)
    cfg: SpressoConfig = config_from_dict(loop_config["cfg"], "checkpointed config")
    tc = cfg.dae.stage1
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    torch.manual_seed(tc.seed + ctx.rank)
    x0_path, captions_path = loop_config["x0_path"], loop_config["captions_path"]
    normalizer = LatentNormalizer.from_attrs(ClipCache.open(x0_path, mode="r").attrs, cfg.dit.diffusion.sigma_data)
    model, dit_info = dae_from_dit(cfg, loop_config["dit_dir"], map_location=ctx.device)
    trainer = DAETrainer(model, cfg, "stage1", normalizer, ctx.device, prepare=ctx.prepare_model, autocast=ctx.autocast)
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            trainer.restore(ckpt)
            log.info("rank %d resumed stage 1 from step %d", ctx.rank, trainer.step)
    start = trainer.step
    stream, generator = resumed_stream(LatentCaptionDataset(x0_path, captions_path, train_rows(x0_path)),
                                       per_worker_batch(tc.batch_size, ctx.world_size), ctx, tc, start)
    meta = checkpoint_meta(cfg, "stage1", dit_info, normalizer, loop_config)
    trainable = sum(p.numel() for p in trainer.params)
    if ctx.is_main:
        ctx.log_metrics({"trainable_parameters": trainable, "total_parameters": sum(p.numel() for p in model.parameters())}, start)
    run_steps(ctx, trainer, stream, generator, start, tc, meta, loop_config["cfg"], desc="stage1", sigma_buckets=SigmaBuckets)


def checkpoint_meta(cfg: SpressoConfig, stage: str, dit_info: dict, normalizer: LatentNormalizer, loop_config: dict) -> dict:
    dmeta = dit_info.get("meta", {})
    return {**normalizer.to_meta(), "stage": stage, "t": cfg.dae.t, "text_dims": list(dmeta.get("text_dims") or
            [dmeta["text_encoder"]["token_dim"], dmeta["text_encoder"]["pooled_dim"]]),
            "text_encoder": dmeta.get("text_encoder"), "frames": dmeta.get("frames"),
            "dit_config": dit_info.get("config", {}).get("dit"),
            "dit_dir": loop_config.get("dit_dir"), "dit_digest": loop_config.get("dit_digest"),
            "stage1_dir": loop_config.get("stage1_dir")}


def run_steps(ctx, trainer: DAETrainer, stream, generator, start: int, tc, meta: dict, config_dict: dict, *, desc: str,
              sigma_buckets, total: int | None = None, z_fn: Callable | None = None) -> None:
    """The shared step loop of stages 1 and 3: log every ``log_every``, checkpoint every ``checkpoint_every``.

    ``z_fn(batch, generator) -> (z, extra metrics)`` gives stage 3's conditioning; None: z = g_psi(x0).
    """
    from tqdm import tqdm

    total = int(total or tc.steps)
    buckets = sigma_buckets(sigma_data=trainer.cfg.dit.diffusion.sigma_data)
    sums: dict[str, float] = {}
    count, t0 = 0, time.time()
    bar = tqdm(total=total, initial=start, desc=desc, disable=not ctx.is_main, mininterval=10)
    scalars = {"loss": float("nan")}
    for step in range(start + 1, total + 1):
        batch = next(stream)
        extra: dict[str, float] = {}
        z = None
        if z_fn is not None:
            z, extra = z_fn(batch, generator)
        scalars, out = trainer.train_step(batch, generator, z=z)
        scalars.update(extra)
        buckets.add(out.sigma, out.per_sample, out.mse)
        for k, v in scalars.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        bar.update(1)
        last = step == total
        if step % tc.log_every == 0 or last:
            metrics = {k: v / count for k, v in sums.items()}
            metrics.update(buckets.metrics())
            metrics["samples_per_second"] = count * out.sigma.numel() * ctx.world_size / max(time.time() - t0, 1e-9)
            ctx.log_metrics(metrics, step)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            sums, count, t0 = {}, 0, time.time()
            buckets.reset()
        if step % tc.checkpoint_every == 0 or last:
            state = trainer.state()
            meta = {**meta, "step": step}
            ctx.report({"loss": scalars["loss"]}, step, save=lambda d: save_dae_checkpoint(d, state, config_dict, meta))
    bar.close()


# -- the stage driver -----------------------------------------------------------------------------


def stage_key(cfg: SpressoConfig, stage: str, inputs: dict) -> str:
    """What determines a trained stage: the DAE's model settings, the stage's training settings, its inputs."""
    from spresso.core.digest import digest_json

    d = cfg.dae
    tc = d.stage1 if stage == "stage1" else d.stage3
    train = tc.model_dump(mode="json", exclude={"num_workers", "use_gpu", "cpus_per_worker", "max_failures", "loader_workers",
                                                "log_every", "checkpoint_every"})
    return digest_json({"stage": stage, "t": d.t, "encoder": d.encoder.model_dump(mode="json"), "lora": d.lora.model_dump(mode="json"),
                        "audio_down_init": d.audio_down_init, "diffusion": cfg.dit.diffusion.model_dump(mode="json"),
                        "train": train, "inputs": inputs})


def open_x0_inputs(cfg: SpressoConfig, encoder=None, progress: bool = True):
    """(x0 cache path, x0 cache, caption cache): checked, the caption cache built when missing."""
    from spresso.data.captions import build_caption_cache
    from spresso.data.zarr_cache import ClipCache

    x0_path = _abs(cfg.path(cfg.audioae.latents_path))
    if not ClipCache.exists(x0_path):
        raise SpressoError(f"no x0 cache at {x0_path}: run `spresso precompute-latents` first")
    x0 = ClipCache.open(x0_path, mode="r")
    if not x0.complete or "x0_mean" not in x0.attrs:
        raise SpressoError(f"x0 cache {x0_path} is unfinished (no x0_mean/x0_std): rerun `spresso precompute-latents`")
    return x0_path, x0, build_caption_cache(cfg, encoder, progress=progress)


def run_stage(cfg: SpressoConfig, stage: str, loop, inputs: dict, loop_config: dict, upstream: dict, *, parent_run_id=None,
              force: bool = False, log_inputs: Callable | None = None) -> Path:
    """Reuse a finished identical run, or fit ``loop`` on Ray Train in one MLflow run; return ``<stage>/final``."""
    from spresso.core.checkpoint import STATE_FILE, STATE_META_FILE
    from spresso.core.digest import digest_tree
    from spresso.runtime import find_finished_run, init_ray, stage_run, tracking_uri
    from spresso.runtime.tracking import ensure_experiment
    from spresso.train.harness import TrainJob, copy_checkpoint, fit, resumable_run_id

    if "://" in cfg.workdir:
        raise SpressoError(f"train {stage} writes its final checkpoint locally: use a local workdir")
    tc = cfg.dae.stage1 if stage == "stage1" else cfg.dae.stage3
    key = stage_key(cfg, stage, inputs)
    final = stage_output(cfg, stage)
    name = f"dae-{stage}-t{cfg.dae.t}-{key[:16]}"
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    run_name = f"train_{stage}"
    if not force and final.is_dir():
        prev = find_finished_run(uri, ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir), run_name, key)
        if prev is not None and prev.data.tags.get("spresso.output.checkpoint.digest") == digest_tree(final):
            log.info("%s: reusing run %s (inputs and config unchanged)", run_name, prev.info.run_id)
            return final
    init_ray(cfg.runtime)
    storage = _abs(cfg.path("ray_train"))
    job = TrainJob(name=name, loop=loop, storage_path=storage, num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                   cpus_per_worker=tc.cpus_per_worker, max_failures=tc.max_failures,
                   loop_config={"cfg": cfg.to_dict(), "threads": max(1, int(tc.cpus_per_worker)), **loop_config})
    with stage_run(run_name, cfg, key=key, parent_run_id=parent_run_id, upstream={k: v for k, v in upstream.items() if v} or None,
                   resume_run_id=resumable_run_id(storage, name, uri), extra_tags={"spresso.dae.t": str(cfg.dae.t)}) as run:
        run.log_params({"dae.t": cfg.dae.t, "dae.frame_rate": 100.0 / cfg.dae.t})
        if log_inputs is not None:
            log_inputs(run)
        result = fit(job, run)
        final = copy_checkpoint(result, final)
        for extra in (STATE_FILE, STATE_META_FILE):  # the optimiser stays in Ray's storage
            (final / extra).unlink(missing_ok=True)
        run.log_output("checkpoint", str(final), digest_tree(final))
    return final


def train_stage1(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False, encoder=None,
                 progress: bool = True) -> Path:
    """Train stage 1 at operating point ``cfg.dae.t`` (or reuse an identical finished run); return its final checkpoint."""
    from spresso.core.checkpoint import read_checkpoint_config
    from spresso.core.digest import digest_json, digest_tree

    dit = dit_dir(cfg)
    if not Path(dit).is_dir():
        raise SpressoError(f"no DiT checkpoint at {dit}: run `spresso train dit` first (or set dae.dit_dir)")
    x0_path, x0, captions = open_x0_inputs(cfg, encoder, progress)
    dit_digest = digest_tree(dit)
    x0_identity = {k: x0.attrs.get(k) for k in ("audioae_digest", "shards_digest", "x0_mean", "x0_std")}
    inputs = {"dit": dit_digest, "x0": x0_identity, "text": captions.attrs}
    dit_run = read_checkpoint_config(dit).get("meta", {}).get("mlflow_run_id")

    def log_inputs(run):
        run.log_input("x0_cache", x0_path, digest_json(x0_identity))
        run.log_input("captions", _abs(captions.path), digest_json(captions.attrs))
        run.log_input("dit", dit, dit_digest, context="model")

    return run_stage(cfg, "stage1", train_loop, inputs,
                     {"x0_path": x0_path, "captions_path": _abs(captions.path), "dit_dir": dit, "dit_digest": dit_digest},
                     {"train_dit": dit_run, "precompute_latents": None}, parent_run_id=parent_run_id, force=force,
                     log_inputs=log_inputs)
