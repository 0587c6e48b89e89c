"""`spresso train stage1`, `spresso precompute-z`, `spresso train stage3`: the diffusion autoencoder's stages.

Each runs at the operating point ``dae.t`` (``--t 9`` is short for ``--set dae.t=9``).
"""
from __future__ import annotations

import argparse

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--force and --parent-run-id: what every training command (and its `pipelines/` script) takes."""
    parser.add_argument("--force", action="store_true", help="retrain even when an identical finished run exists")
    parser.add_argument("--parent-run-id", default=None, help="MLflow run id of the pipeline run (lineage)")


def add_stage_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of the operating-point commands (and `pipelines/export.py`)."""
    add_config_args(parser)
    parser.add_argument("--t", type=int, default=None, help="pooling factor of the operating point: 4, 9, 20 or 100 [dae.t]")
    add_run_args(parser)


def stage_config(args: argparse.Namespace):
    cfg = config_from_args(args)
    if getattr(args, "t", None) is not None:
        cfg.dae.t = args.t
    return cfg


def run_stage1(args: argparse.Namespace) -> int:
    # lazy: keeps `spresso --help` free of torch and Ray
    from spresso.train.stage1 import train_stage1

    print(train_stage1(stage_config(args), parent_run_id=args.parent_run_id, force=args.force))
    return 0


def run_stage3(args: argparse.Namespace) -> int:
    # lazy: keeps `spresso --help` free of torch and Ray
    from spresso.train.stage3 import train_stage3

    print(train_stage3(stage_config(args), parent_run_id=args.parent_run_id, force=args.force))
    return 0


def run_precompute_z(args: argparse.Namespace) -> int:
    # lazy: keeps `spresso --help` free of torch and Ray
    from spresso.data.z_latents import precompute_z

    print(precompute_z(stage_config(args), args.stage1, overwrite=args.overwrite, max_blocks=args.max_blocks,
                       parent_run_id=args.parent_run_id))
    return 0


def register(commands, train) -> None:
    p = train.add_parser("stage1", help="stage 1: train g_psi, f_phi, audio-down streams and LoRA on the pretrained DiT")
    add_examples(p, "train stage1")
    add_stage_args(p)
    p.set_defaults(func=run_stage1)
    p = train.add_parser("stage3", help="stage 3: finetune f_phi and LoRA on quantized z (z_q from the frozen QINCo2)")
    add_examples(p, "train stage3")
    add_stage_args(p)
    p.set_defaults(func=run_stage3)
    p = commands.add_parser("precompute-z", help="encode the x0 cache with the stage-1 encoder into the z Zarr cache (resumable)")
    add_examples(p, "precompute-z")
    add_stage_args(p)
    p.add_argument("--stage1", default=None, metavar="DIR", help="stage-1 checkpoint [<workdir>/<dae.checkpoint_dir>/t<t>/stage1/final]")
    p.add_argument("--overwrite", action="store_true", help="replace a z cache made by another encoder")
    p.add_argument("--max-blocks", type=int, default=None, metavar="N", help="fill at most N missing blocks now")
    p.set_defaults(func=run_precompute_z)
