"""AudioAE training: data crops, loss goes down, and the Ray Train stage (resume, one MLflow run)."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from mlflow.tracking import MlflowClient

from spresso.config import load_config
from spresso.data.crops import CropStream, load_valid_clips
from spresso.models.audioae import load_audioae
from spresso.train.audioae import AudioAETrainer, train_audioae
from spresso.train.audioae_valid import evaluate_reconstruction

torch.set_num_threads(1)
SR, CLIP = 48000, 48000  # 1 s clips keep the tests fast
TINY = ["audioae.model.width=32", "audioae.model.blocks=1", "audioae.model.intermediate=64",
        "audioae.disc.mpd_channels=[4,4,8,8,8]", "audioae.disc.stft_channels=4", "audioae.disc.stft_windows=[512]"]


def _tone(rng, valid):
    t = np.arange(CLIP) / SR
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) * np.exp(-t * rng.uniform(1, 8))
    wave += 0.02 * rng.standard_normal(CLIP)
    wave[valid:] = 0.0
    return wave.astype(np.float32)


def make_shards(root: Path, counts={"train": (3, 4), "valid": (1, 3)}, seed=0) -> Path:
    """Shards per contract 1: <root>/<split>/shard-NNNNNN.tar with <key>.flac + <key>.json, a manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, (n_tars, per_tar) in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for s in range(n_tars):
            with tarfile.open(root / split / f"shard-{s:06d}.tar", "w") as tar:
                for i in range(per_tar):
                    key = f"{split}-{s:02d}-{i:03d}"
                    valid = int(rng.integers(CLIP // 4, CLIP))
                    buf = io.BytesIO()
                    sf.write(buf, _tone(rng, valid), SR, format="FLAC", subtype="PCM_16")
                    meta = {"key": key, "valid_samples": valid, "sample_rate": SR, "caption": "a tone"}
                    for ext, data in (("flac", buf.getvalue()), ("json", json.dumps(meta).encode())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    rows.append({"key": key, "split": split, "shard": f"{split}/shard-{s:06d}.tar", "source": "synth",
                                 "offset_seconds": 0.0, "valid_samples": valid, "caption": "a tone"})
    pq.write_table(pa.Table.from_pylist(rows), root / "manifest.parquet")
    return root


def test_crop_stream_batches_come_from_real_audio(tmp_path):
    shards = make_shards(tmp_path / "shards")
    tars = sorted(str(p) for p in (shards / "train").glob("*.tar"))
    stream = iter(CropStream(tars, 4800, 3, crops_per_clip=2, shuffle_buffer=4, seed=1))
    for _ in range(6):  # more than one pass over the 12 clips' crops
        batch = next(stream)
        assert batch.shape == (3, 4800) and batch.dtype == torch.float32
        assert torch.all(batch.abs().amax(dim=1) > 0.01)  # crops lie inside valid_samples, not padding
    # rank 1 of 2 reads other tars than rank 0: different data
    a = next(iter(CropStream(tars, 4800, 2, rank=0, world_size=2, shuffle_buffer=1)))
    b = next(iter(CropStream(tars, 4800, 2, rank=1, world_size=2, shuffle_buffer=1)))
    assert not torch.equal(a, b)
    from spresso.core.errors import SpressoError

    with pytest.raises(SpressoError, match="every worker"):
        CropStream(tars, 4800, 2, rank=0, world_size=4)


def test_a_few_optimiser_steps_reduce_the_loss(tmp_path):
    torch.manual_seed(0)
    cfg = load_config("demo", TINY + ["audioae.train.lr=3e-3", "audioae.train.disc_start_step=0"])
    trainer = AudioAETrainer(cfg.audioae)
    shards = make_shards(tmp_path / "shards")
    batch = next(iter(CropStream(sorted(str(p) for p in (shards / "train").glob("*.tar")), 4800, 4, shuffle_buffer=1)))
    first = trainer.train_step(batch)
    assert {"loss/mel", "loss/adv", "loss/fm", "loss/d", "grad_norm/g"} <= set(first)
    for _ in range(12):
        last = trainer.train_step(batch)
    assert last["loss/mel"] < 0.9 * first["loss/mel"]
    assert trainer.step == 13 and last["lr"] < cfg.audioae.train.lr
    clips = load_valid_clips(str(shards), 2)
    metrics = evaluate_reconstruction(trainer.generator, clips, torch.device("cpu"))
    assert metrics["valid/mel_distance"] < metrics["valid/silence_mel_distance"]


def test_discriminator_and_generator_have_their_own_gradient_clips(monkeypatch):
    """DAC clips the discriminators at a gradient norm of 10 and the generator at 1000 (configurable)."""
    real = torch.nn.utils.clip_grad_norm_
    clips = []

    def recording(params, max_norm, *a, **kw):
        params = list(params)
        clips.append(({id(p) for p in params}, max_norm))
        return real(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    cfg = load_config("demo", TINY + ["audioae.train.disc_start_step=0"])
    assert (cfg.audioae.train.disc_grad_clip, cfg.audioae.train.grad_clip) == (10.0, 1000.0)
    trainer = AudioAETrainer(cfg.audioae)
    trainer.train_step(torch.randn(2, 4800) * 0.1)
    d_ids, g_ids = ({id(p) for p in m.parameters()} for m in (trainer.discriminator, trainer.generator))
    assert [(ids == d_ids, ids == g_ids, norm) for ids, norm in clips] == [(True, False, 10.0), (False, True, 1000.0)]
    cfg.audioae.train.disc_grad_clip = 3.0
    clips.clear()
    AudioAETrainer(cfg.audioae).train_step(torch.randn(2, 4800) * 0.1)
    assert [norm for _, norm in clips] == [3.0, 1000.0]


def test_waveform_term_ties_the_phase_to_the_input():
    """The mel loss is phase-blind: alone it leaves a fixed clip's reconstruction uncorrelated with it
    (SI-SDR well below 0 dB); with ``waveform_l1_weight`` a tiny model matches its phase in a few steps."""
    from spresso.eval.metrics import si_sdr

    clip = torch.from_numpy(_tone(np.random.default_rng(3), CLIP)[:4800])[None]  # 0.1 s
    sdr = {}
    for weight in (0.0, 3000.0):
        torch.manual_seed(0)
        cfg = load_config("demo", TINY + ["audioae.train.lr=3e-3", "audioae.train.disc_start_step=1000",
                                          f"audioae.train.waveform_l1_weight={weight}"])
        trainer = AudioAETrainer(cfg.audioae)
        for _ in range(40):
            losses = trainer.train_step(clip)
        assert ("loss/wave" in losses) == (weight > 0)
        with torch.no_grad():
            sdr[weight] = float(si_sdr(trainer.model(clip), clip)[0])
    assert sdr[0.0] < 0.0 < 5.0 < sdr[3000.0], sdr


@pytest.mark.slow
def test_stage_resumes_after_injected_worker_failure_in_one_mlflow_run(tmp_path, mlflow_env, ray_local):
    make_shards(tmp_path / "shards")
    overrides = TINY + [
        f"workdir={tmp_path}", "audioae.steps=6", "audioae.train.batch_size=2", "audioae.train.segment_seconds=0.1",
        "audioae.train.scaling.workers=1", "audioae.train.scaling.cpus_per_worker=0.5", "audioae.train.scaling.max_failures=1",
        "audioae.train.checkpoint_every=2", "audioae.train.log_every=1", "audioae.train.valid_every=100",
        "audioae.train.valid_clips=2", "audioae.train.audio_examples=1", "audioae.train.fail_at_step=3",
        "audioae.train.disc_start_step=2", "audioae.train.shuffle_buffer=2",
    ]
    cfg = load_config("demo", overrides)
    final = train_audioae(cfg)
    assert Path(final) == (tmp_path / "audioae" / "final").resolve()
    model = load_audioae(final)
    assert model.encode(torch.zeros(1, 960)).shape == (1, 128, 2)
    assert list((tmp_path / "ray_train").glob("audioae-*/injected_failure_done"))  # the failure happened

    client = MlflowClient(mlflow_env)
    runs = client.search_runs([client.get_experiment_by_name(cfg.runtime.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    # Resumed from the step-2 checkpoint: steps 1-2 were never trained (or logged) twice.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/mel")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert "valid/mel_distance" in run.data.metrics and "valid/si_sdr" in run.data.metrics
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "examples/step-0000006")]
    assert any(a.endswith(".png") for a in arts) and any(a.endswith(".recon.flac") for a in arts)
    assert run.data.tags["spresso.output.checkpoint.uri"] == str(final)

    # Rerunning the unchanged stage reuses it: no second run.
    assert train_audioae(cfg) == final
    assert len(client.search_runs([run.info.experiment_id])) == 1
