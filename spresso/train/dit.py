"""Pretraining the text-to-audio DiT with EDM2 on Ray Train, and the stage driver ``train_dit``.

Pieces, each usable alone:
- :class:`LatentCaptionDataset` / :func:`batch_stream`: endless shuffled batches of normalised
  x0 plus cached caption embeddings (train split); DDP ranks get disjoint rows through
  ``DistributedSampler`` and the loop runs a fixed number of steps, so every rank steps equally.
- :class:`SigmaBuckets`: loss and denoising error per noise level, against the trivial denoiser.
- :class:`DiTTrainer`: denoiser (+DDP/FSDP), AdamW, EMA, one step, checkpoint save/restore.
- :func:`train_loop`: Ray Train's ``train_loop_per_worker`` (resume, logging, generated examples).
- :func:`train_dit`: the stage driver (caption cache, one MLflow run, reuse, resume on rerun).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from spresso.config import SpressoConfig
from spresso.config.dit import DiTConfig
from spresso.core.checkpoint import (
    STATE_FILE,
    STATE_META_FILE,
    load_state,
    load_strict,
    load_weights,
    save_checkpoint,
)
from spresso.core.errors import SpressoError
from spresso.core.storage import absolute as _abs
from spresso.diffusion.edm2 import EDM2Loss, preconditioning
from spresso.diffusion.ema import EMA
from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.dit import CHECKPOINT_KIND, build_denoiser
from spresso.models.text_encoder import TextEmbedding

log = logging.getLogger(__name__)
STAGE = "train_dit"
X0_ARRAYS = ("x0",)
TEXT_ARRAYS = ("text", "text_mask", "pooled")
# Noise-level buckets for logging (sigma edges); EDM2's training density puts most mass in 0.1..5.
SIGMA_EDGES = (0.1, 0.3, 1.0, 3.0)


# -- data ------------------------------------------------------------------------------------
class LatentCaptionDataset(torch.utils.data.Dataset):
    """Rows of the x0 cache with their caption embeddings (two row-aligned caches)."""

    def __init__(self, x0_path: str, captions_path: str, rows: np.ndarray):
        from spresso.data.zarr_cache import CacheDataset

        self.x0 = CacheDataset(x0_path, X0_ARRAYS, rows)
        self.text = CacheDataset(captions_path, TEXT_ARRAYS, rows)

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, i: int) -> dict:
        return {**self.x0[i], **self.text[i]}

    def __getitems__(self, indices) -> list[dict]:
        return [{**a, **b} for a, b in zip(self.x0.__getitems__(indices), self.text.__getitems__(indices))]


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


def batch_stream(dataset: LatentCaptionDataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches; a new permutation per pass (seeded by pass and ``seed``)."""
    from torch.utils.data import DataLoader, DistributedSampler

    if len(dataset) < world_size:
        raise SpressoError(f"{len(dataset)} train clips for {world_size} workers")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=len(dataset) >= world_size * batch_size)
    per_rank = len(sampler)
    loader = DataLoader(dataset, batch_size=min(batch_size, per_rank), sampler=sampler, num_workers=workers,
                        collate_fn=_collate, drop_last=True, persistent_workers=workers > 0)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def split_rows(x0_path: str, split: str) -> np.ndarray:
    from spresso.data.zarr_cache import ClipCache

    cache = ClipCache.open(x0_path, mode="r")
    return cache.rows_where("split", split)


def train_rows(x0_path: str) -> np.ndarray:
    """The finished train rows of an x0 cache (a one-line error when there are none)."""
    rows = split_rows(x0_path, "train")
    if rows.size == 0:
        raise SpressoError(f"{x0_path}: no finished train rows")
    return rows


def resumed_stream(dataset, batch_size: int, ctx, tc, start: int) -> tuple[Iterator[dict[str, torch.Tensor]], torch.Generator]:
    """Batches and noise generator for a run (re)starting at step ``start`` on this rank.

    Both are seeded by (seed, rank, start): a resumed run draws fresh batches and noise instead of
    replaying those of its first steps, and ranks never share noise.
    """
    stream = batch_stream(dataset, batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=tc.seed * 1_000_003 + start,
                          workers=tc.loader_workers)
    return stream, torch.Generator().manual_seed(tc.seed * 7919 + ctx.rank * 104729 + start)


