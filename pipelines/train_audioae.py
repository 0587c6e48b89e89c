"""Ray job entry point for the AudioAE stage.

    ray job submit --working-dir . -- python pipelines/train_audioae.py --config paper --set audioae.steps=1000

Joins the cluster from RAY_ADDRESS (set by `ray job submit`) and prints the final checkpoint folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir holds the spresso package

from spresso.cli.common import add_config_args, config_from_args, run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--force", action="store_true", help="train even when an identical finished run exists")
    parser.add_argument("--parent-run-id", default=None, help="MLflow run id of the pipeline run (lineage)")
    args = parser.parse_args(argv)
    from spresso.train.audioae import train_audioae

    return run_entry(lambda: train_audioae(config_from_args(args), parent_run_id=args.parent_run_id, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
