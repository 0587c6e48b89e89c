"""Codec-adapter round trip, the Table 1/2-shaped table, the rate-quality plot and the HTML report."""
import json

import numpy as np
import pytest

from spresso.audio.io import write_audio
from spresso.core.errors import SpressoError
from spresso.eval.adapter import CodecAdapter, CodecInfo, roundtrip
from spresso.eval.bootstrap import Interval, bootstrap_mean
from spresso.eval.metrics import si_sdr
from spresso.eval.report import (
    ExampleClip,
    ResultRow,
    format_table,
    rate_quality_plot,
    write_html_report,
)


class QuantiserCodec(CodecAdapter):
    """A toy lossy codec: resample to 16 kHz, keep `bits` bits per sample, 4-byte header."""

    def __init__(self, bits):
        self.bits = bits
        self.info = CodecInfo("PCM", f"{bits} bit", 16000, frame_rate_hz=16000.0, nominal_bitrate_bps=16000.0 * bits)

    def encode(self, wave):
        q = np.round(np.clip(wave, -1, 1) * (2 ** (self.bits - 1) - 1)).astype(np.int16)
        return b"PCM " + q.tobytes()

    def decode(self, data, num_samples):
        return np.frombuffer(data[4:], dtype=np.int16).astype(np.float32) / (2 ** (self.bits - 1) - 1)


def test_roundtrip_resamples_and_counts_bytes():
    t = np.arange(48000) / 48000  # band-limited below the codec's 8 kHz Nyquist
    wave = (0.5 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)).astype(np.float32)
    coarse, fine = roundtrip(QuantiserCodec(4), wave), roundtrip(QuantiserCodec(12), wave)
    assert coarse.reconstruction.shape == wave.shape
    assert coarse.num_bytes == 4 + 2 * 16000 and coarse.actual_bitrate_bps == pytest.approx((4 + 32000) * 8)
    assert si_sdr(fine.reconstruction, wave)[0] > si_sdr(coarse.reconstruction, wave)[0] + 20


def _rows():
    rows = []
    for method, points in (("S-PRESSO", [(96, 0.68, 9.0), (300, 0.6, 8.0), (1320, 0.5, 10.0)]), ("DAC", [(1700, 3.24, -4.1)])):
        for bps, fad, sdr in points:
            rows.append(ResultRow(method, f"{bps} bps", 1.0, float(bps), 750.0, bps * 1.02,
                                  {"fad_aisfx": Interval(fad, fad * 0.9, fad * 1.1), "si_sdr": bootstrap_mean([sdr - 1, sdr, sdr + 1])}))
    rows.append(ResultRow("SQCodec", "default", note="weights absent: /models/sqcodec.pth"))
    return rows


def test_table_plot_and_html_report(tmp_path):
    rows = _rows()
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| method | variant | frame rate (Hz) | bitrate (kbps) | actual (kbps) | compression")
    assert "FAD aisfx" in lines[0] and "SI-SDR dB" in lines[0] and len(lines) == 2 + len(rows)
    assert "| S-PRESSO | 96 bps | 1 | 0.096 |" in table and "0.68 [0.612, 0.748]" in table
    assert "weights absent: /models/sqcodec.pth" in table
    png = rate_quality_plot(rows, "fad_aisfx", tmp_path / "fad.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SpressoError, match="no rows"):
        rate_quality_plot(rows, "clap_cos", tmp_path / "x.png")
    sr = 48000
    orig = tmp_path / "orig.wav"
    write_audio(orig, (0.3 * np.sin(np.arange(sr) * 0.05)).astype(np.float32), sr)
    rec = tmp_path / "rec.wav"
    write_audio(rec, (0.3 * np.sin(np.arange(sr // 2) * 0.05)).astype(np.float32), sr // 2)
    index = write_html_report(tmp_path / "report", rows, [ExampleClip("door_slam", {"original": orig, "S-PRESSO 96 bps": rec})],
                              plots={"fad_aisfx": png})
    page = index.read_text()
    assert page.count("<audio") == 2 and page.count("spectrograms/") == 2 and "fad.png" in page
    for src in ("audio/000_00.wav", "audio/000_01.wav", "spectrograms/000_01.png", "fad.png", "table.md"):
        assert (tmp_path / "report" / src).is_file(), src
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved[0]["metrics"]["fad_aisfx"]["value"] == 0.68 and saved[-1]["note"].startswith("weights absent")
