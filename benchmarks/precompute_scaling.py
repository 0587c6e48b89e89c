"""x0 precompute: actors that write their own blocks, against a plain loop, and the driver's memory.

    python benchmarks/precompute_scaling.py                          # N = 400 clips of 1 s, 3 rounds, then 10 N for memory
    python benchmarks/precompute_scaling.py --clips 2000 --rounds 3 --memory-factor 10

One run measures, side by side on the same shards and the same AudioAE (random weights, the demo's
width unless --width):
- clips per second of a plain single-process loop (read the block from its tar, encode, write the
  Zarr block: the same library calls as an actor, with no Ray; torch 1 thread), of ``fill_cache``
  with 1 actor and with 2 actors of one CPU each (torch 1 thread each: FillBlocks gives torch as
  many threads as the actor has CPUs); the ratios 2 actors / 1 actor and (2 actors per core) / plain loop;
- fairness: the three sides run round-robin ``--rounds`` times and the best round of each counts;
  every side's rate is measured the same way, over the blocks that ran after each of its workers
  finished its first block (process start, imports, model load and first-call costs left out);
- where the CPU went while each side ran (its workers, this driver, Ray's own processes, everything
  else on the machine) and the load average, since a shared machine moves these figures;
- the driver's peak RSS above its level before the fill, for N and for ``--memory-factor`` x N
  clips, and their ratio (the driver receives a few numbers per block, so it should not grow).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import ray
import torch

from spresso.audio.synth import synth_corpus
from spresso.config import load_config
from spresso.config.scaling import ActorPoolSettings
from spresso.core.checkpoint import save_checkpoint
from spresso.data.latents import EncodeLatents, ShardClipSource, open_or_create_cache
from spresso.data.precompute import FillBlocks, fill_cache
from spresso.data.shard import shard
from spresso.models.audioae import AudioAE
from spresso.runtime import init_ray


class PeakRSS:
    """Samples this process's resident memory every 20 ms; ``peak`` is the highest seen."""

    def __init__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def corpus_config(root: Path, clips: int, width: int):
    """Shards of about ``clips`` 1-second clips and a random AudioAE; returns (cfg, audioae_dir, shards_dir)."""
    cfg = load_config("demo", [f"workdir={root}", "data.clip_seconds=1.0", "data.clips_per_shard=256",
                               f"audioae.model.width={width}", "audioae.cache.chunk_clips=32",
                               "audioae.cache.batch_size=16", "runtime.num_cpus=2", "runtime.actor_cpus=1"])
    # about one 1 s clip per second of procedural audio (measured: 60 requested -> ~62 made)
    synth_corpus(root / "corpus", clips / 60, seed=0)
    shards = shard([str(root / "corpus")], cfg, output=str(root / "shards"), progress=False, track=False)
    torch.manual_seed(0)
    ae_dir = root / "audioae"
    save_checkpoint(ae_dir, AudioAE.from_config(cfg.audioae.model).state_dict(), kind="audioae", config=cfg.to_dict())
    return cfg, str(ae_dir), shards.out, shards.clips


def fresh_cache(cfg, ae_dir: str, shards_dir: str, name: str):
    cfg = cfg.model_copy(update={"audioae": cfg.audioae.model_copy(update={"latents_path": f"bench/{name}.zarr"})})
    return open_or_create_cache(cfg, ae_dir, shards_dir, overwrite=True)


class ReportsThreads(EncodeLatents):
    """The encoder, saying how many torch threads its process computes with (printed by the actor)."""

    def __init__(self, checkpoint_dir: str):
        super().__init__(checkpoint_dir)
        print(f"x0 worker pid {os.getpid()}: torch threads {torch.get_num_threads()}", flush=True)


Block = tuple[int, float, float, int, float]  # worker, began, ended (wall clock), rows, CPU seconds


def after_first(blocks: list[Block]) -> list[Block]:
    """Every block but each worker's first (start-up and first-call costs)."""
    firsts = {}
    for b in sorted(blocks, key=lambda b: b[2]):
        firsts.setdefault(b[0], b)
    return [b for b in blocks if b is not firsts[b[0]]]


def per_cpu_second(blocks: list[Block]) -> float:
    """Clips per CPU-second of the workers, each worker's first block left out."""
    rest = after_first(blocks)
    return sum(b[3] for b in rest) / sum(b[4] for b in rest)


