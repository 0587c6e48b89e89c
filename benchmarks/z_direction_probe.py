"""What a stage-1 model's z varies along (issue 18): its top principal directions against plain clip facts.

Encodes the x0 cache's valid clips (topped up with train clips, as the stage's own ``z/*`` report does)
with a stage-1 checkpoint, takes the principal directions of the z frames that see real audio, and
correlates each frame's score on the top directions with facts about it: how many of its window's
frames are real, its index, the clip's real length, the window's x0 level and mean. It also splits a
direction's variance into between-clip and within-clip parts: a direction that is constant within
each clip and takes two values across clips is a per-clip bit, not a description of the sound.

    .venv/bin/python benchmarks/z_direction_probe.py --checkpoint work/ray_train/dae-stage1-t100-.../step-000001000 \\
        --x0 work/latents/x0.zarr --out z_direction.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from spresso.data.zarr_cache import ClipCache
from spresso.eval.dae_checks import load_stage
from spresso.train.z_stats import encode_rows, z_stat_rows

FACTS = ("window_real_frames", "window_index", "clip_real_frames", "window_x0_rms", "window_x0_mean")


def window_facts(x0: np.ndarray, valid_frames: np.ndarray, z_frames: np.ndarray, t: int) -> np.ndarray:
    """[n, len(FACTS)]: one row per z frame that sees real audio (clip-major, as frame_vectors orders them)."""
    rows = []
    for clip, real, n in zip(x0, valid_frames, z_frames):
        for k in range(int(n)):
            w = clip[:, k * t:min((k + 1) * t, int(real))]
            rows.append([w.shape[1], k, real, float(np.sqrt((w ** 2).mean())), float(w.mean())])
    return np.asarray(rows, dtype=np.float64)


def probe(vectors: np.ndarray, facts: np.ndarray, clip_ids: np.ndarray, directions: int = 2) -> dict:
    """Energy in the top directions, and per direction: correlations with the facts and the within-clip share."""
    x = vectors - vectors.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    energy = s ** 2 / (s ** 2).sum()
    out = {"frames": int(len(x)), "clips": int(len(np.unique(clip_ids))),
           "energy_top": [float(v) for v in np.cumsum(energy)[:8]], "directions": []}
    for j in range(min(directions, len(s))):
        score = x @ vt[j]
        means = {c: score[clip_ids == c].mean() for c in np.unique(clip_ids)}
        within = float(np.mean([(score[clip_ids == c] - m).var() for c, m in means.items()]))
        corr = {name: float(np.corrcoef(score, col)[0, 1]) if col.std() > 0 else 0.0 for name, col in zip(FACTS, facts.T)}
        clip_means = np.array(list(means.values()))
        out["directions"].append({"energy": float(energy[j]), "within_clip_share": within / float(score.var()),
                                  "correlations": corr, "clip_mean_quartiles": [float(v) for v in np.percentile(clip_means, [0, 25, 50, 75, 100])]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a stage-1 checkpoint folder")
    ap.add_argument("--x0", required=True, help="the x0 cache the model was trained on")
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--directions", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stage = load_stage(args.checkpoint, "stage1")
    encoder = stage.model.encoder
    rows, held_out = z_stat_rows(args.x0, encoder.t, max_clips=args.clips, min_frames=256)
    z, z_frames = encode_rows(encoder, stage.normalizer, args.x0, rows, mask_padding=stage.model.mask_padding)
    cache = ClipCache.open(args.x0, mode="r")
    x0 = stage.normalizer.normalize(torch.from_numpy(cache.read("x0", rows).astype(np.float32))).numpy()
    valid = cache.read("valid_frames", rows).astype(np.int64)
    vectors = np.concatenate([z[i, :, :n].T for i, n in enumerate(z_frames)])
    clip_ids = np.concatenate([[i] * int(n) for i, n in enumerate(z_frames)])
    res = probe(vectors, window_facts(x0, valid, z_frames, encoder.t), clip_ids, args.directions)
    res.update(checkpoint=args.checkpoint, t=encoder.t, mask_padding=stage.model.mask_padding, held_out_clips=int(held_out),
               padded_clips=float((valid < x0.shape[-1]).mean()), median_real_frames=float(np.median(valid)),
               window_frames=int(x0.shape[-1]))
    print(f"{res['frames']} z frames of {res['clips']} clips ({held_out} held out); t={encoder.t}, "
          f"mask_padding={res['mask_padding']}; {res['padded_clips']:.0%} of the clips are padded "
          f"(median {res['median_real_frames']:.0f} of {res['window_frames']} frames real)")
    print("energy in the top 1/2/4/8 directions:", " ".join(f"{res['energy_top'][k - 1]:.3f}" for k in (1, 2, 4, 8)))
    for j, d in enumerate(res["directions"], 1):
        corr = "  ".join(f"{k} {v:+.2f}" for k, v in d["correlations"].items())
        print(f"PC{j}: {d['energy']:.3f} of the energy, {d['within_clip_share']:.1%} of it within clips; "
              f"clip means (min/q1/med/q3/max) {' '.join(f'{v:+.1f}' for v in d['clip_mean_quartiles'])}\n  {corr}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
