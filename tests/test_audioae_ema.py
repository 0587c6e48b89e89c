"""The AudioAE's EMA of its generator (``audioae.train.ema_std``): what it averages, what a checkpoint
publishes, how it resumes, and that a checkpoint and a config that disagree about it are refused."""
import pytest
import torch

from spresso.config import load_config
from spresso.core.checkpoint import CheckpointError, load_weights
from spresso.models.audioae import load_audioae
from spresso.train.audioae import AudioAETrainer

torch.set_num_threads(1)
TINY = ["audioae.model.width=32", "audioae.model.blocks=1", "audioae.model.intermediate=64",
        "audioae.disc.mpd_channels=[4,4,8,8,8]", "audioae.disc.stft_channels=4", "audioae.disc.stft_windows=[512]",
        "audioae.train.lr=3e-3", "audioae.train.disc_start_step=1000"]


def trained(extra=(), steps=6, seed=0) -> AudioAETrainer:
    torch.manual_seed(seed)
    trainer = AudioAETrainer(load_config("demo", TINY + list(extra)).audioae)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        trainer.train_step(0.1 * torch.randn(2, 4800, generator=gen))
    return trainer


def flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for _, v in sorted(state.items())])


def test_without_ema_std_the_trainer_has_no_average_and_publishes_its_weights():
    trainer = trained()
    assert trainer.ema is None and trainer.published() is trainer.model


def test_the_published_generator_is_the_power_ema_of_the_trained_weights():
    trainer = trained(["audioae.train.ema_std=0.1"])
    raw, avg = trainer.model.state_dict(), trainer.published().state_dict()
    assert trainer.ema.num_updates == 6
    # the average lags the weights it averages, and training keeps its own (raw) weights
    assert not torch.allclose(flat(raw), flat(avg))
    assert trainer.published() is not trainer.model
    # it is the EMA's shadow, weight for weight
    for k, v in trainer.ema.state_dict().items():
        torch.testing.assert_close(avg[k].float(), v)


def test_a_checkpoint_publishes_the_average_and_resumes_both(tmp_path):
    trainer = trained(["audioae.train.ema_std=0.1"])
    trainer.save(tmp_path / "ck", {"audioae": trainer.cfg.model_dump(mode="json")})
    published = load_weights(tmp_path / "ck")
    assert torch.equal(flat(published), flat(trainer.ema.state_dict()))
    # inference loads the average (strictly)
    model = load_audioae(tmp_path / "ck")
    assert torch.equal(flat(model.state_dict()), flat(trainer.published().state_dict()))

    resumed = AudioAETrainer(trainer.cfg)
    assert resumed.restore(tmp_path / "ck") == 6
    assert torch.equal(flat(resumed.model.state_dict()), flat(trainer.model.state_dict()))  # raw weights, not the average
    assert resumed.ema.num_updates == 6
    assert torch.equal(flat(resumed.ema.state_dict()), flat(trainer.ema.state_dict()))
    # and both continue alike
    x = 0.1 * torch.randn(2, 4800, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(5)
    a = trainer.train_step(x)
    torch.manual_seed(5)
    b = resumed.train_step(x)
    assert a["ema_beta"] == b["ema_beta"] and a["loss/g"] == pytest.approx(b["loss/g"], rel=1e-5)


@pytest.mark.parametrize("saved, resuming", [(["audioae.train.ema_std=0.1"], []), ([], ["audioae.train.ema_std=0.1"])])
def test_a_checkpoint_and_a_config_that_disagree_about_the_ema_are_refused(tmp_path, saved, resuming):
    trainer = trained(saved, steps=1)
    trainer.save(tmp_path / "ck", {"audioae": trainer.cfg.model_dump(mode="json")})
    other = AudioAETrainer(load_config("demo", TINY + resuming).audioae)
    with pytest.raises(CheckpointError, match="ema_std"):
        other.restore(tmp_path / "ck")
