"""The evaluation's floors: a silent output and each clip scored against another real clip."""
import json

import numpy as np
import soundfile as sf
import torch

from spresso.audio.synth import engine, impact, rain, siren, whoosh
from spresso.config import load_config
from spresso.eval.baselines import build_adapter
from spresso.eval.harness import ANOTHER_CLIP, Harness, HarnessSettings
from spresso.eval.sets import from_folder

torch.set_num_threads(1)


def _folder(tmp_path):
    tmp_path.mkdir()
    rng = np.random.default_rng(0)
    for i, make in enumerate((impact, whoosh, engine, rain, siren)):
        wave, _caption = make(rng, 48000, 5.0)
        sf.write(tmp_path / f"{i}_{make.__name__}.wav", (0.5 * wave / np.abs(wave).max()).astype(np.float32), 48000)
    return tmp_path


def test_silence_decodes_to_zeros_at_no_cost():
    adapter = build_adapter("silence:")
    assert adapter.encode(np.ones(480, np.float32)) == b""
    assert not adapter.decode(b"", 480).any()


def test_floors_add_a_silent_row_and_an_unrelated_clip_row_that_opus_clears(tmp_path):
    s = from_folder(_folder(tmp_path / "clips"), 5, seed=0)
    codecs = {"opus12": "opus:12", "silence": "silence:"}
    h = Harness(s, codecs, tmp_path / "cache", HarnessSettings(n_boot=10, example_clips=1, floors=True), use_ray=False)
    result = h.run(progress=False)
    rows = {n: r.row for n, r in result.codecs.items()}
    assert list(rows) == ["opus12", "silence", ANOTHER_CLIP]
    floor = rows[ANOTHER_CLIP].metrics
    assert set(floor) == {"aisfx_cos", "mel", "si_sdr"}  # no FAD/KAD: those clips are the set's own
    # each clip against the next one: real audio, but not the input
    keys = [c.key for c in s.clips]
    assert len(set(keys)) == 5
    assert floor["aisfx_cos"].value < 0.99 and floor["si_sdr"].value < 0
    # Opus at 12 kbps carries its input: above the unrelated clip on cosine, below silence on KAD and mel
    opus, silence = rows["opus12"].metrics, rows["silence"].metrics
    assert opus["aisfx_cos"].value > floor["aisfx_cos"].value
    assert opus["kad_aisfx"].value < silence["kad_aisfx"].value and opus["mel"].value < silence["mel"].value
    out = h.write_outputs(result, tmp_path / "report").out_dir
    table = (out / "table.md").read_text()
    assert "| Floor | another real clip |" in table and "| Silence |" in table
    assert not list((out / "listening").rglob(f"{ANOTHER_CLIP}.wav"))  # no audio of its own
    assert ANOTHER_CLIP in json.loads((out / "per_clip.json").read_text())["codecs"]


def test_the_evaluate_stage_adds_the_configured_baselines_and_floors():
    cfg = load_config("workstation")
    assert cfg.eval.floors and set(cfg.eval.baselines.values()) == {"opus:6", "opus:8", "opus:12"}
