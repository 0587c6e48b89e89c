"""`spresso precompute-latents`: encode every clip of the shards into the x0 Zarr cache."""
from __future__ import annotations

import argparse

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples


def add_latents_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `spresso precompute-latents` (which `pipelines/precompute_latents.py` runs)."""
    add_config_args(parser)
    parser.add_argument("--audioae", default=None, metavar="DIR",
                        help="AudioAE checkpoint folder [<workdir>/<audioae.checkpoint_dir>/final]")
    parser.add_argument("--shards", default=None, metavar="DIR", help="shards folder [<workdir>/<data.shards_dir>]")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing cache made from another AudioAE or other shards")
    parser.add_argument("--max-blocks", type=int, default=None, metavar="N",
                        help="fill at most N missing blocks now (a rerun continues)")
    parser.add_argument("--parent-run-id", default=None, help="MLflow run id of the pipeline run (lineage)")


def run_from_args(args: argparse.Namespace, progress: bool = True) -> str:
    # lazy: keeps `spresso --help` free of torch and Ray
    from spresso.data.latents import precompute_latents

    return precompute_latents(
        config_from_args(args), args.audioae, args.shards, overwrite=args.overwrite,
        max_blocks=args.max_blocks, parent_run_id=args.parent_run_id, progress=progress,
    )


def _precompute(args: argparse.Namespace) -> int:
    print(run_from_args(args))
    return 0


def register(commands, train) -> None:
    p = commands.add_parser("precompute-latents", help="encode the shards with the AudioAE into the x0 Zarr cache (resumable)")
    add_examples(p, "precompute-latents")
    add_latents_args(p)
    p.set_defaults(func=_precompute)
