import json
from pathlib import Path

import numpy as np
import pytest

from spresso.cli import main
from spresso.codec.bitstream import Stream, decode_stream, encode_stream

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture
def spr(tmp_path) -> Path:
    codes = np.random.default_rng(0).integers(0, 4096, (5, 8))
    path = tmp_path / "in.spr"
    path.write_bytes(encode_stream(Stream.discrete(codes, 4096, model_id="abcdef0123", time_factor=100,
                                                   sample_count=240000)))
    return path


def test_peel(spr, tmp_path, capsys):
    out = tmp_path / "out.spr"
    assert main(["peel", str(spr), str(out), "--codebooks", "3"]) == 0
    full, peeled = decode_stream(spr.read_bytes()), decode_stream(out.read_bytes())
    np.testing.assert_array_equal(peeled.codes, full.codes[:, :3])


def test_peel_reports_rate(spr, tmp_path, capsys):
    assert main(["peel", str(spr), str(tmp_path / "o.spr"), "-m", "3"]) == 0
    assert "3 codebooks, 0.036 kbps" in capsys.readouterr().out


def test_inspect(spr, capsys):
    assert main(["inspect", str(spr)]) == 0
    text = capsys.readouterr().out
    for line in ("mode", "discrete"), ("m", "8"), ("K", "4096"), ("bitrate_bps", "96"), ("overhead_bytes", "21"):
        assert any(l.split() == list(line) for l in text.splitlines()), line
    assert main(["inspect", "--json", str(VECTORS / "continuous_t100_c4.spr")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mode"] == "continuous" and info["channels"] == 4 and info["bitrate_bps"] == 64.0


def _bad(argv, capsys, match):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in captured.err
    assert match in err, err


def test_bad_files(spr, tmp_path, capsys):
    junk = tmp_path / "junk.spr"
    junk.write_bytes(b"RIFF....WAVE")
    _bad(["inspect", str(junk)], capsys, "wrong magic")
    truncated = tmp_path / "t.spr"
    truncated.write_bytes(spr.read_bytes()[:-3])
    _bad(["inspect", str(truncated)], capsys, "truncated")
    _bad(["peel", str(truncated), str(tmp_path / "x.spr"), "--codebooks", "1"], capsys, "truncated")
    padded = tmp_path / "p.spr"
    padded.write_bytes(spr.read_bytes() + b"\0\0")
    _bad(["inspect", str(padded)], capsys, "2 trailing bytes")
    _bad(["inspect", str(tmp_path / "missing.spr")], capsys, "no such file")
    _bad(["inspect", str(tmp_path)], capsys, "is a directory")
    _bad(["peel", str(spr), str(tmp_path / "x.spr"), "--codebooks", "9"], capsys, "the stream has 8")
    _bad(["peel", str(spr), str(spr / "x.spr"), "--codebooks", "2"], capsys, "is a file, not a folder")
    _bad(["peel", str(spr), str(spr), "--codebooks", "2"], capsys, "the output is the input")
    _bad(["peel", str(spr), str(tmp_path / "x.txt"), "--codebooks", "2"], capsys, "writes .spr files")
    assert not (tmp_path / "x.spr").exists()
    assert main(["peel", str(spr), str(tmp_path / "new" / "x.spr"), "--codebooks", "2"]) == 0  # folders are made


def test_peel_keeps_an_existing_output_unless_overwrite(spr, tmp_path, capsys):
    out = tmp_path / "o.spr"
    out.write_bytes(b"keep me")
    _bad(["peel", str(spr), str(out), "-m", "2"], capsys, "already exists (pass --overwrite")
    assert out.read_bytes() == b"keep me"
    assert main(["peel", str(spr), str(out), "-m", "2", "--overwrite"]) == 0
    assert decode_stream(out.read_bytes()).m == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
