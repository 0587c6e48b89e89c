"""``spresso eval``: every codec over one evaluation set (table, plots, report); and
``spresso listening-test``: build a MUSHRA page from evaluation audio, and summarise its results.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples
from spresso.core import storage
from spresso.core.errors import SpressoError
from spresso.core.outputs import check_output, write_file


def register(commands, train) -> None:
    ev = commands.add_parser(
        "eval", help="evaluate codecs and baselines: Table 1/2-style metrics, rate-quality plot, HTML report",
        description="Round-trip a fixed seeded sample of 5 s clips through each codec (resampled to its rate and back), "
        "then SI-SDR, mel distance, embedding cosine, FAD and KAD with bootstrap intervals. Per-clip results are cached, "
        "so adding a codec computes only that codec. Codec specs: opus:6, audioae:DIR, stage1:DAE_DIR,audioae=DIR, "
        "rq:DAE_DIR,audioae=DIR,rq=RQ_DIR,m=4, dac:WEIGHTS.pth, sqcodec:DIR,config=0k75bps, spresso:BUNDLE[,kbps=0.3].",
    )
    add_examples(ev, "eval")
    add_config_args(ev)
    ev.add_argument("--codec", action="append", default=[], metavar="NAME=SPEC", help="a codec to evaluate (repeatable)")
    where = ev.add_mutually_exclusive_group()
    where.add_argument("--set-split", metavar="SPLIT", help="shard split to sample clips from (default: eval.split)")
    where.add_argument("--folder", metavar="DIR", help="sample clips from a folder of audio files instead")
    ev.add_argument("--clips", type=int, default=None, help="number of 5 s clips (default: eval.num_clips)")
    ev.add_argument("--out", metavar="DIR", help="output folder (default: <workdir>/eval/<set>-<digest>)")
    ev.add_argument("--no-ray", action="store_true", help="run in this process instead of Ray tasks")
    ev.set_defaults(func=_eval)

    lt = commands.add_parser(
        "listening-test", help="MUSHRA listening test: build the page, or summarise collected results",
        description="Build a self-contained MUSHRA-style page (hidden reference, 3.5 kHz anchor, 0-100 sliders) "
        "from <clip>/reference.wav + <clip>/<condition>.wav, or summarise result JSON files.",
    )
    add_examples(lt, "listening-test")
    lt.add_argument("--eval", dest="eval_source", metavar="DIR_OR_RUN",
                    help="a `spresso eval` output folder or MLflow run id, or a folder laid out as "
                    "<clip>/reference.wav and <clip>/<condition>.wav")
    lt.add_argument("--out", metavar="DIR", help="folder to write index.html and audio/ into")
    lt.add_argument("--title", default="spresso listening test")
    lt.add_argument("--max-trials", type=int, default=None, help="use a seeded random subset of clips")
    lt.add_argument("--seed", type=int, default=0)
    lt.set_defaults(func=_build)
    sub = lt.add_subparsers(dest="lt_command", metavar="summarize")
    sm = sub.add_parser("summarize", help="per-condition means with 95%% intervals after listener post-screening")
    add_examples(sm, "listening-test summarize")
    sm.add_argument("files", nargs="+", metavar="FILE", help="result JSON files downloaded from the page")
    sm.add_argument("--json", dest="json_out", metavar="PATH", help="also write the summary as JSON")
    sm.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    sm.set_defaults(func=_summarize)


def _build(args: argparse.Namespace) -> int:
    # lazy: pulls torch/scipy; keeps `spresso --help` fast
    from spresso.eval.listening import build_listening_test, trials_from_folder

    if not args.eval_source or not args.out:
        raise SpressoError("listening-test needs --eval DIR and --out DIR (or: listening-test summarize FILES...)")
    src = _listening_source(args.eval_source)
    if args.max_trials is not None and args.max_trials < 1:
        raise SpressoError("--max-trials must be at least 1")
    index = build_listening_test(trials_from_folder(src), args.out, title=args.title,
                                 max_trials=args.max_trials, seed=args.seed)
    print(f"listening test written to {index} (open it in a browser; results download as JSON)")
    return 0


def _summarize(args: argparse.Namespace) -> int:
    # lazy: pulls torch/scipy; keeps `spresso --help` fast
    from spresso.eval.listening import summarize

    if args.json_out:  # before the work: an existing report is kept unless --overwrite
        check_output(args.json_out, args.files, overwrite=args.overwrite)
    summary = summarize(args.files)
    print(summary.table())
    if args.json_out:
        write_file(args.json_out, json.dumps(summary.to_dict(), indent=1).encode("utf-8"), overwrite=args.overwrite)
    return 0


def _eval(args: argparse.Namespace) -> int:
    # lazy: pulls torch/scipy; keeps `spresso --help` fast
    from spresso.eval.harness import parse_codec_args, run_evaluation

    cfg = config_from_args(args)
    codecs = parse_codec_args(args.codec)
    if args.clips is not None and args.clips < 2:
        raise SpressoError("--clips must be at least 2")
    result, run_id = run_evaluation(cfg, codecs, split=args.set_split, folder=args.folder, num_clips=args.clips,
                                    out_dir=args.out, use_ray=not args.no_ray)
    print(storage.read_text(storage.join(result.out_dir, "table.md")), end="")
    print(f"report: {result.files['index']}\nMLflow run: {run_id}")
    return 0


def _listening_source(source: str) -> Path:
    """A folder of <clip>/<condition>.wav, a `spresso eval` output folder (its listening/), or an
    evaluation run id (its report/listening artifacts are downloaded)."""
    src = Path(source)
    if src.is_dir():
        return src / "listening" if (src / "listening").is_dir() else src
    if src.exists():
        raise SpressoError(f"{src} is not a folder")

    # lazy: MLflow takes seconds to import; only this command needs it
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient  # lazy: as above

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise SpressoError(f"{source} is neither a folder nor (without MLFLOW_TRACKING_URI set) a reachable MLflow run")
    try:
        dest = MlflowClient().download_artifacts(source, "report/listening", tempfile.mkdtemp(prefix="spresso-lt-"))
    except MlflowException as err:
        raise SpressoError(f"{source} is neither a folder nor an evaluation run with report/listening: {str(err).splitlines()[0]}") from None
    return Path(dest)
