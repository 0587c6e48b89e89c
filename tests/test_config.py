import pytest

from spresso.config import load_config, parse_overrides
from spresso.core.errors import ConfigError


def test_presets_load_and_differ():
    demo = load_config("demo")
    paper = load_config("paper")
    assert demo.data.sample_rate == paper.data.sample_rate == 48000
    assert demo.audioae.model.width < paper.audioae.model.width
    assert paper.workdir.startswith("s3://")
    # GPU nodes are fed by Ray Data CPU tasks; the 2-core demo keeps the in-worker readers (equal speed there)
    paper_feeds = {paper.audioae.train.feed, paper.dit.train.feed, paper.dae.stage1.feed, paper.dae.stage3.feed,
                   paper.qinco2.feed}
    assert paper_feeds == {"ray_data"} and demo.audioae.train.feed == "in_worker" and demo.dit.train.feed == "loader"
    # the DiT's blocks compiled on GPU nodes (measured faster there); never on the CPU demo (minutes of compiling)
    assert paper.dit.train.compile and not demo.dit.train.compile


def test_dotted_override_is_typed():
    cfg = load_config("demo", ["data.clip_seconds=2.5", "data.splits.train=0.9", "data.splits.valid=0.05",
                               "data.splits.test=0.05", "data.bit_depth=24"])
    assert cfg.data.clip_seconds == 2.5 and cfg.data.bit_depth == 24 and cfg.data.splits.train == 0.9


def test_unknown_key_in_override_names_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.clip_secs'"):
        load_config("demo", ["data.clip_secs=5"])


def test_unknown_key_in_file_names_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  sample_rate: 48000\n  shardz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'data\.shardz'"):
        load_config(p)


def test_invalid_value_is_one_line_error():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["data.bit_depth=12"])
    assert "data.bit_depth" in str(err.value) and "\n" not in str(err.value)


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config("demo", ["data.splits.train=0.5"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["nonsense"])
    assert parse_overrides(["a.b=[1, 2]", "c=hello"]) == {"a": {"b": [1, 2]}, "c": "hello"}


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/file.yaml")


def test_config_round_trips_through_dict():
    cfg = load_config("demo", ["qinco2.M=4"])
    again = load_config(None, [f"qinco2.M={cfg.qinco2.M}"])
    assert again.qinco2.M == 4
    from spresso.config import config_from_dict

    assert config_from_dict(cfg.to_dict()) == cfg


def test_extends_merges_over_a_preset_and_refuses_loops(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: demo\nworkdir: elsewhere\ndit:\n  train: {steps: 7}\n")
    cfg, demo = load_config(child), load_config("demo")
    assert cfg.workdir == "elsewhere" and cfg.dit.train.steps == 7
    assert cfg.dit.train.batch_size == demo.dit.train.batch_size  # sections merge key by key
    assert cfg.pipeline.points == demo.pipeline.points
    grandchild = tmp_path / "g.yaml"
    grandchild.write_text("extends: child.yaml\ndit: {train: {batch_size: 3}}\n")  # relative to this file
    g = load_config(grandchild, ["dit.train.steps=9"])
    assert (g.workdir, g.dit.train.steps, g.dit.train.batch_size) == ("elsewhere", 9, 3)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("extends: [demo, paper]\n")
    with pytest.raises(ConfigError, match="names one preset"):
        load_config(tmp_path / "bad.yaml")
    checks = load_config("demo-checks")
    assert [p.t for p in checks.pipeline.points] == [4, 100] and checks.workdir != demo.workdir


@pytest.mark.parametrize("old", ["audioae.train.num_workers=2", "dit.train.use_gpu=true", "dae.stage1.cpus_per_worker=2",
                                 "dae.stage3.max_failures=1", "qinco2.num_workers=0"])
def test_scaling_lives_in_one_nested_section(old):
    """The Ray Train knobs moved under ``scaling:``; the old flat keys are unknown keys."""
    section, key = old.split("=")[0].rsplit(".", 1)
    with pytest.raises(ConfigError, match=rf"unknown config key '{section}\.{key}'"):
        load_config("demo", [old])
    new = f"{section}.scaling.{'workers' if key == 'num_workers' else key}={old.split('=')[1]}"
    assert load_config("demo", [new])


def test_cache_keys_leave_out_run_knobs():
    from spresso.config.scaling import key_settings

    cfg = load_config("demo")
    other = load_config("demo", ["dit.train.scaling.workers=8", "dit.train.log_every=1", "dit.train.strategy=fsdp",
                                 "dae.stage1.checkpoint_every=7", "audioae.train.valid_every=3"])
    for section in (lambda c: c.dit.train, lambda c: c.dae.stage1, lambda c: c.audioae.train):
        assert key_settings(section(cfg)) == key_settings(section(other))
    assert "scaling" not in key_settings(cfg.qinco2) and "valid_every" in key_settings(cfg.qinco2)
    assert key_settings(cfg.dit.train) != key_settings(load_config("demo", ["dit.train.lr=0.5"]).dit.train)


def test_an_unset_optional_setting_leaves_the_cache_key_as_it_was():
    from spresso.config.scaling import key_settings

    cfg = load_config("demo")
    assert cfg.audioae.train.ema_std is None and cfg.audioae.train.time_limit_minutes is None
    plain = key_settings(cfg.audioae.train)
    assert "ema_std" not in plain and "time_limit_minutes" not in plain
    ema = key_settings(load_config("demo", ["audioae.train.ema_std=0.05"]).audioae.train)
    assert ema["ema_std"] == 0.05 and ema != plain
