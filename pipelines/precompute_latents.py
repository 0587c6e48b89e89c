"""Ray job entry point of the x0 cache stage.

    ray job submit --working-dir . -- python pipelines/precompute_latents.py --config paper [--audioae DIR] [--shards DIR]

Joins the cluster from RAY_ADDRESS (set by `ray job submit`), calls the same library function as
`spresso precompute-latents` and prints the cache path. Rerunning it fills only missing blocks.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir holds spresso

from spresso.cli.common import run_entry  # noqa: E402
from spresso.cli.latents import add_latents_args, run_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_latents_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_entry(lambda: run_from_args(args, progress=False))


if __name__ == "__main__":
    sys.exit(main())
