"""Ray job entry point of the export stage: `spresso export` on the cluster (one operating point).

    ray job submit --working-dir . -- python pipelines/export.py --config paper --t 100 --out bundles/d96 [--register NAME]

Writes the bundle (a relative --out is under the workdir), logs it to MLflow with lineage tags to every
upstream run, optionally registers it, and prints a JSON summary.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
