"""`spresso pipeline run|status|graph`, `spresso runs compare`, `spresso lineage`."""
from __future__ import annotations

import argparse
from pathlib import Path

from spresso.cli.examples import add_examples
from spresso.config import load_config


def _config(args):
    cfg = load_config(args.pipeline_config, args.overrides)
    if getattr(args, "tracking_uri", None):
        cfg.runtime.mlflow_tracking_uri = args.tracking_uri
    return cfg


def _uri(args) -> str:
    """The store a query reads: found, never created (see existing_tracking_uri)."""
    # lazy: pulls MLflow; keeps `spresso --help` fast
    from spresso.runtime.tracking import existing_tracking_uri

    cfg = load_config(args.config, args.overrides)
    return existing_tracking_uri(cfg.workdir, args.tracking_uri or cfg.runtime.mlflow_tracking_uri, source=args.config)


def _run(args) -> int:
    cfg = _config(args)
    if args.input:
        # Folders named on the command line are relative to where it was typed, not to the workdir.
        cfg.pipeline.inputs = [*cfg.pipeline.inputs, *(p if "://" in p else str(Path(p).resolve()) for p in args.input)]
    if args.max_parallel:
        cfg.pipeline.max_parallel = args.max_parallel
    if args.dry_run:
        # lazy: imports Ray and MLflow; keeps `spresso --help` fast
        from spresso.pipeline.cost_table import load_cost_table  # lazy: as above
        from spresso.pipeline.graph import build_graph  # lazy: as above
        from spresso.pipeline.plan import describe  # lazy: as above
        from spresso.pipeline.registry import registry  # lazy: as above

        measured = None
        if args.cost_table:
            gpu, measured = load_cost_table(args.cost_table)
            print(f"cost table {args.cost_table}: seconds per step measured on {gpu} for {', '.join(measured)}")
            if cfg.pipeline.gpu_type.split("-")[0] not in gpu:
                print(f"note: the other stages use assumed {cfg.pipeline.gpu_type} figures (pipeline.gpu_type): "
                      f"the total mixes two GPU types")
        graph = build_graph(cfg, registry())
        selected = graph.select(args.from_, args.until, args.only) | {n for s in args.force for n in graph.match(s)}
        print(describe(graph, selected, measured))
        print("dry run: nothing started")
        return 0
    # lazy: imports Ray and MLflow; keeps `spresso --help` fast
    from spresso.pipeline import run_pipeline
    from spresso.pipeline.publish import register_bundles  # lazy: as above

    result = run_pipeline(cfg, from_=args.from_, until=args.until, only=args.only, force=args.force)
    print(result.table())
    for alias, version in register_bundles(cfg, result).items():
        print(f"registered models:/{cfg.pipeline.registered_model}@{alias} (version {version})")
    counts = ", ".join(f"{v} {k}" for k, v in result.counts().items())
    print(f"pipeline run {result.parent_run_id}: {counts}")
    print(f"MLflow: mlflow ui --backend-store-uri {result.tracking_uri}" if not result.tracking_uri.startswith("http")
          else f"MLflow: {result.tracking_uri}")
    return 0 if result.ok else 1


def _status(args) -> int:
    # lazy: imports Ray and MLflow; keeps `spresso --help` fast
    from spresso.pipeline.status import format_status, pipeline_status

    print(format_status(pipeline_status(_config(args), source=args.pipeline_config)))
    return 0


def _graph(args) -> int:
    # lazy: imports Ray and MLflow; keeps `spresso --help` fast
    from spresso.pipeline.graph import build_graph
    from spresso.pipeline.registry import registry  # lazy: as above
    from spresso.pipeline.render import render_graph  # lazy: as above

    cfg = _config(args)
    states = {}
    if args.status:
        from spresso.pipeline.status import pipeline_status  # lazy: as above

        states = {s.name: s.state for s in pipeline_status(cfg, source=args.pipeline_config)}
    engine = render_graph(build_graph(cfg, registry()), args.out, states, engine=args.engine)
    print(f"{args.out} ({engine})")
    return 0


def _compare(args) -> int:
    # lazy: imports Ray and MLflow; keeps `spresso --help` fast
    from spresso.pipeline.compare import compare_runs

    cmp = compare_runs(_uri(args), args.experiment, args.metric or None, args.stage, args.parent, args.max_runs, args.status)
    print(cmp.table)
    print(f"compare in the MLflow UI: {cmp.url}")
    return 0


