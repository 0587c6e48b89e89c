"""benchmarks/audioae_recipe.py: every ablation row is a valid change of the workstation preset that
changes what its name says and nothing else (a wrong key would fail the row after minutes of training),
and its base stays the recipe it started from when the preset adopts a row."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spresso.config import load_config

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import audioae_recipe as bench  # noqa: E402  (benchmarks/audioae_recipe.py)


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


@pytest.mark.parametrize("row", [r for r in bench.ROWS if r != "base"])
def test_each_row_changes_only_the_audioae_settings_it_names(row):
    base = leaves(load_config("workstation", bench.BASE).model_dump(mode="json"))
    changed = leaves(load_config("workstation", bench.BASE + bench.ROWS[row]).model_dump(mode="json"))
    diff = {k for k in base if base[k] != changed.get(k)}
    assert diff == {o.split("=", 1)[0] for o in bench.ROWS[row]}
    assert all(k.startswith("audioae.") for k in diff)


def test_the_no_gan_row_never_reaches_its_gan_start():
    cfg = load_config("workstation", bench.BASE + bench.ROWS["no_gan"])
    assert cfg.audioae.train.disc_start_step > cfg.audioae.steps


def test_the_base_is_the_width_128_recipe_and_the_preset_has_adopted_the_wide_row():
    base = load_config("workstation", bench.BASE).audioae.model
    assert (base.width, base.intermediate) == (128, 384)
    preset = load_config("workstation").audioae.model
    wide = load_config("workstation", bench.BASE + bench.ROWS["wide"]).audioae.model
    assert (preset.width, preset.intermediate) == (wide.width, wide.intermediate) == (256, 768)
