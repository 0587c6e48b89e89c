"""Ablation of QINCo2's training recipe: our choices against the paper's, one setting at a time.

Every row trains the same QINCo2 (same k-means codebooks, same network seed) on the same vectors
for the same number of steps, with one setting of :class:`spresso.quant.training.TrainSettings` /
the model switched to the paper's choice, and prints the held-out relative MSE (MSE / variance)
of a truncated encode at every m. Row ``init`` is the k-means start (greedy residual quantization).

Vectors: log-mel frames of the dev corpus reduced by PCA (as benchmarks/qinco2.py; every 10th file
held out), or ``--synthetic`` (a random mix of Laplace sources, not collapsed).

    nice .venv/bin/python benchmarks/qinco2_recipe.py --steps 40
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import faiss
import numpy as np
import torch

from spresso.quant import QINCo2, QINCo2Spec, init_networks, residual_kmeans_init
from spresso.quant.features import audio_feature_vectors, audio_files
from spresso.quant.training import (
    ResidualStats,
    TrainSettings,
    make_optimizer,
    relative_mse,
    reseed_unused,
    scaled_lr,
    train_step,
)

# name -> (model overrides, settings overrides, lr scaling rule)
ROWS: dict[str, tuple[dict, dict, str]] = {
    "ours": ({}, {}, "none"),
    "clip=value": ({}, {"clip_mode": "value"}, "none"),
    "concat bias": ({"concat_bias": True}, {}, "none"),
    "init=concat_down": ({"init": "concat_down"}, {}, "none"),
    "concat bias+concat_down": ({"concat_bias": True, "init": "concat_down"}, {}, "none"),
    "schedule=epochs": ({}, {"schedule": "epochs"}, "none"),
    "reseed=running_stats": ({}, {"reseed": "running_stats"}, "none"),
    "lr x sqrt(batch)": ({}, {}, "sqrt"),
    "lr x batch": ({}, {}, "linear"),
    "paper (all)": ({"concat_bias": True, "init": "concat_down"},
                    {"clip_mode": "value", "schedule": "epochs", "reseed": "running_stats"}, "linear"),
}


def vectors(args) -> tuple[np.ndarray, np.ndarray]:
    if args.synthetic:
        rng = np.random.default_rng(0)
        mix = rng.normal(size=(args.d, args.d)) * np.linspace(2.0, 0.2, args.d)[None, :]
        x = (rng.laplace(size=(args.train + args.heldout, args.d)) @ mix.T).astype(np.float32)
        return x[: args.train], x[args.train:]
    files = audio_files(args.data)
    train, basis = audio_feature_vectors([f for i, f in enumerate(files) if i % 10], d=args.d, return_basis=True)
    held = audio_feature_vectors([f for i, f in enumerate(files) if i % 10 == 0], d=args.d, basis=basis)
    rng = np.random.default_rng(0)
    return train[rng.permutation(len(train))[: args.train]], held[rng.permutation(len(held))[: args.heldout]]


def evaluate(model: QINCo2, x: np.ndarray, beam: int, candidates: int) -> list[float]:
    model.eval()
    xt = torch.from_numpy(x)
    return [relative_mse(x, model.decode(model.encode(xt, m, beam=beam, candidates=candidates)).numpy())
            for m in range(1, model.M + 1)]


def train_row(base: QINCo2, model_kw: dict, settings_kw: dict, lr_rule: str, x: np.ndarray, args) -> QINCo2:
    torch.manual_seed(0)
    spec = replace(base.spec, concat_bias=model_kw.get("concat_bias", False))
    model = init_networks(QINCo2(spec), model_kw.get("init", "out_proj"))
    books = {k: v for k, v in base.state_dict().items() if "codebook" in k or "preselect" in k or k.startswith("norm.")}
    model.load_state_dict(books, strict=False)
    steps_per_epoch = len(x) // args.batch
    s = TrainSettings(lr=scaled_lr(args.lr, args.batch, args.reference_batch, lr_rule), total_steps=args.steps,
                      warmup_steps=max(1, args.steps // 10), steps_per_epoch=steps_per_epoch,
                      warmup_epochs=args.warmup_epochs, beam=args.train_beam, candidates=args.train_candidates,
                      **settings_kw)
    opt, sched = make_optimizer(model, s)
    stats = ResidualStats(model.M, spec.d) if s.reseed == "running_stats" else None
    xn = model.norm(torch.from_numpy(x))
    gen = torch.Generator().manual_seed(1)
    step = 0
    while step < args.steps:
        usage = torch.zeros(model.M, spec.K)
        order = torch.randperm(len(xn), generator=gen)
        for i in range(steps_per_epoch):
            batch = xn[order[i * args.batch:(i + 1) * args.batch]]
            _, codes = train_step(model, opt, sched, batch, s, usage=usage, stats=stats)
            step += 1
            if step >= args.steps:
                break
        reseed_unused(model, opt, usage, batch, codes, generator=torch.Generator().manual_seed(step), stats=stats)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/sfx-dev")
    ap.add_argument("--synthetic", action="store_true", help="synthetic vectors instead of log-mel PCA")
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--M", type=int, default=6)
    ap.add_argument("--L", type=int, default=2)
    ap.add_argument("--de", type=int, default=64)
    ap.add_argument("--dh", type=int, default=128)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--heldout", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=8e-4, help="base lr, tuned by the paper for batch 1024")
    ap.add_argument("--reference-batch", type=int, default=1024,
                    help="batch the base lr is taken to be tuned for (the lr rows scale it by --batch over this)")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--train-beam", type=int, default=4)
    ap.add_argument("--train-candidates", type=int, default=4)
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    x, held = vectors(args)
    print(f"vectors: {len(x)} train / {len(held)} held-out, d={args.d}; K={args.K} M={args.M} L={args.L} "
          f"de={args.de} dh={args.dh}; {args.steps} steps of {args.batch} (train beam {args.train_beam}/"
          f"{args.train_candidates}, eval beam {args.beam}/{args.candidates}), {args.threads} threads")
    torch.manual_seed(0)
    base = QINCo2(QINCo2Spec(d=args.d, K=args.K, M=args.M, L=args.L, de=args.de, dh=args.dh))
    base.norm.fit(x)
    residual_kmeans_init(base, base.norm(torch.from_numpy(x)).numpy(), niter=20)
    results = {"init": evaluate(base, held, args.beam, args.candidates)}
    seconds = {"init": 0.0}
    for name in args.rows.split(","):
        t0 = time.time()
        model = train_row(base, *ROWS[name], x, args)
        results[name] = evaluate(model, held, args.beam, args.candidates)
        seconds[name] = time.time() - t0
        print(f"  {name}: {seconds[name]:.0f}s, m={args.M} {results[name][-1]:.4f}", flush=True)

    ms = range(1, args.M + 1)
    print("\n| setting | " + " | ".join(f"m={m}" for m in ms) + " | mean ratio to ours | s |")
    print("|---|" + "---:|" * (args.M + 2))
    ours = np.array(results.get("ours", results["init"]))
    for name, row in results.items():
        ratio = float(np.mean(np.array(row) / ours))
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + f" | {ratio:.3f} | {seconds[name]:.0f} |")


if __name__ == "__main__":
    main()
