"""AudioAE training fed by Ray Data vs the in-worker reader: steps per second, side by side in one run.

    python benchmarks/audioae_feed.py [--minutes 4] [--steps 40] [--warmup 10] [--repeats 1] [--cpus 2]

One procedural corpus (spresso.audio.synth) is sharded once (spresso.data.shard); then the real
AudioAE stage (the demo preset's model, batch and scaling: 1 Ray Train worker of 1 CPU on a local Ray
of ``--cpus`` CPUs) runs ``--steps`` steps with each ``audioae.train.feed``, alternating when
``--repeats`` > 1. The loop logs every step's throughput and the time it waited for its batch
(``data/wait_seconds``) to MLflow; the first ``--warmup`` steps (Ray Data's start, the model's first
calls) are left out. Prints a table, the ratio of steps/s (ray_data / in_worker) and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from spresso.audio.synth import synth_corpus
from spresso.config import load_config
from spresso.data.crops import segment_samples
from spresso.data.shard import shard
from spresso.runtime import tracking_uri
from spresso.train.audioae import train_audioae

FEEDS = ("ray_data", "in_worker")


def run_feed(tmp: Path, feed: str, attempt: int, args) -> dict:
    """Train ``args.steps`` steps with ``feed``; its per-step step time and data wait from MLflow."""
    # A workdir per run (its own Ray Train folder and MLflow store): a repeat must not resume the last one.
    cfg = load_config("demo", [
        f"workdir={tmp / f'{feed}-{attempt}'}", f"data.shards_dir={tmp / 'shards'}", f"runtime.num_cpus={args.cpus}",
        "runtime.dashboard=false",
        f"audioae.train.feed={feed}", f"audioae.steps={args.steps}", "audioae.train.log_every=1",
        f"audioae.train.checkpoint_every={args.steps}", f"audioae.train.valid_every={10 * args.steps}",
        "audioae.train.valid_clips=1", "audioae.train.audio_examples=0",
    ])
    train_audioae(cfg, force=True)
    client = MlflowClient(tracking_uri(cfg.workdir, cfg.runtime.mlflow_tracking_uri))
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.runtime.experiment).experiment_id])

    def history(name: str) -> np.ndarray:
        points = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        return np.array([m.value for m in points if m.step > args.warmup])

    ac, tc = cfg.audioae, cfg.audioae.train
    audio_per_step = tc.batch_size * segment_samples(tc.segment_seconds, ac.model.sample_rate, ac.model.hop) \
        / ac.model.sample_rate * max(1, tc.scaling.workers)
    step_seconds = audio_per_step / history("audio_seconds_per_second")
    wait = history("data/wait_seconds")
    return {"steps": int(step_seconds.size), "steps_per_s": step_seconds.size / step_seconds.sum(),
            "wait_ms_per_step": 1000 * wait.mean(), "compute_ms_per_step": 1000 * (step_seconds.mean() - wait.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=4.0, help="procedural corpus length [4]")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10, help="first steps left out [10]")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the feeds N times, keep the best")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray [2]")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        raise SystemExit("--steps must exceed --warmup")

    tmp = Path(tempfile.mkdtemp(prefix="audioae-feed-"))
    try:
        synth_corpus(tmp / "corpus", args.minutes, seed=0)
        cfg = load_config("demo", [f"workdir={tmp}", f"runtime.num_cpus={args.cpus}", "runtime.dashboard=false"])
        res = shard([str(tmp / "corpus")], cfg, progress=False, track=False)
        print(f"shards: {res.clips} clips in {res.shards} tars", flush=True)
        best: dict[str, dict] = {}
        for attempt in range(args.repeats):
            for feed in FEEDS:
                r = run_feed(tmp, feed, attempt, args)
                if feed not in best or r["steps_per_s"] > best[feed]["steps_per_s"]:
                    best[feed] = r
        print(f"\n{'feed':10s} {'steps/s':>8s} {'wait ms/step':>13s} {'compute ms/step':>16s}  (steps {args.warmup + 1}..{args.steps})")
        for feed, r in best.items():
            print(f"{feed:10s} {r['steps_per_s']:8.2f} {r['wait_ms_per_step']:13.1f} {r['compute_ms_per_step']:16.1f}")
        ratio = best["ray_data"]["steps_per_s"] / best["in_worker"]["steps_per_s"]
        load = os.getloadavg()
        print(f"\nratio ray_data / in_worker steps/s: {ratio:.2f}   load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(json.dumps({"results": best, "ratio": round(ratio, 3), "loadavg": load, "cpus": args.cpus}, default=float))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
