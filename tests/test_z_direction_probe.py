"""benchmarks/z_direction_probe.py: a per-clip bit is told from a description of the sound."""
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import z_direction_probe as zp  # noqa: E402


def test_a_direction_constant_within_clips_and_tracking_clip_length_is_found_as_such():
    rng = np.random.default_rng(0)
    clips, per = 40, 5
    length = rng.integers(50, 500, clips)
    bit = (length > 300).astype(float)  # "is the clip long": constant within a clip
    ids = np.repeat(np.arange(clips), per)
    vectors = np.zeros((clips * per, 6))
    vectors[:, 0] = 10 * bit[ids]
    vectors[:, 1:] = rng.standard_normal((clips * per, 5)) * 0.1  # small frame-level variation
    facts = np.column_stack([np.full(clips * per, 100), np.tile(np.arange(per), clips), length[ids],
                             rng.random(clips * per), rng.random(clips * per)])
    res = zp.probe(vectors, facts, ids, directions=2)
    top = res["directions"][0]
    assert res["energy_top"][0] > 0.95 and top["within_clip_share"] < 0.01
    assert abs(top["correlations"]["clip_real_frames"]) > 0.7 and abs(top["correlations"]["window_x0_rms"]) < 0.3
    assert res["directions"][1]["within_clip_share"] > 0.5  # the noise directions vary within clips


def test_window_facts_list_the_real_frames_of_each_kept_window():
    x0 = np.ones((2, 3, 10))
    facts = zp.window_facts(x0, np.array([10, 5]), np.array([3, 2]), t=4)  # z frames = ceil(real / t)
    assert facts[:, 0].tolist() == [4, 4, 2, 4, 1] and facts[:, 1].tolist() == [0, 1, 2, 0, 1]
    assert facts[:, 2].tolist() == [10, 10, 10, 5, 5]
