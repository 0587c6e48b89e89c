"""Training the AudioAE with DAC's recipe on Ray Train, and the stage driver ``train_audioae``.

Pieces, each usable alone:
- :class:`CropStream`: endless shuffled batches of random crops of the train clips; the only
  data split among workers is :func:`spresso.data.reader.iter_clips` (rank r reads every
  world_size-th tar), and the stream is endless so every DDP rank runs the same number of steps.
- :class:`AudioAETrainer`: generator + discriminators, their AdamW/ExponentialLR, one GAN step
  (plain PyTorch: the unit tests drive it directly), checkpoint save/restore.
- :func:`train_loop`: the Ray Train ``train_loop_per_worker`` (resume, logging, validation,
  audio examples, checkpoints through :class:`~spresso.train.harness.TrainContext`).
- :func:`train_audioae`: the stage driver (one MLflow run, reuse when unchanged, resume on rerun).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from spresso.config import SpressoConfig
from spresso.config.audioae import AudioAEConfig
from spresso.core.checkpoint import (
    STATE_FILE,
    STATE_META_FILE,
    load_optimizer,
    load_state,
    load_strict,
    load_weights,
    optimizer_tensors,
    save_checkpoint,
)
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute as _abs
from spresso.models.audioae import CHECKPOINT_KIND, AudioAE
from spresso.models.discriminators import AudioDiscriminator
from spresso.models.mel import MultiScaleMel
from spresso.train.gan_losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)

log = logging.getLogger(__name__)
STAGE = "train_audioae"
FAIL_MARKER = "injected_failure_done"


# -- data ------------------------------------------------------------------------------------
class CropStream:
    """Endless batches ``[B, segment]`` of random crops from the clips of ``tar_paths``.

    Crops start inside a clip's real audio (``valid_samples``) so training does not drown in
    the zero padding of short sound effects; a clip shorter than the segment is taken from its
    start (its padding fills the rest). A shuffle buffer mixes clips of different tars; each
    pass over the data is one "epoch" of the stream.
    """

    def __init__(self, tar_paths: list[str], segment: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 crops_per_clip: int = 1, shuffle_buffer: int = 256, seed: int = 0):
        if len(tar_paths) < world_size:
            raise SpressoError(f"{len(tar_paths)} train shard(s) for {world_size} workers: every worker needs at least one")
        self.tar_paths, self.segment, self.batch_size = list(tar_paths), segment, batch_size
        self.rank, self.world_size = rank, world_size
        self.crops_per_clip, self.shuffle_buffer = crops_per_clip, shuffle_buffer
        self.rng = np.random.default_rng([seed, rank])

    def _crops(self) -> Iterator[np.ndarray]:
        from spresso.data.reader import iter_clips

        while True:
            produced = 0
            for clip in iter_clips(self.tar_paths, self.rank, self.world_size):
                wave, valid = clip["wave"], max(1, min(int(clip["valid_samples"]), clip["wave"].shape[0]))
                if wave.shape[0] < self.segment:
                    wave = np.pad(wave, (0, self.segment - wave.shape[0]))
                for _ in range(self.crops_per_clip):
                    start = int(self.rng.integers(0, valid - self.segment + 1)) if valid > self.segment else 0
                    produced += 1
                    yield wave[start : start + self.segment]
            if produced == 0:
                raise SpressoError(f"train shards of rank {self.rank} hold no clips")

    def __iter__(self) -> Iterator[torch.Tensor]:
        buffer: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for crop in self._crops():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(crop)
                continue
            i = int(self.rng.integers(len(buffer)))
            buffer[i], crop = crop, buffer[i]
            batch.append(crop)
            if len(batch) == self.batch_size:
                yield torch.from_numpy(np.stack(batch))
                batch = []


def load_valid_clips(shards_dir: str, limit: int) -> list[dict]:
    """The first ``limit`` clips of the valid split (deterministic), or [] without a valid split."""
    from spresso.data.reader import iter_clips, shard_paths

    clips = []
    for clip in iter_clips(shard_paths(shards_dir, "valid")):
        clips.append(clip)
        if len(clips) >= limit:
            break
    return clips


# -- metrics ----------------------------------------------------------------------------------
def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") else module


def valid_region(clip: dict, hop: int) -> np.ndarray:
    """The clip's real audio, rounded up to whole frames (at least one)."""
    n = max(hop, int(math.ceil(clip["valid_samples"] / hop)) * hop)
    wave = clip["wave"][:n]
    return np.pad(wave, (0, n - wave.shape[0])) if wave.shape[0] < n else wave


