"""CPU encode and decode speed of QINCo2 against faiss RQ at the same beam, with 1 and 2 threads.

Both quantizers share the same residual k-means codebooks (speed does not depend on training);
QINCo2's networks get small random weights. Decoding is timed with the cached codeword tables
(the codec's path after the first call) and with the tables rebuilt on every call (the cost
before the cache), on a large batch and on a small one (a short clip's frames), where the
table's fixed cost dominates.

    nice .venv/bin/python benchmarks/qinco2_speed.py
"""
from __future__ import annotations

import argparse

import faiss
import numpy as np
import torch
from timing import timed  # benchmarks/timing.py (this script's folder is on sys.path)

from spresso.quant import FaissRQ, QINCo2, QINCo2Spec, residual_kmeans_init


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """A random mix of Laplace sources (anisotropic, correlated, not collapsed)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(2.0, 0.2, d)[None, :]
    return (rng.laplace(size=(n, d)) @ mix.T).astype(np.float32)


def build(args) -> tuple[QINCo2, FaissRQ]:
    x = vectors(args.train, args.d)
    torch.manual_seed(0)
    spec = QINCo2Spec.from_preset(args.preset, d=args.d, K=args.K, M=args.M, A=args.candidates, B=args.beam)
    model = QINCo2(spec)
    model.norm.fit(x)
    residual_kmeans_init(model, model.norm(torch.from_numpy(x)).numpy(), niter=5)
    with torch.no_grad():
        for step in model.steps:
            step.out_proj.weight.normal_(0, 0.02)
    model.eval()
    books = np.stack([model.codebook(m).detach().numpy() for m in range(args.M)])
    # Same normalisation convention (per-dim mean, one global std): the same codebooks in data space.
    rq = FaissRQ(args.d, args.M, args.K, beam=args.beam).set_trained(books, model.norm.mean.numpy(), float(model.norm.std))
    return model, rq


def rate(fn, n: int, iters: int) -> float:
    return n / timed(fn, iters=iters, warmup=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--M", type=int, default=8)
    ap.add_argument("--preset", default="S")
    ap.add_argument("--beam", type=int, default=8, help="beam of both quantizers")
    ap.add_argument("--candidates", type=int, default=8, help="QINCo2's pre-selected candidates per hypothesis")
    ap.add_argument("--train", type=int, default=10000, help="vectors for the shared k-means codebooks")
    ap.add_argument("--encode-n", type=int, default=1000)
    ap.add_argument("--decode-n", type=int, default=20000)
    ap.add_argument("--small-n", type=int, default=16, help="a small decode call (one short clip)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    model, rq = build(args)
    x = vectors(args.encode_n, args.d, seed=1)
    xt = torch.from_numpy(x)
    codes = model.encode(xt).numpy()
    big = np.concatenate([codes] * (args.decode_n // len(codes) + 1))[: args.decode_n]
    small = codes[: args.small_n]
    rq_codes = rq.encode(x)
    rq_big = np.concatenate([rq_codes] * (args.decode_n // len(rq_codes) + 1))[: args.decode_n]

    def uncached(c):
        def fn():
            model.clear_tables()
            model.decode(torch.from_numpy(c))
        return fn

    print(f"d={args.d} K={args.K} M={args.M} preset {args.preset}; beam {args.beam} (QINCo2 candidates "
          f"{args.candidates}); encode {args.encode_n} vectors, decode {args.decode_n} and {args.small_n}")
    print("\n| threads | quantizer | encode vec/s | decode vec/s (large) | decode vec/s (small) |")
    print("|---:|---|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        enc = rate(lambda: model.encode(xt), len(x), args.iters)
        dec = rate(lambda: model.decode(torch.from_numpy(big)), len(big), args.iters)
        dec_s = rate(lambda: model.decode(torch.from_numpy(small)), len(small), args.iters * 10)
        print(f"| {threads} | QINCo2 (cached tables) | {enc:,.0f} | {dec:,.0f} | {dec_s:,.0f} |")
        dec_u = rate(uncached(big), len(big), args.iters)
        dec_us = rate(uncached(small), len(small), args.iters * 10)
        print(f"| {threads} | QINCo2 (tables rebuilt per call) | - | {dec_u:,.0f} | {dec_us:,.0f} |")
        r_enc = rate(lambda: rq.encode(x), len(x), args.iters)
        r_dec = rate(lambda: rq.decode(rq_big), len(rq_big), args.iters)
        r_dec_s = rate(lambda: rq.decode(rq_codes[: args.small_n]), args.small_n, args.iters * 10)
        print(f"| {threads} | faiss RQ | {r_enc:,.0f} | {r_dec:,.0f} | {r_dec_s:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
