"""Training the AudioAE with DAC's recipe on Ray Train: the GAN trainer, the loop and the stage declaration.

- :class:`AudioAETrainer`: generator + discriminators, their AdamW/ExponentialLR, one GAN step
  (plain PyTorch: the unit tests drive it directly), checkpoint save/restore;
- :func:`train_loop`: the Ray Train ``train_loop_per_worker`` (resume, logging, validation,
  audio examples, checkpoints through :class:`~spresso.train.harness.TrainContext`);
- :data:`TRAIN_AUDIOAE` / :func:`train_audioae`: the stage (one MLflow run, reuse when unchanged, resume on rerun).

Its crops come from Ray Data (:mod:`spresso.data.audio_feed`, ``audioae.train.feed: ray_data``) or
from the worker's own reader (:mod:`spresso.data.crops`, ``in_worker``); its validation from
:mod:`spresso.train.audioae_valid`.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import ray.train
import torch

from spresso.config import SpressoConfig
from spresso.config.audioae import AudioAEConfig
from spresso.core.checkpoint import (
    CheckpointError,
    load_optimizer,
    load_state,
    load_strict,
    load_weights,
    optimizer_tensors,
    save_checkpoint,
)
from spresso.core.digest import digest_file
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute, is_file, join
from spresso.data.audio_feed import crop_batches, crop_dataset
from spresso.data.crops import CropStream, load_valid_clips, segment_samples
from spresso.data.reader import read_dataset_info, shard_paths
from spresso.diffusion.ema import EMA
from spresso.models.audioae import CHECKPOINT_KIND, AudioAE
from spresso.models.discriminators import AudioDiscriminator
from spresso.models.mel import MultiScaleMel
from spresso.train.audioae_valid import evaluate_reconstruction, unwrap, write_examples
from spresso.train.clock import TrainClock
from spresso.train.driver import LoggedInput, StageInputs, TrainingStage, run_training
from spresso.train.feed import Feed
from spresso.train.gan_losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from spresso.train.loop import StepResult, run_steps, worker_setup

log = logging.getLogger(__name__)
STAGE = "train_audioae"
FAIL_MARKER = "injected_failure_done"


# -- the GAN step -----------------------------------------------------------------------------
class AudioAETrainer:
    """Generator (the AudioAE), discriminators, optimisers, schedulers and one training step."""

    def __init__(self, cfg: AudioAEConfig, device: torch.device | str = "cpu", prepare=None, autocast=None):
        self.cfg, self.tc = cfg, cfg.train
        self.device = torch.device(device)
        prepare = prepare or (lambda m: m.to(self.device))
        self.autocast = autocast or contextlib.nullcontext
        self.generator = prepare(AudioAE.from_config(cfg.model))
        self.discriminator = prepare(AudioDiscriminator.from_config(cfg.disc))
        self.mel = MultiScaleMel(cfg.model.sample_rate).to(self.device)
        tc = self.tc

        def adamw(module):
            return torch.optim.AdamW(module.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)

        self.opt_g, self.opt_d = adamw(self.generator), adamw(self.discriminator)
        # DAC's exponential decay, lr x gamma^step, read on the training clock: with a time limit
        # the whole decay (gamma^steps) is spread over the limit (spresso.train.clock).
        self.clock = TrainClock()  # no limit: the step itself; the train loop sets the stage's clock
        decay = lambda step: tc.lr_gamma ** self.schedule_step(step)  # noqa: E731
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, decay)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, decay)
        # The averaged generator (ema_std set): what validation scores and the checkpoint publishes.
        self.ema = EMA(self.model, tc.ema_std) if tc.ema_std else None
        self._averaged: AudioAE | None = None
        self.step = 0

    def schedule_step(self, step: int | None = None) -> float:
        """The step the schedules read (the step itself unless a time limit runs the clock ahead)."""
        return self.clock.schedule_step(self.step if step is None else step)

    @property
    def model(self) -> AudioAE:
        return unwrap(self.generator)

    def published(self) -> AudioAE:
        """The generator a checkpoint publishes: the EMA weights when ``ema_std`` is set, else the
        trained ones (a separate module, so training keeps its raw weights)."""
        if self.ema is None:
            return self.model
        if self._averaged is None:
            self._averaged = copy.deepcopy(self.model)
        return self.ema.copy_to(self._averaged)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One step on a batch ``[B, n]``: D update (once started), then G update. Returns losses."""
        tc = self.tc
        x = x.to(self.device, non_blocking=True)
        use_disc = self.schedule_step() >= tc.disc_start_step and tc.adv_weight + tc.fm_weight > 0
        out: dict[str, float] = {}
        with self.autocast():
            y = self.generator(x).float()
        if use_disc:
            # Real and generated go through D as one batch: a single DDP forward per backward.
            with self.autocast():
                logits, _ = self.discriminator(torch.cat([x, y.detach()]))
            b = x.shape[0]
            loss_d = discriminator_loss([l[:b] for l in logits], [l[b:] for l in logits], tc.gan_loss)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            out["grad_norm/d"] = float(torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), tc.disc_grad_clip))
            self.opt_d.step()
            out["loss/d"] = float(loss_d.detach())
        loss_mel = self.mel(y, x)
        loss_g = tc.mel_weight * loss_mel
        if tc.waveform_l1_weight > 0:
            # Phase-aware reconstruction: without it nothing but the GAN ties the predicted phase to
            # the input's, and the reconstruction is uncorrelated with it (SI-SDR ~ -60 dB) for a long time.
            loss_wave = (y - x.float()).abs().mean()
            loss_g = loss_g + tc.waveform_l1_weight * loss_wave
            out["loss/wave"] = float(loss_wave.detach())
        if use_disc:
            with self.autocast():
                logits, fmaps = self.discriminator(torch.cat([x, y]))
            b = x.shape[0]
            loss_adv = generator_adversarial_loss([l[b:] for l in logits], tc.gan_loss)
            loss_fm = feature_matching_loss([[f[:b] for f in fm] for fm in fmaps], [[f[b:] for f in fm] for fm in fmaps])
            loss_g = loss_g + tc.adv_weight * loss_adv + tc.fm_weight * loss_fm
            out.update({"loss/adv": float(loss_adv.detach()), "loss/fm": float(loss_fm.detach())})
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        out["grad_norm/g"] = float(torch.nn.utils.clip_grad_norm_(self.generator.parameters(), tc.grad_clip))
        self.opt_g.step()
        if self.ema is not None:
            out["ema_beta"] = self.ema.update(self.model)
        # The lr decays every step (gamma 0.999996) for both networks, as in DAC. D's decays
        # from step 0 too, before D first steps (GAN warm-up), which PyTorch warns about: intended.
        self.sched_g.step()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.sched_d.step()
        self.step += 1
        out.update({"loss/mel": float(loss_mel.detach()), "loss/g": float(loss_g.detach()), "lr": self.sched_g.get_last_lr()[0]})
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, directory: str | Path, config: dict, meta: dict | None = None) -> Path:
        """Weights of the AudioAE in model.safetensors (what inference loads); D, optimisers,
        schedulers and the step in the state files (what resuming needs)."""
        g_tensors, g_meta = optimizer_tensors(self.opt_g, "optim_g")
        d_tensors, d_meta = optimizer_tensors(self.opt_d, "optim_d")
        disc = {f"disc.{k}": v for k, v in unwrap(self.discriminator).state_dict().items()}
        state_meta = {"step": self.step, "optim_g": g_meta, "optim_d": d_meta,
                      "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict()}
        weights, raw = self.model.state_dict(), {}
        if self.ema is not None:
            weights = self.ema.state_dict()
            raw = {f"gen.{k}": v for k, v in self.model.state_dict().items()}
            state_meta["ema_updates"] = self.ema.num_updates
        return save_checkpoint(
            directory, weights, kind=CHECKPOINT_KIND, config=config,
            meta={"step": self.step, "frame_rate": self.model.frame_rate, **(meta or {})},
            state={**disc, **raw, **g_tensors, **d_tensors}, state_meta=state_meta,
        )

    def restore(self, directory: str | Path) -> int:
        """Load a checkpoint written by :meth:`save` (strict) and return its step."""
        weights = {k: v.to(self.device) for k, v in load_weights(directory).items()}
        tensors, meta = load_state(directory)
        if "step" not in meta:
            raise CheckpointError(f"{directory}: no training state to resume from")
        if (self.ema is not None) != ("ema_updates" in meta):
            raise CheckpointError(f"{directory}: checkpoint {'has no' if self.ema is not None else 'has an'} EMA of the "
                                  "generator, the config (audioae.train.ema_std) says otherwise")
        if self.ema is not None:
            # model.safetensors holds the average; the raw weights resume from the state.
            self.ema.load_state_dict(weights, meta["ema_updates"])
            weights = {k[len("gen."):]: v.to(self.device) for k, v in tensors.items() if k.startswith("gen.")}
        load_strict(self.model, weights, what="audioae")
        disc = {k[len("disc."):]: v.to(self.device) for k, v in tensors.items() if k.startswith("disc.")}
        load_strict(unwrap(self.discriminator), disc, what="audioae discriminator")
        load_optimizer(self.opt_g, tensors, meta["optim_g"], "optim_g")
        load_optimizer(self.opt_d, tensors, meta["optim_d"], "optim_d")
        for sched, key in ((self.sched_g, "sched_g"), (self.sched_d, "sched_d")):
            # lr_lambdas: absent from checkpoints of the ExponentialLR days (the same decay)
            sched.load_state_dict({"lr_lambdas": [None], **meta[key]})
        self.step = int(meta["step"])
        return self.step


# -- the Ray Train loop -----------------------------------------------------------------------
def maybe_fail(tc, step: int, marker: str | None) -> None:
    """Testing aid: raise once at ``fail_at_step`` (the marker file makes it once only)."""
    if tc.fail_at_step is None or step != tc.fail_at_step or not marker:
        return
    path = Path(marker)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    raise RuntimeError(f"injected failure at step {step} (audioae.train.fail_at_step)")


def crop_feed(cfg: SpressoConfig, shards_dir: str, rank: int, world_size: int, start: int) -> Iterator[torch.Tensor]:
    """The loop's endless ``[batch_size, segment]`` crops, from the feed ``audioae.train.feed`` names."""
    ac, tc = cfg.audioae, cfg.audioae.train
    if tc.feed == "ray_data":
        return crop_batches(ray.train.get_dataset_shard("train"), batch_size=tc.batch_size,
                            shuffle_buffer=tc.shuffle_buffer, prefetch_batches=tc.prefetch_batches,
                            seed=tc.seed, rank=rank, start=start)
    segment = segment_samples(tc.segment_seconds, ac.model.sample_rate, ac.model.hop)
    # Seeded by the resume step too, so a resumed run does not replay the same crops.
    return iter(CropStream(shard_paths(shards_dir, "train"), segment, tc.batch_size, rank=rank,
                           world_size=world_size, crops_per_clip=tc.crops_per_clip,
                           shuffle_buffer=tc.shuffle_buffer, seed=tc.seed * 1_000_003 + start))


def feed_datasets(cfg: SpressoConfig, inputs: StageInputs) -> dict[str, Feed]:
    """Ray Train's datasets for the stage: the lazy crop dataset of the train shards (``ray_data``
    feed), nothing for the ``in_worker`` feed."""
    ac, tc = cfg.audioae, cfg.audioae.train
    if tc.feed != "ray_data":
        return {}
    segment = segment_samples(tc.segment_seconds, ac.model.sample_rate, ac.model.hop)
    return {"train": Feed(crop_dataset(shard_paths(inputs.loop_config["shards_dir"], "train"), segment=segment,
                                       crops_per_clip=tc.crops_per_clip, seed=tc.seed, cpus_per_task=tc.feed_cpus),
                          task_cpus=tc.feed_cpus)}


def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker``: resume, train to ``audioae.steps``, validate, checkpoint."""
    ctx, cfg = worker_setup(loop_config, lambda c: c.audioae.train.seed)
    ac, tc = cfg.audioae, cfg.audioae.train
    trainer = AudioAETrainer(ac, ctx.device, prepare=ctx.prepare_model, autocast=ctx.autocast)
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            trainer.restore(ckpt)
            log.info("rank %d resumed from step %d", ctx.rank, trainer.step)
    start = trainer.step
    trainer.clock = ctx.make_clock(ac.steps)
    shards_dir = loop_config["shards_dir"]
    segment = segment_samples(tc.segment_seconds, ac.model.sample_rate, ac.model.hop)
    stream = crop_feed(cfg, shards_dir, ctx.rank, ctx.world_size, start)
    valid = load_valid_clips(shards_dir, tc.valid_clips) if ctx.is_main else []
    config_dict = loop_config["cfg"]
    fail_marker = f"{loop_config['run_dir']}/{FAIL_MARKER}" if loop_config.get("run_dir") else None

    def step(i: int) -> StepResult:
        maybe_fail(tc, i, fail_marker)
        t0 = time.perf_counter()
        batch = next(stream)
        # The time the loop waited for its batch: what a feed that keeps up brings near zero.
        waited = time.perf_counter() - t0
        scalars = {**trainer.train_step(batch), "data/wait_seconds": waited}
        return StepResult(scalars, tc.batch_size * segment / ac.model.sample_rate)

    def validate(i: int, last: bool) -> dict[str, float]:
        if not (ctx.is_main and (i % tc.valid_every == 0 or last)) or not valid:
            return {}
        model = trainer.published()
        metrics = evaluate_reconstruction(model, valid, ctx.device, ctx.autocast)
        ctx.log_metrics(metrics, i)
        if tc.audio_examples:
            with tempfile.TemporaryDirectory() as tmp:
                write_examples(model, valid[: tc.audio_examples], Path(tmp), ctx.device)
                for f in sorted(Path(tmp).iterdir()):
                    ctx.log_artifact(f, f"examples/step-{i:07d}")
        return metrics

    def checkpoint(i: int, result: StepResult, metrics: dict):
        report = {k.replace("/", "_"): v for k, v in {**result.scalars, **metrics}.items()}
        return report, lambda d: trainer.save(d, config_dict)

    run_steps(ctx, desc="audioae", start=start, total=ac.steps, log_every=tc.log_every,
              checkpoint_every=tc.checkpoint_every, step=step, checkpoint=checkpoint,
              throughput="audio_seconds_per_second", after_step=validate, postfix=("mel", "loss/mel"))


# -- the stage -----------------------------------------------------------------------------------
def data_digest(shards_dir: str) -> str:
    """The shards' dataset digest (dataset.json), else the manifest's file digest."""
    try:
        info = read_dataset_info(shards_dir)
        for key in ("digest", "dataset_digest"):
            if info.get(key):
                return str(info[key])
    except SpressoError:
        pass
    manifest = join(shards_dir, "manifest.parquet")
    if not is_file(manifest):
        raise SpressoError(f"no manifest at {manifest}: run `spresso shard` first")
    return digest_file(manifest)


def find_inputs(cfg: SpressoConfig, **_options) -> StageInputs:
    """The train shards (their dataset digest is the data's identity)."""
    shards_dir = absolute(cfg.path(cfg.data.shards_dir))
    if not shard_paths(shards_dir, "train"):
        raise SpressoError(f"no train shards under {shards_dir}: run `spresso shard` first")
    digest = data_digest(shards_dir)
    return StageInputs(key={"data": digest}, loop_config={"shards_dir": shards_dir},
                       logged=(LoggedInput("shards", shards_dir, digest),))


def final_checkpoint_dir(cfg: SpressoConfig) -> str:
    """``<workdir>/<audioae.checkpoint_dir>/final`` (an absolute folder, or a URL)."""
    return join(absolute(cfg.path(cfg.audioae.checkpoint_dir)), "final")


TRAIN_AUDIOAE = TrainingStage(
    name=STAGE,
    section=lambda cfg: cfg.audioae.train,
    loop=train_loop,
    find_inputs=find_inputs,
    key_config=lambda cfg: {"model": cfg.audioae.model.model_dump(mode="json"),
                            "disc": cfg.audioae.disc.model_dump(mode="json"), "steps": cfg.audioae.steps},
    output=final_checkpoint_dir,
    job_name=lambda cfg: "audioae",
    feeds=feed_datasets,
    budget_share="audioae",
)


def train_audioae(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False) -> Path | str:
    """Train the AudioAE stage (or reuse an identical finished one); return ``<checkpoint_dir>/final``."""
    return run_training(TRAIN_AUDIOAE, cfg, parent_run_id=parent_run_id, force=force).final