@torch.no_grad()
def evaluate_reconstruction(model: AudioAE, clips: list[dict], device: torch.device, autocast=None) -> dict[str, float]:
    """Mean multi-scale mel distance and zero-mean SI-SDR over ``clips`` (model and silence)."""
    import contextlib

    from spresso.eval.metrics import si_sdr
    from spresso.models.mel import multiscale_mel_distance

    model = _unwrap(model)
    was_training = model.training
    model.eval()
    mel, sdr, mel0, sdr0 = [], [], [], []
    for clip in clips:
        ref = torch.from_numpy(valid_region(clip, model.hop)).to(device)[None]
        with autocast() if autocast else contextlib.nullcontext():
            est = model(ref).float()
        mel.append(float(multiscale_mel_distance(est, ref)[0]))
        sdr.append(float(si_sdr(est, ref)[0]))
        silence = torch.zeros_like(ref)
        mel0.append(float(multiscale_mel_distance(silence, ref)[0]))
        sdr0.append(float(si_sdr(silence, ref)[0]))
    model.train(was_training)
    return {"valid/mel_distance": float(np.mean(mel)), "valid/si_sdr": float(np.mean(sdr)),
            "valid/silence_mel_distance": float(np.mean(mel0)), "valid/silence_si_sdr": float(np.mean(sdr0))}


