"""Ray job entry point of the shard stage:

    ray job submit --working-dir . -- python pipelines/shard_audio.py --config demo --input DIR [--output DIR]

Joins the cluster from RAY_ADDRESS (set by `ray job submit`) and calls the same library function
as `spresso shard`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir

from spresso.cli.common import add_config_args, config_from_args, run_entry  # noqa: E402
from spresso.data.shard import shard  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", "-i", nargs="+", required=True)
    parser.add_argument("--output", "-o", default=None)
    parser.add_argument("--captions", default=None)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_entry(lambda: shard(args.input, config_from_args(args), output=args.output, captions_csv=args.captions,
                                   progress=False), lambda result: result.summary())


if __name__ == "__main__":
    sys.exit(main())
