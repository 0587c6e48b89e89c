"""Ray job entry point of the caption cache: text-encoder embeddings of every clip's caption.

    ray job submit --working-dir . -- python pipelines/embed_captions.py --config paper

Row-aligned with the x0 cache (``dit.captions_path``); `train_dit` builds it too when it is missing,
this job lets a cluster fill it on CPU nodes before the GPU job starts. Prints the cache path.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir holds spresso

from spresso.cli.common import add_config_args, config_from_args, run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from spresso.data.captions import build_caption_cache

    return run_entry(lambda: build_caption_cache(config_from_args(args), progress=False), lambda cache: str(cache.path))


if __name__ == "__main__":
    sys.exit(main())
