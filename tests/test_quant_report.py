"""The qinco2 stage's honest report: held-out comparison with RQ per m, the loud loss (WARNING, MLflow
tags, pipeline note), the shipped quantizer, and RQ trained on exactly QINCo2's training vectors."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from spresso.data.precompute import ROW
from spresso.data.vectors import VectorSource
from spresso.data.z_latents import QuantizeZ
from spresso.data.zarr_cache import ClipCache
from spresso.eval.dae_checks import quantize_z
from spresso.pipeline.runner import DONE, PipelineResult, StageOutcome, run_note
from spresso.quant import (
    QINCo2,
    QINCo2Spec,
    ResidualQuantizer,
    load_quantizer,
    quantizer_kind,
    save_qinco2,
    save_rq,
)
from spresso.quant.training import relative_mse
from spresso.runtime.tracking import TAG_NOTE
from spresso.train.qinco2 import (
    compare_on_held_out,
    publish_quantizer,
    rq_training_vectors,
)
from spresso.train.quant_report import (
    LOSS_TAG,
    SHIP_FILE,
    SHIPPED_TAG,
    QuantizerComparison,
    ship_record,
    ship_tags,
)


def comparison(q, r) -> QuantizerComparison:
    return QuantizerComparison(qinco2=q, rq=r, K=256, beam=8, candidates=8, rq_beam=8, rq_train_type="progressive_dim",
                               train_vectors=1000, rq_train_vectors=1000, held_out_vectors=200)


LOSING = comparison({1: 0.5, 2: 0.2, 3: 0.1}, {1: 0.6, 2: 0.1, 3: 0.1})  # RQ wins at m=2 and ties at m=3
WINNING = comparison({1: 0.5, 2: 0.2, 3: 0.05}, {1: 0.6, 2: 0.3, 3: 0.1})


def test_every_m_where_rq_is_not_beaten_is_named():
    assert LOSING.losses() == [2, 3] and LOSING.loss_tag() == "m2,m3"
    assert LOSING.shipped("best") == "rq" and LOSING.shipped("qinco2") == "qinco2" and LOSING.shipped("rq") == "rq"
    note = LOSING.note("rq")
    assert "loses to RQ at m2,m3" in note and "worst m2: 2.00x" in note and "ships rq" in note
    m = LOSING.metrics()
    assert m["heldout_rel_mse_qinco2_m2"] == 0.2 and m["heldout_rel_mse_rq_m2"] == 0.1 and m["ratio_to_rq_m2"] == 2.0
    assert m["quantizer_losses_to_rq"] == 2.0 and m["rq_train_vectors"] == 1000
    table = LOSING.table("rq")
    assert "| 2 | 16 | 0.200000 | 0.100000 | 2.000 | RQ |" in table and "| 1 | 8 | 0.500000 | 0.600000 | 0.833 | QINCo2 |" in table
    assert "1000 training vectors (the same)" in table and "Shipped: rq" in table
    tags = ship_tags(ship_record(LOSING, "best"))
    assert tags == {SHIPPED_TAG: "rq", LOSS_TAG: "m2,m3", TAG_NOTE: note}


def test_a_winning_qinco2_ships_quietly():
    assert WINNING.losses() == [] and WINNING.loss_tag() == "none" and WINNING.shipped("best") == "qinco2"
    assert ship_tags(ship_record(WINNING, "best")) == {SHIPPED_TAG: "qinco2", LOSS_TAG: "none"}
    assert "although QINCo2 beats it" in WINNING.note("rq")
    with pytest.raises(ValueError, match="qinco2.ship"):
        WINNING.shipped("faiss")


class _Result:
    def __init__(self, folder):
        self.folder, self.metrics = folder, {}

    @property
    def checkpoint(self):
        return self

    def to_directory(self, path):
        shutil.copytree(self.folder, path)


class _Run:
    def __init__(self):
        self.tags, self.artifacts = {}, []

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))


def _checkpoint(tmp_path, record):
    last = tmp_path / "ray" / "last"
    qinco2 = QINCo2(QINCo2Spec(d=4, K=8, M=3, L=1, de=8, dh=8, A=2, B=2))
    save_qinco2(last, qinco2)
    save_qinco2(last / "best", qinco2)
    save_rq(last / "rq", ResidualQuantizer.from_arrays(np.random.default_rng(0).standard_normal((3, 8, 4)), np.zeros(4), 1.0, 2))
    (last / SHIP_FILE).write_text(json.dumps(record))
    return _Result(last)


@pytest.mark.parametrize("cmp,ship,kind", [(LOSING, "best", "rq"), (WINNING, "best", "qinco2"), (LOSING, "qinco2", "qinco2")])
def test_publish_ships_the_choice_and_a_loss_is_loud(tmp_path, caplog, cmp, ship, kind):
    run, final = _Run(), tmp_path / "out" / "final"
    with caplog.at_level(logging.WARNING, logger="spresso.train.qinco2"):
        publish_quantizer(_checkpoint(tmp_path, ship_record(cmp, ship)), str(final), run)
    assert quantizer_kind(final) == kind and isinstance(load_quantizer(final), ResidualQuantizer if kind == "rq" else QINCo2)
    assert (tmp_path / "out" / "last" / "rq").is_dir()  # the other quantizer stays at hand
    assert run.tags[SHIPPED_TAG] == kind and run.tags[LOSS_TAG] == cmp.loss_tag()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if cmp is LOSING:
        assert "loses to RQ at m2,m3" in run.tags[TAG_NOTE] and any("loses to RQ at m2,m3" in w for w in warned)
    else:
        assert TAG_NOTE not in run.tags and not warned


def _cache(tmp_path, splits):
    n, d, T = len(splits), 3, 4
    z = np.arange(n * d * T, dtype=np.float32).reshape(n, d, T)
    cache = ClipCache.create(tmp_path / "z.zarr", [f"c{i}" for i in range(n)],
                             {"z": ((d, T), np.float32), "valid_frames": ((), np.int32), "split": ((), "str")}, n, {})
    cache.write_block(0, n, z=z, valid_frames=np.array([4, 2, 3, 4, 1, 4]), split=np.array(splits))
    return VectorSource(str(tmp_path / "z.zarr"), "z", "NCT")


def test_rq_trains_on_exactly_the_training_vectors_and_is_scored_on_valid_and_test(tmp_path):
    src = _cache(tmp_path, ["train", "valid", "train", "test", "train", "valid"])
    train, val = src.split(0.2)
    assert train.tolist() == [0, 2, 4] and val.tolist() == [1, 5]
    x = rq_training_vectors(src, train, None, seed=0)
    assert len(x) == src.count(train) == 4 + 3 + 1  # the valid frames of every training row, what QINCo2 reads
    np.testing.assert_array_equal(x, src.read_rows(train))
    assert 1 <= len(rq_training_vectors(src, train, 2, seed=0)) <= 2  # a number subsamples
    assert src.held_out_rows(train, val).tolist() == [1, 3, 5]  # valid + test, never a training row


def test_compare_scores_both_at_their_own_beam_on_the_same_vectors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    torch.manual_seed(0)
    q = QINCo2(QINCo2Spec(d=4, K=8, M=2, L=1, de=8, dh=8, A=2, B=2)).eval()
    q.norm.fit(x)
    rq = ResidualQuantizer.from_arrays(rng.standard_normal((2, 8, 4)) * 0.5, x.mean(0), float(x.std()), beam=3)
    cmp, entropy = compare_on_held_out(q, rq, x, candidates=2, rq_train_type="default", train_vectors=10, rq_train_vectors=10)
    assert cmp.ms == [1, 2] and cmp.beam == 2 and cmp.rq_beam == 3 and cmp.held_out_vectors == 300
    assert cmp.rq[2] == pytest.approx(relative_mse(x, rq.decode(rq.encode(torch.from_numpy(x), 2)).numpy()))
    assert set(entropy) == {"entropy_step1", "entropy_step2", "rq_entropy_step1", "rq_entropy_step2"}


def test_the_pipeline_summary_shows_a_stage_note(mlflow_env):
    client = MlflowClient(mlflow_env)
    run = client.create_run(client.create_experiment("notes"))
    note = LOSING.note("rq")
    client.set_tag(run.info.run_id, TAG_NOTE, note)
    assert run_note(mlflow_env, run.info.run_id) == note and run_note(mlflow_env, None) == ""
    table = PipelineResult("p", mlflow_env, {"qinco2@d96": StageOutcome("qinco2@d96", DONE, run.info.run_id, reason=note)}).table()
    assert note in table.splitlines()[1]


def test_stage3_z_q_and_the_checks_quantize_with_a_shipped_rq(tmp_path):
    rq = ResidualQuantizer.from_arrays(np.random.default_rng(1).standard_normal((3, 8, 4)), np.ones(4), 2.0, beam=2)
    save_rq(tmp_path / "final", rq)
    z = torch.randn(2, 4, 5)  # [B, C, T']
    want = rq.decode(rq.encode(z.transpose(1, 2), 2)).transpose(1, 2)
    torch.testing.assert_close(quantize_z(rq, z, 2), want)
    out = QuantizeZ(str(tmp_path / "final"), 2)({"z": z.numpy(), ROW: np.arange(2)})
    np.testing.assert_allclose(out["zq"], want.numpy(), rtol=1e-6, atol=1e-6)
    assert out["codes"].shape == (2, 5, 2)
