"""Ray job entry point of the z cache stage (one operating point per job): `spresso precompute-z` on the cluster.

    ray job submit --working-dir . -- python pipelines/precompute_z.py --config paper --t 9 [--stage1 DIR]

Prints the cache path. Rerunning it fills only the missing blocks.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["precompute-z", *sys.argv[1:]]))
