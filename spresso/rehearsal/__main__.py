"""python -m spresso.rehearsal [--reduced]: see spresso.rehearsal.run."""
from __future__ import annotations

import argparse
import sys

from spresso.rehearsal.run import REDUCED_UNTIL, Options, main_options


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m spresso.rehearsal", description=__doc__)
    p.add_argument("--reduced", action="store_true",
                   help=f"the CI variant: the DAG until {', '.join(REDUCED_UNTIL)}, the node kill in train_audioae")
    p.add_argument("--until", action="append", default=None, metavar="S", help="pipeline --until selector (repeatable)")
    p.add_argument("--kill-stage", default=None, help="training stage (its MLflow stage tag) whose worker node is killed [train_stage1; reduced: train_audioae]")
    p.add_argument("--no-kill", action="store_true")
    p.add_argument("--no-rerun", action="store_true", help="skip the second submission")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--config", default="configs/rehearsal.yaml")
    p.add_argument("--job-timeout", type=float, default=None)
    p.add_argument("--report", default=None, help="also write the report as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (every node's logs)")
    a = p.parse_args(argv)
    until = a.until if a.until is not None else (list(REDUCED_UNTIL) if a.reduced else [])
    kill = None if a.no_kill else (a.kill_stage or ("train_audioae" if a.reduced else "train_stage1"))
    timeout = a.job_timeout or (600.0 if a.reduced else 1500.0)
    return Options(config=a.config, until=until, kill_stage=kill, overrides=a.overrides, job_timeout=timeout,
                   rerun=not a.no_rerun, report=a.report, keep=a.keep)


if __name__ == "__main__":
    sys.exit(main_options(parse()))
