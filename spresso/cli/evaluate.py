"""``spresso listening-test``: build a MUSHRA page from evaluation audio, and summarise its results.

(``spresso eval``, the metric harness over codecs, is added here once the codecs exist.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SpressoError


def register(commands, train) -> None:
    lt = commands.add_parser(
        "listening-test", help="MUSHRA listening test: build the page, or summarise collected results",
        description="Build a self-contained MUSHRA-style page (hidden reference, 3.5 kHz anchor, 0-100 sliders) "
        "from <clip>/reference.wav + <clip>/<condition>.wav, or summarise result JSON files.",
    )
    lt.add_argument("--eval", dest="eval_source", metavar="DIR_OR_RUN",
                    help="folder laid out as <clip>/reference.wav and <clip>/<condition>.wav")
    lt.add_argument("--out", metavar="DIR", help="folder to write index.html and audio/ into")
    lt.add_argument("--title", default="spresso listening test")
    lt.add_argument("--max-trials", type=int, default=None, help="use a seeded random subset of clips")
    lt.add_argument("--seed", type=int, default=0)
    lt.set_defaults(func=_build)
    sub = lt.add_subparsers(dest="lt_command", metavar="summarize")
    sm = sub.add_parser("summarize", help="per-condition means with 95%% intervals after listener post-screening")
    sm.add_argument("files", nargs="+", metavar="FILE", help="result JSON files downloaded from the page")
    sm.add_argument("--json", dest="json_out", metavar="PATH", help="also write the summary as JSON")
    sm.set_defaults(func=_summarize)


def _build(args: argparse.Namespace) -> int:
    from ..eval.listening import build_listening_test, trials_from_folder

    if not args.eval_source or not args.out:
        raise SpressoError("listening-test needs --eval DIR and --out DIR (or: listening-test summarize FILES...)")
    src = Path(args.eval_source)
    if not src.is_dir():
        raise SpressoError(
            f"{src} is not a folder; evaluation runs are not supported yet: give a folder of <clip>/<condition>.wav"
        )
    if args.max_trials is not None and args.max_trials < 1:
        raise SpressoError("--max-trials must be at least 1")
    index = build_listening_test(trials_from_folder(src), args.out, title=args.title,
                                 max_trials=args.max_trials, seed=args.seed)
    print(f"listening test written to {index} (open it in a browser; results download as JSON)")
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from ..eval.listening import summarize

    summary = summarize(args.files)
    print(summary.table())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary.to_dict(), indent=1), encoding="utf-8")
    return 0
