"""budget_hours and time limits: the split rule, the training clock, and stages that stop (and resume) on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spresso.train.clock as clock_module
from spresso.config import ConfigError, load_config
from spresso.config.budget import budget_table, time_limit_seconds
from spresso.quant.training import TrainSettings, lr_factor, make_optimizer
from spresso.train.audioae import TRAIN_AUDIOAE, AudioAETrainer
from spresso.train.clock import CLOCK_FILE, TrainClock
from spresso.train.driver import StageInputs
from spresso.train.loop import StepResult, run_steps

TINY_AE = ["audioae.model.width=32", "audioae.model.blocks=1", "audioae.model.intermediate=64",
           "audioae.disc.mpd_channels=[4,4,8,8,8]", "audioae.disc.stft_channels=4", "audioae.disc.stft_windows=[512]"]


class FakeTime:
    """Stands in for the clock module's ``time``: seconds move only when a test says so."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    t = FakeTime()
    monkeypatch.setattr(clock_module, "time", t)
    return t


POINTS = ("pipeline.points=[{name: c, t: 9, continuous: true}, {name: a, t: 9, K: 1024, m: 12},"
          " {name: b, t: 100, K: 256, m: 12}]")


def test_budget_hours_split_by_share_over_the_runs_of_each_stage():
    cfg = load_config("demo", ["budget_hours=4", POINTS])
    minutes = {name: (m, runs) for name, m, runs in budget_table(cfg)}
    assert minutes["audioae"] == (pytest.approx(4 * 60 * 0.45), 1)
    assert minutes["dit"] == (pytest.approx(4 * 60 * 0.15), 1)
    # stage 1 once per model (the two t = 9 points share one), QINCo2 and stage 3 once per discrete point
    assert minutes["stage1"] == (pytest.approx(4 * 60 * 0.15 / 2), 2)
    assert minutes["qinco2"] == (pytest.approx(4 * 60 * 0.05 / 2), 2)
    assert minutes["stage3"] == (pytest.approx(4 * 60 * 0.10 / 2), 2)
    total = sum(m * runs for m, runs in minutes.values())
    assert total == pytest.approx(4 * 60 * 0.9)  # the rest is left to the caches, export and evaluation
    # a point that trains its own stage 1 (an override) is a model of its own
    own = load_config("demo", ["budget_hours=4", POINTS.replace("K: 1024, m: 12}", "K: 1024, m: 12, overrides: {dae.stage1.lr: 0.01}}")])
    assert dict((n, r) for n, _, r in budget_table(own))["stage1"] == 3


def test_a_section_limit_wins_over_its_share_and_nothing_is_limited_without_either():
    cfg = load_config("demo", ["budget_hours=2", "audioae.train.time_limit_minutes=100"])
    assert TRAIN_AUDIOAE.time_limit(cfg) == 100 * 60
    assert time_limit_seconds(cfg, "dit", cfg.dit.train.time_limit_minutes) == pytest.approx(2 * 3600 * 0.15)
    plain = load_config("demo")
    assert TRAIN_AUDIOAE.time_limit(plain) is None and budget_table(plain) == []


def test_shares_over_one_and_a_zero_budget_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="budget shares add up to 1.050"):
        load_config("demo", ["budget.audioae=0.6"])
    with pytest.raises(ConfigError, match="budget_hours"):
        load_config("demo", ["budget_hours=0"])


def test_the_time_limit_enters_the_cache_key_only_when_there_is_one():
    inputs = StageInputs(key={"data": "d"})
    plain, other = load_config("demo"), load_config("demo", ["dit.train.lr=0.5"])  # a setting another stage reads
    two, four = (load_config("demo", [f"budget_hours={h}"]) for h in (2, 4))
    assert TRAIN_AUDIOAE.key(plain, inputs) == TRAIN_AUDIOAE.key(other, inputs)
    keys = {TRAIN_AUDIOAE.key(c, inputs) for c in (plain, two, four)}
    assert len(keys) == 3


def test_without_a_limit_the_clock_is_the_step_count(fake_time):
    clock = TrainClock(None, total_steps=100).start()
    fake_time.now += 10 ** 6
    clock.tick()
    assert not clock.limited and not clock.spent()
    assert clock.schedule_step(37) == 37.0 and clock.progress(50) == 0.5


