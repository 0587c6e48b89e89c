"""Ray job entry point of stage 3 (one operating point per job): `spresso train stage3` on the cluster.

    ray job submit --working-dir . -- python pipelines/train_stage3.py --config paper --t 100

Quantizes z with the frozen QINCo2 (cached), finetunes f_phi and LoRA on z_q and prints the final
checkpoint folder. Rerunning it resumes from Ray Train's latest checkpoint.
"""
from __future__ import annotations

import sys

from spresso.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "stage3", *sys.argv[1:]]))
