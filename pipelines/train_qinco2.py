"""Ray job entry point of stage 2 (QINCo2): `spresso train qinco2` on the cluster.

    ray job submit --working-dir . -- python pipelines/train_qinco2.py --config paper --vectors s3://.../z.zarr
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "qinco2", *sys.argv[1:]]))
