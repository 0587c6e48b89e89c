"""`spresso encode/decode/peel/export` never lose or half-write a file, say what they did, and carry on past a
bad file in a batch (issue 20, items 1, 2 and 6)."""
import os
import stat

import numpy as np
import pytest
import soundfile as sf
import torch
from codec_toys import shared_bundle

import spresso.codec.files as codec_files
from spresso.cli import main
from spresso.codec import bitstream as bs
from spresso.codec.codec import Codec
from spresso.core import bundle_io, storage
from spresso.core.errors import BundleError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def bundle():
    return str(shared_bundle())


def write(path, seconds, sr, ch=1, seed=0, scale=0.1):
    wave = (np.random.default_rng(seed).standard_normal((int(seconds * sr), ch)) * scale).astype(np.float32)
    sf.write(str(path), wave, sr)
    return wave


def one_error(capsys, argv, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def stray(folder):
    return sorted(p.name for p in folder.rglob(".*partial*"))


def test_encode_never_replaces_its_input_or_an_existing_output(bundle, tmp_path, capsys):
    src = tmp_path / "same.wav"
    write(src, 0.3, 48000)
    before = src.read_bytes()
    assert "writes .spr" in one_error(capsys, ["encode", str(src), str(src), "--model", bundle, "-q"])
    assert "the output is the input" in one_error(capsys, ["peel", str(src), str(src), "-m", "1"])
    assert src.read_bytes() == before
    out = tmp_path / "o.spr"
    out.write_bytes(b"old")
    assert "already exists (pass --overwrite" in one_error(capsys, ["encode", str(src), str(out), "--model", bundle])
    assert out.read_bytes() == b"old"
    assert main(["encode", str(src), str(out), "--model", bundle, "--overwrite"]) == 0
    assert bs.decode_stream(out.read_bytes()).sample_count == 14400
    printed = capsys.readouterr().out
    assert "3 codebooks, 0.012 kbps" in printed and "mono" in printed  # the chosen bitrate is said


def test_folder_encode_gives_each_input_its_own_output(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write(src / "a.wav", 0.2, 48000, seed=1)
    write(src / "a.ogg", 0.2, 48000, seed=2)
    write(src / "b.flac", 0.2, 48000, seed=3)
    assert main(["encode", str(src), str(tmp_path / "codes"), "--model", bundle, "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "codes").iterdir()) == ["a.ogg.spr", "a.wav.spr", "b.spr"]
    a_wav, a_ogg = ((tmp_path / "codes" / n).read_bytes() for n in ("a.wav.spr", "a.ogg.spr"))
    assert a_wav != a_ogg


def test_out_ending_in_a_slash_is_a_folder_and_several_inputs_work_unquoted(bundle, tmp_path, capsys):
    write(tmp_path / "x.wav", 0.2, 48000)
    write(tmp_path / "y.wav", 0.2, 48000, seed=1)
    assert main(["encode", str(tmp_path / "x.wav"), str(tmp_path / "out" / "newdir") + "/", "--model", bundle, "-q"]) == 0
    assert (tmp_path / "out" / "newdir" / "x.spr").is_file()
    # what the shell makes of an unquoted *.wav: several IN arguments, then OUT
    assert main(["encode", str(tmp_path / "x.wav"), str(tmp_path / "y.wav"), str(tmp_path / "both"), "--model", bundle, "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["x.spr", "y.spr"]
    err = one_error(capsys, ["encode", str(tmp_path / "x.wav"), str(tmp_path / "y.wav"), str(tmp_path / "x.wav"), "--model", bundle])
    assert "several inputs need an output folder" in err and "unquoted glob" in err


def test_a_batch_goes_on_past_bad_files_and_lists_them(bundle, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write(src / f"ok{i}.wav", 0.2, 48000, seed=i)
    (src / "junk.wav").write_bytes(b"RIFF....garbage")
    sf.write(str(src / "silent.wav"), np.zeros(4800, np.float32), 48000)
    assert main(["encode", str(src), str(tmp_path / "codes"), "--model", bundle, "-q"]) == 2
    err = capsys.readouterr().err
    assert "error: 2 of 6 files failed" in err and "Traceback" not in err
    assert "junk.wav" in err and "silent.wav: audio is digital silence" in err
    assert sorted(p.name for p in (tmp_path / "codes").iterdir()) == [f"ok{i}.spr" for i in range(4)]


def test_stereo_rule_is_printed_and_anti_phase_is_not_silence(bundle, tmp_path, capsys):
    left = np.random.default_rng(0).standard_normal(9600).astype(np.float32) * 0.5
    sf.write(str(tmp_path / "phase.wav"), np.stack([left, -left], axis=1), 48000, subtype="FLOAT")
    sf.write(str(tmp_path / "st.wav"), np.stack([left, left * 0.5], axis=1), 48000, subtype="FLOAT")
    assert main(["encode", str(tmp_path / "phase.wav"), str(tmp_path / "phase.spr"), "--model", bundle]) == 0
    assert main(["encode", str(tmp_path / "st.wav"), str(tmp_path / "st.spr"), "--model", bundle]) == 0
    out = capsys.readouterr().out
    assert "stereo -> mono (left channel: the channels cancel in the mid)" in out
    assert "stereo -> mono (mid: mean of the channels)" in out
    # the streaming path (long files) applies the same rule and gives the same bytes
    codec = Codec.from_path(bundle)
    assert codec.encode_file(tmp_path / "phase.wav") == (tmp_path / "phase.spr").read_bytes()


def test_a_file_cut_short_is_refused_unless_allowed(bundle, tmp_path, capsys):
    wave = np.random.default_rng(0).standard_normal((int(4.7 * 44100), 2)).astype(np.float32) * 0.1
    sf.write(str(tmp_path / "full.ogg"), wave, 44100)
    data = (tmp_path / "full.ogg").read_bytes()
    (tmp_path / "cut.ogg").write_bytes(data[: len(data) // 4])
    err = one_error(capsys, ["encode", str(tmp_path / "cut.ogg"), str(tmp_path / "cut.spr"), "--model", bundle, "-q"])
    assert "truncated" in err and "--allow-partial" in err
    assert not (tmp_path / "cut.spr").exists()
    assert main(["encode", str(tmp_path / "cut.ogg"), str(tmp_path / "cut.spr"), "--model", bundle, "-q", "--allow-partial"]) == 0
    warn = capsys.readouterr().err
    assert "warning:" in warn and "kept the readable" in warn
    # the same through the streaming path
    codec = Codec.from_path(bundle)
    with pytest.raises(Exception, match="allow-partial"):
        codec.encode_file(tmp_path / "cut.ogg")
    assert codec.encode_file(tmp_path / "cut.ogg", allow_partial=True) == (tmp_path / "cut.spr").read_bytes()


def test_a_1_hz_wav_is_refused_at_encode(bundle, tmp_path, capsys):
    sf.write(str(tmp_path / "slow.wav"), np.array([0.1, -0.2, 0.3, 0.1, 0.2], np.float32), 1)
    assert "sample rate must be 1000..768000 Hz" in one_error(
        capsys, ["encode", str(tmp_path / "slow.wav"), str(tmp_path / "slow.spr"), "--model", bundle, "-q"])
    assert not (tmp_path / "slow.spr").exists()


def test_bitrate_requests_are_validated(bundle, tmp_path, capsys):
    write(tmp_path / "a.wav", 0.2, 48000)
    for kbps in ("1e20", "1000", "0.001", "nan", "inf"):
        err = one_error(capsys, ["encode", str(tmp_path / "a.wav"), str(tmp_path / "a.spr"), "--model", bundle, "--kbps", kbps])
        assert "range 0.004..0.016 kbps" in err, err
    assert not (tmp_path / "a.spr").exists()


@pytest.mark.parametrize("long", [False, True])
def test_ctrl_c_during_decode_leaves_no_partial_file(bundle, tmp_path, monkeypatch, capsys, long):
    write(tmp_path / "a.wav", 12.0, 16000)
    assert main(["encode", str(tmp_path / "a.wav"), str(tmp_path / "a.spr"), "--model", bundle, "-q"]) == 0
    if long:
        monkeypatch.setattr(codec_files, "LONG_SECONDS", 1.0)
    calls = []
    real = Codec.decode_windows

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # after the first batch has been written (streaming) or computed
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Codec, "decode_windows", interrupted)
    assert main(["decode", str(tmp_path / "a.spr"), str(tmp_path / "a_out.wav"), "--model", bundle, "--steps", "1",
                 "--batch-size", "1", "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "a_out.wav").exists() and stray(tmp_path) == []


def test_decode_keeps_existing_takes_unless_overwrite(bundle, tmp_path, capsys):
    write(tmp_path / "a.wav", 0.2, 48000)
    assert main(["encode", str(tmp_path / "a.wav"), str(tmp_path / "a.spr"), "--model", bundle, "-q"]) == 0
    (tmp_path / "o.v2.wav").write_bytes(b"keep")
    err = one_error(capsys, ["decode", str(tmp_path / "a.spr"), str(tmp_path / "o.wav"), "--model", bundle, "--variations", "2"])
    assert "o.v2.wav: already exists" in err
    assert (tmp_path / "o.v2.wav").read_bytes() == b"keep" and not (tmp_path / "o.v1.wav").exists()
    assert "writes .wav/.flac" in one_error(capsys, ["decode", str(tmp_path / "a.spr"), str(tmp_path / "o.spr"), "--model", bundle])


def test_bundle_weight_files_get_the_usual_mode(tmp_path):
    """safetensors' save_file writes 0600: another user could not read an exported bundle."""
    bundle_io.save_tensors({"w": torch.ones(3)}, tmp_path / "w.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(shared_bundle() / bundle_io.DAE_FILE).st_mode) == \
        stat.S_IMODE(os.stat(shared_bundle() / bundle_io.MANIFEST).st_mode)


def test_unreadable_weight_files_give_one_line(monkeypatch):
    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(storage, "read_bytes", refused)
    with pytest.raises(BundleError, match="cannot read the bundle file") as err:
        bundle_io.load_bundle_weights(shared_bundle(), bundle_io.DAE_FILE, {}, verify=False)
    assert "\n" not in str(err.value)


def test_version_and_help_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("spresso ")
    for command in ("encode", "decode", "export", "peel", "inspect"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        examples = text[text.index("examples:"):].splitlines()[1:]
        assert len([e for e in examples if e.strip().startswith("spresso ")]) >= 2, command
        if command in ("encode", "decode", "peel"):
            assert "--overwrite" in text
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    assert "channels cancel" in capsys.readouterr().out  # the stereo rule is stated


def test_export_keeps_an_existing_bundle_unless_overwrite(tmp_path, capsys):
    there = tmp_path / "bundles" / "x"
    there.mkdir(parents=True)
    (there / bundle_io.MANIFEST).write_text("{}")
    err = one_error(capsys, ["export", "--config", "demo", "--set", f"workdir={tmp_path}", "--out", "bundles/x"])
    assert "a bundle is already there (pass --overwrite" in err
    assert (there / bundle_io.MANIFEST).read_text() == "{}"


def test_a_local_folder_replaced_by_staged_is_swapped_in_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "bundles" / "d1"
    dest.mkdir(parents=True)
    (dest / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):  # an interrupted export: the old bundle stays, nothing half-new
        with storage.staged(dest, replace=True) as out:
            (out / "bundle.json").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["d1"]  # no temporary folder left
    with storage.staged(dest, replace=True) as out:
        assert out != dest and not any(out.iterdir())
        (out / "bundle.json").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["bundle.json"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["d1"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_listening_summary_json_is_kept_unless_overwrite(tmp_path, capsys):
    results = tmp_path / "r.json"
    results.write_text("{}")
    report = tmp_path / "summary.json"
    report.write_text("keep me")
    line = one_error(capsys, ["listening-test", "summarize", str(results), "--json", str(report)])
    assert "already exists" in line and report.read_text() == "keep me"
    line = one_error(capsys, ["listening-test", "summarize", str(results), "--json", str(results)])
    assert "is the input" in line and results.read_text() == "{}"
