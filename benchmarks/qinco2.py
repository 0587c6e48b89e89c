"""QINCo2 vs faiss ResidualQuantizer at equal bits, on the same held-out real-audio vectors.

Vectors: log-mel frames (80 mels, 48 kHz, hop 480) of the real dev corpus, PCA-projected to d=64
dims (fitted on the training files); every 10th file is held out. They stand in for z frames
until stage 1 writes the z cache. Prints relative MSE (MSE / data variance) of both at every m
(truncated encodes), and encode/decode vectors per second on CPU (and GPU when present).

    nice .venv/bin/python benchmarks/qinco2.py --minutes 8
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch
from timing import timed  # benchmarks/timing.py (this script's folder is on sys.path)

from spresso.core.rates import bits_per_frame
from spresso.quant import FaissRQ, QINCo2, QINCo2Spec, residual_kmeans_init
from spresso.quant.features import audio_feature_vectors, audio_files
from spresso.quant.training import (
    TrainSettings,
    make_optimizer,
    relative_mse,
    reseed_unused,
    train_step,
)


def rate(fn, n: int, device: str = "cpu") -> float:
    """Items per second of ``fn`` (``n`` items per call), after a warm-up call, synchronised on CUDA."""
    return n / timed(fn, iters=1, warmup=1, device=device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/sfx-dev")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--M", type=int, default=8)
    ap.add_argument("--preset", default="S")
    ap.add_argument("--minutes", type=float, default=8.0, help="QINCo2 training budget")
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--train-beam", type=int, default=4)
    ap.add_argument("--train-candidates", type=int, default=4)
    ap.add_argument("--beam", type=int, default=8, help="encoding beam for the MSE table (paper: 32)")
    ap.add_argument("--candidates", type=int, default=8, help="pre-selected candidates (paper: 16)")
    ap.add_argument("--rq-beam", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=2000)
    ap.add_argument("--rq-train", type=int, default=30000, help="training vectors for faiss RQ (it is slow to train)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    torch.manual_seed(0)

    files = audio_files(args.data)
    train_x, basis = audio_feature_vectors([f for i, f in enumerate(files) if i % 10], d=args.d, return_basis=True)
    held = audio_feature_vectors([f for i, f in enumerate(files) if i % 10 == 0], d=args.d, basis=basis)
    held = held[np.random.default_rng(0).permutation(len(held))[: args.heldout]]
    print(f"vectors: {len(train_x)} train / {len(held)} held-out, d={args.d}; K={args.K}, M={args.M} "
          f"({bits_per_frame(args.M, args.K):.0f} bits/vector)")

    t0 = time.time()
    rq = FaissRQ(args.d, args.M, args.K, beam=args.rq_beam, train_type="default").train(
        train_x[np.random.default_rng(1).permutation(len(train_x))[: args.rq_train]])
    print(f"faiss RQ (beam {args.rq_beam}, {min(args.rq_train, len(train_x))} vectors) trained in {time.time() - t0:.0f}s")

    spec = QINCo2Spec.from_preset(args.preset, d=args.d, K=args.K, M=args.M, A=args.candidates, B=args.beam)
    model = QINCo2(spec)
    model.norm.fit(train_x)
    xn_all = model.norm(torch.from_numpy(train_x))
    residual_kmeans_init(model, xn_all.numpy(), niter=20)
    budget = args.minutes * 60
    steps_per_epoch = max(1, len(train_x) // args.batch)
    est_total = 10 ** 9  # set after timing the first steps
    s = TrainSettings(beam=args.train_beam, candidates=args.train_candidates, warmup_steps=10, total_steps=est_total)
    opt, sched = make_optimizer(model, s)
    rng = np.random.default_rng(0)
    step, t0 = 0, time.time()
    while time.time() - t0 < budget:
        usage = torch.zeros(args.M, args.K)
        for idx in np.array_split(rng.permutation(len(train_x)), steps_per_epoch):
            xn = xn_all[idx]
            info, codes = train_step(model, opt, sched, xn, s, usage=usage)
            step += 1
            if step == 5:  # fit the cosine schedule to the time budget
                s.total_steps = max(10, int(budget / ((time.time() - t0) / 5)))
            if step % 10 == 0:
                print(f"  step {step}/{s.total_steps} train MSE (normalised) {info['train_mse']:.4f}  {time.time() - t0:.0f}s", flush=True)
            if time.time() - t0 > budget:
                break
        reseed_unused(model, opt, usage, xn, codes)
    model.eval()
    print(f"QINCo2-{args.preset} trained {step} steps ({step * args.batch / len(train_x):.2f} epochs) in {time.time() - t0:.0f}s")

    xt = torch.from_numpy(held)
    print(f"\nrelative MSE on held-out vectors (QINCo2 beam {args.beam}, A {args.candidates}; RQ beam {args.rq_beam})")
    print(" m  bits   QINCo2   faiss-RQ  ratio")
    for m in range(1, args.M + 1):
        a = relative_mse(held, model.decode(model.encode(xt, m)))
        b = relative_mse(held, rq.decode(rq.encode(held, m)))
        print(f"{m:2d}  {bits_per_frame(m, args.K):4.0f}   {a:.4f}   {b:.4f}    {a / b:.3f}", flush=True)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("\nthroughput (vectors/s, full M)")
    for dev in devices:
        mdl = model.to(dev)
        n = 500 if dev == "cpu" else 200000
        x = torch.from_numpy(np.resize(held, (n, args.d))).to(dev)
        for B, A in ((args.beam, args.candidates), (32, 16)):
            enc = rate(lambda: mdl.encode(x, beam=B, candidates=A), n, dev)
            print(f"  {dev} QINCo2 encode B={B} A={A}: {enc:,.0f}")
        codes = mdl.encode(x[:2000])
        dec = rate(lambda: mdl.decode(codes.repeat(max(1, n // 2000), 1)), max(1, n // 2000) * 2000, dev)
        print(f"  {dev} QINCo2 decode: {dec:,.0f}")
    xs = np.resize(held, (20000, args.d))
    print(f"  cpu faiss RQ encode B={args.rq_beam}: {rate(lambda: rq.encode(xs), len(xs)):,.0f}")
    c = rq.encode(xs)
    print(f"  cpu faiss RQ decode: {rate(lambda: rq.decode(c), len(xs)):,.0f}")


if __name__ == "__main__":
    main()
