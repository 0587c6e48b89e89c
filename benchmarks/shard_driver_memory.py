"""Driver memory of `spresso shard` for N and 10·N short procedural clips (issue #16: at most 1.2x).

    python benchmarks/shard_driver_memory.py               # N = 300 one-second clips
    python benchmarks/shard_driver_memory.py --clips 2000  # the issue's size (longer)

The N corpus is procedural sound effects (spresso.audio.synth) cut into ``--clip-seconds`` clips;
the 10·N corpus is ten copies of it in ten top-level folders (distinct files, ids and keys). Both
are sharded in one process on one local Ray, after a warm-up run, and for each the driver's peak
is printed three ways: Python allocations (tracemalloc peak during the call, in a second run),
the process's peak resident memory (RSS sampled every 10 ms) and that peak minus the RSS before the
call. The ratios 10·N / N are the figures. The RSS growth is mostly Ray's own bookkeeping of the
tasks submitted (about 10 KB each, in its C++ core worker): it follows the number of tasks, i.e.
of tars (clips / clips_per_shard) and listing jobs, not of clips.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import psutil

from spresso.audio.synth import synth_corpus
from spresso.config import load_config
from spresso.data.shard import shard
from spresso.runtime import init_ray


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the most above the RSS at start."""

    def __init__(self, every: float = 0.01):
        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self.base = self.proc.memory_info().rss
        self.total = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.total = max(self.total, rss)
            self.peak = max(self.peak, rss - self.base)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(inputs: list[str], cfg, out: Path) -> dict:
    """Two runs into fresh folders: one sampling RSS, one under tracemalloc (whose own bookkeeping
    would otherwise count as RSS)."""
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        res = shard(inputs, cfg, output=str(out / "rss"), progress=False, track=False)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    shard(inputs, cfg, output=str(out / "py"), progress=False, track=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"clips": res.clips, "files": res.files, "shards": res.shards, "seconds": seconds,
            "py_peak": peak, "rss_peak": rss.peak, "rss_total": rss.total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=300, help="N: clips in the small corpus (about) [300]")
    ap.add_argument("--clip-seconds", type=float, default=1.0, help="clip length [1.0]")
    ap.add_argument("--clips-per-shard", type=int, default=64, help="tar size [64]")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="shard-mem-"))
    try:
        small = tmp / "small" / "sfx"
        synth_corpus(small, args.clips * args.clip_seconds / 60.0, seed=0)
        big = tmp / "big"
        for i in range(10):
            shutil.copytree(small, big / f"copy{i:02d}")
        synth_corpus(tmp / "warm" / "sfx", 0.2, seed=1)
        cfg = load_config(None, [f"workdir={tmp}", f"data.clip_seconds={args.clip_seconds}",
                                 f"data.clips_per_shard={args.clips_per_shard}", "runtime.num_cpus=2"])
        init_ray(cfg.runtime)
        shard([str(tmp / "warm")], cfg, output=str(tmp / "out-warm"), progress=False, track=False)
        n = measure([str(small)], cfg, tmp / "out-n")
        n10 = measure([str(big)], cfg, tmp / "out-10n")
        print(f"{'':>4} {'clips':>7} {'files':>6} {'tars':>5} {'seconds':>8} {'python peak MiB':>16} "
              f"{'RSS peak MiB':>13} {'RSS growth MiB':>15}")
        for name, r in (("N", n), ("10N", n10)):
            print(f"{name:>4} {r['clips']:>7} {r['files']:>6} {r['shards']:>5} {r['seconds']:>8.1f} "
                  f"{r['py_peak'] / 2**20:>16.2f} {r['rss_total'] / 2**20:>13.1f} {r['rss_peak'] / 2**20:>15.2f}")
        print(f"10N / N: clips {n10['clips'] / n['clips']:.2f}x; driver python peak {n10['py_peak'] / n['py_peak']:.2f}x, "
              f"RSS peak {n10['rss_total'] / n['rss_total']:.2f}x, RSS growth {n10['rss_peak'] / max(n['rss_peak'], 1):.2f}x "
              f"(target: peak <= 1.2x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
