"""The procedural corpus: varied like a real library, captioned, and byte-identical per seed."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spresso.audio.io import read_audio
from spresso.audio.synth import (
    CATEGORIES,
    RATES,
    corpus_summary,
    fix_ogg_serial,
    synth_corpus,
)
from spresso.core.digest import digest_tree


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, synth_corpus(out, minutes=2.0, seed=3)


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    out, files = corpus
    again = synth_corpus(tmp_path / "again", minutes=2.0, seed=3)
    assert [f.path for f in again] == [f.path for f in files]
    assert digest_tree(tmp_path / "again") == digest_tree(out)
    other = synth_corpus(tmp_path / "other", minutes=0.5, seed=4)
    assert {f.caption for f in other} != {f.caption for f in files[: len(other)]}


def test_corpus_is_varied_and_captioned(corpus):
    out, files = corpus
    summary = corpus_summary(files)
    assert 1.95 <= summary["minutes"] <= 2.0 + 1.0  # stops once the budget is reached
    assert len(summary["sample_rates"]) >= 3 and set(summary["sample_rates"]) <= set(RATES)
    assert set(summary["channels"]) == {1, 2}
    assert len(summary["formats"]) >= 2 and len(summary["categories"]) >= 5
    for f in files:
        path = out / f.path
        wave, sr = read_audio(path)
        assert sr == f.sample_rate and wave.shape[0] == f.channels
        assert abs(wave.shape[1] / sr - f.seconds) < 0.05
        assert 0 < np.abs(wave).max() <= 1.0
        assert Path(path).with_suffix(".txt").read_text().strip() == f.caption and len(f.caption.split()) >= 2


def test_lengths_span_under_a_second_to_a_minute():
    lows = [c[1] for c in CATEGORIES.values()]
    highs = [c[2] for c in CATEGORIES.values()]
    assert min(lows) < 1.0 and max(highs) == 60.0


def test_fix_ogg_serial_keeps_a_valid_stream(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, np.sin(np.arange(20000) / 10).astype(np.float32) * 0.3, 16000, format="OGG", subtype="VORBIS")
    fixed = fix_ogg_serial(buf.getvalue(), 1234)
    assert struct.unpack_from("<I", fixed, 14)[0] == 1234
    wave, sr = read_audio(fixed)  # libogg verifies every page CRC: a wrong CRC would not decode
    assert sr == 16000 and abs(wave.shape[1] - 20000) < 1000
    with pytest.raises(ValueError):
        fix_ogg_serial(b"RIFF" + bytes(40), 1)
