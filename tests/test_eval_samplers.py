"""The paper evaluates with its own sampler (Heun 64) first; the fast solvers are extra rows; the bundle's
sampler setting reaches the codec's decode."""
from __future__ import annotations

import numpy as np
from codec_toys import config, make_checkpoints

from spresso.config import load_config
from spresso.core.bundle_io import read_bundle_manifest
from spresso.core.checkpoint import (
    load_weights,
    read_checkpoint_config,
    save_checkpoint,
)
from spresso.eval.baselines import build_adapter, bundle_rows
from spresso.eval.baselines.bundle import BundleAdapter
from spresso.eval.harness import HarnessSettings, codec_id
from spresso.train.export import export_bundle


def test_paper_rows_put_heun_64_first_and_the_fast_solvers_after():
    cfg = load_config("paper")
    rows = bundle_rows("d96", "/b/d96", cfg.eval)
    assert list(rows) == ["d96", "d96-dpmpp2m32", "d96-dpmpp2m16"]
    assert rows["d96"] == "spresso:/b/d96,steps=64,solver=heun"
    assert cfg.dae.decode_solver == "heun" and cfg.dae.decode_steps == 64
    demo = load_config("demo")
    assert bundle_rows("d96", "/b", demo.eval) == {"d96": f"spresso:/b,steps={demo.eval.diffusion_steps}"}
    assert demo.dae.decode_solver == "dpmpp2m"


def test_the_chosen_sampler_reaches_the_decode():
    calls = []

    class FakeCodec:
        def decode(self, data, steps=None, seed=0, solver=None):
            calls.append((steps, solver))
            return np.zeros(480, np.float32), 48000

    for spec, want in (("spresso:/nowhere,steps=64,solver=heun", (64, "heun")),
                       ("spresso:/nowhere,steps=16,solver=dpmpp2m", (16, "dpmpp2m")),
                       ("spresso:/nowhere,steps=8", (8, None))):
        adapter = build_adapter(spec)
        assert isinstance(adapter, BundleAdapter)
        adapter._codec = FakeCodec()
        adapter.decode(b"", 480)
        assert calls[-1] == want


def test_paper_eval_defaults_to_heun_64_for_specs_that_name_no_sampler():
    paper = HarnessSettings.from_config(load_config("paper"))
    assert (paper.diffusion_steps, paper.diffusion_solver) == (64, "heun")
    adapter = build_adapter("spresso:/nowhere", paper.adapter_defaults())
    assert (adapter.steps, adapter.solver) == (64, "heun")
    demo = HarnessSettings.from_config(load_config("demo"))
    assert demo.diffusion_solver is None and build_adapter("spresso:/nowhere", demo.adapter_defaults()).solver is None
    # The demo's cache ids are what they were (no solver part); the paper's differ by their solver.
    assert codec_id("x", None, demo) == codec_id("x", None, HarnessSettings(diffusion_steps=demo.diffusion_steps))
    assert codec_id("x", None, paper) != codec_id("x", None, HarnessSettings(diffusion_steps=64))


def test_export_writes_the_configured_sampler_into_the_bundle(tmp_path):
    """The stage checkpoint's config (dae.decode_solver/decode_steps) becomes the bundle's default sampler."""
    ck = make_checkpoints(tmp_path / "ck")
    cfg = config()
    cfg.dae.decode_solver, cfg.dae.decode_steps = "heun", 5
    info = read_checkpoint_config(ck["stage"])
    save_checkpoint(ck["stage"], load_weights(ck["stage"]), kind="dae", config=cfg.to_dict(), meta=info["meta"])
    out = export_bundle(ck["audioae"], ck["stage"], None, tmp_path / "bundle")
    sampler = read_bundle_manifest(out)["sampler"]
    assert sampler["solver"] == "heun" and sampler["steps"] == 5
