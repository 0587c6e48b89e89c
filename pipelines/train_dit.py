"""Ray job entry point of the DiT pretraining stage: `spresso train dit` on the cluster.

    ray job submit --working-dir . -- python pipelines/train_dit.py --config paper --set dit.train.scaling.workers=16

Builds the caption cache if needed, trains (resuming an unfinished run) and prints the final checkpoint folder.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "dit", *sys.argv[1:]]))