def steady_rate(blocks: list[Block]) -> float:
    """Clips per second over the window after every worker finished its first block.

    ``blocks``: (worker, began, ended, rows, cpu) per block. Blocks that straddle the window's start
    count in proportion to their overlap, so no side gains from where its blocks happen to fall.
    """
    firsts: dict[int, float] = {}
    for worker, _, ended, _, _ in sorted(blocks, key=lambda b: b[2]):
        firsts.setdefault(worker, ended)
    t0, t1 = max(firsts.values()), max(b[2] for b in blocks)
    rows = sum(n * max(0.0, min(e, t1) - max(s, t0)) / (e - s) for _, s, e, n, _ in blocks if e > s)
    return rows / (t1 - t0) if t1 > t0 else float("nan")


class CpuByRole:
    """CPU seconds every process on the machine used while a side ran, grouped by role."""

    def __init__(self, driver_pid: int):
        self.driver_pid = driver_pid

    @staticmethod
    def _snapshot() -> dict[int, tuple[str, float]]:
        out = {}
        for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            ct = p.info["cpu_times"]
            if ct is not None:
                out[p.pid] = (" ".join(p.info["cmdline"] or []) or p.info["name"] or "", ct.user + ct.system)
        return out

    def _role(self, pid: int, cmd: str) -> str:
        if pid == self.driver_pid:
            return "driver"
        if "MapBatches(FillBlocks)" in cmd:
            return "actors"
        if "ray" in cmd.split(" ")[0] or "ray::" in cmd or "/ray/" in cmd:
            return "ray"
        return "other"

    def __enter__(self):
        self.before, self.seen, self._stop = self._snapshot(), {}, threading.Event()
        self.load = os.getloadavg()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):  # actors exit with the fill: keep their last reading
        while True:
            self.seen.update(self._snapshot())
            if self._stop.wait(0.5):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seen.update(self._snapshot())
        self.by_role: dict[str, float] = {}
        for pid, (cmd, cpu) in self.seen.items():
            role = self._role(pid, cmd)
            self.by_role[role] = self.by_role.get(role, 0.0) + cpu - self.before.get(pid, (cmd, 0.0))[1]

    def describe(self, seconds: float) -> str:
        parts = ", ".join(f"{r} {self.by_role.get(r, 0.0) / seconds:.2f}" for r in ("actors", "driver", "ray", "other"))
        return f"cores busy: {parts}; load avg {self.load[0]:.1f}"


def plain_loop(cfg, ae_dir: str, shards_dir: str) -> tuple[float, float, str]:
    """One process, no Ray: block by block, the same source, model and block write as an actor.

    Returns (steady clips/s, clips per CPU-second, where the CPU went).
    """
    torch.set_num_threads(1)
    cache = fresh_cache(cfg, ae_dir, shards_dir, "plain")
    source = ShardClipSource(shards_dir, int(cache.attrs["clip_samples"]))
    filler = FillBlocks(cache.path, source, EncodeLatents, {"checkpoint_dir": ae_dir}, cfg.audioae.cache.batch_size)
    blocks = []
    with CpuByRole(os.getpid()) as cpu:
        t0 = time.perf_counter()
        for a, b in cache.blocks():  # timed as FillBlocks.__call__ times an actor's blocks
            began, c0 = time.time(), time.process_time()
            filler.fill(a, b)
            blocks.append((0, began, time.time(), b - a, time.process_time() - c0))
        seconds = time.perf_counter() - t0
    return steady_rate(blocks), per_cpu_second(blocks), cpu.describe(seconds)


class BlockTimes:
    """The block descriptors as the driver receives them (wraps Dataset.iter_batches)."""

    def __init__(self):
        self.blocks: list[Block] = []
        self._real = ray.data.Dataset.iter_batches

    def __enter__(self):
        real, blocks = self._real, self.blocks

        def timed(ds, *args, **kwargs):
            for batch in real(ds, *args, **kwargs):
                blocks.extend(zip(batch["pid"].tolist(), batch["began"].tolist(), batch["ended"].tolist(),
                                  batch["rows"].tolist(), batch["cpu"].tolist()))
                yield batch

        ray.data.Dataset.iter_batches = timed
        return self

    def __exit__(self, *exc):
        ray.data.Dataset.iter_batches = self._real