# -- metrics ---------------------------------------------------------------------------------
class SigmaBuckets:
    """Running loss and denoising MSE per sigma bucket.

    ``mse_ratio`` divides the network's error by that of the trivial denoiser D = c_skip x
    (the best denoiser for i.i.d. data of std sigma_data, i.e. F = 0): its error is c_out^2, so
    a ratio below 1 means the network knows more about x0 than its variance.
    """

    def __init__(self, edges=SIGMA_EDGES, sigma_data: float = 0.5):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.sigma_data = sigma_data
        self.names = [f"{lo:g}-{hi:g}" for lo, hi in zip((0.0, *edges), (*edges, math.inf))]
        self.reset()

    def reset(self) -> None:
        n = len(self.names)
        self.loss, self.mse, self.ratio, self.count = (np.zeros(n) for _ in range(4))

    def add(self, sigma: torch.Tensor, loss: torch.Tensor, mse: torch.Tensor) -> None:
        sigma, loss, mse = (t.detach().double().cpu().numpy() for t in (sigma, loss, mse))
        trivial = preconditioning(torch.from_numpy(sigma), self.sigma_data)[1].numpy() ** 2
        idx = np.searchsorted(self.edges, sigma)
        np.add.at(self.loss, idx, loss)
        np.add.at(self.mse, idx, mse)
        np.add.at(self.ratio, idx, mse / trivial)
        np.add.at(self.count, idx, 1)

    def metrics(self) -> dict[str, float]:
        out = {}
        for i, name in enumerate(self.names):
            if self.count[i]:
                c = self.count[i]
                out[f"loss_sigma/{name}"] = self.loss[i] / c
                out[f"mse_sigma/{name}"] = self.mse[i] / c
                out[f"mse_ratio_sigma/{name}"] = self.ratio[i] / c
        return out