def _lineage(args) -> int:
    # lazy: imports Ray and MLflow; keeps `spresso --help` fast
    from spresso.pipeline.lineage import format_lineage, lineage

    kind, rows = lineage(_uri(args), args.target)
    print(format_lineage(kind, rows))
    return 0


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline_config", metavar="CONFIG", help="preset name (demo, paper) or YAML path with a pipeline: section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set pipeline.max_parallel=1 (repeatable)")


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="demo", help="config whose MLflow store to query [demo]")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides the config's)")


def register(commands, train) -> None:
    pipe = commands.add_parser("pipeline", help="run the stage DAG with caching and lineage; its status and picture")
    sub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION")
    pipe.set_defaults(func=lambda args: pipe.print_help() or 2)

    run = sub.add_parser("run", help="run (or resume) the pipeline: finished stages with unchanged inputs are reused")
    add_examples(run, "pipeline run")
    _pipeline_args(run)
    sel = "a stage (train_dit), a branch instance (stage1@c11), a stage kind (every branch) or @point"
    run.add_argument("--from", dest="from_", action="append", default=[], metavar="S", help=f"start at S and its downstream; {sel}")
    run.add_argument("--until", action="append", default=[], metavar="S", help="stop after S (and its upstream)")
    run.add_argument("--only", action="append", default=[], metavar="S", help="run only S (upstream must be reusable)")
    run.add_argument("--force", action="append", default=[], metavar="S", help="rerun S even when a finished run matches")
    run.add_argument("--input", action="append", default=[], metavar="DIR", help="more raw audio folders for the shard stage")
    run.add_argument("--max-parallel", type=int, default=None, help="stages at once on the local executor")
    run.add_argument("--dry-run", action="store_true", help="validate, print the DAG, resources and GPU-hours; start nothing")
    run.add_argument("--cost-table", default=None, metavar="JSON",
                     help="with --dry-run: a benchmarks/gpu_suite.py result; its measured seconds per step replace the assumed ones")
    run.set_defaults(func=_run)

    st = sub.add_parser("status", help="each stage: done, reused, running, failed, stale or pending, with its MLflow run")
    add_examples(st, "pipeline status")
    _pipeline_args(st)
    st.add_argument("--tracking-uri", default=None, help="MLflow store to read (overrides the config's and MLFLOW_TRACKING_URI)")
    st.set_defaults(func=_status)

    gr = sub.add_parser("graph", help="write the DAG as a picture (png/svg/pdf, or .dot source)")
    add_examples(gr, "pipeline graph")
    _pipeline_args(gr)
    gr.add_argument("--out", "-o", default="dag.png")
    gr.add_argument("--engine", default="auto", choices=["auto", "dot", "matplotlib"])
    gr.add_argument("--status", action="store_true", help="colour stages by their current status")
    gr.add_argument("--tracking-uri", default=None, help="MLflow store --status reads (overrides the config's)")
    gr.set_defaults(func=_graph)

    runs = commands.add_parser("runs", help="query MLflow runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    runs.set_defaults(func=lambda args: runs.print_help() or 2)
    cmp = runs_sub.add_parser("compare", help="a table of runs and metrics, and the MLflow UI compare link")
    add_examples(cmp, "runs compare")
    _tracking_args(cmp)
    cmp.add_argument("--experiment", "-e", default=None)
    cmp.add_argument("--metric", "-m", action="append", default=[],
                     help="metric column (repeatable): a full name (d96.fad_aisfx) or its last part without suffix "
                          "(fad: every point's fad_*); an unknown one lists the names there are [all, up to 8]")
    cmp.add_argument("--stage", default=None, help="only runs of this stage")
    cmp.add_argument("--parent", default=None, help="only child runs of this pipeline run (its id or a unique prefix)")
    cmp.add_argument("--status", default=None, help="FINISHED, FAILED, RUNNING ...")
    cmp.add_argument("--max-runs", type=int, default=30)
    cmp.set_defaults(func=_compare)

    lin = commands.add_parser("lineage", help="upstream runs and dataset digests of a run or output path; runs that used a digest")
    add_examples(lin, "lineage")
    lin.add_argument("target", metavar="RUN_OR_PATH_OR_DIGEST",
                     help="a run id (or a unique prefix, e.g. the 12 digits `runs compare` prints), an output path, "
                          "or a dataset digest (8+ hex digits)")
    _tracking_args(lin)
    lin.set_defaults(func=_lineage)