def test_with_a_limit_the_schedule_runs_ahead_of_the_steps_and_resumes_where_it_stopped(fake_time, tmp_path):
    clock = TrainClock(60.0, total_steps=1000).start()
    fake_time.now += 15.0
    clock.tick()
    # 10 steps in a quarter of the time: the schedule reads step 250 (progress 0.25), not 10
    assert clock.progress(10) == pytest.approx(0.25) and clock.schedule_step(10) == pytest.approx(250.0)
    assert clock.schedule_step(600) == 600.0  # steps ahead of the time: the steps count
    assert not clock.spent()
    clock.save(tmp_path)
    assert json.loads((tmp_path / CLOCK_FILE).read_text()) == {"elapsed_seconds": 15.0, "limit_seconds": 60.0}

    resumed = TrainClock(60.0, total_steps=1000, elapsed=TrainClock.saved_elapsed(tmp_path)).start()
    fake_time.now += 44.0
    resumed.tick()
    assert resumed.elapsed() == pytest.approx(59.0) and not resumed.spent()
    fake_time.now += 1.0
    resumed.tick()
    assert resumed.spent() and resumed.progress(20) == 1.0
    assert TrainClock.saved_elapsed(tmp_path / "none") == 0.0  # checkpoints from before the clock


class FakeContext:
    """The parts of TrainContext run_steps uses, single process."""

    def __init__(self, limit):
        self.config = {"time_limit_s": limit}
        self.clock = None
        self.is_main, self.world_size, self.device = True, 1, torch.device("cpu")
        self.reports: list[tuple[int, dict]] = []
        self.logged: list[tuple[int, dict]] = []

    def make_clock(self, total):
        self.clock = TrainClock(self.config["time_limit_s"], total)
        return self.clock

    def log_metrics(self, metrics, step):
        self.logged.append((step, metrics))

    def report(self, metrics, step, save=None):
        folder = Path(self.tmp) / f"step-{step}"
        folder.mkdir()
        save(folder)
        self.clock.save(folder)
        self.reports.append((step, metrics))


@pytest.mark.parametrize("limit, last", [(None, 50), (7.0, 7)])
def test_run_steps_stops_at_its_time_limit_and_checkpoints_the_step_it_stopped_at(fake_time, tmp_path, limit, last):
    ctx = FakeContext(limit)
    ctx.tmp = tmp_path

    def step(i):
        fake_time.now += 1.0  # every step takes one second
        return StepResult({"loss": 1.0 / i}, 1.0)

    run_steps(ctx, desc="toy", start=0, total=50, log_every=5, checkpoint_every=20, step=step,
              checkpoint=lambda i, r, extra: ({"loss": r.scalars["loss"]}, lambda d: None))
    assert [s for s, _ in ctx.reports] == sorted({s for s in (20, 40) if s < last} | {last})
    assert ctx.logged[-1][0] == last
    if limit is not None:
        assert ctx.logged[-1][1]["train/progress"] == 1.0
        saved = json.loads((tmp_path / f"step-{last}" / CLOCK_FILE).read_text())
        assert saved["elapsed_seconds"] == pytest.approx(limit)


def test_audioae_lr_decay_and_gan_start_follow_the_clock(fake_time):
    cfg = load_config("demo", TINY_AE + ["audioae.steps=1000", "audioae.train.lr_gamma=0.999",
                                         "audioae.train.disc_start_step=500"])
    x = torch.randn(2, 4800) * 0.1
    stepped = AudioAETrainer(cfg.audioae)
    stepped.train_step(x)
    assert "loss/d" not in stepped.train_step(x)
    lr = cfg.audioae.train.lr
    assert stepped.opt_g.param_groups[0]["lr"] == pytest.approx(lr * 0.999 ** 2)

    timed = AudioAETrainer(cfg.audioae)
    timed.clock = TrainClock(100.0, total_steps=1000).start()
    fake_time.now += 60.0  # 60% of the limit: the schedule is at step 600 of 1000
    timed.clock.tick()
    out = timed.train_step(x)
    assert "loss/d" in out  # the GAN phase starts at 50% of the run, by the clock, at step 1
    assert timed.opt_g.param_groups[0]["lr"] == pytest.approx(lr * 0.999 ** 600)
    assert timed.opt_d.param_groups[0]["lr"] == pytest.approx(lr * 0.999 ** 600)


