"""Ray job entry point of the caption cache: `spresso embed-captions` on the cluster.

    ray job submit --working-dir . -- python pipelines/embed_captions.py --config paper

Row-aligned with the x0 cache (``dit.captions_path``); `train dit` builds it too when it is missing,
this job lets a cluster fill it on CPU nodes before the GPU job starts. Prints the cache path.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed-captions", "--no-progress", *sys.argv[1:]]))
