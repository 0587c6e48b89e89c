"""Ray job entry point of the x0 cache stage: `spresso precompute-latents` on the cluster.

    ray job submit --working-dir . -- python pipelines/precompute_latents.py --config paper [--audioae DIR] [--shards DIR]

Prints the cache path. Rerunning it fills only missing blocks.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["precompute-latents", *sys.argv[1:]]))