def test_qinco2_cosine_runs_on_the_schedule_step_it_is_given():
    s = TrainSettings(lr=1e-3, warmup_steps=0, total_steps=100)
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(3))
    opt, sched = make_optimizer(model, s, schedule_step=lambda step: step * 10.0)  # a clock 10x ahead
    opt.step()
    sched.step()  # step 1 reads schedule step 10
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(10, s))
    plain_opt, plain = make_optimizer(model, s)
    plain_opt.step()
    plain.step()
    assert plain_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(1, s))


def _timed_loop(config):
    """Steps of 0.15 s under a 1.5 s limit, failing once after the step-3 checkpoint."""
    import time

    from spresso.train.harness import TrainContext

    ctx = TrainContext(config)
    start = 0
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            start = json.loads((ckpt / "step.json").read_text())["step"]
    clock = ctx.make_clock(1000)
    with open(config["log"], "a") as f:
        f.write(json.dumps({"start": start, "resumed": clock.resumed}) + "\n")

    def step(i):
        if i == 5 and not Path(config["marker"]).exists():
            Path(config["marker"]).touch()
            raise RuntimeError("injected failure")
        time.sleep(0.15)
        return StepResult({"loss": 1.0}, 1.0)

    def checkpoint(i, result, extra):
        # with the wall seconds this attempt has run when the checkpoint is written (the clock saves its own then)
        return {"loss": 1.0}, lambda d: (d / "step.json").write_text(json.dumps({"step": i, "ran": time.monotonic() - t0}))

    t0 = time.monotonic()
    run_steps(ctx, desc="timed", start=start, total=1000, log_every=1, checkpoint_every=3, step=step, checkpoint=checkpoint)


@pytest.mark.slow
def test_a_time_limited_run_resumes_its_clock_after_a_worker_failure(tmp_path, mlflow_env, ray_local):
    from spresso.config.scaling import ScalingSettings
    from spresso.runtime import stage_run
    from spresso.train.harness import TrainJob, fit

    log = tmp_path / "starts.jsonl"
    job = TrainJob(name="timed", loop=_timed_loop, storage_path=str(tmp_path / "ray"),
                   loop_config={"time_limit_s": 1.5, "log": str(log), "marker": str(tmp_path / "failed-once")},
                   scaling=ScalingSettings(workers=1, cpus_per_worker=0.5, max_failures=1))
    cfg = load_config("demo", [f"workdir={tmp_path}"])
    with stage_run("timed", cfg, key="k") as run:
        result = fit(job, run)
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    assert [a["start"] for a in attempts] == [0, 3]
    # the second attempt starts with the seconds the first had trained by its step-3 checkpoint
    assert attempts[0]["resumed"] == 0.0 and 0.45 <= attempts[1]["resumed"] < 1.5
    with result.checkpoint.as_directory() as d:
        saved = json.loads((Path(d) / "step.json").read_text())
        elapsed = TrainClock.saved_elapsed(Path(d))
    final_step = saved["step"]
    # the final clock is the resumed seconds plus what the second attempt had run, counted once; both read
    # when the checkpoint was written, so a loaded machine (slow steps, slow reports) cannot fail this
    assert elapsed >= 1.5
    assert abs(elapsed - (attempts[1]["resumed"] + saved["ran"])) < 0.25
    # stopped by the limit, counting both attempts' time: at most 1.5 s of 0.15 s steps
    assert 4 <= final_step <= 10


@pytest.mark.slow
def test_the_audioae_stage_stops_on_its_time_limit_and_says_so(tmp_path, mlflow_env, ray_local):
    from mlflow.tracking import MlflowClient
    from test_audioae_train import make_shards

    from spresso.train.audioae import train_audioae

    make_shards(tmp_path / "shards")
    cfg = load_config("demo", TINY_AE + [
        f"workdir={tmp_path}", "audioae.steps=100000", "audioae.train.batch_size=2", "audioae.train.segment_seconds=0.1",
        "audioae.train.scaling.workers=1", "audioae.train.scaling.cpus_per_worker=0.5", "audioae.train.checkpoint_every=1000",
        "audioae.train.log_every=1", "audioae.train.valid_every=100000", "audioae.train.valid_clips=2",
        "audioae.train.audio_examples=0", "audioae.train.shuffle_buffer=2", "audioae.train.time_limit_minutes=0.1",
        "audioae.train.lr_gamma=0.99999"])
    final = train_audioae(cfg)
    assert not (Path(final) / CLOCK_FILE).exists()  # the published model carries no training state
    client = MlflowClient(mlflow_env)
    run = client.search_runs([client.get_experiment_by_name(cfg.runtime.experiment).experiment_id])[0]
    assert run.data.params["time_limit_minutes"] == "0.1"
    progress = client.get_metric_history(run.info.run_id, "train/progress")
    last = max(progress, key=lambda m: m.step)
    assert last.value == 1.0 and 1 < last.step < 100000  # stopped by the clock, far below the step cap
    elapsed = client.get_metric_history(run.info.run_id, "train/elapsed_minutes")
    assert max(m.value for m in elapsed) == pytest.approx(0.1, abs=0.05)
    # the lr decays on the clock: at the last step it is past the middle of the 100000-step decay (x 0.37
    # in all), where the step count alone (a few dozen steps) would have left it at its start
    lr = max(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step).value
    base, gamma = cfg.audioae.train.lr, cfg.audioae.train.lr_gamma
    assert base * gamma ** 100000 <= lr <= base * gamma ** 50000


