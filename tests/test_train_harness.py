"""The Ray Train harness every training stage uses: checkpoints, failure recovery, rerun-resume."""
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from spresso.config import load_config
from spresso.config.scaling import ScalingSettings
from spresso.core.checkpoint import (
    load_state,
    load_strict,
    load_weights,
    save_checkpoint,
)
from spresso.runtime import stage_run, tracking_uri
from spresso.train.harness import (
    TrainContext,
    TrainJob,
    copy_checkpoint,
    fit,
    resumable_run_id,
)


def _loop(config):
    """Fit y = 3x with one weight; optionally fail once at a given step (a marker file remembers)."""
    ctx = TrainContext(config)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    start = 0
    with ctx.latest_checkpoint() as ckpt:
        if ckpt is not None:
            load_strict(model, load_weights(ckpt))
            start = load_state(ckpt)[1]["step"]
    Path(config["log"]).open("a").write(f"start {start}\n")
    x = torch.linspace(-1, 1, 32)[:, None]
    for step in range(start, config["steps"]):
        if step == config.get("fail_at") and not Path(config["marker"]).exists():
            Path(config["marker"]).touch()
            raise RuntimeError("injected failure")
        loss = ((model(x) - 3 * x) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        ctx.log_metrics({"loss": loss.item()}, step=step + 1)
        ctx.report({"loss": loss.item()}, step + 1, save=lambda d, s=step + 1: save_checkpoint(
            d, model.state_dict(), kind="toy", config={}, state_meta={"step": s}))


def _job(tmp_path, **loop):
    cfg = {"steps": 5, "log": str(tmp_path / "starts.txt"), "marker": str(tmp_path / "failed-once"), **loop}
    return TrainJob(name="toy", loop=_loop, loop_config=cfg, storage_path=str(tmp_path / "ray"),
                    scaling=ScalingSettings(workers=1, cpus_per_worker=0.5))


@pytest.mark.slow
def test_worker_failure_resumes_from_checkpoint_in_one_mlflow_run(tmp_path, mlflow_env, ray_local):
    cfg = load_config("demo", [f"workdir={tmp_path}"])
    job = _job(tmp_path, fail_at=3)
    job.scaling.max_failures = 1
    with stage_run("toy", cfg) as run:
        result = fit(job, run)
    assert (tmp_path / "starts.txt").read_text().split("\n")[:2] == ["start 0", "start 3"]
    final = copy_checkpoint(result, tmp_path / "final")
    w = load_weights(final)["weight"].item()
    assert abs(w - 3) < abs(0 - 3)  # it learned toward 3
    client = MlflowClient(mlflow_env)
    runs = client.search_runs([run.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.run_id, "loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_rerun_after_failed_attempt_resumes_checkpoint_and_mlflow_run(tmp_path, mlflow_env, ray_local):
    cfg = load_config("demo", [f"workdir={tmp_path}"])
    uri = tracking_uri(cfg.workdir)
    job = _job(tmp_path, fail_at=3)
    assert resumable_run_id(job.storage_path, job.name, uri) is None
    with pytest.raises(Exception):
        with stage_run("toy", cfg) as run:
            fit(job, run)
    first = resumable_run_id(job.storage_path, job.name, uri)
    assert first == run.run_id  # FAILED, so the rerun picks it up
    with stage_run("toy", cfg, resume_run_id=first) as again:
        fit(_job(tmp_path, fail_at=3), again)
    assert again.run_id == first
    assert (tmp_path / "starts.txt").read_text().split() == ["start", "0", "start", "3"]
    runs = MlflowClient(mlflow_env).search_runs([run.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert resumable_run_id(job.storage_path, job.name, uri) is None


def test_checkpoint_round_trip_and_strict_errors(tmp_path):
    from spresso.core.checkpoint import (
        CheckpointError,
        load_optimizer,
        optimizer_tensors,
        read_checkpoint_config,
    )

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward(); opt.step()
    tensors, meta = optimizer_tensors(opt)
    save_checkpoint(tmp_path, model.state_dict(), kind="mlp", config={"a": 1}, state=tensors, state_meta={"optim": meta, "step": 7})
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    load_strict(other, load_weights(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    state, smeta = load_state(tmp_path)
    load_optimizer(opt2, state, smeta["optim"])
    assert smeta["step"] == 7 and torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert read_checkpoint_config(tmp_path, "mlp")["config"] == {"a": 1}
    with pytest.raises(CheckpointError, match="expected 'dit'"):
        read_checkpoint_config(tmp_path, "dit")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_strict(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)), load_weights(tmp_path))
    with pytest.raises(CheckpointError, match="missing"):
        load_strict(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2)), load_weights(tmp_path))


def test_in_process_mode_returns_a_usable_final_checkpoint(tmp_path, mlflow_env):
    """scaling.workers=0 (the fast-test mode) still yields a final checkpoint that copies and loads."""
    cfg = load_config("demo", [f"workdir={tmp_path}"])
    job = _job(tmp_path)
    job.scaling.workers = 0
    with stage_run("toy", cfg) as run:
        result = fit(job, run)
    final = copy_checkpoint(result, tmp_path / "final")
    assert load_state(final)[1]["step"] == 5 and "weight" in load_weights(final)


def _tagged_loop(config):
    """Report checkpoints that carry this run's own tag, slowly enough that two runs overlap."""
    import time

    ctx = TrainContext(config)
    for step in range(1, 4):
        time.sleep(0.2)
        ctx.report({"tag": config["tag"]}, step, save=lambda d, s=step: save_checkpoint(
            d, {"w": torch.zeros(1)}, kind="toy", config={}, state_meta={"step": s, "tag": config["tag"]}))


def test_two_in_process_fits_on_threads_each_keep_their_own_checkpoint(tmp_path, mlflow_env, ray_local):
    """The pipeline's local executor runs stages on threads; with scaling.workers=0 each fit runs in this
    process, where Ray Train keeps one global context: unguarded, one run finished with the other's weights."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = load_config("demo", [f"workdir={tmp_path}"])

    def one(tag: str) -> str:
        job = TrainJob(name=f"toy-{tag}", loop=_tagged_loop, loop_config={"tag": tag},
                       storage_path=str(tmp_path / tag), scaling=ScalingSettings(workers=0))
        with stage_run("toy", cfg, key=f"toy-{tag}", run_name=f"toy-{tag}") as run:
            result = fit(job, run)
        return load_state(copy_checkpoint(result, tmp_path / tag / "final"))[1]["tag"]

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(one, ["a", "b"])) == ["a", "b"]