# -- the trainer -----------------------------------------------------------------------------
def _full(t: torch.Tensor) -> torch.Tensor:
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
        if world_size > 1 and self.tc.strategy == "fsdp":
            # FSDP2: shard each block, then the root; bf16 compute with fp32 reductions on GPU.
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.device.type == "cuda" else MixedPrecisionPolicy()
            for block in [*self.denoiser.net.joint, *self.denoiser.net.single]:
                fully_shard(block, mp_policy=mp)
            fully_shard(self.denoiser, mp_policy=mp)
            # The EMA must shadow the sharded parameters (DTensors), so rebuild it after sharding.
            self.ema = EMA(self.denoiser, self.tc.ema_std)
            return self.denoiser
        return prepare(self.denoiser) if prepare is not None else self.denoiser

    def lr_at(self, step: int) -> float:
        warm = self.tc.warmup_steps
        return self.tc.lr * min(1.0, step / warm) if warm else self.tc.lr

    def train_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> tuple[dict[str, float], object]:
        """One AdamW step on a batch from :func:`batch_stream`; returns (scalars, LossOutput)."""
        self.model.train()
        self.step += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        y = self.normalizer.normalize(batch["x0"].to(self.device))
        text = TextEmbedding(batch["text"].to(self.device).float(), batch["text_mask"].to(self.device).bool(),
                             batch["pooled"].to(self.device).float())
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
        return {"loss": float(out.loss.detach()), "grad_norm": float(_full(grad_norm.detach())), "ema_beta": beta,
                "lr": self.lr_at(self.step), "text_dropped": float(drop.float().mean())}, out

    # -- checkpoints -------------------------------------------------------------------------
    def gather(self) -> tuple[dict, dict, dict]:
        """(EMA weights, raw weights + optimiser tensors, JSON state); every rank must call it under FSDP."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        ema = {k: _full(v) for k, v in self.ema.state_dict().items()}
        raw = {f"raw/{k}": _full(v) for k, v in self.denoiser.state_dict().items()}
        osd = get_optimizer_state_dict(self.denoiser, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        tensors, scalars = {}, {}
        # full_state_dict + cpu_offload: only rank 0 receives the optimiser state; the others get {}.
        for fqn, st in osd.get("state", {}).items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim/{fqn}/{k}"] = _full(v)
                else:
                    scalars[f"{fqn}/{k}"] = v
        meta = {"step": self.step, "ema_updates": self.ema.num_updates, "optim_groups": osd.get("param_groups", []), "optim_scalars": scalars}
        return ema, {**raw, **tensors}, meta

    def checkpoint_meta(self, frames: int, text_encoder: dict) -> dict:
        return {**self.normalizer.to_meta(), "text_encoder": text_encoder, "frames": int(frames), "step": self.step,
                "text_dims": list(self.text_dims)}

    def restore(self, directory: str | Path) -> int:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

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
            from torch.distributed.tensor import distribute_tensor

            ema = {k: distribute_tensor(v.to(own[k].device), own[k].device_mesh, own[k].placements) for k, v in ema.items()}
        self.ema.load_state_dict(ema, meta["ema_updates"])
        self.step = int(meta["step"])
        return self.step


def save_dit_checkpoint(directory: str | Path, gathered: tuple[dict, dict, dict], config: dict, meta: dict) -> Path:
    ema, state, state_meta = gathered
    return save_checkpoint(directory, ema, kind=CHECKPOINT_KIND, config=config, meta=meta, state=state, state_meta=state_meta)


# -- held-out denoising error --------------------------------------------------------------------
HELD_OUT_SIGMAS = (0.02, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)  # at least one per SigmaBuckets bucket


@torch.no_grad()
def held_out_sigma_report(model: torch.nn.Module, normalizer: LatentNormalizer, x0_path: str, captions_path: str, *,
                          sigma_data: float = 0.5, sigmas=HELD_OUT_SIGMAS, max_clips: int = 64, batch: int = 8,
                          seed: int = 0) -> dict[str, float]:
    """Denoising MSE of the EMA model on valid clips at fixed sigmas, against the trivial denoiser.

    Same clips, same seeded noise for both: ``ratio = E|D(y + s n) - y|^2 / E|c_skip(s) (y + s n) - y|^2``.
    The trivial error is measured on these clips, not taken as c_out^2, so a ratio below 1 is a
    real gain on unseen data even when its variance is not exactly sigma_data^2. Captions are given
    (no dropout). Returns ``valid_mse_ratio/sigma_<s>`` and ``valid_mse/sigma_<s>`` per sigma.
    """
    rows = split_rows(x0_path, "valid")
    if rows.size == 0:
        return {}
    rows = rows[:max_clips]
    model.eval()
    device = next(model.parameters()).device
    data = LatentCaptionDataset(x0_path, captions_path, rows)
    net_err = np.zeros(len(sigmas))
    triv_err = np.zeros(len(sigmas))
    g = torch.Generator().manual_seed(seed)
    for start in range(0, len(rows), batch):
        b = _collate(data.__getitems__(list(range(start, min(start + batch, len(rows))))))
        y = normalizer.normalize(b["x0"].to(device)).float()
        text = TextEmbedding(b["text"].to(device).float(), b["text_mask"].to(device).bool(), b["pooled"].to(device).float())
        for i, s in enumerate(sigmas):
            noise = torch.randn(y.shape, generator=g).to(device)
            sigma = torch.full((y.shape[0],), float(s), device=device)
            x = y + noise * s
            c_skip = preconditioning(sigma, sigma_data)[0].view(-1, 1, 1)
            net_err[i] += float(((model(x, sigma, text=text).float() - y) ** 2).sum())
            triv_err[i] += float(((c_skip * x - y) ** 2).sum())
    n = len(rows) * int(np.prod(y.shape[1:]))
    out = {}
    for i, s in enumerate(sigmas):
        out[f"valid_mse/sigma_{s:g}"] = net_err[i] / n
        out[f"valid_mse_ratio/sigma_{s:g}"] = net_err[i] / max(triv_err[i], 1e-12)
    return out


# -- generated examples ------------------------------------------------------------------------
def write_generated_examples(weights: dict, trainer: DiTTrainer, text: TextEmbedding, captions: list[str], frames: int,
                             folder: Path, audioae=None, steps: int = 32, seed: int = 0) -> list[Path]:
    """Sample with the EMA weights; write audio (when an AudioAE is given) and spectrogram PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spresso.diffusion.generate import generate_latents

    model = build_denoiser(trainer.cfg, *trainer.text_dims)
    model.load_state_dict(weights, strict=True)
    model.to(trainer.device).eval()
    sc = trainer.cfg.sampler
    x0 = generate_latents(model, text, trainer.normalizer, frames, steps=steps, sigma_min=sc.sigma_min, sigma_max=sc.sigma_max,
                          rho=sc.rho, guidance=sc.guidance, seed=seed, device=trainer.device, autocast=trainer.autocast)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    waves = None
    if audioae is not None:
        from spresso.audio.io import write_audio

        with torch.no_grad():
            waves = audioae.decode(x0.to(next(audioae.parameters()).device)).float().cpu()
        for i, wave in enumerate(waves):
            path = folder / f"sample{i}.flac"
            write_audio(path, wave.numpy().clip(-1, 1), audioae.sample_rate)
            written.append(path)
    for i, caption in enumerate(captions):
        fig, ax = plt.subplots(figsize=(8, 3))
        if waves is not None:
            spec = torch.stft(waves[i], 2048, 512, window=torch.hann_window(2048), return_complex=True).abs()
            ax.imshow((spec + 1e-5).log10().numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-5, vmax=1)
            ax.set_ylabel("STFT bin (2048)")
        else:
            ax.imshow(x0[i].cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_ylabel("x0 channel")
        ax.set_title(caption[:80])
        fig.tight_layout()
        path = folder / f"sample{i}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    written.append(folder / "captions.txt")
    return written


def _example_captions(captions_path: str, x0_path: str, n: int) -> tuple[TextEmbedding, list[str]]:
    from spresso.data.zarr_cache import ClipCache

    rows = split_rows(x0_path, "valid")
    if rows.size == 0:
        rows = split_rows(x0_path, "train")
    rows = rows[:n]
    cache = ClipCache.open(captions_path, mode="r")
    emb = TextEmbedding(torch.from_numpy(cache.read("text", rows)).float(), torch.from_numpy(cache.read("text_mask", rows)),
                        torch.from_numpy(cache.read("pooled", rows)).float())
    return emb, [str(c) for c in cache.read("caption", rows)]


# -- the Ray Train loop ------------------------------------------------------------------------
def train_loop(loop_config: dict) -> None:
    """``train_loop_per_worker``: resume, train ``dit.train.steps`` steps, log, sample, checkpoint."""
    from tqdm import tqdm

    from spresso.config import config_from_dict
    from spresso.data.zarr_cache import ClipCache
    from spresso.train.harness import TrainContext

    ctx = TrainContext(loop_config)
    cfg: SpressoConfig = config_from_dict(loop_config["cfg"], "checkpointed config")
    dc, tc = cfg.dit, cfg.dit.train
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    torch.manual_seed(tc.seed + ctx.rank)
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
    stream, generator = resumed_stream(LatentCaptionDataset(x0_path, captions_path, train_rows(x0_path)), tc.batch_size,
                                       ctx, tc, start)
    audioae = None
    examples = None
    if ctx.is_main and tc.num_samples:
        examples = _example_captions(captions_path, x0_path, tc.num_samples)
        ae_dir = loop_config.get("audioae_dir")
        if ae_dir and Path(ae_dir).is_dir():
            from spresso.models.audioae import load_audioae

            audioae = load_audioae(ae_dir, map_location=ctx.device)
    config_dict, meta = loop_config["cfg"], trainer.checkpoint_meta(frames, text_info)

    buckets = SigmaBuckets(sigma_data=dc.diffusion.sigma_data)
    sums: dict[str, float] = {}
    count, t0 = 0, time.time()
    bar = tqdm(total=tc.steps, initial=start, desc="dit", disable=not ctx.is_main, mininterval=10)
    for step in range(start + 1, tc.steps + 1):
        scalars, out = trainer.train_step(next(stream), generator)
        buckets.add(out.sigma, out.per_sample, out.mse)
        for k, v in scalars.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        bar.update(1)
        last = step == tc.steps
        if step % tc.log_every == 0 or last:
            elapsed = max(time.time() - t0, 1e-9)
            metrics = {k: v / count for k, v in sums.items()}
            metrics.update(buckets.metrics())
            metrics["samples_per_second"] = count * tc.batch_size * ctx.world_size / elapsed
            ctx.log_metrics(metrics, step)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            sums, count, t0 = {}, 0, time.time()
            buckets.reset()
        want_samples = examples is not None or ctx.world_size > 1
        if tc.num_samples and (step % tc.sample_every == 0 or last) and want_samples:
            weights = {k: _full(v) for k, v in trainer.ema.state_dict().items()}  # collective under FSDP
            if ctx.is_main:
                with tempfile.TemporaryDirectory() as tmp:
                    files = write_generated_examples(weights, trainer, examples[0], examples[1], frames, Path(tmp),
                                                     audioae=audioae, steps=tc.sample_steps, seed=tc.seed)
                    for f in files:
                        ctx.log_artifact(f, f"examples/step-{step:07d}")
        if last:  # the held-out report, once, on the final EMA weights
            weights = {k: _full(v) for k, v in trainer.ema.state_dict().items()}  # collective under FSDP
            if ctx.is_main:
                model = build_denoiser(dc, *trainer.text_dims)
                model.load_state_dict(weights, strict=True)
                report = held_out_sigma_report(model.to(ctx.device), normalizer, x0_path, captions_path,
                                               sigma_data=dc.diffusion.sigma_data, seed=tc.seed)
                ctx.log_metrics(report, step)
                log.info("held-out denoising MSE / trivial denoiser's: %s", ", ".join(
                    f"{k.split('_')[-1]}: {v:.3f}" for k, v in report.items() if k.startswith("valid_mse_ratio")))
        if step % tc.checkpoint_every == 0 or last:
            gathered = trainer.gather()
            meta["step"] = step
            ctx.report({"loss": scalars["loss"]}, step, save=lambda d: save_dit_checkpoint(d, gathered, config_dict, meta))
    bar.close()


# -- the stage driver --------------------------------------------------------------------------


def stage_key(cfg: SpressoConfig, x0_identity: dict, text_identity: dict) -> str:
    """What determines the trained DiT: its settings and the data (not scaling/logging knobs)."""
    from spresso.core.digest import digest_json

    dc = cfg.dit
    train = dc.train.model_dump(mode="json", exclude={"num_workers", "use_gpu", "cpus_per_worker", "max_failures", "strategy",
                                                     "loader_workers", "log_every", "checkpoint_every", "sample_every",
                                                     "num_samples", "sample_steps"})
    return digest_json({"model": dc.model.model_dump(mode="json"), "diffusion": dc.diffusion.model_dump(mode="json"),
                        "train": train, "x0": x0_identity, "text": text_identity})


def train_dit(cfg: SpressoConfig, *, parent_run_id: str | None = None, force: bool = False, encoder=None,
              progress: bool = True) -> Path:
    """Train the DiT stage (or reuse an identical finished one); return ``<checkpoint_dir>/final``.

    Builds the caption cache first when it is missing or stale (``encoder`` overrides the
    configured text encoder, e.g. in tests).
    """
    from spresso.core.digest import digest_json, digest_tree
    from spresso.data.captions import build_caption_cache
    from spresso.data.zarr_cache import ClipCache
    from spresso.runtime import find_finished_run, init_ray, stage_run, tracking_uri
    from spresso.runtime.tracking import ensure_experiment
    from spresso.train.harness import TrainJob, copy_checkpoint, fit, resumable_run_id

    dc, tc = cfg.dit, cfg.dit.train
    if "://" in cfg.workdir:
        raise SpressoError("train dit writes its final checkpoint locally: use a local workdir")
    x0_path = _abs(cfg.path(cfg.audioae.latents_path))
    if not ClipCache.exists(x0_path):
        raise SpressoError(f"no x0 cache at {x0_path}: run `spresso latents` first")
    x0 = ClipCache.open(x0_path, mode="r")
    if not x0.complete or "x0_mean" not in x0.attrs:
        raise SpressoError(f"x0 cache {x0_path} is unfinished (no x0_mean/x0_std): rerun `spresso latents`")
    captions = build_caption_cache(cfg, encoder, progress=progress)
    x0_identity = {k: x0.attrs.get(k) for k in ("audioae_digest", "shards_digest", "x0_mean", "x0_std")}
    text_identity = captions.attrs
    key = stage_key(cfg, x0_identity, text_identity)
    final = Path(_abs(cfg.path(dc.checkpoint_dir))) / "final"
    uri = tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri)
    if not force and final.is_dir():
        prev = find_finished_run(uri, ensure_experiment(uri, cfg.runtime.experiment, cfg.workdir), STAGE, key)
        if prev is not None and prev.data.tags.get("spresso.output.checkpoint.digest") == digest_tree(final):
            log.info("train_dit: reusing run %s (inputs and config unchanged)", prev.info.run_id)
            return final
    init_ray(cfg.runtime)
    storage = _abs(cfg.path("ray_train"))
    name = f"dit-{key[:16]}"
    audioae_dir = _abs(cfg.path(cfg.audioae.checkpoint_dir)) + "/final"
    job = TrainJob(
        name=name, loop=train_loop, storage_path=storage, num_workers=tc.num_workers, use_gpu=tc.use_gpu,
        cpus_per_worker=tc.cpus_per_worker, max_failures=tc.max_failures,
        loop_config={"cfg": cfg.to_dict(), "x0_path": x0_path, "captions_path": _abs(captions.path),
                     "audioae_dir": audioae_dir, "threads": max(1, int(tc.cpus_per_worker))},
    )
    upstream = {"train_audioae": x0.attrs["audioae_run_id"]} if x0.attrs.get("audioae_run_id") else {}
    with stage_run(STAGE, cfg, key=key, parent_run_id=parent_run_id, upstream=upstream or None,
                   resume_run_id=resumable_run_id(storage, name, uri)) as run:
        run.log_input("x0_cache", x0_path, digest_json(x0_identity))
        run.log_input("captions", _abs(captions.path), digest_json(text_identity))
        result = fit(job, run)
        final = copy_checkpoint(result, final)
        # The deliverable is the EMA model; the raw weights and optimiser stay in Ray's storage.
        for extra in (STATE_FILE, STATE_META_FILE):
            (final / extra).unlink(missing_ok=True)
        run.log_output("checkpoint", str(final), digest_tree(final))
    return final
