"""How much does a trained DiT know? Held-out denoising error per noise level, against the trivial denoiser.

    python benchmarks/dit_denoise.py                                   # the demo's trained DiT
    python benchmarks/dit_denoise.py --config paper --clips 500

On valid-split clips of the x0 cache (with their cached caption embeddings), at fixed sigmas and
seeded noise, prints the EMA model's MSE and its ratio to the trivial denoiser D = c_skip x (the
best denoiser that knows nothing but the data's scale). Below 1 at a sigma: the network predicts
x0 better than its variance there. The training stage logs the same figures to MLflow at the end
(`valid_mse_ratio/sigma_*`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from spresso.cli.common import add_config_args, config_from_args  # noqa: E402
from spresso.core.storage import absolute  # noqa: E402
from spresso.diffusion.checkpoints import load_dit  # noqa: E402
from spresso.diffusion.normalize import LatentNormalizer  # noqa: E402
from spresso.train.dit_held_out import HELD_OUT_SIGMAS, held_out_sigma_report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(ap)
    ap.add_argument("--checkpoint", default=None, help="DiT checkpoint folder [<workdir>/<dit.checkpoint_dir>/final]")
    ap.add_argument("--clips", type=int, default=64, help="valid clips (the first N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    ckpt = args.checkpoint or absolute(cfg.path(cfg.dit.checkpoint_dir)) + "/final"
    model, info = load_dit(ckpt)
    meta = info["meta"]
    sigma_data = cfg.dit.diffusion.sigma_data
    normalizer = LatentNormalizer(meta["x0_mean"], meta["x0_std"], sigma_data)
    report = held_out_sigma_report(model, normalizer, absolute(cfg.path(cfg.audioae.latents_path)),
                                   absolute(cfg.path(cfg.dit.captions_path)), sigma_data=sigma_data,
                                   max_clips=args.clips, seed=args.seed)
    if not report:
        raise SystemExit("error: the x0 cache has no finished valid clips")
    print(f"{'sigma':>8} {'MSE':>10} {'/ trivial':>10}")
    for s in HELD_OUT_SIGMAS:
        print(f"{s:8g} {report[f'valid_mse/sigma_{s:g}']:10.4f} {report[f'valid_mse_ratio/sigma_{s:g}']:10.3f}")
    print(json.dumps({"checkpoint": str(ckpt), "step": meta.get("step"), **report}))


if __name__ == "__main__":
    main()
