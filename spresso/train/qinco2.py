"""Stage 2: train QINCo2 on frozen vector frames (z) with Ray Train, against faiss RQ; quantize caches.

The stage (:data:`TRAIN_QINCO2`, run by :func:`spresso.train.driver.run_training`) records the
vectors it reads (lineage) in its MLflow run and runs :func:`train_loop` under Ray Train (one GPU
worker by default, as ``qinco2.scaling`` says: the cluster provides it; ``scaling.workers=0`` in-process).
The loop: normalisation statistics and residual k-means init from a sample, then epochs of
streamed batches (beam encode without gradients, re-decode with gradients), dead codewords
re-seeded each epoch, validation every ``valid_every`` steps keeping the best weights. At the
end the best model is evaluated at every m (truncated encodes) on the held-out rows (valid +
test), together with a faiss-trained RQ on the same training vectors, K, M and beam
(:mod:`spresso.train.quant_report`: absolute relative MSEs, a table artifact, a loud warning and
tags where QINCo2 loses), and ``qinco2.ship`` decides which of the two is published.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spresso.config import QINCo2Config, SpressoConfig, config_from_dict
from spresso.core import storage
from spresso.core.checkpoint import (
    load_optimizer,
    load_state,
    load_strict,
    load_weights,
    optimizer_tensors,
)
from spresso.core.digest import digest_json, digest_tree
from spresso.core.errors import SpressoError
from spresso.data.vectors import VectorSource
from spresso.data.zarr_cache import ClipCache
from spresso.quant import (
    FaissRQ,
    QINCo2,
    QINCo2Spec,
    init_networks,
    load_quantizer,
    quantizer_kind,
    residual_kmeans_init,
    save_qinco2,
    save_rq,
)
from spresso.quant.beam import encode_normalized
from spresso.quant.training import (
    ResidualStats,
    TrainSettings,
    make_optimizer,
    relative_mse,
    reseed_unused,
    scaled_lr,
    train_step,
    usage_entropy,
)
from spresso.runtime.tracking import StageRun
from spresso.train.driver import LoggedInput, StageInputs, TrainingStage, run_training
from spresso.train.feed import vector_batches, vector_feeds
from spresso.train.harness import TrainContext, copy_checkpoint
from spresso.train.quant_report import (
    COMPARISON_FILE,
    SHIP_FILE,
    QuantizerComparison,
    ship_record,
    ship_tags,
)

log = logging.getLogger(__name__)
STAGE = "qinco2"


def build_spec(q: QINCo2Config, d: int) -> QINCo2Spec:
    if q.d is not None and q.d != d:
        raise SpressoError(f"the vectors have {d} dims but qinco2.d is {q.d} (set qinco2.d={d} or null)")
    return QINCo2Spec.from_preset(q.preset, d=d, K=q.K, M=q.M, L=q.L, de=q.de, dh=q.dh, A=q.candidates, B=q.beam,
                                  concat_bias=q.concat_bias)


def epoch_steps(q: QINCo2Config, n_train: int, world_size: int) -> tuple[int, int]:
    """(steps per epoch, total steps): ``epochs`` passes of ``batch_size`` per worker, capped by ``max_steps``."""
    per_epoch = n_train // (q.batch_size * world_size)
    total = q.epochs * per_epoch
    return per_epoch, total if q.max_steps is None else min(q.max_steps, total)


def settings(q: QINCo2Config, total_steps: int, steps_per_epoch: int = 1, world_size: int = 1) -> TrainSettings:
    return TrainSettings(lr=scaled_lr(q.lr, q.batch_size * world_size, q.lr_reference_batch, q.lr_batch_scaling),
                         weight_decay=q.weight_decay, grad_clip=q.grad_clip, clip_mode=q.grad_clip_mode,
                         warmup_steps=min(q.warmup_steps, max(0, total_steps // 5)), total_steps=total_steps,
                         schedule=q.schedule, warmup_epochs=q.warmup_epochs, steps_per_epoch=steps_per_epoch,
                         reseed=q.reseed_from, beam=q.train_beam or q.beam, candidates=q.train_candidates or q.candidates)


@torch.no_grad()
def evaluate_prefixes(model: QINCo2, x: np.ndarray, beam: int, candidates: int) -> tuple[list[float], np.ndarray]:
    """Relative MSE of every prefix of one full-length encoding (cheap; used during training)."""
    xt = torch.from_numpy(x).to(model.codebook0.device)
    codes = encode_normalized(model, model.norm(xt), model.M, beam=beam, candidates=candidates)
    partials = model.decode_normalized(codes, partials=True)
    return [relative_mse(x, model.norm.inverse(p).cpu().numpy()) for p in partials], codes.cpu().numpy()


@torch.no_grad()
def evaluate_truncated(encode, decode, x: np.ndarray, M: int) -> tuple[dict[int, float], list[float]]:
    """Relative MSE of a truncated encode at every m, and the usage entropy of the full code."""
    mse = {}
    codes = None
    for m in range(1, M + 1):
        codes = np.asarray(encode(x, m))
        mse[m] = relative_mse(x, np.asarray(decode(codes)))
    return mse, codes


def rq_training_vectors(src: VectorSource, train_rows: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """The vectors RQ trains on: every vector of the training rows (what QINCo2 trains on), or ``limit`` of them."""
    return src.read_rows(train_rows) if limit is None else src.sample(train_rows, limit, seed=seed)


@torch.no_grad()
def compare_on_held_out(qinco2: QINCo2, rq, x: np.ndarray, *, candidates: int, rq_train_type: str, train_vectors: int,
                        rq_train_vectors: int) -> tuple[QuantizerComparison, dict]:
    """Both quantizers' relative MSE at every m (truncated encodes, each at its own spec's beam) on held-out
    vectors ``x``, and the usage entropy of both full codes (metrics)."""
    torch_fn = lambda model: (lambda a, m: model.encode(torch.from_numpy(a), m).cpu().numpy(),  # noqa: E731
                              lambda c: model.decode(torch.from_numpy(c)).cpu().numpy())
    q_mse, q_codes = evaluate_truncated(*torch_fn(qinco2), x, qinco2.M)
    r_mse, r_codes = evaluate_truncated(*torch_fn(rq), x, rq.M)
    comparison = QuantizerComparison(qinco2=q_mse, rq=r_mse, K=qinco2.spec.K, beam=qinco2.spec.B, candidates=candidates,
                                     rq_beam=rq.spec.B, rq_train_type=rq_train_type, train_vectors=train_vectors,
                                     rq_train_vectors=rq_train_vectors, held_out_vectors=len(x))
    entropy = {}
    for m, (a, b) in enumerate(zip(usage_entropy(q_codes, qinco2.spec.K), usage_entropy(r_codes, rq.spec.K))):
        entropy[f"entropy_step{m + 1}"] = a
        entropy[f"rq_entropy_step{m + 1}"] = b
    return comparison, entropy


def train_loop(config: dict) -> None:
    """Ray Train loop (every worker runs it): context, model, restore, steps by epochs, final report."""
    ctx = TrainContext(config)
    q: QINCo2Config = config_from_dict(config["cfg"], "checkpointed config").qinco2
    torch.manual_seed(q.seed + ctx.rank)
    src = VectorSource(config["vectors_path"], config["vectors_array"], q.layout)
    train_rows, val_rows = src.split(q.val_fraction, q.seed)
    x_val = src.sample(val_rows, q.max_val_vectors, seed=q.seed + 1)
    n_train = src.count(train_rows)
    steps_per_epoch, total = epoch_steps(q, n_train, ctx.world_size)
    if steps_per_epoch < 1:
        raise SpressoError(f"{src.path}: {n_train} training vectors, fewer than one batch of {q.batch_size} per worker")
    s = settings(q, total, steps_per_epoch, ctx.world_size)

    model = init_networks(QINCo2(build_spec(q, src.d)), q.net_init).to(ctx.device)
    stats = ResidualStats(model.M, src.d, device=ctx.device) if s.reseed == "running_stats" else None
    step, epoch, best = 0, 0, {"val_mse": math.inf, "step": -1}
    best_weights = None
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            load_strict(model, load_weights(ckpt), "qinco2")
            state_t, state = load_state(ckpt)
            step, epoch, best = state["step"], state["epoch"], state["best"]
            if (ckpt / "best").is_dir():
                best_weights = {k: v.clone() for k, v in load_weights(ckpt / "best").items()}
        else:
            state_t, state = {}, {}
            x_init = src.sample(train_rows, q.kmeans_vectors, seed=q.seed)
            model.norm.fit(x_init)
            with torch.no_grad():
                curve = residual_kmeans_init(model, model.norm(torch.from_numpy(x_init).to(ctx.device)).cpu().numpy(),
                                             niter=q.kmeans_iters, seed=q.seed)
            ctx.log_metrics({f"kmeans_init_rel_mse_m{m + 1}": v for m, v in enumerate(curve)}, step=0)
    core = model
    model = ctx.prepare_model(model)
    clock = ctx.make_clock(total)  # a time limit stops the epochs early and runs the cosine on its clock
    opt, sched = make_optimizer(core, s, clock.schedule_step)
    if state_t:
        load_optimizer(opt, state_t, state["optimizer"])
        sched.last_epoch = step
        sched._last_lr = [g["lr"] for g in opt.param_groups]

    def validate() -> dict:
        core.eval()
        curve, codes = evaluate_prefixes(core, x_val, q.beam, q.candidates)
        return {"val_mse": curve[-1], **{f"val_prefix_mse_m{m + 1}": v for m, v in enumerate(curve)}}

    def save(folder: Path, final: bool = False) -> None:
        tensors, meta = optimizer_tensors(opt)
        save_qinco2(folder, core, config=config["cfg"], meta={"step": step, "epoch": epoch, "vectors": config["lineage"]},
                    state=tensors, state_meta={"step": step, "epoch": epoch, "best": best, "optimizer": meta})
        if best_weights is not None:
            tmp = QINCo2(core.spec)
            tmp.load_state_dict(best_weights)
            save_qinco2(folder / "best", tmp, config=config["cfg"],
                        meta={"step": best["step"], "val_mse": best["val_mse"], "vectors": config["lineage"]})

    x_dev = lambda a: core.norm(torch.from_numpy(a).to(ctx.device))  # noqa: E731
    # The Ray Data feed (prefetched, seeded by seed, rank and the resume step), or None: read here, as before.
    feed = vector_batches(config, q.batch_size, seed=q.seed, rank=ctx.rank, world_size=ctx.world_size, start=step,
                          prefetch_batches=q.prefetch_batches)
    clock.start()
    while step < total and not clock.spent():
        usage = torch.zeros(core.M, core.spec.K, device=ctx.device)
        last = None
        batches = itertools.islice(feed, steps_per_epoch) if feed is not None else src.epoch_batches(
            train_rows, q.batch_size, steps_per_epoch, seed=q.seed + epoch, rank=ctx.rank, world_size=ctx.world_size)
        for batch in batches:
            xn = x_dev(batch)
            info, codes = train_step(model, opt, sched, xn, s, autocast=ctx.autocast(), usage=usage, stats=stats)
            last = (xn, codes)
            step += 1
            clock.tick(ctx.device)
            done = step >= total or clock.spent()
            if step % 10 == 0 or step == 1:
                ctx.log_metrics({k: v for k, v in info.items()}, step=step)
                log.info("step %d/%d loss %.4f train_mse %.4f", step, total, info["loss_recon"], info["train_mse"])
            end_of_epoch = step % steps_per_epoch == 0
            if step % q.valid_every == 0 or end_of_epoch or done:
                metrics = {}
                if ctx.is_main:
                    metrics = validate()
                    if metrics["val_mse"] < best["val_mse"]:
                        best = {"val_mse": metrics["val_mse"], "step": step}
                        best_weights = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
                    ctx.log_metrics({**metrics, "best_val_mse": best["val_mse"]}, step=step)
                    log.info("step %d val_mse %.4f (best %.4f at %d)", step, metrics["val_mse"], best["val_mse"], best["step"])
                ctx.report(metrics, step, save=save)
            if end_of_epoch or done:
                break
        epoch += 1
        if last is not None:
            moved = synced_reseed(ctx, core, opt, usage, last, seed=q.seed + epoch, stats=stats)
            ctx.log_metrics({"reseeded_codewords": moved, "epoch": epoch}, step=step)

    if not ctx.is_main:
        ctx.report({}, step + 1)  # a collective under Ray Train: every rank joins rank 0's final report
        return
    # Final evaluation of the best model and of RQ on the held-out rows, RQ trained on QINCo2's training vectors.
    if best_weights is not None:
        core.load_state_dict(best_weights)
    core.eval()
    x_rq = rq_training_vectors(src, train_rows, q.rq_train_vectors, seed=q.seed + 2)
    x_held = src.sample(src.held_out_rows(train_rows, val_rows), q.max_val_vectors, seed=q.seed + 3)
    rq_beam = q.rq_beam or q.beam
    rq = FaissRQ(core.spec.d, core.M, core.spec.K, beam=rq_beam, train_type=config.get("rq_train_type") or q.rq_train_type)
    rq_model = rq.train(x_rq).to_module().to(ctx.device)
    comparison, final = compare_on_held_out(core, rq_model, x_held, candidates=q.candidates, rq_train_type=rq.train_type,
                                            train_vectors=n_train, rq_train_vectors=len(x_rq))
    record = ship_record(comparison, q.ship)
    final.update(comparison.metrics())
    final["quantizer_shipped_rq"] = float(record["shipped"] == "rq")
    ctx.log_metrics(final, step=step)
    if record["note"]:
        log.warning("qinco2: %s", record["note"])
    if ctx.run is not None:
        ctx.run.log_text(json.dumps({"qinco2": comparison.qinco2, "faiss_rq": comparison.rq}, indent=1), "val_mse_per_m.json")
        ctx.run.log_text(comparison.table(record["shipped"]), COMPARISON_FILE)

    def save_with_rq(folder: Path, final: bool = False) -> None:  # the last checkpoint also holds RQ and the choice
        save(folder, final)
        save_rq(folder / "rq", rq_model.cpu(), config=config["cfg"],
                meta={"vectors": config["lineage"], "train_vectors": len(x_rq), "train_type": comparison.rq_train_type})
        (folder / SHIP_FILE).write_text(json.dumps(record, indent=1))

    ctx.report({**final, "best_val_mse": best["val_mse"]}, step + 1, save=save_with_rq)


def synced_reseed(ctx: TrainContext, core: QINCo2, opt, usage: torch.Tensor, last: tuple, seed: int,
                  stats: ResidualStats | None = None) -> int:
    """:func:`reseed_unused` that leaves every DDP replica identical.

    Dead codewords are those no rank used (usage summed over ranks), and every rank moves them onto
    residuals of rank 0's last batch (or draws from rank 0's running residual statistics) with the
    same seeded draw, so parameters and optimiser moments change the same way everywhere (DDP
    never re-syncs parameters after construction).
    """
    xn, codes = last[0].detach().contiguous(), last[1].detach().contiguous()
    with torch.no_grad():
        if ctx.world_size > 1:
            torch.distributed.all_reduce(usage)
            for t in (xn, codes) + ((stats.mean, stats.std) if stats is not None else ()):
                torch.distributed.broadcast(t, src=0)
        return reseed_unused(core, opt, usage, xn, codes, generator=torch.Generator().manual_seed(seed), stats=stats)


def find_inputs(cfg: SpressoConfig, *, vectors: str | None = None, array: str | None = None,
                rq_train_type: str | None = None, upstream: dict | None = None, **_options) -> StageInputs:
    """The vectors (a Zarr array; default ``qinco2.vectors_path``/``vectors_array``), opened here to fail fast."""
    q = cfg.qinco2
    path = vectors or cfg.path(q.vectors_path)
    name = array or q.vectors_array
    src = VectorSource(path, name, q.layout)
    lineage = {"uri": src.uri, "array": name, "shape": list(src.array.shape),
               "attrs": {k: v for k, v in (dict(src.group.attrs) if src.group is not None else {}).items()
                         if k in ("audioae_run_id", "audioae_digest", "shards_digest", "stage1_run_id", "z_digest", "frame_rate")}}
    digest = digest_json({**lineage, "done": int(src.usable.size)})
    upstream = dict(upstream or {})
    if "audioae_run_id" in lineage["attrs"]:
        upstream.setdefault("audioae", lineage["attrs"]["audioae_run_id"])
    return StageInputs(key={"vectors": digest},
                       loop_config={"vectors_path": path, "vectors_array": name, "lineage": {**lineage, "digest": digest},
                                    "rq_train_type": rq_train_type},
                       logged=(LoggedInput("vectors", f"{src.uri}#{name}", digest),), upstream=upstream)


def publish_quantizer(result, final: str, run: StageRun) -> str:
    """The last checkpoint to ``<checkpoint_dir>/last``; to ``final`` the quantizer the run ships
    (``ship.json``): QINCo2's best weights (else the last ones) or the RQ (``last/rq``). Tags the run
    with the choice and, where QINCo2 loses to RQ, says so in a WARNING and the pipeline's note."""
    with tempfile.TemporaryDirectory() as tmp:
        last = copy_checkpoint(result, Path(tmp) / "last")
        record = json.loads((last / SHIP_FILE).read_text()) if (last / SHIP_FILE).is_file() else {"shipped": "qinco2"}
        if record["shipped"] == "rq":
            shipped = last / "rq"
        else:
            shipped = last / "best" if (last / "best").is_dir() else last
        storage.replace_tree(last, storage.join(storage.parent(final), "last"))
        storage.replace_tree(shipped, final)
        for f in ("model.safetensors", "config.json"):
            run.log_artifact(shipped / f, "checkpoint")
        if "loss_tag" in record:
            run.set_tags(ship_tags(record))
            if record["note"]:
                log.warning("qinco2: %s", record["note"])
        return digest_tree(shipped)