def ray_fill(cfg, ae_dir: str, shards_dir: str, actors: int, name: str, mapper: type = EncodeLatents):
    """One fill_cache with ``actors`` one-CPU actors.

    Returns (clips/s overall, steady clips/s, clips per actor CPU-second, driver memory, CPU by role).
    """
    cache = fresh_cache(cfg, ae_dir, shards_dir, name)
    source = ShardClipSource(shards_dir, int(cache.attrs["clip_samples"]))
    pool = ActorPoolSettings(actors=actors, cpus_per_actor=1)
    with PeakRSS() as mem, BlockTimes() as blocks, CpuByRole(os.getpid()) as cpu:
        t0 = time.perf_counter()
        fill_cache(cache, source, mapper, {"checkpoint_dir": ae_dir}, batch_size=cfg.audioae.cache.batch_size,
                            pool=pool, runtime=cfg.runtime, progress=False)
        seconds = time.perf_counter() - t0
    assert cache.complete
    return cache.n_rows / seconds, steady_rate(blocks.blocks), per_cpu_second(blocks.blocks), mem, cpu.describe(seconds)


def _fill_in_child(args: tuple, out) -> None:
    """In a fresh process joined to the running Ray: one fill, and this process's peak memory."""
    address, cfg, ae_dir, shards_dir = args
    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"ray_address": address})})
    rate, _, _, mem, _ = ray_fill(cfg, ae_dir, shards_dir, 2, "memory")
    out.put((rate, mem.peak_mb, mem.growth_mb))


def driver_memory(address: str, cfg, ae_dir: str, shards_dir: str) -> tuple[float, float, float]:
    """(clips/s, peak MB, growth MB) of a driver process that only runs the fill (nothing else inflates it)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_fill_in_child, args=((address, cfg, ae_dir, shards_dir), queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=400, help="N: clips of 1 s for the throughput runs [400]")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds; each side's best counts [3]")
    ap.add_argument("--memory-factor", type=int, default=10, help="the memory check also runs factor x N clips [10]")
    ap.add_argument("--width", type=int, default=128, help="AudioAE width (the demo's 128)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="precompute-bench-"))
    cfg, ae, shards_dir, n = corpus_config(root / "n", args.clips, args.width)
    init_ray(cfg.runtime)
    ray_fill(cfg, ae, shards_dir, 2, "warm-up", ReportsThreads)  # Ray, Ray Data and the workers' imports, untimed
    print(f"{n} clips of 1 s, AudioAE width {args.width}, cache blocks of {cfg.audioae.cache.chunk_clips} clips, "
          f"{os.cpu_count()} cores, {args.rounds} round(s); torch threads: plain loop 1, each 1-CPU actor 1")
    print("  round side           clips/s steady (overall)  clips per worker CPU-s   where the cores went (CPU-s per s)")
    best: dict[str, float] = {}
    per_cpu: dict[str, float] = {}
    for r in range(args.rounds):
        for side in ("plain", "1 actor", "2 actors"):
            if side == "plain":
                rate, eff, cpu = plain_loop(cfg, ae, shards_dir)
                overall = float("nan")
            else:
                overall, rate, eff, _, cpu = ray_fill(cfg, ae, shards_dir, int(side[0]), f"r{r}-{side[0]}")
            best[side] = max(best.get(side, 0.0), rate)
            per_cpu[side] = max(per_cpu.get(side, 0.0), eff)
            print(f"  {r:5d} {side:9s} {rate:13.1f} ({overall:7.1f}) {eff:17.1f}        {cpu}", flush=True)
    plain, one, two = best["plain"], best["1 actor"], best["2 actors"]
    print(f"  best of {args.rounds}: plain {plain:.1f}, 1 actor {one:.1f}, 2 actors {two:.1f} clips/s")
    print(f"  2 actors / 1 actor               {two / one:6.2f}x   target >= 1.6")
    print(f"  2 actors per core / plain loop   {two / 2 / plain:6.2f}x   target >= 0.8")
    print(f"  per worker CPU-second (time waiting for a core left out): 2 actors / plain {per_cpu['2 actors'] / per_cpu['plain']:.2f}x, "
          f"1 actor / plain {per_cpu['1 actor'] / per_cpu['plain']:.2f}x")
    if args.memory_factor > 1:
        big_cfg, big_ae, big_shards, big_n = corpus_config(root / "big", args.clips * args.memory_factor, args.width)
        address = ray.get_runtime_context().gcs_address
        _, peak_n, grow_n = driver_memory(address, cfg, ae, shards_dir)
        _, peak_big, grow_big = driver_memory(address, big_cfg, big_ae, big_shards)
        print(f"  driver peak RSS (a process that only fills): {peak_n:.0f} MB for {n} clips, {peak_big:.0f} MB for "
              f"{big_n} clips: {peak_big / peak_n:.2f}x for {big_n / n:.1f}x the clips (target <= 1.2x); growth during "
              f"the fill {grow_n:.1f} MB and {grow_big:.1f} MB; load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