@torch.no_grad()
def write_examples(model: AudioAE, clips: list[dict], folder: Path, device: torch.device) -> None:
    """Original and reconstruction (FLAC) plus a spectrogram comparison (PNG) per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spresso.audio.io import write_audio
    from spresso.models.mel import MelSpectrogram

    model = _unwrap(model)
    was_training = model.training
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    mel = MelSpectrogram(model.sample_rate, 2048, 128).to(device)
    for clip in clips:
        ref = torch.from_numpy(valid_region(clip, model.hop)).to(device)[None]
        est = model(ref).float()
        key = clip["key"]
        write_audio(folder / f"{key}.orig.flac", ref[0].cpu().numpy().clip(-1, 1), model.sample_rate)
        write_audio(folder / f"{key}.recon.flac", est[0].cpu().numpy().clip(-1, 1), model.sample_rate)
        fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        for ax, wave, title in zip(axes, (ref, est), ("original", "reconstruction")):
            ax.imshow(mel(wave)[0].cpu().numpy(), origin="lower", aspect="auto", vmin=-5, vmax=1, cmap="magma")
            ax.set_title(f"{key} {title}")
            ax.set_ylabel("mel band")
        axes[-1].set_xlabel("frame (hop 512)")
        fig.tight_layout()
        fig.savefig(folder / f"{key}.png", dpi=80)
        plt.close(fig)
    model.train(was_training)


# -- the GAN step -----------------------------------------------------------------------------
class AudioAETrainer:
    """Generator (the AudioAE), discriminators, optimisers, schedulers and one training step."""

    def __init__(self, cfg: AudioAEConfig, device: torch.device | str = "cpu", prepare=None, autocast=None):
        import contextlib

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
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, tc.lr_gamma)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, tc.lr_gamma)
        self.step = 0

    @property
    def model(self) -> AudioAE:
        return _unwrap(self.generator)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One step on a batch ``[B, n]``: D update (once started), then G update. Returns losses."""
        tc = self.tc
        x = x.to(self.device, non_blocking=True)
        use_disc = self.step >= tc.disc_start_step and tc.adv_weight + tc.fm_weight > 0
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
            out["grad_norm/d"] = float(torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), tc.grad_clip))
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
        # ExponentialLR decays per step (gamma 0.999996) for both networks, as in DAC. D's decays
        # from step 0 too, before D first steps (GAN warm-up), which PyTorch warns about: intended.
        self.sched_g.step()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\(\)` before")
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
        disc = {f"disc.{k}": v for k, v in _unwrap(self.discriminator).state_dict().items()}
        return save_checkpoint(
            directory, self.model.state_dict(), kind=CHECKPOINT_KIND, config=config,
            meta={"step": self.step, "frame_rate": self.model.frame_rate, **(meta or {})},
            state={**disc, **g_tensors, **d_tensors},
            state_meta={"step": self.step, "optim_g": g_meta, "optim_d": d_meta,
                        "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict()},
        )

    def restore(self, directory: str | Path) -> int:
        """Load a checkpoint written by :meth:`save` (strict) and return its step."""
        load_strict(self.model, {k: v.to(self.device) for k, v in load_weights(directory).items()}, what="audioae")
        tensors, meta = load_state(directory)
        if "step" not in meta:
            from spresso.core.checkpoint import CheckpointError

            raise CheckpointError(f"{directory}: no training state to resume from")
        disc = {k[len("disc."):]: v.to(self.device) for k, v in tensors.items() if k.startswith("disc.")}
        load_strict(_unwrap(self.discriminator), disc, what="audioae discriminator")
        load_optimizer(self.opt_g, tensors, meta["optim_g"], "optim_g")
        load_optimizer(self.opt_d, tensors, meta["optim_d"], "optim_d")
        self.sched_g.load_state_dict(meta["sched_g"])
        self.sched_d.load_state_dict(meta["sched_d"])
        self.step = int(meta["step"])
        return self.step


# -- the Ray Train loop -----------------------------------------------------------------------
def _maybe_fail(tc, step: int, marker: str | None) -> None:
    """Testing aid: raise once at ``fail_at_step`` (the marker file makes it once only)."""
    if tc.fail_at_step is None or step != tc.fail_at_step or not marker:
        return
    path = Path(marker)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    raise RuntimeError(f"injected failure at step {step} (audioae.train.fail_at_step)")


def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker``: resume, train to ``audioae.steps``, validate, checkpoint."""
    from tqdm import tqdm

    from spresso.config import config_from_dict
    from spresso.data.reader import shard_paths
    from spresso.train.harness import TrainContext

    ctx = TrainContext(loop_config)
    cfg: SpressoConfig = config_from_dict(loop_config["cfg"], "checkpointed config")
    ac, tc = cfg.audioae, cfg.audioae.train
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    torch.manual_seed(tc.seed + ctx.rank)
    trainer = AudioAETrainer(ac, ctx.device, prepare=ctx.prepare_model, autocast=ctx.autocast)
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            trainer.restore(ckpt)
            log.info("rank %d resumed from step %d", ctx.rank, trainer.step)
    start = trainer.step
    shards_dir = loop_config["shards_dir"]
    hop = ac.model.hop
    segment = max(hop, int(tc.segment_seconds * ac.model.sample_rate) // hop * hop)
    # Seeded by the resume step too, so a resumed run does not replay the same crops.
    stream = iter(CropStream(shard_paths(shards_dir, "train"), segment, tc.batch_size, rank=ctx.rank,
                             world_size=ctx.world_size, crops_per_clip=tc.crops_per_clip,
                             shuffle_buffer=tc.shuffle_buffer, seed=tc.seed * 1_000_003 + start))
    valid = load_valid_clips(shards_dir, tc.valid_clips) if ctx.is_main else []
    config_dict = loop_config["cfg"]

    def validate(step: int) -> dict[str, float]:
        if not valid:
            return {}
        metrics = evaluate_reconstruction(trainer.generator, valid, ctx.device, ctx.autocast)
        ctx.log_metrics(metrics, step)
        if tc.audio_examples:
            with tempfile.TemporaryDirectory() as tmp:
                write_examples(trainer.generator, valid[: tc.audio_examples], Path(tmp), ctx.device)
                for f in sorted(Path(tmp).iterdir()):
                    ctx.log_artifact(f, f"examples/step-{step:07d}")
        return metrics

    sums: dict[str, float] = {}
    count, t0 = 0, time.time()
    bar = tqdm(total=ac.steps, initial=start, desc="audioae", disable=not ctx.is_main, mininterval=10)
    for step in range(start + 1, ac.steps + 1):
        _maybe_fail(tc, step, loop_config.get("fail_marker"))
        losses = trainer.train_step(next(stream))
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        bar.update(1)
        if step % tc.log_every == 0 or step == ac.steps:
            elapsed = max(time.time() - t0, 1e-9)
            metrics = {k: v / count for k, v in sums.items()}
            metrics["audio_seconds_per_second"] = count * tc.batch_size * segment / ac.model.sample_rate / elapsed * ctx.world_size
            ctx.log_metrics(metrics, step)
            bar.set_postfix(mel=f"{metrics['loss/mel']:.3f}")
            sums, count, t0 = {}, 0, time.time()
        last = step == ac.steps
        metrics = validate(step) if ctx.is_main and (step % tc.valid_every == 0 or last) else {}
        if step % tc.checkpoint_every == 0 or last:
            ctx.report({k.replace("/", "_"): v for k, v in {**losses, **metrics}.items()}, step,
                       save=lambda d: trainer.save(d, config_dict))
    bar.close()


# -- the stage driver -------------------------------------------------------------------------


def data_digest(shards_dir: str) -> str:
    """The shards' dataset digest (dataset.json), else the manifest's file digest."""
    from spresso.core.digest import digest_file
    from spresso.data.reader import read_dataset_info

    try:
        info = read_dataset_info(shards_dir)
        for key in ("digest", "dataset_digest"):
            if info.get(key):
                return str(info[key])
    except SpressoError:
        pass
    manifest = Path(shards_dir) / "manifest.parquet"
    if not manifest.is_file():
        raise SpressoError(f"no manifest at {manifest}: run `spresso shard` first")
    return digest_file(manifest)


def stage_key(cfg: SpressoConfig, shards_digest: str) -> str:
    """What determines the trained model: the AudioAE settings and the data (not scaling knobs)."""
    from spresso.core.digest import digest_json

    ac = cfg.audioae
    train = ac.train.model_dump(mode="json", exclude={"num_workers", "use_gpu", "cpus_per_worker", "max_failures",
                                                      "log_every", "valid_every", "valid_clips", "audio_examples",
                                                      "fail_at_step", "checkpoint_every"})
    return digest_json({"model": ac.model.model_dump(mode="json"), "disc": ac.disc.model_dump(mode="json"),
                        "train": train, "steps": ac.steps, "data": shards_digest})


def train_audioae(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False) -> Path | str:
    """Train the AudioAE stage (or reuse an identical finished one); return ``<checkpoint_dir>/final``."""
    from spresso.data.reader import shard_paths
    from spresso.runtime import find_finished_run, init_ray, stage_run, tracking_uri
    from spresso.runtime.tracking import ensure_experiment
    from spresso.train.harness import TrainJob, fit, resumable_run_id

    ac, tc = cfg.audioae, cfg.audioae.train
    shards_dir = _abs(cfg.path(cfg.data.shards_dir))
    if not shard_paths(shards_dir, "train"):
        raise SpressoError(f"no train shards under {shards_dir}: run `spresso shard` first")
    shards_digest = data_digest(shards_dir)
    key = stage_key(cfg, shards_digest)
    final = final_checkpoint_dir(cfg)
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    if not force:
        prev = find_finished_run(uri, ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir), STAGE, key)
        if prev is not None and _published_digest(final) == prev.data.tags.get("spresso.output.checkpoint.digest"):
            log.info("train_audioae: reusing run %s (inputs and config unchanged)", prev.info.run_id)
            return final
    init_ray(cfg.runtime)
    storage = _abs(cfg.path("ray_train"))
    name = f"audioae-{key[:16]}"
    job = TrainJob(
        name=name, loop=train_loop, storage_path=storage, num_workers=tc.num_workers, use_gpu=tc.use_gpu,
        cpus_per_worker=tc.cpus_per_worker, max_failures=tc.max_failures,
        loop_config={"cfg": cfg.to_dict(), "shards_dir": shards_dir, "threads": max(1, int(tc.cpus_per_worker)),
                     "fail_marker": f"{storage}/{name}/{FAIL_MARKER}"},
    )
    with stage_run(STAGE, cfg, key=key, parent_run_id=parent_run_id,
                   resume_run_id=resumable_run_id(storage, name, uri)) as run:
        run.log_input("shards", shards_dir, shards_digest)
        result = fit(job, run)
        digest = publish_checkpoint(result, final)
        run.log_output("checkpoint", str(final), digest)
    return final


def final_checkpoint_dir(cfg: SpressoConfig) -> str | Path:
    """``<workdir>/<audioae.checkpoint_dir>/final``: a local Path, or a URL string on s3://."""
    dest = cfg.path(cfg.audioae.checkpoint_dir).rstrip("/") + "/final"
    return dest if "://" in dest else Path(dest).resolve()


def publish_checkpoint(result, dest: str | Path) -> str:
    """Copy the run's last checkpoint to ``dest`` (local or fsspec URL), inference files only; return its digest.

    The deliverable is the model: discriminators and optimiser state stay in Ray's storage.
    """
    from spresso.core.digest import digest_tree
    from spresso.train.harness import copy_checkpoint

    def strip(folder: Path) -> None:
        for extra in (STATE_FILE, STATE_META_FILE):
            (folder / extra).unlink(missing_ok=True)

    if "://" not in str(dest):
        final = copy_checkpoint(result, dest)
        strip(final)
        return digest_tree(final)
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(dest))
    with tempfile.TemporaryDirectory() as tmp:
        local = copy_checkpoint(result, Path(tmp) / "final")
        strip(local)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        for f in sorted(local.iterdir()):
            fs.put_file(str(f), f"{root}/{f.name}")
        return digest_tree(local)


def _published_digest(dest: str | Path) -> str | None:
    """Digest of a published checkpoint folder, or None when it is absent."""
    from spresso.core.digest import digest_tree

    if "://" not in str(dest):
        return digest_tree(dest) if Path(dest, "config.json").is_file() else None
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(dest))
    if not fs.exists(f"{root}/config.json"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for p in fs.ls(root, detail=False):
            fs.get_file(p, f"{tmp}/{p.rsplit('/', 1)[-1]}")
        return digest_tree(tmp)
