"""Ray job entry point of the shard stage: `spresso shard` on the cluster.

    ray job submit --working-dir . -- python pipelines/shard_audio.py --config demo --input DIR [--output DIR]
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["shard", "--no-progress", *sys.argv[1:]]))
