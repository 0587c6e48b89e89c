"""The `spresso` command line: argument parsing only; every command calls the library.

Each capability registers its subcommands in its own module (``spresso/cli/<name>.py`` with a
``register(commands, train)`` function); a new module is added to ``COMMAND_MODULES``.
A :class:`~spresso.core.errors.SpressoError` (or an OS error: a file name too long, a disk full)
becomes one line on stderr and exit status 2; a closed stdout (``spresso ... | head``) ends quietly.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import spresso
from spresso.cli import (
    audioae,
    codec,
    config,
    data,
    dit,
    evaluate,
    latents,
    pipeline,
    quant,
    stages,
)
from spresso.cli.jobpaths import check_job_paths
from spresso.core import storage
from spresso.core.errors import SpressoError

# Modules that add subcommands, in help order; each has register(commands, train).
COMMAND_MODULES = [config, data, audioae, latents, dit, quant, stages, codec, evaluate, pipeline]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spresso", description="S-PRESSO sound-effect codec and its training workflow")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"spresso {spresso.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train_parser = commands.add_parser("train", help="train a model stage")
    train = train_parser.add_subparsers(dest="train_command", metavar="STAGE")
    train_parser.set_defaults(func=lambda args: train_parser.print_help() or 2)
    for module in COMMAND_MODULES:
        module.register(commands, train)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:  # also after --help/--version (SystemExit): a closed pipe shows here
            sys.stdout.flush()
    except BrokenPipeError:
        return _closed_stdout()


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        check_job_paths(args)  # inside `ray job submit`: relative paths would name Ray's temporary copy
        result = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
    except BrokenPipeError:  # before OSError below: `spresso pipeline status demo | head` is no error
        return _closed_stdout()
    except SpressoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # an OS refusal the command did not foresee: still one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not storage.is_store_error(err):
            raise
        # object storage refusing (no credentials, no bucket, no endpoint) where no stage checked first
        print(f"error: {storage.describe_error(err)}", file=sys.stderr)
        return 2
    return int(result or 0)


def _closed_stdout() -> int:
    """The reader of stdout went away (`| head`): stop quietly; point stdout at /dev/null so the
    interpreter's final flush does not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
