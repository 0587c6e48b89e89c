"""Ray job entry point of stage 1 (one operating point per job): `spresso train stage1` on the cluster.

    ray job submit --working-dir . -- python pipelines/train_stage1.py --config paper --t 9

Prints the final checkpoint folder. Rerunning it resumes from Ray Train's latest checkpoint.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "stage1", *sys.argv[1:]]))
