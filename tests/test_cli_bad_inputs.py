"""A corpus of bad inputs through the real `spresso` command (subprocesses): each exits non-zero with exactly
one `error:` line on stderr, no traceback, and leaves no file behind (issue 20, item 5)."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from codec_toys import shared_bundle

from spresso.codec.bitstream import Stream, encode_stream

REPO = Path(__file__).resolve().parents[1]
NO_GPU = not torch.cuda.is_available()

# (name, argv with {placeholders}, what the error line says). {model} is a tiny bundle; the others are files
# that `workspace` makes.
CORPUS = [
    ("output is the input", ["encode", "{wav}", "{wav}", "--model", "{model}"], "writes .spr"),
    ("peel onto itself", ["peel", "{spr}", "{spr}", "-m", "1"], "the output is the input"),
    ("existing output", ["encode", "{wav}", "{existing}", "--model", "{model}"], "already exists (pass --overwrite"),
    ("parent is a file", ["encode", "{wav}", "{wav}/x.spr", "--model", "{model}"], "is a file, not a folder"),
    ("300-character name", ["encode", "{wav}", "{dir}/" + "n" * 300 + ".spr", "--model", "{model}"], "file name too long"),
    ("unquoted glob", ["encode", "{wav}", "{wav2}", "{wav}", "--model", "{model}"], "several inputs need an output folder"),
    ("batch size 0", ["encode", "{wav}", "{dir}/o.spr", "--model", "{model}", "--batch-size", "0"], "must be at least 1"),
    ("no model", ["encode", "{wav}", "{dir}/o.spr"], "--model"),
    ("missing input", ["encode", "{dir}/none.wav", "{dir}/o.spr", "--model", "{model}"], "no such file or folder"),
    ("decode to .spr", ["decode", "{spr}", "{dir}/o.spr", "--model", "{model}"], "writes .wav"),
    ("inspect a missing file", ["inspect", "{dir}/none.spr"], "no such file"),
    ("junk stream", ["decode", "{junk}", "{dir}/o.wav", "--model", "{model}"], "wrong magic"),
    ("device tpu", ["encode", "{wav}", "{dir}/o.spr", "--model", "{model}", "--device", "tpu"], "device 'tpu'"),
    pytest.param("device cuda without a GPU", ["encode", "{wav}", "{dir}/o.spr", "--model", "{model}", "--device", "cuda"],
                 "no CUDA GPU", marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
    ("kbps 1e20", ["encode", "{wav}", "{dir}/o.spr", "--model", "{model}", "--kbps", "1e20"], "within this model's range"),
    ("1 Hz wav", ["encode", "{slow}", "{dir}/o.spr", "--model", "{model}"], "sample rate must be"),
    ("ogg cut short", ["encode", "{cut}", "{dir}/o.spr", "--model", "{model}"], "--allow-partial"),
    ("listening-test summarize on a binary file", ["listening-test", "summarize", "{binary}"], "cannot read listening-test result"),
]


def make_workspace(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(str(folder / "a.wav"), (rng.standard_normal(4800) * 0.1).astype(np.float32), 48000)
    sf.write(str(folder / "b.wav"), (rng.standard_normal(4800) * 0.1).astype(np.float32), 48000)
    sf.write(str(folder / "slow.wav"), np.array([0.1, -0.2, 0.3], np.float32), 1)
    sf.write(str(folder / "full.ogg"), (rng.standard_normal((44100 * 2, 2)) * 0.1).astype(np.float32), 44100)
    ogg = (folder / "full.ogg").read_bytes()
    (folder / "cut.ogg").write_bytes(ogg[: len(ogg) // 3])
    (folder / "full.ogg").unlink()
    (folder / "existing.spr").write_bytes(b"keep")
    (folder / "junk.spr").write_bytes(b"RIFF....WAVE")
    (folder / "binary.json").write_bytes(bytes(range(256)) * 4)
    stream = Stream.discrete(np.zeros((1, 2), np.int64), 16, model_id="ab" * 8, time_factor=100, sample_count=4800)
    (folder / "a.spr").write_bytes(encode_stream(stream))
    return {"dir": str(folder), "wav": str(folder / "a.wav"), "wav2": str(folder / "b.wav"), "spr": str(folder / "a.spr"),
            "slow": str(folder / "slow.wav"), "cut": str(folder / "cut.ogg"), "existing": str(folder / "existing.spr"),
            "junk": str(folder / "junk.spr"), "binary": str(folder / "binary.json")}


def spresso(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "spresso", *argv], capture_output=True, text=True, env=env, timeout=300)


def snapshot(folder: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def case_name(case) -> str:
    return (case.values if hasattr(case, "values") else case)[0]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple]:
    """Every case run once, a few at a time (each is a fresh interpreter): name -> (result, before, after)."""
    model = str(shared_bundle())
    root = tmp_path_factory.mktemp("bad-inputs")

    def run(i_case):
        i, case = i_case
        name, argv, _ = case.values if hasattr(case, "values") else case
        ws = make_workspace(root / f"case{i}")
        before = snapshot(ws["dir"])
        done = spresso(*(a.format(model=model, **ws) for a in argv))
        return name, (done, before, snapshot(ws["dir"]))

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, enumerate(CORPUS)))


@pytest.mark.parametrize("name,argv,says", CORPUS, ids=[case_name(c) for c in CORPUS])
def test_bad_input_gives_one_error_line_and_no_file(outcomes, name, argv, says):
    done, before, after = outcomes[name]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode != 0, (name, done.stdout)
    assert "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1, done.stderr
    assert says.lower() in errors[0].lower(), errors[0]
    assert after == before, name  # nothing written, nothing replaced


def test_a_closed_stdout_ends_quietly(tmp_path):
    """`spresso ... | head`: the reader goes away before the output is written; no BrokenPipe traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for argv in (["inspect", "--json", make_workspace(tmp_path / "ws")["spr"]], ["--help"]):
        proc = subprocess.Popen([sys.executable, "-m", "spresso", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.close()  # like `head` exiting at once
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
        assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
        assert proc.returncode in (0, 141)
