"""Encode and decode one clip with each codec bundle, loaded straight from the bucket."""
from __future__ import annotations

import time
from pathlib import Path

import fsspec

import spresso
from spresso.audio.io import load_mono, write_audio


def bundles(workdir: str) -> list[str]:
    """The bundle folders under ``<workdir>/bundles`` (URLs)."""
    fs, root = fsspec.core.url_to_fs(f"{workdir}/bundles")
    if not fs.exists(root):
        return []
    return sorted(f"s3://{p}" for p in fs.ls(root, detail=False) if fs.isdir(p))


def roundtrip(workdir: str, tmp: Path) -> dict:
    """For each bundle: ``spresso.load(url)``, encode the first corpus clip, decode it; sizes and times."""
    clip = sorted((tmp / "corpus").rglob("*.wav"))[0]
    wave, sr, _ = load_mono(clip)
    wave = wave[: 2 * sr]
    out = {}
    for url in bundles(workdir):
        t0 = time.perf_counter()
        codec = spresso.load(url)
        data = codec.encode(wave, sr)
        audio, rate = codec.decode(data)
        write_audio(tmp / f"{Path(url).name}.decoded.wav", audio, rate)
        out[url] = {"clip": clip.name, "bytes": len(data), "kbps": round(len(data) * 8 / (len(wave) / sr) / 1000, 3),
                    "decoded_seconds": round(len(audio) / rate, 2), "seconds": round(time.perf_counter() - t0, 1)}
    return out
