"""Arguments every stage command shares: --config and dotted overrides."""
from __future__ import annotations

import argparse

from ..config import SpressoConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="demo", help="preset name (demo, paper) or YAML path [demo]")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set data.clip_seconds=5 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> SpressoConfig:
    return load_config(args.config, args.overrides)