TRAIN_QINCO2 = TrainingStage(
    name=STAGE,
    section=lambda cfg: cfg.qinco2,
    loop=train_loop,
    find_inputs=find_inputs,
    key_config=lambda cfg: {},
    output=lambda cfg: storage.join(storage.absolute(cfg.path(cfg.qinco2.checkpoint_dir)), "final"),
    job_name=lambda cfg: "qinco2",
    publish=publish_quantizer,
    reuse=False,  # every call trains (and compares against faiss RQ anew)
    feeds=vector_feeds,
    budget_share="qinco2",
)


def train_qinco2(cfg: SpressoConfig, vectors: str | None = None, array: str | None = None,
                 rq_train_type: str | None = None, upstream: dict | None = None, *,
                 parent_run_id: str | None = None) -> dict:
    """Train the quantizer on a Zarr array of vectors; returns the final checkpoint, its run and the final metrics."""
    out = run_training(TRAIN_QINCO2, cfg, parent_run_id=parent_run_id, vectors=vectors, array=array,
                       rq_train_type=rq_train_type, upstream=upstream)
    return {"checkpoint": str(out.final), "run_id": out.run_id, "metrics": out.metrics}


def codes_array(m: int) -> str:
    """Name of the array of m-codebook codes in a :func:`quantize_cache` output."""
    return f"codes_m{m}"