@pytest.mark.slow
def test_the_qinco2_stage_stops_on_its_time_limit_inside_an_epoch_budget(tmp_path, mlflow_env, ray_local):
    import numpy as np
    from mlflow.tracking import MlflowClient

    from spresso.data.zarr_cache import ClipCache
    from spresso.train.qinco2 import train_qinco2

    rng = np.random.default_rng(0)
    n, d, T = 40, 8, 50
    x = (rng.standard_normal((n, T, d)) @ rng.standard_normal((d, d))).astype(np.float32).transpose(0, 2, 1)
    cache = ClipCache.create(tmp_path / "z.zarr", [f"c{i:03d}" for i in range(n)],
                             {"z": ((d, T), np.float32), "valid_frames": ((), np.int32)}, 20, {"frame_rate": 10})
    for a in range(0, n, 20):
        cache.write_block(a, a + 20, z=x[a:a + 20], valid_frames=np.full(20, T))
    cfg = load_config("demo", [
        f"workdir={tmp_path / 'work'}", "qinco2.d=8", "qinco2.K=16", "qinco2.M=2", "qinco2.L=1", "qinco2.de=16",
        "qinco2.dh=16", "qinco2.beam=2", "qinco2.candidates=2", "qinco2.train_beam=2", "qinco2.train_candidates=2",
        "qinco2.batch_size=200", "qinco2.epochs=100000", "qinco2.valid_every=1000000", "qinco2.scaling.workers=0",
        "qinco2.val_fraction=0.2", "qinco2.kmeans_iters=2", "qinco2.warmup_steps=1", "qinco2.time_limit_minutes=0.05"])
    out = train_qinco2(cfg, vectors=str(tmp_path / "z.zarr"), array="z", rq_train_type="default")
    run = MlflowClient(mlflow_env).get_run(out["run_id"])
    assert run.data.params["time_limit_minutes"] == "0.05" and run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(mlflow_env).get_metric_history(out["run_id"], "train_mse")]
    assert 1 <= max(steps) < 100000  # 100000 epochs of 8 steps were allowed; 3 seconds ended them


def test_the_plans_share_table_agrees_with_the_stage_declarations():
    """budget.STAGE_SHARES (torch-free, for the plan) repeats what each TrainingStage declares: the same
    share of budget_hours and the same section, so the dry run's minutes are the ones the stage trains."""
    from spresso.config.budget import STAGE_SHARES, stage_time_limit
    from spresso.train.audioae import TRAIN_AUDIOAE
    from spresso.train.dit import TRAIN_DIT
    from spresso.train.qinco2 import TRAIN_QINCO2
    from spresso.train.stage1 import TRAIN_STAGE1
    from spresso.train.stage3 import TRAIN_STAGE3

    declared = {"train_audioae": TRAIN_AUDIOAE, "train_dit": TRAIN_DIT, "stage1": TRAIN_STAGE1,
                "qinco2": TRAIN_QINCO2, "stage3": TRAIN_STAGE3}
    assert set(declared) == set(STAGE_SHARES)
    cfg = load_config("workstation", ["budget_hours=3", "dit.train.time_limit_minutes=7"])
    for kind, stage in declared.items():
        share, section = STAGE_SHARES[kind]
        assert stage.budget_share == share, kind
        assert stage.section(cfg) is section(cfg), kind
        assert stage.time_limit(cfg) == stage_time_limit(cfg, kind) is not None, kind
