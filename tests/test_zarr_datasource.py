"""Ray Data over the Zarr caches: the finished rows of a split, seeded per-pass shuffles, disjoint worker
shares, and the stage loops fed by it (spresso/data/zarr_datasource.py, spresso/train/feed.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ray.data.block import BlockAccessor

from spresso.data.latent_batches import (
    LatentCaptionDataset,
    noise_generator,
    resumed_stream,
)
from spresso.data.ray_passes import shuffle_seed
from spresso.data.vectors import VectorSource
from spresso.data.zarr_cache import ClipCache
from spresso.data.zarr_datasource import ZarrCacheDatasource, finished_rows, row_blocks
from spresso.train.feed import cache_feed, feed_stream, vector_feed

N, C, T = 24, 2, 3
SPLITS = np.array(["train", "train", "valid"] * 8, dtype=object)


@pytest.fixture
def caches(tmp_path):
    """An x0 cache (blocks of 4, the last block unfinished) and a caption cache (blocks of 6), row-aligned."""
    keys = [f"clip{i:02d}" for i in range(N)]
    x0 = ClipCache.create(tmp_path / "x0.zarr", keys, {"x0": ((C, T), np.float16), "valid_frames": ((), np.int32),
                                                       "split": ((), "str")}, 4)
    for a in range(0, N - 4, 4):  # rows 20-23 stay unfinished
        x0.write_block(a, a + 4, x0=np.arange(a, a + 4)[:, None, None] + np.zeros((1, C, T)),
                       valid_frames=np.full(4, T, np.int32), split=SPLITS[a:a + 4])
    text = ClipCache.create(tmp_path / "text.zarr", keys, {"text": ((2, 5), np.float16), "text_mask": ((2,), bool),
                                                             "pooled": ((5,), np.float32)}, 6)
    rng = np.random.default_rng(0)
    for a in range(0, N, 6):
        text.write_block(a, a + 6, text=rng.normal(size=(6, 2, 5)), text_mask=rng.random((6, 2)) > 0.5,
                         pooled=rng.normal(size=(6, 5)))
    return str(tmp_path / "x0.zarr"), str(tmp_path / "text.zarr")


def expected_train_rows() -> np.ndarray:
    return np.array([r for r in range(N - 4) if SPLITS[r] == "train"])


def caption_feed(caches, seed: int = 0):
    x0, text = caches
    return cache_feed({x0: ("x0",), text: ("text", "text_mask", "pooled")}, "train", seed)


def rows_of(batches) -> list[int]:
    return [int(r) for b in batches for r in b["row"]]


def test_rows_are_grouped_by_chunk_aligned_block():
    blocks = row_blocks(np.array([9, 0, 1, 3, 4, 8, 11, 12]), 4)
    assert [b.tolist() for b in blocks] == [[0, 1, 3], [4], [8, 9, 11], [12]]


def test_finished_rows_are_the_splits_rows_done_in_every_cache(caches, tmp_path):
    assert finished_rows(list(caches), "train").tolist() == expected_train_rows().tolist()
    source = ZarrCacheDatasource({caches[0]: ["x0"]}, finished_rows([caches[0]], "train"))
    tasks = source.get_read_tasks(3)
    assert len(tasks) == 3 and sum(t.metadata.num_rows for t in tasks) == len(expected_train_rows())


def test_dataset_yields_exactly_the_finished_rows_with_the_caches_values(caches, ray_local):
    feed = caption_feed(caches)
    batches = list(feed.dataset.iter_batches(batch_size=5, batch_format="numpy"))
    rows = rows_of(batches)
    assert feed.rows == len(rows) and sorted(rows) == expected_train_rows().tolist()  # each finished row once
    want = LatentCaptionDataset(caches[0], caches[1], np.array(rows)).__getitems__(list(range(len(rows))))
    got = {k: np.concatenate([b[k] for b in batches]) for k in ("x0", "text", "text_mask", "pooled")}
    for k in got:
        np.testing.assert_array_equal(got[k], np.stack([w[k] for w in want]), err_msg=k)


def test_each_pass_reshuffles_and_the_same_seed_repeats_the_sequence(caches, ray_local):
    def passes(seed: int, start: int = 0) -> list[list[int]]:
        stream = feed_stream(caption_feed(caches, seed).dataset, 2, seed=seed, rank=0, start=start, prefetch_batches=1)
        per_pass = len(expected_train_rows()) // 2
        out = [rows_of([next(stream) for _ in range(per_pass)]) for _ in range(2)]
        stream.close()
        return out

    first, second = passes(seed=3)
    assert sorted(first) == sorted(second) == expected_train_rows().tolist()  # a pass is every row once
    assert first != second  # but each pass in its own order
    assert passes(seed=3) == [first, second]  # seeded: the same seed gives the same sequence
    assert passes(seed=4) != [first, second]


def test_a_resumed_start_draws_batches_seeded_by_seed_rank_and_start(caches, ray_local):
    seeds = {shuffle_seed(s, r, start, e) for s in (0, 1) for r in (0, 1) for start in (0, 7) for e in (0, 1)}
    assert len(seeds) == 16  # every (seed, rank, start, pass) shuffles differently
    dataset = caption_feed(caches).dataset

    def first_batches(start: int, rank: int = 0) -> list[int]:
        stream = feed_stream(dataset, 2, seed=0, rank=rank, start=start, prefetch_batches=1)
        rows = rows_of([next(stream) for _ in range(4)])
        stream.close()
        return rows

    assert first_batches(start=5) != first_batches(start=0)
    assert first_batches(start=0, rank=1) != first_batches(start=0)
    # The noise follows the same rule, and is the one today's reader gives.
    _, old = resumed_stream(LatentCaptionDataset(*caches, expected_train_rows()), 2, rank=1, world_size=2, seed=3, start=5)
    assert torch.equal(torch.rand(4, generator=old), torch.rand(4, generator=noise_generator(3, 1, 5)))


def test_vector_feed_yields_the_valid_frames_of_the_rows(tmp_path, ray_local):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(10, 4, 6)).astype(np.float32)
    cache = ClipCache.create(tmp_path / "z.zarr", [f"k{i}" for i in range(10)],
                             {"z": ((4, 6), np.float32), "valid_frames": ((), np.int32)}, 4)
    valid = np.array([6, 2, 0, 5, 6, 1, 3, 6, 4, 6], np.int32)
    for a in range(0, 10, 4):
        cache.write_block(a, min(a + 4, 10), z=z[a:a + 4], valid_frames=valid[a:a + 4])
    rows = np.array([0, 1, 2, 5, 6, 9])
    feed = vector_feed(str(tmp_path / "z.zarr"), "z", "NCT", rows, seed=0)
    got = np.concatenate([b["x"] for b in feed.dataset.iter_batches(batch_size=4, batch_format="numpy")])
    want = VectorSource(str(tmp_path / "z.zarr"), "z", "NCT").read_rows(rows)
    assert feed.rows == len(want) == int(valid[rows].sum()) and got.shape == want.shape
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (same vectors, any order)
    np.testing.assert_array_equal(order(got), order(want))


def share_loop(config: dict) -> None:
    """Each worker records the rows of one pass over its share, and its batch count over two passes."""
    import ray.train  # lazy: only inside the Ray Train worker

    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    rows = [int(r) for b in shard.iter_batches(batch_size=3, batch_format="numpy") for r in b["row"]]
    stream = feed_stream(shard, 2, seed=0, rank=ctx.get_world_rank(), start=0, prefetch_batches=2)
    batches = [next(stream) for _ in range(2 * (len(rows) // 2))]  # two whole passes
    stream.close()
    with open(f"{config['out']}/rank{ctx.get_world_rank()}.json", "w") as f:
        json.dump({"rows": rows, "batches": len(batches)}, f)


@pytest.mark.slow
def test_two_ray_train_workers_get_disjoint_shares_covering_the_rows(caches, tmp_path, ray_local, monkeypatch):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    reads: list[str] = []
    plain_read = ClipCache.read
    monkeypatch.setattr(ClipCache, "read", lambda self, name, rows=None: reads.append(name) or plain_read(self, name, rows))
    feed = caption_feed(caches)
    TorchTrainer(share_loop, train_loop_config={"out": str(tmp_path)}, datasets={"train": feed.dataset},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(name="shares", storage_path=str(tmp_path / "ray"))).fit()
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    a, b = (set(g["rows"]) for g in got)
    assert not a & b and a | b == set(expected_train_rows().tolist())  # 14 rows: two equal shares of 7
    assert len(got[0]["rows"]) == len(got[1]["rows"]) and got[0]["batches"] == got[1]["batches"] == 6
    assert set(reads) <= {"split", "done"}  # the driver read per-row scalars only, never a clip's arrays


def test_a_read_task_reads_a_cache_on_object_storage(s3_bucket):
    """The read tasks take URLs as they take folders (what a cluster reading s3:// caches runs)."""
    url = f"{s3_bucket}/x0.zarr"
    cache = ClipCache.create(url, [f"k{i}" for i in range(6)], {"x0": ((C, T), np.float16), "split": ((), "str")}, 3)
    for a in (0, 3):
        cache.write_block(a, a + 3, x0=np.arange(a, a + 3)[:, None, None] + np.zeros((1, C, T)), split=SPLITS[a:a + 3])
    rows = finished_rows([url], "train")
    [task] = ZarrCacheDatasource({url: ["x0"]}, rows).get_read_tasks(1)
    blocks = [BlockAccessor.for_block(b).to_numpy() for b in task()]
    got = np.concatenate([b["row"] for b in blocks])
    assert sorted(got.tolist()) == [0, 1, 3, 4]  # the finished train rows, in the seeded block order
    np.testing.assert_array_equal(np.concatenate([b["x0"] for b in blocks])[:, 0, 0], got)
