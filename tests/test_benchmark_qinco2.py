"""benchmarks/qinco2.py: RQ and QINCo2 receive the same training vectors; every row at toy size."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from spresso.data.zarr_cache import ClipCache

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import qinco2 as bench  # noqa: E402  (benchmarks/qinco2.py)


def test_rq_and_qinco2_train_on_identical_arrays_and_every_row_is_reported():
    rng = np.random.default_rng(0)
    train = (rng.standard_normal((1200, 6)) @ rng.standard_normal((6, 6))).astype(np.float32)
    held = (rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))).astype(np.float32)
    s = bench.Settings(d=6, K=16, M=3, beam=2, candidates=2, max_beam=4, batch=400, max_steps=3, minutes=5)
    seen = {}

    def qinco2_trainer(x, settings, held=None):
        seen["qinco2"] = x
        return bench.train_qinco2(x, settings, log=lambda _: None, held=held)

    def rq_trainer(x, settings, train_type):
        seen[train_type] = x
        return bench.train_rq(x, settings, train_type)

    res = bench.compare(train, held, s, rq_trainer=rq_trainer, qinco2_trainer=qinco2_trainer, log=lambda _: None)
    assert set(seen) == {"qinco2", "progressive_dim", "default"}
    for x in seen.values():  # the very same array, not a subsample or a copy with other rows
        assert x is train
    assert res.info["qinco2"]["train_beam"] == s.beam and res.info["qinco2"]["train_candidates"] == s.candidates
    assert sorted(res.rows) == sorted(["QINCo2 beam 2 A 2"] + [f"RQ {t} beam {b}" for t in ("progressive_dim", "default")
                                                                for b in (1, 2, 4)])
    for row in res.rows.values():
        assert len(row) == 3 and all(0 < v < 1.5 for v in row) and row[2] < row[0]
    # a larger encoding beam never hurts RQ's full-length error much (beam search keeps the greedy path's candidates)
    assert res.rows["RQ default beam 4"][2] <= res.rows["RQ default beam 1"][2] * 1.05
    assert "| 3 | 12 |" in bench.table(res, s)


def test_z_vectors_hold_out_whole_clips(tmp_path):
    n, d, T = 6, 3, 4
    z = np.arange(n * d * T, dtype=np.float32).reshape(n, d, T)
    cache = ClipCache.create(tmp_path / "z.zarr", [f"c{i}" for i in range(n)],
                             {"z": ((d, T), np.float32), "valid_frames": ((), np.int32), "split": ((), "str")}, n, {})
    cache.write_block(0, n, z=z, valid_frames=np.full(n, T), split=np.array(["train", "valid", "train", "test", "train", "train"]))
    train, held = bench.z_vectors(str(tmp_path / "z.zarr"), "z", held_out=100)
    assert train.shape == (16, 3) and held.shape == (8, 3)
    assert not set(map(tuple, train)) & set(map(tuple, held))


def test_the_held_out_trace_starts_at_k_means_and_ends_at_the_trained_model():
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((6, 6))
    train = (rng.standard_normal((1200, 6)) @ mix).astype(np.float32)
    held = (rng.standard_normal((200, 6)) @ mix).astype(np.float32)
    # a tiny trace interval: a check after every step, the last one after the last step
    s = bench.Settings(d=6, K=16, M=3, beam=2, candidates=2, max_beam=2, batch=400, max_steps=4, minutes=5,
                       trace_minutes=1e-9, train_types=("default",))
    res = bench.compare(train, held, s, log=lambda _: None)
    trace = res.info["qinco2"]["trace"]
    assert trace[0]["steps"] == 0 and trace[-1]["steps"] == 4
    assert [p["steps"] for p in trace] == sorted({p["steps"] for p in trace})
    # the last point is the model the table scores
    assert np.allclose(trace[-1]["rel_mse"], res.rows["QINCo2 beam 2 A 2"])
    text = bench.trace_table(res, s)
    assert text.count("\n") == len(trace) + 1 and "ratio m=3" in text


def test_a_time_budgeted_run_spreads_its_cosine_over_the_budget(monkeypatch):
    """Without max_steps the lr follows the clock: near the end of the budget it is near its floor,
    however many steps fitted in (the old fit from the first 5 steps reached the floor early or never)."""
    rng = np.random.default_rng(2)
    train = rng.standard_normal((800, 4)).astype(np.float32)
    clock = {"now": 0.0}
    monkeypatch.setattr(bench.time, "time", lambda: clock["now"])
    lrs = []
    real_step = bench.train_step

    def step(*args, **kwargs):
        clock["now"] += 6.0  # each step takes 6 s of a 60 s budget
        info, codes = real_step(*args, **kwargs)
        lrs.append(info["lr"])
        return info, codes

    monkeypatch.setattr(bench, "train_step", step)
    s = bench.Settings(d=4, K=8, M=2, beam=2, candidates=2, batch=400, minutes=1.0)
    model, info = bench.train_qinco2(train, s, log=lambda _: None)
    assert info["steps"] == 11  # the step that starts at exactly 60 s is still inside the budget
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # past the warm-up (1% of the time) from the first step
    assert lrs[-1] < 0.05 * max(lrs)  # the last step ran at the end of the cosine
    assert lrs[4] > 0.5 * max(lrs)  # halfway through the time, halfway down a cosine at most


def test_downstream_clips_take_every_stride_th_file_padded_to_one_window(tmp_path):
    import downstream_qinco2 as down  # benchmarks/downstream_qinco2.py
    import soundfile as sf

    for i in range(12):  # 1 s each, a distinct constant so the files can be told apart
        sf.write(tmp_path / f"f{i:02d}.wav", np.full(48000, (i + 1) / 100, np.float32), 48000)
    every_10th = down.held_out_clips(str(tmp_path), n=8)
    every_file = down.held_out_clips(str(tmp_path), n=5, stride=1)
    assert [round(float(c[0]), 2) for c in every_10th] == [0.01, 0.11]
    assert [round(float(c[0]), 2) for c in every_file] == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert all(c.shape == (down.WINDOW,) and not c[48000:].any() for c in every_10th + every_file)
