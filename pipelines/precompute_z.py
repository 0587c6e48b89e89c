"""Ray job entry point of the z cache stage (one operating point per job).

    ray job submit --working-dir . -- python pipelines/precompute_z.py --config paper --t 9 [--stage1 DIR]

Joins the cluster from RAY_ADDRESS (set by `ray job submit`), calls the same library function as
`spresso precompute-z` and prints the cache path. Rerunning it fills only the missing blocks.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir holds spresso

from spresso.cli.common import run_entry  # noqa: E402
from spresso.cli.stages import add_stage_args, stage_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_args(parser)
    parser.add_argument("--stage1", default=None, metavar="DIR", help="stage-1 checkpoint [<workdir>/<dae.checkpoint_dir>/t<t>/stage1/final]")
    parser.add_argument("--overwrite", action="store_true", help="replace a z cache made by another encoder")
    parser.add_argument("--max-blocks", type=int, default=None, metavar="N", help="fill at most N missing blocks now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from spresso.data.z_latents import precompute_z

    return run_entry(lambda: precompute_z(stage_config(args), args.stage1, overwrite=args.overwrite,
                                          max_blocks=args.max_blocks, parent_run_id=args.parent_run_id, progress=False))


if __name__ == "__main__":
    sys.exit(main())
