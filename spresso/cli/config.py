"""`spresso config`: print the resolved configuration (preset + overrides), validated."""
from __future__ import annotations

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples


def _show(args) -> int:
    cfg = config_from_args(args)
    print(cfg.to_yaml(), end="")
    return 0


def register(commands, train) -> None:
    p = commands.add_parser("config", help="validate and print the resolved config (preset + --set overrides)")
    add_examples(p, "config")
    add_config_args(p)
    p.set_defaults(func=_show)
