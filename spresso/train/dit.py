"""Pretraining the text-to-audio DiT with EDM2 on Ray Train: the trainer, the loop and the stage declaration.

- :class:`DiTTrainer`: denoiser (+DDP/FSDP), AdamW, EMA, one step, checkpoint save/restore
  (plain PyTorch; tests drive it directly);
- :func:`train_loop`: Ray Train's ``train_loop_per_worker`` (resume, logging, generated examples,
  the held-out report at the end);
- :data:`TRAIN_DIT` / :func:`train_dit`: the stage (caption cache, one MLflow run, reuse, resume on rerun).

Its batches come from :mod:`spresso.data.latent_batches`, its per-sigma metrics from
:mod:`spresso.train.sigma_buckets`, the held-out report from :mod:`spresso.train.dit_held_out`.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor

from spresso.config import SpressoConfig
from spresso.config.dit import DiTConfig
from spresso.core.checkpoint import (
    has_checkpoint,
    load_state,
    load_strict,
    load_weights,
    save_checkpoint,
)
from spresso.core.digest import digest_json
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute, join
from spresso.data.captions import build_caption_cache
from spresso.data.latent_batches import LatentCaptionDataset, caption_caches, train_rows
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.autoencoder import build_denoiser
from spresso.diffusion.edm2 import EDM2Loss
from spresso.diffusion.ema import EMA
from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.audioae import load_audioae
from spresso.models.dit import CHECKPOINT_KIND
from spresso.train.diffusion_batch import batch_inputs, set_lr, warmup_lr
from spresso.train.dit_examples import example_captions, write_generated_examples
from spresso.train.dit_held_out import held_out_sigma_report
from spresso.train.driver import LoggedInput, StageInputs, TrainingStage, run_training
from spresso.train.feed import latent_batches, latent_feeds
from spresso.train.loop import StepResult, run_steps, worker_setup
from spresso.train.sigma_buckets import SigmaBuckets

log = logging.getLogger(__name__)
STAGE = "train_dit"
X0_IDENTITY = ("audioae_digest", "shards_digest", "x0_mean", "x0_std")  # what makes an x0 cache what it is


# -- the trainer -----------------------------------------------------------------------------
def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor from a (possibly FSDP-sharded DTensor) state entry; collective for DTensors."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu()


class DiTTrainer:
    """Everything one training step needs, plus checkpoints (plain PyTorch; tests drive it directly)."""

    def __init__(self, cfg: DiTConfig, text_dims: tuple[int, int], normalizer: LatentNormalizer,
                 device: torch.device | str = "cpu", *, world_size: int = 1, prepare=None, autocast=None):
        self.cfg, self.tc = cfg, cfg.train
        self.device = torch.device(device)
        self.normalizer = normalizer
        self.text_dims = text_dims
        self.denoiser = build_denoiser(cfg, *text_dims).to(self.device)  # unwrapped, for EMA/checkpoints
        self.ema = EMA(self.denoiser, cfg.train.ema_std)
        self.model = self._wrap(world_size, prepare)
        self.loss_fn = EDM2Loss(cfg.diffusion.P_mean, cfg.diffusion.P_std, cfg.diffusion.sigma_data)
        self.optimizer = torch.optim.AdamW(self.denoiser.parameters(), lr=self.tc.lr, betas=tuple(self.tc.betas),
                                           weight_decay=self.tc.weight_decay)
        self.autocast = autocast
        self.step = 0

    def _wrap(self, world_size: int, prepare):
        if self.tc.compile:
            # Per block, as the codec does: every block has the same shapes, so one graph serves them all.
            for block in self.denoiser.net.blocks():
                block.compile()
        if world_size > 1 and self.tc.strategy == "fsdp":
            # FSDP2: shard each block, then the root; bf16 compute with fp32 reductions on GPU.
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.device.type == "cuda" else MixedPrecisionPolicy()
            for block in self.denoiser.net.blocks():
                fully_shard(block, mp_policy=mp)
            fully_shard(self.denoiser, mp_policy=mp)
            # The EMA must shadow the sharded parameters (DTensors), so rebuild it after sharding.
            self.ema = EMA(self.denoiser, self.tc.ema_std)
            return self.denoiser
        return prepare(self.denoiser) if prepare is not None else self.denoiser

    def lr_at(self, step: int) -> float:
        return warmup_lr(self.tc, step)

    def train_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> tuple[dict[str, float], object]:
        """One AdamW step on a batch from :func:`batch_stream`; returns (scalars, LossOutput)."""
        self.model.train()
        self.step += 1
        set_lr(self.optimizer, self.lr_at(self.step))
        y, text = batch_inputs(batch, self.normalizer, self.device)
        B = y.shape[0]
        drop = torch.rand(B, generator=generator).to(self.device) < self.tc.text_dropout
        ctx = self.autocast() if self.autocast is not None else torch.autocast(self.device.type, enabled=False)
        with ctx:
            out = self.loss_fn(self.model, y, text=text, drop=drop, generator=generator)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        beta = self.ema.update(self.denoiser)
        return {"loss": float(out.loss.detach()), "grad_norm": float(full_tensor(grad_norm.detach())), "ema_beta": beta,
                "lr": self.lr_at(self.step), "text_dropped": float(drop.float().mean())}, out

    # -- checkpoints -------------------------------------------------------------------------
    def gather(self) -> tuple[dict, dict, dict]:
        """(EMA weights, raw weights + optimiser tensors, JSON state); every rank must call it under FSDP."""
        ema = {k: full_tensor(v) for k, v in self.ema.state_dict().items()}
        raw = {f"raw/{k}": full_tensor(v) for k, v in self.denoiser.state_dict().items()}
        osd = get_optimizer_state_dict(self.denoiser, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        tensors, scalars = {}, {}
        # full_state_dict + cpu_offload: only rank 0 receives the optimiser state; the others get {}.
        for fqn, st in osd.get("state", {}).items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim/{fqn}/{k}"] = full_tensor(v)
                else:
                    scalars[f"{fqn}/{k}"] = v
        meta = {"step": self.step, "ema_updates": self.ema.num_updates, "optim_groups": osd.get("param_groups", []), "optim_scalars": scalars}
        return ema, {**raw, **tensors}, meta

    def checkpoint_meta(self, frames: int, text_encoder: dict) -> dict:
        return {**self.normalizer.to_meta(), "text_encoder": text_encoder, "frames": int(frames), "step": self.step,
                "text_dims": list(self.text_dims)}

    def restore(self, directory: str | Path) -> int:
        tensors, meta = load_state(directory)
        if not meta:
            raise SpressoError(f"{directory}: no training state to resume from")
        raw = {k[len("raw/"):]: v for k, v in tensors.items() if k.startswith("raw/")}
        probe = build_denoiser(self.cfg, *self.text_dims)
        load_strict(probe, raw, what=f"dit training state {directory}")  # one-line error on mismatch
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.denoiser, raw, options=opts)
        state: dict = {}
        for name, v in tensors.items():
            if name.startswith("optim/"):
                _, rest = name.split("/", 1)
                fqn, k = rest.rsplit("/", 1)
                state.setdefault(fqn, {})[k] = v
        for name, v in meta.get("optim_scalars", {}).items():
            fqn, k = name.rsplit("/", 1)
            state.setdefault(fqn, {})[k] = v
        set_optimizer_state_dict(self.denoiser, self.optimizer, {"state": state, "param_groups": meta["optim_groups"]}, options=opts)
        ema = load_weights(directory)
        own = self.ema.state_dict()
        if hasattr(next(iter(own.values())), "full_tensor"):  # FSDP: re-shard the full EMA like the params
            ema = {k: distribute_tensor(v.to(own[k].device), own[k].device_mesh, own[k].placements) for k, v in ema.items()}
        self.ema.load_state_dict(ema, meta["ema_updates"])
        self.step = int(meta["step"])
        return self.step


def save_dit_checkpoint(directory: str | Path, gathered: tuple[dict, dict, dict], config: dict, meta: dict) -> Path:
    ema, state, state_meta = gathered
    return save_checkpoint(directory, ema, kind=CHECKPOINT_KIND, config=config, meta=meta, state=state, state_meta=state_meta)


# -- the Ray Train loop ------------------------------------------------------------------------
def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker``: resume, train ``dit.train.steps`` steps, log, sample, checkpoint."""
    ctx, cfg = worker_setup(loop_config, lambda c: c.dit.train.seed)
    dc, tc = cfg.dit, cfg.dit.train
    x0_path, captions_path = loop_config["x0_path"], loop_config["captions_path"]
    x0_cache, cap_cache = ClipCache.open(x0_path, mode="r"), ClipCache.open(captions_path, mode="r")
    normalizer = LatentNormalizer.from_attrs(x0_cache.attrs, dc.diffusion.sigma_data)
    text_info = cap_cache.attrs["text_encoder"]
    frames = x0_cache.row_spec("x0")[0][-1]
    trainer = DiTTrainer(dc, (int(text_info["token_dim"]), int(text_info["pooled_dim"])), normalizer, ctx.device,
                         world_size=ctx.world_size, prepare=ctx.prepare_model, autocast=ctx.autocast)
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            trainer.restore(ckpt)
            log.info("rank %d resumed from step %d", ctx.rank, trainer.step)
    start = trainer.step
    stream, generator = latent_batches(loop_config, lambda: LatentCaptionDataset(x0_path, captions_path, train_rows(x0_path)),
                                       tc.batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=tc.seed, start=start,
                                       loader_workers=tc.loader_workers, prefetch_batches=tc.prefetch_batches)
    audioae = None
    examples = None
    if ctx.is_main and tc.num_samples:
        examples = example_captions(captions_path, x0_path, tc.num_samples)
        ae_dir = loop_config.get("audioae_dir")
        if ae_dir and has_checkpoint(ae_dir):
            audioae = load_audioae(ae_dir, map_location=ctx.device)
    config_dict, meta = loop_config["cfg"], trainer.checkpoint_meta(frames, text_info)
    buckets = SigmaBuckets(sigma_data=dc.diffusion.sigma_data)

    def step(i: int) -> StepResult:
        scalars, out = trainer.train_step(next(stream), generator)
        buckets.add(out.sigma, out.per_sample, out.mse)
        return StepResult(scalars, tc.batch_size)

    def ema_weights() -> dict:
        return {k: full_tensor(v) for k, v in trainer.ema.state_dict().items()}  # collective under FSDP

    def after_step(i: int, last: bool) -> dict:
        want_samples = examples is not None or ctx.world_size > 1
        if tc.num_samples and (i % tc.sample_every == 0 or last) and want_samples:
            weights = ema_weights()
            if ctx.is_main:
                with tempfile.TemporaryDirectory() as tmp:
                    files = write_generated_examples(weights, trainer, examples[0], examples[1], frames, Path(tmp),
                                                     audioae=audioae, steps=tc.sample_steps, seed=tc.seed)
                    for f in files:
                        ctx.log_artifact(f, f"examples/step-{i:07d}")
        if last:  # the held-out report, once, on the final EMA weights
            weights = ema_weights()
            if ctx.is_main:
                model = build_denoiser(dc, *trainer.text_dims)
                model.load_state_dict(weights, strict=True)
                report = held_out_sigma_report(model.to(ctx.device), normalizer, x0_path, captions_path,
                                               sigma_data=dc.diffusion.sigma_data, seed=tc.seed)
                ctx.log_metrics(report, i)
                log.info("held-out denoising MSE / trivial denoiser's: %s", ", ".join(
                    f"{k.split('_')[-1]}: {v:.3f}" for k, v in report.items() if k.startswith("valid_mse_ratio")))
        return {}

    def checkpoint(i: int, result: StepResult, extra: dict):
        gathered = trainer.gather()  # collective under FSDP
        meta["step"] = i
        return {"loss": result.scalars["loss"]}, lambda d: save_dit_checkpoint(d, gathered, config_dict, meta)

    run_steps(ctx, desc="dit", start=start, total=tc.steps, log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
              step=step, checkpoint=checkpoint, window=buckets, after_step=after_step)


