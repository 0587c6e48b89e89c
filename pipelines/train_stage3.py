"""Ray job entry point of stage 3 (one operating point per job).

    ray job submit --working-dir . -- python pipelines/train_stage3.py --config paper --t 100

Joins the cluster from RAY_ADDRESS, quantizes z with the frozen QINCo2 (cached), finetunes f_phi
and LoRA on z_q through the same library function as `spresso train stage3`, and prints the final
checkpoint folder. Rerunning it resumes from Ray Train's latest checkpoint.
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from spresso.train.stage3 import train_stage3

    return run_entry(lambda: train_stage3(stage_config(args), parent_run_id=args.parent_run_id, force=args.force, progress=False))


if __name__ == "__main__":
    sys.exit(main())
