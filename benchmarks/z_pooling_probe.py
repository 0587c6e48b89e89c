"""How much of x0's variation survives S-PRESSO's window average at each t (issue 18, item 1).

g_psi's z is the mean over t frames of a per-frame feature. This measures, on real clips, the
effective dimensionality (spresso.eval.latent_stats: energy in the top principal directions,
directions for 90% / 98%) of (a) x0's frames, (b) x0 itself averaged over windows of t frames, and
(c) the z of an untrained g_psi (the paper's encoder at its init, depths 3 and 12), so a stage-1
run's ``z/energy_top4`` can be read against what the pooling alone leaves.

    nice .venv/bin/python benchmarks/z_pooling_probe.py --audioae work/workstation/audioae/final \\
        --shards work/workstation/shards --clips 240 --out z_pooling.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from spresso.eval.latent_stats import effective_dimensionality
from spresso.eval.sets import from_shards
from spresso.models.audioae import load_audioae
from spresso.models.latent_encoder import LatentEncoder, average_pool

KEYS = ("frames", "energy_top1", "energy_top4", "dims_90", "dims_98", "participation_ratio")


def probe(audioae: str, shards: str, clips: int, ts=(4, 9, 100), depths=(3, 12), split: str = "train") -> dict:
    ae = load_audioae(audioae)
    chosen = from_shards(shards, split, clips).clips
    xs, valid = [], []
    with torch.no_grad():
        for c in chosen:
            xs.append(ae.encode(torch.from_numpy(np.ascontiguousarray(c.wave, dtype=np.float32))[None])[0])
            valid.append(max(1, c.valid_samples // ae.hop))
    x = torch.stack(xs)  # [N, 128, T]
    frames = torch.cat([x[i, :, :v] for i, v in enumerate(valid)], 1)
    # the per-channel normalisation stage 1 applies (mean / std of the cache, sigma_data 0.5)
    xn = (x - frames.mean(1, keepdim=True)) / frames.std(1, keepdim=True) * 0.5
    out = {}

    def stats(name: str, vectors: np.ndarray) -> None:
        d = effective_dimensionality(vectors)
        out[name] = {k: round(float(d[k]), 4) for k in KEYS}
        print(f"{name:>28}: top-1 {d['energy_top1']:.3f}, top-4 {d['energy_top4']:.3f}, "
              f"90% in {d['dims_90']:.0f}, 98% in {d['dims_98']:.0f} directions ({d['frames']:.0f} vectors)", flush=True)

    stats("x0 frames", torch.cat([xn[i, :, :v] for i, v in enumerate(valid)], 1).T.numpy())
    for t in ts:
        keep = [-(-v // t) for v in valid]
        pooled = average_pool(xn.transpose(1, 2), t)
        stats(f"t={t} x0 averaged", torch.cat([pooled[i, :k] for i, k in enumerate(keep)]).numpy())
        for depth in depths:
            torch.manual_seed(0)
            with torch.no_grad():
                z = LatentEncoder(128, 64, t, depth).eval()(xn)
            stats(f"t={t} g_psi at init, depth {depth}", torch.cat([z[i, :, :k] for i, k in enumerate(keep)], 1).T.numpy())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audioae", required=True, help="an AudioAE checkpoint folder")
    p.add_argument("--shards", required=True, help="the shards folder (clips are drawn from --split)")
    p.add_argument("--split", default="train")
    p.add_argument("--clips", type=int, default=240)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    out = probe(args.audioae, args.shards, args.clips, split=args.split)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
