"""`make rehearsal`: the paper's topology on this machine, end to end (issue #15, item 5).

1. start a local S3 server (moto) with a bucket, an MLflow server with basic auth whose artifacts go
   to the bucket, and an autoscaling Ray cluster (Ray's fake multi-node provider, the node types of
   ray_cluster.yaml at toy size, every worker type from zero, token auth), all on 127.0.0.1;
2. upload a synthesised corpus to the bucket and submit ``spresso pipeline run configs/rehearsal.yaml
   --set workdir=s3://BUCKET/work`` with the job API; during the training stage named by
   ``--kill-stage`` (stage1), once it has a checkpoint in the bucket, kill the node of one of its
   train workers: the autoscaler replaces it and the stage resumes from that checkpoint;
3. submit the same command again: every stage must be reused;
4. encode and decode a clip with a bundle loaded from the bucket;
5. wait for the idle nodes to go, print the summary, check that nothing was written under the
   repository's work/ folder, and stop everything it started (also on failure or Ctrl-C).
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fsspec

from spresso.audio.synth import synth_corpus
from spresso.config import load_config
from spresso.core.errors import SpressoError
from spresso.rehearsal.cluster import LABEL, LocalCluster
from spresso.rehearsal.jobs import REPO, JobOutcome, Jobs
from spresso.rehearsal.localwrites import changes, snapshot, work_folders_in_job_copies
from spresso.rehearsal.mlflow_server import MlflowServer
from spresso.rehearsal.placement import expected_node_types, type_with_label
from spresso.rehearsal.procs import MARKER, terminate
from spresso.rehearsal.roundtrip import roundtrip
from spresso.rehearsal.runs import pipeline_runs, runs_per_instance, stage_runs, states
from spresso.rehearsal.s3 import LocalS3, prefix_summary
from spresso.rehearsal.summary import print_summary
from spresso.rehearsal.watch import KillWatch

# The reduced (CI) DAG: S3, scale-up from zero, a 2-worker Ray Train stage with the node kill, the MLflow server.
REDUCED_UNTIL = ["precompute_latents"]
JOB_DRIVER_LABEL = "driver"  # the job's entrypoint asks for the on-demand driver node type


@dataclass
class Options:
    config: str = "configs/rehearsal.yaml"
    until: list[str] = field(default_factory=list)       # pipeline --until selectors ([]: the whole DAG)
    kill_stage: str | None = "train_stage1"               # MLflow stage tag of the training stage whose node is killed
    overrides: list[str] = field(default_factory=list)
    corpus_minutes: float = 1.5
    job_timeout: float = 1500.0
    idle_timeout: float = 120.0
    idle_minutes: float = 0.25
    rerun: bool = True
    bucket: str = "spresso-rehearsal"
    report: str | None = None                             # write the report as JSON here
    keep: bool = False                                    # keep the temporary folder (logs of every node)


@dataclass
class Report:
    ok: bool = False
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    bucket: dict[str, dict[str, int]] = field(default_factory=dict)
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    node_events: list = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    states_first: dict[str, str] = field(default_factory=dict)
    states_second: dict[str, str] = field(default_factory=dict)
    runs_per_stage: dict[str, int] = field(default_factory=dict)
    kill: dict = field(default_factory=dict)
    pinned_by: list[dict] = field(default_factory=list)  # detached actors left on worker nodes after the jobs
    asked_types: dict[str, str] = field(default_factory=dict)   # stage (or the job's driver) -> node type it asked for
    roundtrip: dict = field(default_factory=dict)
    local_writes: list[str] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failures.append(why)


def entrypoint(opts: Options, bucket: str) -> str:
    args = [sys.executable, "-m", "spresso", "pipeline", "run", opts.config, "--set", f"workdir=s3://{bucket}/work"]
    for o in opts.overrides:
        args += ["--set", o]
    for u in opts.until:
        args += ["--until", u]
    return shlex.join(args)


def upload_corpus(tmp: Path, url: str, minutes: float) -> int:
    files = synth_corpus(tmp / "corpus", minutes, seed=3)
    fs = fsspec.filesystem("s3")
    fs.put(str(tmp / "corpus") + "/", url.removeprefix("s3://") + "/", recursive=True)
    return len(files)


def job_row(name: str, out: JobOutcome) -> dict:
    return {"name": name, "status": out.status, "seconds": round(out.seconds, 1), "message": out.message[:300]}


def check_first(report: Report, opts: Options, watch: KillWatch | None, experiment: str) -> None:
    parents = pipeline_runs(experiment)
    if not parents:
        report.fail("no pipeline run on the MLflow server")
        return
    report.states_first = states(parents[0])
    bad = {k: v for k, v in report.states_first.items() if v not in ("done", "not selected")}
    if bad:
        report.fail(f"first run: stages not done: {bad}")
    runs = stage_runs(experiment)
    report.runs_per_stage = runs_per_instance(runs, parents[0].info.run_id)
    ran = {k for k, v in report.states_first.items() if v == "done"}
    if {k for k, n in report.runs_per_stage.items() if n == 1} != ran:
        report.fail(f"not one MLflow run per stage: {report.runs_per_stage} for {sorted(ran)}")
    report.stages = [asdict(r) for r in runs]
    if watch is None:
        return
    report.kill = {"stage": opts.kill_stage, "node": watch.killed_node, "node_type": watch.killed_type,
                   "checkpoint_step": watch.checkpoint_step, "world_size": watch.max_workers_seen,
                   "worker_node_types": sorted(watch.worker_types), "watch_errors": watch.errors[:5]}
    if watch.killed_at is None:
        report.fail(f"the node kill did not happen: no checkpoint of {opts.kill_stage} seen in the bucket")
        return
    resumed_step, resumed_at = watch.resumed_from(), watch.resumed_at()
    report.kill.update({"first_step_after_kill": resumed_step,
                        "kill_to_workers_back_s": round(watch.back_at - watch.killed_at, 1) if watch.back_at else None,
                        "kill_to_next_metric_s": round(resumed_at - watch.killed_at, 1) if resumed_at else None})
    if watch.max_workers_seen < 2:
        report.fail(f"{opts.kill_stage} ran with {watch.max_workers_seen} train worker(s), not 2 (DDP)")
    # A restart from step 0 logs its first steps again (2, 4, ...); a resumed run logs from its
    # checkpoint's step on (it may log that very step again), never below it.
    if resumed_step is None or resumed_step < (watch.checkpoint_step or 0) or not watch.checkpoint_step:
        report.fail(f"{opts.kill_stage} did not resume from its checkpoint (step {watch.checkpoint_step}): "
                    f"first step after the kill {resumed_step}")


def check_placement(report: Report, opts: Options, cluster: LocalCluster) -> None:
    """Every node type a stage (or the job's driver) asked for by label was started by the autoscaler."""
    cfg = load_config(opts.config, [f"workdir=s3://{opts.bucket}/work", *opts.overrides])
    ran = [k for k, v in report.states_first.items() if v == "done"]
    report.asked_types = {"job driver": type_with_label(JOB_DRIVER_LABEL, cluster.node_types),
                          **expected_node_types(cfg, ran, cluster.node_types)}
    missing = {k: v for k, v in report.asked_types.items() if v not in cluster.book.launched_types()}
    if missing:
        report.fail(f"node types asked for but never started by the autoscaler: {missing}")


def check_second(report: Report, experiment: str) -> None:
    parents = pipeline_runs(experiment)
    if len(parents) < 2:
        report.fail("the second submission left no pipeline run")
        return
    report.states_second = states(parents[-1])
    fresh = {k: v for k, v in report.states_second.items() if v not in ("reused", "not selected")}
    if fresh:
        report.fail(f"second run did not reuse every stage: {fresh}")


def poller(cluster: LocalCluster, watch: KillWatch | None):
    """Between job polls: the node book (and the kill watch); stop at once when nodes die at start."""
    def poll() -> None:
        watch.poll() if watch else cluster.poll()
        why = cluster.runaway()
        if why:
            raise SpressoError(f"the autoscaler keeps launching nodes that die: {why} (logs: {cluster.root})")
    return poll


def run(opts: Options) -> Report:
    report = Report()
    t_start = time.time()
    work = REPO / "work"
    before = snapshot(work)
    tmp = Path(tempfile.mkdtemp(prefix="srh-"))  # short: Ray's socket paths live under it
    marker = {MARKER: tmp.name}
    experiment = "spresso-rehearsal"
    with ExitStack() as stack:
        if not opts.keep:
            stack.callback(shutil.rmtree, tmp, True)  # registered first: removed last, after every server stopped
        # then whatever the servers left (MLflow's uvicorn child outlives its parent for a moment)
        stack.callback(lambda: report.leftover_pids.extend(terminate(MARKER, tmp.name)))
        s3 = LocalS3(bucket=opts.bucket, log_dir=tmp, env=marker).start()
        stack.callback(s3.stop)
        os.environ.update(s3.aws_env())  # this process reads the bucket too (corpus, summary, the bundle)
        mlflow = MlflowServer(tmp / "mlflow", f"s3://{opts.bucket}/mlflow", env={**s3.aws_env(), **marker})
        mlflow.start(wait=False)  # its start-up (~30 s on 2 cores) overlaps the cluster's and the corpus upload
        stack.callback(mlflow.stop)
        os.environ.update(mlflow.client_env())
        cluster = LocalCluster(tmp / "r", REPO / "ray_cluster.yaml", env={**s3.aws_env(), **mlflow.client_env()},
                               idle_minutes=opts.idle_minutes)
        stack.callback(lambda: report.leftover_pids.extend(cluster.stop(keep=opts.keep)))
        cluster.start()
        report.seconds["corpus_files"] = upload_corpus(tmp, f"s3://{opts.bucket}/work/corpus", opts.corpus_minutes)
        mlflow.wait_healthy()
        report.seconds["start"] = round(time.time() - t_start, 1)
        jobs = Jobs(cluster.dashboard, cluster.token, driver_labels={LABEL: JOB_DRIVER_LABEL})
        watch = KillWatch(cluster, s3, experiment, opts.kill_stage, "work/ray_train/",
                          spare_type=type_with_label(JOB_DRIVER_LABEL, cluster.node_types)) if opts.kill_stage else None
        t0 = time.time()
        first = jobs.run(entrypoint(opts, opts.bucket), opts.job_timeout, on_poll=poller(cluster, watch))
        report.seconds["first_submission"] = round(time.time() - t0, 1)
        report.jobs.append(job_row("first", first))
        first.logs = cluster.job_log(first.submission_id) or first.logs
        if not first.ok:
            report.fail(f"first submission {first.status}: {first.message[:300]}\n{first.logs[-5000:]}")
        else:
            check_first(report, opts, watch, experiment)
            check_placement(report, opts, cluster)
            if opts.rerun:
                t0 = time.time()
                second = jobs.run(entrypoint(opts, opts.bucket), opts.job_timeout, on_poll=poller(cluster, None))
                report.seconds["second_submission"] = round(time.time() - t0, 1)
                report.jobs.append(job_row("second", second))
                second.logs = cluster.job_log(second.submission_id) or second.logs
                if not second.ok:
                    report.fail(f"second submission {second.status}: {second.message}\n{second.logs[-2000:]}")
                else:
                    check_second(report, experiment)
            if not opts.until:
                t0 = time.time()
                report.roundtrip = roundtrip(f"s3://{opts.bucket}/work", tmp)
                report.seconds["roundtrip"] = round(time.time() - t0, 1)
        # Ray Data's detached helper actors pin worker nodes (spresso.rehearsal.release): reported, then
        # ended by a last small job so that the scale-down to zero shows
        time.sleep(3)  # the jobs' own actors are being torn down
        report.pinned_by = cluster.actors_on_workers()
        if report.pinned_by:
            released = jobs.run(shlex.join([sys.executable, "-m", "spresso.rehearsal.release"]), 300, on_poll=cluster.poll)
            report.jobs.append(job_row("release detached actors", released))
            if not released.ok:
                report.fail(f"the job ending the detached actors {released.status}: {released.message[:500]}")
        t0 = time.time()
        if not cluster.wait_idle(opts.idle_timeout):
            report.fail(f"worker nodes still alive {opts.idle_timeout:.0f} s after the jobs: {cluster.book.alive()}\n"
                        f"{cluster.status()}")
        report.seconds["idle_down"] = round(time.time() - t0, 1)
        report.nodes = cluster.book.per_type()
        report.node_events = [(round(t - t_start, 1), kind, what, nid[-5:]) for t, kind, what, nid in cluster.book.events()]
        copies = work_folders_in_job_copies(cluster.root)
        if copies:
            report.fail(f"stages wrote to local work/ folders in the job's working directory: {copies}")
        report.bucket = prefix_summary(s3.objects(), depth=2)
    if report.leftover_pids:
        report.fail(f"processes left running: {report.leftover_pids}")
    report.local_writes = changes(before, snapshot(work))
    if report.local_writes:
        report.fail(f"written under {work}: {report.local_writes[:10]}")
    report.seconds["total"] = round(time.time() - t_start, 1)
    report.ok = not report.failures
    return report


def interrupt_as_keyboard(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main_options(opts: Options) -> int:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: every server and node is stopped on the way out
    signal.signal(signal.SIGTERM, interrupt_as_keyboard)
    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per file Ray packages for the job
    try:
        report = run(opts)
    except SpressoError as err:
        print(f"rehearsal failed: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # everything it started is already stopped (ExitStack); say what broke
        print(f"rehearsal failed: {type(err).__name__}: {str(err)[:3000]}", file=sys.stderr)
        return 2
    print_summary(report)
    if opts.report:
        Path(opts.report).write_text(json.dumps(asdict(report), indent=1, default=str))
    return 0 if report.ok else 1
