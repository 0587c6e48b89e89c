"""x0 precompute: actors that write their own blocks, against a plain loop, and the driver's memory.

    python benchmarks/precompute_scaling.py                 # N = 400 clips of 1 s, then 10 N for memory
    python benchmarks/precompute_scaling.py --clips 2000 --memory-factor 10

One run measures, side by side on the same shards and the same AudioAE (random weights, the demo's
width unless --width):
- clips per second of a plain single-process loop (read the block from its tar, encode, write the
  Zarr block: the same library calls as an actor, with no Ray), of ``fill_cache`` with 1 actor and
  with 2 actors of one CPU each; the ratios 2 actors / 1 actor and (2 actors per core) / plain loop;
- the driver's peak RSS above its level before the fill, for N and for ``--memory-factor`` x N
  clips, and their ratio (the driver receives three numbers per block, so it should not grow).
Ray is started and warmed up before any timing.
"""
from __future__ import annotations

import argparse
import multiprocessing
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


def plain_loop(cfg, ae_dir: str, shards_dir: str) -> float:
    """One process, no Ray: block by block, the same source, model and block write as an actor."""
    torch.set_num_threads(1)
    cache = fresh_cache(cfg, ae_dir, shards_dir, "plain")
    source = ShardClipSource(shards_dir, int(cache.attrs["clip_samples"]))
    filler = FillBlocks(cache.path, source, EncodeLatents, {"checkpoint_dir": ae_dir}, cfg.audioae.cache.batch_size)
    t0 = time.perf_counter()
    for a, b in cache.blocks():
        filler.fill(a, b)
    return cache.n_rows / (time.perf_counter() - t0)


class BlockTimes:
    """Timestamps of the block descriptors as the driver receives them (wraps Dataset.iter_batches)."""

    def __init__(self):
        self.times: list[tuple[float, int]] = []
        self._real = ray.data.Dataset.iter_batches

    def __enter__(self):
        real, times = self._real, self.times

        def timed(ds, *args, **kwargs):
            for batch in real(ds, *args, **kwargs):
                times.append((time.perf_counter(), int(np.sum(batch["rows"]))))
                yield batch

        ray.data.Dataset.iter_batches = timed
        return self

    def __exit__(self, *exc):
        ray.data.Dataset.iter_batches = self._real

    def steady_rate(self) -> float:
        """Clips per second after the first block arrived (the actors' start-up left out)."""
        (t_first, _), rest = self.times[0], self.times[1:]
        return sum(n for _, n in rest) / (rest[-1][0] - t_first) if rest else float("nan")


def ray_fill(cfg, ae_dir: str, shards_dir: str, actors: int, name: str) -> tuple[float, float, PeakRSS]:
    """(clips/s overall, clips/s once the actors run, driver memory) of fill_cache with ``actors`` one-CPU actors."""
    cache = fresh_cache(cfg, ae_dir, shards_dir, name)
    source = ShardClipSource(shards_dir, int(cache.attrs["clip_samples"]))
    pool = ActorPoolSettings(actors=actors, cpus_per_actor=1)
    with PeakRSS() as mem, BlockTimes() as blocks:
        t0 = time.perf_counter()
        fill_cache(cache, source, EncodeLatents, {"checkpoint_dir": ae_dir}, batch_size=cfg.audioae.cache.batch_size,
                   pool=pool, runtime=cfg.runtime, progress=False)
        seconds = time.perf_counter() - t0
    assert cache.complete
    return cache.n_rows / seconds, blocks.steady_rate(), mem


def _fill_in_child(args: tuple, out) -> None:
    """In a fresh process joined to the running Ray: one fill, and this process's peak memory."""
    address, cfg, ae_dir, shards_dir = args
    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"ray_address": address})})
    rate, _, mem = ray_fill(cfg, ae_dir, shards_dir, 2, "memory")
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
    ap.add_argument("--memory-factor", type=int, default=10, help="the memory check also runs factor x N clips [10]")
    ap.add_argument("--width", type=int, default=128, help="AudioAE width (the demo's 128)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="precompute-bench-"))
    cfg, ae, shards_dir, n = corpus_config(root / "n", args.clips, args.width)
    init_ray(cfg.runtime)
    ray_fill(cfg, ae, shards_dir, 1, "warm-up")  # Ray, Ray Data and the actors' imports, before timing

    plain = plain_loop(cfg, ae, shards_dir)
    one_all, one, _ = ray_fill(cfg, ae, shards_dir, 1, "one")
    two_all, two, _ = ray_fill(cfg, ae, shards_dir, 2, "two")
    print(f"{n} clips of 1 s, AudioAE width {args.width}, cache blocks of {cfg.audioae.cache.chunk_clips} clips")
    print("  clips/s once running (with the actors' start-up)")
    print(f"  plain loop (1 process, no Ray)   {plain:8.1f}")
    print(f"  fill_cache, 1 actor              {one:8.1f}  ({one_all:.1f})")
    print(f"  fill_cache, 2 actors             {two:8.1f}  ({two_all:.1f})")
    print(f"  2 actors / 1 actor               {two / one:8.2f}x  ({two_all / one_all:.2f}x)   target >= 1.6")
    print(f"  2 actors per core / plain loop   {two / 2 / plain:8.2f}x  ({two_all / 2 / plain:.2f}x)   target >= 0.8")
    if args.memory_factor > 1:
        big_cfg, big_ae, big_shards, big_n = corpus_config(root / "big", args.clips * args.memory_factor, args.width)
        address = ray.get_runtime_context().gcs_address
        _, peak_n, grow_n = driver_memory(address, cfg, ae, shards_dir)
        _, peak_big, grow_big = driver_memory(address, big_cfg, big_ae, big_shards)
        print(f"  driver peak RSS (a process that only fills): {peak_n:.0f} MB for {n} clips, {peak_big:.0f} MB for "
              f"{big_n} clips: {peak_big / peak_n:.2f}x for {big_n / n:.1f}x the clips (target <= 1.2x); growth during "
              f"the fill {grow_n:.1f} MB and {grow_big:.1f} MB")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
