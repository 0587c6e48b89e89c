"""Does the diffusion autoencoder do what the paper says? Three checks on valid-split clips of the x0 cache.

    python benchmarks/dae_checks.py                              # demo preset: the models `make demo` trained
    python benchmarks/dae_checks.py --clips 16 --steps 32 --solver heun --config configs/demo.yaml
    python benchmarks/dae_checks.py --config demo-checks --clips 32 --seeds 4   # the README's figures

For every trained operating point of ``pipeline.points`` (stage 1, plus QINCo2 and stage 3 for
discrete points) it decodes the same seeded clips with the same seeded noise and prints mel
distance and SI-SDR against the real audio (from the shards; the verdicts use it) and against the
AudioAE-decoded original x0: (1) stage 1 from z vs z withheld, (2) the smallest t vs the largest t,
(3) stage 3 vs stage 1 on the same z_q, each with a paired bootstrap interval. The table, per-clip JSON and the metrics go to an MLflow run
``dae_checks`` (``--no-mlflow`` to skip).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from spresso.cli.common import add_config_args, config_from_args  # noqa: E402
from spresso.core.digest import digest_tree  # noqa: E402
from spresso.core.storage import absolute  # noqa: E402
from spresso.eval import dae_checks as dc  # noqa: E402
from spresso.models.audioae import load_audioae  # noqa: E402
from spresso.runtime import stage_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(ap)
    ap.add_argument("--clips", type=int, default=16, help="valid-split clips (seeded draw)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clip draw and of the decoding noise")
    ap.add_argument("--seeds", type=int, default=1, help="decodings per clip with different noise, scores averaged per clip")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--solver", choices=["dpmpp2m", "heun"], default="dpmpp2m")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None, help="cpu or cuda [cuda when present]")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    cfg = config_from_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    points, skipped = dc.trained_points(cfg, device)
    for line in skipped:
        print(f"skipped: {line}")
    audioae_dir = absolute(cfg.path(cfg.audioae.checkpoint_dir)) + "/final"
    x0_path = absolute(cfg.path(cfg.audioae.latents_path))
    clips = dc.select_clips(x0_path, args.clips, seed=args.seed, split=args.split, shards_dir=absolute(cfg.path(cfg.data.shards_dir)))
    settings = dc.DecodeSettings(args.steps, args.solver, args.seed, args.seeds)
    result = dc.run_checks(points, clips, load_audioae(audioae_dir, map_location=device), settings, batch=args.batch, progress=True)
    result.skipped = skipped
    table = dc.format_table(result)
    print(table)
    if args.no_mlflow:
        return

    upstream = {f"{p.name}.{s.stage}": s.run_id for p in points for s in (p.stage1, p.stage3) if s is not None and s.run_id}
    with stage_run("dae_checks", cfg, upstream=upstream or None) as run:
        run.log_params({"checks.clips": result.clips, "checks.seed": args.seed, "checks.seeds": args.seeds, "checks.steps": args.steps, "checks.solver": args.solver,
                        "checks.split": args.split, "checks.device": device, "checks.reference": clips.audio_note})
        for p in points:
            for s in (p.stage1, p.stage3):
                if s is not None:
                    run.log_input(f"{p.name}_{s.stage}", s.path, digest_tree(s.path), context="model")
        run.log_metrics(result.metrics())
        run.log_text(table, "dae_checks.txt")
        run.log_text(result.to_json(), "dae_checks.json")
        print(f"mlflow run {run.run_id}")


if __name__ == "__main__":
    main()
