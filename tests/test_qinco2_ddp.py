"""QINCo2 under DDP: every rank steps the same number of times, and re-seeding keeps replicas identical.

Ray Train's DDP never re-syncs parameters after wrapping the model: a rank that takes one step
more than another deadlocks the all-reduce, and a rank that moves its dead codewords differently
drifts away for good. Both showed in the rehearsal (2 QINCo2 workers on a tiny z cache).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spresso.data.vectors import VectorSource
from spresso.data.zarr_cache import ClipCache
from spresso.quant import QINCo2, QINCo2Spec
from spresso.train.qinco2 import synced_reseed


def _z_cache(path, rows: int, d: int = 4, t: int = 3) -> VectorSource:
    rng = np.random.default_rng(0)
    cache = ClipCache.create(path, [f"k{i}" for i in range(rows)], {"z": ((d, t), np.float32)}, rows)
    cache.write_block(0, rows, z=rng.standard_normal((rows, d, t)).astype(np.float32))
    return VectorSource(str(path), "z", "NCT")


@pytest.mark.parametrize("rows", [10, 200])  # 10 rows: one read block, so rank 1's share is empty
def test_every_rank_gets_exactly_the_epochs_batches(tmp_path, rows):
    src = _z_cache(tmp_path / "z.zarr", rows)
    all_rows = np.arange(rows)
    for n in (1, 3, 40):
        got = [list(src.epoch_batches(all_rows, 8, n, seed=1, rank=r, world_size=2)) for r in range(2)]
        assert [len(g) for g in got] == [n, n]
        assert all(b.shape == (8, 4) for g in got for b in g)
    # disjoint shares when each rank has enough: the two ranks never see the same first batch
    if rows == 200:
        a, b = (next(src.epoch_batches(all_rows, 8, 1, seed=1, rank=r, world_size=2)) for r in range(2))
        assert not np.array_equal(a, b)


def _reseed_worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)

    class Ctx:  # what synced_reseed reads of TrainContext
        world_size = world

    torch.manual_seed(0)  # identical replicas at the start, as DDP makes them
    model = QINCo2(QINCo2Spec(d=4, K=8, M=2, L=1, de=8, dh=8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(100 + rank)  # but each rank saw its own batch and used its own codewords
    xn = torch.randn(16, 4)
    codes = torch.randint(0, 8, (16, 2))
    usage = torch.zeros(2, 8)
    usage[0, : 4 + rank] = 1  # rank 0 used codewords 0-3 of step 1, rank 1 used 0-4
    moved = synced_reseed(Ctx(), model, opt, usage, (xn, codes), seed=7)
    torch.save({"moved": moved, "state": {k: v.clone() for k, v in model.state_dict().items()}}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_reseeding_leaves_every_replica_identical(tmp_path):
    mp.spawn(_reseed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    # dead = unused by every rank: step 1 keeps 0-4 (the union), step 2 used nothing
    assert r0["moved"] == r1["moved"] == 3 + 8
    for name, value in r0["state"].items():
        torch.testing.assert_close(value, r1["state"][name], rtol=0, atol=0, msg=name)
