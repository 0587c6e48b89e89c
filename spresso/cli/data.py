"""`spresso synth-corpus` and `spresso shard`: argument parsing only; the work is in the library."""
from __future__ import annotations

import argparse
import json

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples
from spresso.core.errors import SpressoError


def register(commands, train) -> None:
    p = commands.add_parser("synth-corpus", help="write a procedural sound-effect corpus with captions")
    add_examples(p, "synth-corpus")
    p.add_argument("--output", "-o", required=True, help="folder to write")
    p.add_argument("--minutes", type=float, default=5.0, help="about how many minutes of audio [5]")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes [0]")
    p.set_defaults(func=synth_corpus_cmd)

    p = commands.add_parser("shard", help="cut audio into 5 s clips and write WebDataset shards (Ray Data)")
    add_examples(p, "shard")
    p.add_argument("--input", "-i", nargs="+", required=True, metavar="PATH", help="folders, globs or fsspec URLs")
    p.add_argument("--output", "-o", default=None, help="output folder [workdir/data.shards_dir]")
    p.add_argument("--captions", default=None, metavar="CSV", help="CSV of path,caption (used when no sidecar .txt/.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=shard_cmd)


def synth_corpus_cmd(args: argparse.Namespace) -> int:
    # lazy: pulls scipy; keeps `spresso --help` fast
    from spresso.audio.synth import corpus_summary, synth_corpus

    if args.minutes <= 0:
        raise SpressoError("--minutes must be > 0")
    try:
        files = synth_corpus(args.output, args.minutes, args.seed)
    except OSError as err:
        raise SpressoError(f"cannot write {args.output}: {err.strerror or err}") from None
    print(json.dumps({"output": args.output, **corpus_summary(files)}, indent=1))
    return 0


def shard_cmd(args: argparse.Namespace) -> int:
    # lazy: pulls Ray; keeps `spresso --help` fast
    from spresso.data.shard import shard

    cfg = config_from_args(args)
    result = shard(args.input, cfg, output=args.output, captions_csv=args.captions, progress=not args.no_progress)
    print(result.summary())
    return 0
