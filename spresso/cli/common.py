"""Arguments every stage command shares: --config and dotted overrides."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from spresso.config import SpressoConfig, load_config
from spresso.core.errors import SpressoError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="demo", help="preset name (demo, paper) or YAML path [demo]")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set data.clip_seconds=5 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> SpressoConfig:
    return load_config(args.config, args.overrides)


def run_entry(body: Callable[[], object], show: Callable[[object], str] = str) -> int:
    """Run a `pipelines/*.py` entry point's work: print ``show(result)`` and return 0, or print a
    :class:`SpressoError` as one ``error:`` line on stderr and return 2 (a clear failed job, no traceback)."""
    try:
        result = body()
    except SpressoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(show(result))
    return 0
