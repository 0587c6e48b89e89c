"""Streaming encode/decode (files of any length in bounded memory) equals the in-memory codec."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from codec_toys import shared_bundle

import spresso
from spresso.audio.io import resample
from spresso.codec import bitstream as bs
from spresso.codec import streaming
from spresso.codec import windowing as win
from spresso.codec.codec import CodecError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def codec():
    return spresso.load(shared_bundle(), batch_size=4)


def write_noise(path: Path, seconds: float, sr: int, channels: int, seed: int = 0, subtype: str = "PCM_16") -> np.ndarray:
    rng = np.random.default_rng(seed)
    wave = (rng.standard_normal((int(seconds * sr), channels)) * 0.1).astype(np.float32)
    sf.write(str(path), wave, sr, subtype=subtype)
    return sf.read(str(path), dtype="float32", always_2d=True)[0].T  # what the file holds, after quantisation


@pytest.mark.parametrize("seconds,sr,ch", [(2.0, 48000, 1), (12.3, 44100, 2), (23.0, 16000, 1)])
def test_windows_from_blocks_equal_cut(monkeypatch, tmp_path, seconds, sr, ch):
    monkeypatch.setattr(streaming, "BLOCK_SECONDS", 0.7)  # many blocks, none aligned with a window
    wave = write_noise(tmp_path / "a.wav", seconds, sr, ch)
    scan, _ = streaming.scan_file(tmp_path / "a.wav")
    frames, rate, blocks = scan.frames, scan.sample_rate, streaming.mono_blocks(tmp_path / "a.wav", 48000, scan)
    n = win.model_length(frames, rate)
    plan = win.plan_windows(n)
    mono = wave.mean(axis=0, dtype=np.float32) if ch > 1 else wave[0]
    whole = resample(mono, sr, 48000)
    expected = win.cut(np.pad(whole, (0, max(0, n - whole.shape[0])))[:n], plan)
    got = np.stack(list(streaming.block_windows(blocks, plan)))
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seconds,sr,ch", [(1.5, 48000, 1), (16.0, 44100, 2), (31.0, 22050, 1)])
def test_encode_file_gives_the_bytes_of_encode(codec, tmp_path, seconds, sr, ch):
    wave = write_noise(tmp_path / "a.flac", seconds, sr, ch)
    assert codec.encode_file(tmp_path / "a.flac") == codec.encode(wave, sr)
    assert codec.encode_file(tmp_path / "a.flac", codebooks=2) == codec.encode(wave, sr, codebooks=2)


@pytest.mark.parametrize("original_rate", [False, True])
def test_decode_to_file_gives_the_audio_of_decode(codec, tmp_path, original_rate):
    wave = write_noise(tmp_path / "a.wav", 17.0, 44100, 2)
    data = codec.encode(wave, 44100)
    takes, sr = codec.decode(data, steps=2, seed=5, variations=2, original_rate=original_rate)
    for v in range(2):
        n, rate = codec.decode_to_file(data, tmp_path / f"v{v}.wav", steps=2, seed=5, variation=v,
                                       original_rate=original_rate, subtype="FLOAT")
        got, r = sf.read(str(tmp_path / f"v{v}.wav"), dtype="float32")
        assert (n, rate, r) == (takes[v].shape[0], sr, sr)
        np.testing.assert_allclose(got, takes[v], atol=2e-6)


def test_streaming_refuses_bad_input_with_one_line(codec, tmp_path):
    sf.write(str(tmp_path / "silent.wav"), np.zeros(48000 * 12, np.float32), 48000)
    with pytest.raises(CodecError, match="digital silence"):
        codec.encode_file(tmp_path / "silent.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    with pytest.raises(CodecError, match="cannot read audio"):
        codec.encode_file(tmp_path / "junk.wav")
    data = codec.encode(np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, 48000)
    with pytest.raises(bs.BitstreamError):
        codec.decode_to_file(data[:-3], tmp_path / "out.wav")


TWO_HOURS = textwrap.dedent("""
    import resource, sys, numpy as np, soundfile as sf, spresso
    from spresso.codec import bitstream as bs
    src, bundle = sys.argv[1], sys.argv[2]
    codec = spresso.load(bundle, batch_size=16)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = codec.encode_file(src)
    s = bs.decode_stream(data)
    n, sr = codec.decode_to_file(data, src + ".out.wav", steps=1, original_rate=True)
    info = sf.info(src + ".out.wav")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(s.sample_count, s.sample_rate, s.n_frames, len(data), n, sr, info.frames, info.samplerate, (peak - base) // 1024)
""")


@pytest.mark.slow
def test_a_long_file_encodes_and_decodes_in_bounded_memory(tmp_path):
    """40 minutes at 44.1 kHz stereo: 850 MB as float32 in memory, 460 MB as its 48 kHz mono copy, which
    the streaming path never holds (the growth does not depend on the length: 105 MB at 2 hours, README)."""
    sr, seconds = 44100, 2400
    src = tmp_path / "forty_minutes.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(src), "w", sr, 2, "PCM_16") as f:
        block = (rng.standard_normal((sr * 60, 2)) * 0.05).astype(np.float32)  # one minute, repeated
        for _ in range(seconds // 60):
            f.write(block)
    try:
        out = subprocess.run([sys.executable, "-c", TWO_HOURS, str(src), str(shared_bundle())], capture_output=True,
                             text=True, timeout=1200)
    finally:  # 0.6 GB of WAVs: not left behind in pytest's kept temp folders
        for f in (src, Path(str(src) + ".out.wav")):
            f.unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr[-2000:]
    count, rate, n_frames, nbytes, n, out_sr, frames, file_sr, grew_mb = map(int, out.stdout.split()[-9:])
    plan = win.plan_windows(win.model_length(sr * seconds, sr))
    assert (count, rate) == (sr * seconds, sr)
    assert n_frames == win.stream_frames(plan, spresso.load(shared_bundle()).t)
    assert (n, out_sr, frames, file_sr) == (sr * seconds, sr, sr * seconds, sr)
    # The whole file as float32 would be 847 MB, its 48 kHz mono copy 460 MB.
    print(f"40-minute file: {nbytes} bytes of .spr, peak memory grew by {grew_mb} MB")
    assert grew_mb < 300, f"peak memory grew by {grew_mb} MB while coding a 40-minute file"