# -- the stage -----------------------------------------------------------------------------------
def open_x0_cache(cfg: SpressoConfig) -> tuple[str, ClipCache]:
    """(path, cache) of the finished x0 cache the diffusion stages train on (one-line errors otherwise)."""
    x0_path = absolute(cfg.path(cfg.audioae.latents_path))
    if not ClipCache.exists(x0_path):
        raise SpressoError(f"no x0 cache at {x0_path}: run `spresso precompute-latents` first")
    x0 = ClipCache.open(x0_path, mode="r")
    if not x0.complete or "x0_mean" not in x0.attrs:
        raise SpressoError(f"x0 cache {x0_path} is unfinished (no x0_mean/x0_std): rerun `spresso precompute-latents`")
    return x0_path, x0


def find_inputs(cfg: SpressoConfig, *, encoder=None, progress: bool = True) -> StageInputs:
    """The x0 cache and the caption cache (built first when missing or stale; ``encoder`` overrides the
    configured text encoder, e.g. in tests)."""
    x0_path, x0 = open_x0_cache(cfg)
    captions = build_caption_cache(cfg, encoder, progress=progress)
    x0_identity = {k: x0.attrs.get(k) for k in X0_IDENTITY}
    captions_path = absolute(captions.path)
    return StageInputs(
        key={"x0": x0_identity, "text": captions.attrs},
        loop_config={"x0_path": x0_path, "captions_path": captions_path,
                     "audioae_dir": absolute(cfg.path(cfg.audioae.checkpoint_dir)) + "/final"},
        logged=(LoggedInput("x0_cache", x0_path, digest_json(x0_identity)),
                LoggedInput("captions", captions_path, digest_json(captions.attrs))),
        upstream={"train_audioae": x0.attrs.get("audioae_run_id")},
    )


def key_config(cfg: SpressoConfig) -> dict:
    """Besides ``dit.train``, the trained DiT depends on its network and diffusion settings."""
    return {"model": cfg.dit.model.model_dump(mode="json"), "diffusion": cfg.dit.diffusion.model_dump(mode="json")}


TRAIN_DIT = TrainingStage(STAGE, section=lambda cfg: cfg.dit.train, loop=train_loop, find_inputs=find_inputs,
                          budget_share="dit",
                          key_config=key_config, job_name=lambda cfg: "dit",
                          output=lambda cfg: join(absolute(cfg.path(cfg.dit.checkpoint_dir)), "final"),
                          feeds=latent_feeds(lambda cfg: cfg.dit.train,
                                             lambda lc: caption_caches(lc["x0_path"], lc["captions_path"])))


def train_dit(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False, encoder=None,
              progress: bool = True) -> str:
    """Train the DiT stage (or reuse an identical finished one); return ``<checkpoint_dir>/final``."""
    return run_training(TRAIN_DIT, cfg, parent_run_id=parent_run_id, force=force, encoder=encoder, progress=progress).final