def quantize_cache(checkpoint: str, input_path: str, output_path: str, array: str = "z", layout: str = "NCT",
                   chunk_rows: int | None = None, beam: int | None = None, device: str | None = None,
                   ms: list[int] | None = None) -> str:
    """Per-m codes of every row of a vector cache, written block by block (resumable).

    Array ``codes_m<m>`` (:func:`codes_array`) is uint16 [N, T', m], the truncated encode with m
    codebooks, for each m in ``ms`` (default 1..M; attr ``ms``). A prefix of a longer code is not a
    truncated encode (a beam keeps paths whose first steps are not the best short code), so the
    cache stores each operating m's own code; all of them come from one M-step beam search
    (``encode_all``: one beam search for QINCo2, one search per m for RQ).
    """
    if layout == "NC":
        raise SpressoError("quantize writes per-clip codes [N, T', m]: the input layout must be NCT or NTC")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_quantizer(checkpoint, device)  # the shipped quantizer: QINCo2 or RQ
    ms = sorted(set(ms or range(1, model.M + 1)))
    if ms[0] < 1 or ms[-1] > model.M:
        raise SpressoError(f"codebook counts {ms} must lie in [1, {model.M}] (the quantizer's M)")
    src = VectorSource(input_path, array, layout)
    if src.d != model.spec.d:
        raise SpressoError(f"{input_path}/{array} has {src.d}-dim vectors, the quantizer expects {model.spec.d}")
    keys = [str(k) for k in np.asarray(src.group["keys"][:])] if src.group is not None and "keys" in src.group else [str(i) for i in range(src.n_rows)]
    rows_per_block = chunk_rows or 64
    attrs = {"qinco2_checkpoint_digest": digest_tree(checkpoint), "source": src.uri, "source_array": array,
             "K": model.spec.K, "M": model.spec.M, "ms": ms, "kind": quantizer_kind(checkpoint)}
    out = ClipCache.create(output_path, keys, {codes_array(m): ((src.frames, m), np.uint16) for m in ms}, rows_per_block, attrs)
    for start, stop in tqdm(out.missing_blocks(), desc="quantize", unit="block"):
        block = np.asarray(src.array[start:stop], np.float32)
        frames = block.transpose(0, 2, 1) if layout == "NCT" else block  # [n, T, d]
        per_m = model.encode_all(torch.from_numpy(frames).to(device), ms[-1], beam=beam)
        out.write_block(start, stop, **{codes_array(m): per_m[m - 1].cpu().numpy().astype(np.uint16) for m in ms})
    return output_path
