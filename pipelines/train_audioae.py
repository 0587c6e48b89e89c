"""Ray job entry point of the AudioAE stage: `spresso train audioae` on the cluster.

    ray job submit --working-dir . -- python pipelines/train_audioae.py --config paper --set audioae.steps=1000

Joins the cluster from RAY_ADDRESS (set by `ray job submit`) and prints the final checkpoint folder.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "audioae", *sys.argv[1:]]))
