"""`spresso encode` / `decode` end to end through spresso.cli.main: files, folders, globs, bad input."""
import numpy as np
import pytest
import soundfile as sf
import torch
from codec_toys import shared_bundle

import spresso.codec.files as codec_files
from spresso.cli import main
from spresso.codec import bitstream as bs

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return str(shared_bundle())


def write(path, seconds, sr, ch=1, seed=0):
    rng = np.random.default_rng(seed)
    sf.write(str(path), (rng.standard_normal((int(seconds * sr), ch)) * 0.1).astype(np.float32), sr)


def test_file_round_trip_with_kbps_variations_and_original_rate(bundle, tmp_path, capsys):
    write(tmp_path / "a.wav", 1.5, 44100, ch=2)
    assert main(["encode", str(tmp_path / "a.wav"), str(tmp_path / "a.spr"), "--model", bundle, "--kbps", "0.008", "-q"]) == 0
    s = bs.decode_stream((tmp_path / "a.spr").read_bytes())
    assert s.m == 2 and s.sample_rate == 44100
    assert main(["decode", str(tmp_path / "a.spr"), str(tmp_path / "a_out.wav"), "--model", bundle, "--steps", "1",
                 "--original-rate", "--variations", "2", "--seed", "3", "-q"]) == 0
    v1, sr = sf.read(str(tmp_path / "a_out.v1.wav"))
    v2, _ = sf.read(str(tmp_path / "a_out.v2.wav"))
    assert sr == 44100 and v1.shape == (int(1.5 * 44100),) and not np.allclose(v1, v2)
    assert main(["peel", str(tmp_path / "a.spr"), str(tmp_path / "p.spr"), "-m", "1"]) == 0
    assert main(["decode", str(tmp_path / "p.spr"), str(tmp_path / "p.flac"), "--model", bundle, "--steps", "1", "-q"]) == 0
    assert sf.info(str(tmp_path / "p.flac")).samplerate == 48000


def test_folders_and_globs(bundle, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write(src / "x.wav", 0.5, 48000)
    write(src / "sub" / "y.flac", 6.0, 22050, seed=1)
    (src / "notes.txt").write_text("not audio")
    assert main(["encode", str(src), str(tmp_path / "codes"), "--model", bundle, "-q", "--codebooks", "3"]) == 0
    assert sorted(p.relative_to(tmp_path / "codes").as_posix() for p in (tmp_path / "codes").rglob("*.spr")) == ["sub/y.spr", "x.spr"]
    assert main(["decode", str(tmp_path / "codes" / "**" / "*.spr"), str(tmp_path / "wav"), "--model", bundle, "--steps", "1", "-q"]) == 0
    outs = sorted(p.name for p in (tmp_path / "wav").rglob("*.wav"))
    assert outs == ["x.wav", "y.wav"]
    assert sf.info(str(tmp_path / "wav" / "y.wav")).frames == 6 * 48000


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_inputs_exit_2_with_one_line(bundle, tmp_path, capsys):
    write(tmp_path / "ok.wav", 0.5, 48000)
    sf.write(str(tmp_path / "silent.wav"), np.zeros(4800, np.float32), 48000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF....garbage")
    (tmp_path / "junk.spr").write_bytes(b"SPX\x01abc")
    enc = ["--model", bundle, "-q"]
    assert "silence" in _one_line_error(capsys, ["encode", str(tmp_path / "silent.wav"), str(tmp_path / "s.spr"), *enc])
    assert "junk.wav" in _one_line_error(capsys, ["encode", str(tmp_path / "junk.wav"), str(tmp_path / "j.spr"), *enc])
    assert "no such file" in _one_line_error(capsys, ["encode", str(tmp_path / "none.wav"), str(tmp_path / "n.spr"), *enc])
    assert "matches no file" in _one_line_error(capsys, ["encode", str(tmp_path / "*.ogg"), str(tmp_path / "o"), *enc])
    assert "wrong magic" in _one_line_error(capsys, ["decode", str(tmp_path / "junk.spr"), str(tmp_path / "j.wav"), *enc])
    assert "no such bundle" in _one_line_error(capsys, ["encode", str(tmp_path / "ok.wav"), str(tmp_path / "o.spr"),
                                                        "--model", str(tmp_path / "nobundle")])
    assert "--model" in _one_line_error(capsys, ["encode", str(tmp_path / "ok.wav"), str(tmp_path / "o.spr")])
    assert "--codebooks must be" in _one_line_error(capsys, ["encode", str(tmp_path / "ok.wav"), str(tmp_path / "o.spr"), *enc, "-m", "9"])
    # A stream made by another model.
    other = shared_bundle(seed=9)
    assert main(["encode", str(tmp_path / "ok.wav"), str(tmp_path / "other.spr"), "--model", str(other), "-q"]) == 0
    assert "another model" in _one_line_error(capsys, ["decode", str(tmp_path / "other.spr"), str(tmp_path / "o.wav"), *enc])
    # A truncated stream.
    data = (tmp_path / "other.spr").read_bytes()
    (tmp_path / "cut.spr").write_bytes(data[:-3])
    assert "truncated" in _one_line_error(capsys, ["decode", str(tmp_path / "cut.spr"), str(tmp_path / "c.wav"), *enc])


def test_long_files_stream_through_the_cli_with_the_same_result(bundle, tmp_path, monkeypatch):
    """Files past the CLI's length threshold go block by block; bytes and audio match the batched path."""
    write(tmp_path / "long.wav", 14.0, 32000, ch=2)
    assert main(["encode", str(tmp_path / "long.wav"), str(tmp_path / "batched.spr"), "--model", bundle, "-q"]) == 0
    assert main(["decode", str(tmp_path / "batched.spr"), str(tmp_path / "batched.wav"), "--model", bundle, "--steps", "1",
                 "--variations", "2", "--original-rate", "-q"]) == 0
    monkeypatch.setattr(codec_files, "LONG_SECONDS", 10.0)
    assert main(["encode", str(tmp_path / "long.wav"), str(tmp_path / "streamed.spr"), "--model", bundle, "-q"]) == 0
    assert (tmp_path / "streamed.spr").read_bytes() == (tmp_path / "batched.spr").read_bytes()
    assert main(["decode", str(tmp_path / "streamed.spr"), str(tmp_path / "streamed.wav"), "--model", bundle, "--steps", "1",
                 "--variations", "2", "--original-rate", "-q"]) == 0
    for v in (1, 2):
        a, sr_a = sf.read(str(tmp_path / f"batched.v{v}.wav"))
        b, sr_b = sf.read(str(tmp_path / f"streamed.v{v}.wav"))
        assert sr_a == sr_b == 32000 and a.shape == b.shape == (14 * 32000,)
        np.testing.assert_allclose(a, b, atol=2 / 32768)  # 16-bit files: at most a rounding step apart
    assert main(["decode", str(tmp_path / "streamed.spr"), str(tmp_path / "x.wav"), "--model", bundle, "--variations", "0"]) == 2
