"""Ray job entry point of the shard stage: `spresso shard` on the cluster.

    ray job submit --working-dir . -- python pipelines/shard_audio.py --config demo --set workdir=$PWD/work/demo --input DIR

A job runs in Ray's copy of --working-dir: DIR, --output and the workdir are absolute paths or URLs.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["shard", "--no-progress", *sys.argv[1:]]))
