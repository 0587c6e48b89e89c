"""Ray job entry point of the export stage: trained checkpoints -> codec bundle (one operating point).

    ray job submit --working-dir . -- python pipelines/export.py --config paper --t 100 --out bundles/d96 [--register NAME]

Calls the same library function as `spresso export`: writes the bundle, logs it to MLflow with
lineage tags to every upstream run, optionally registers it, and prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from spresso.cli.common import run_entry
from spresso.cli.stages import add_stage_args, stage_config
from spresso.train.export import export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_args(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write (relative: to the workdir)")
    parser.add_argument("--audioae", default=None, metavar="DIR", help="AudioAE checkpoint [<workdir>/<audioae.checkpoint_dir>/final]")
    parser.add_argument("--stage", default=None, metavar="DIR", help="stage-3 (or stage-1) checkpoint [of the operating point]")
    parser.add_argument("--quantizer", default=None, metavar="DIR", help="QINCo2 checkpoint [<workdir>/<qinco2.checkpoint_dir>/final]")
    parser.add_argument("--continuous", action="store_true", help="a continuous-z bundle (stage 1, no quantizer)")
    parser.add_argument("--m", type=int, default=None, help="codebooks the bundle uses [the operating point's m]")
    parser.add_argument("--register", default=None, metavar="NAME", help="register the bundle as a model version of NAME")
    parser.add_argument("--alias", default="champion", help="alias of the registered version [champion]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def work():
        cfg = stage_config(args)
        out = args.out if Path(args.out).is_absolute() or "://" in args.out else cfg.path(args.out)
        return export(cfg, out, audioae=args.audioae, stage=args.stage, quantizer=args.quantizer,
                      continuous=args.continuous, register=args.register, alias=args.alias,
                      parent_run_id=args.parent_run_id, m=args.m)

    return run_entry(work, json.dumps)


if __name__ == "__main__":
    sys.exit(main())
