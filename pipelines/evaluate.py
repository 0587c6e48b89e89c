"""Ray job entry point for the evaluation stage (codecs and baselines over one evaluation set):

    ray job submit --working-dir . -- python pipelines/evaluate.py --config paper \\
        --codec opus6=opus:6 --codec ae=audioae:s3://.../audioae/final --set-split test --clips 500
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
