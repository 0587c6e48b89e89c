"""Results as the paper shows them: a Table 1/2-shaped table, a rate-quality plot and a static
HTML report with audio players and spectrograms.

Rows come from the harness (one per codec operating point); metrics carry bootstrap
intervals (:class:`spresso.eval.bootstrap.Interval`). Nothing here computes a metric.
"""
from __future__ import annotations

import html
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spresso.audio.io import load_mono, write_audio
from spresso.core.errors import SpressoError
from spresso.eval.bootstrap import Interval

# metric key -> (column title, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "fad_vggish": ("FAD VGGish", False),
    "fad_clap": ("FAD CLAP", False),
    "fad_aisfx": ("FAD aisfx", False),
    "kad_aisfx": ("KAD aisfx x1000", False),
    "kad_clap": ("KAD CLAP x1000", False),
    "clap_cos": ("CLAP cos", True),
    "aisfx_cos": ("aisfx cos", True),
    "si_sdr": ("SI-SDR dB", True),
    "mel": ("mel dist", False),
}


@dataclass
class ResultRow:
    method: str
    variant: str
    frame_rate_hz: float | None = None
    bitrate_bps: float | None = None  # nominal
    compression: float | None = None
    actual_bitrate_bps: float | None = None
    metrics: dict[str, Interval] = field(default_factory=dict)
    note: str = ""  # e.g. "weights absent: <path>"

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        d["metrics"] = {k: v.to_dict() for k, v in self.metrics.items()}
        return d


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _metric_cell(iv: Interval | None) -> str:
    if iv is None:
        return "–"
    return f"{iv.value:.3g} [{iv.low:.3g}, {iv.high:.3g}]"


def metric_columns(rows: list[ResultRow]) -> list[str]:
    present = {k for r in rows for k in r.metrics}
    return [k for k in METRICS if k in present] + sorted(present - set(METRICS))


def table_rows(rows: list[ResultRow]) -> tuple[list[str], list[list[str]]]:
    cols = metric_columns(rows)
    header = ["method", "variant", "frame rate (Hz)", "bitrate (kbps)", "actual (kbps)", "compression"]
    header += [METRICS.get(c, (c, True))[0] for c in cols]
    body = []
    for r in rows:
        line = [r.method, r.variant, _num(r.frame_rate_hz, ".3g"),
                _num(None if r.bitrate_bps is None else r.bitrate_bps / 1000, ".3g"),
                _num(None if r.actual_bitrate_bps is None else r.actual_bitrate_bps / 1000, ".3g"),
                _num(r.compression, ".0f") + ("x" if r.compression else "")]
        line += [_metric_cell(r.metrics.get(c)) if not r.note else r.note if i == 0 else "" for i, c in enumerate(cols)]
        body.append(line)
    return header, body


def format_table(rows: list[ResultRow]) -> str:
    """Markdown table like the paper's Tables 1 and 2 (metric cells: value [95% interval])."""
    header, body = table_rows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib  # lazy: optional, only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use("Agg")

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def rate_quality_plot(rows: list[ResultRow], metric: str, path: str | Path) -> Path:
    """Metric against nominal bitrate (log axis), one line per method, 95% intervals as error bars."""
    plt = _pyplot()
    points = [r for r in rows if r.bitrate_bps and metric in r.metrics and not r.note]
    if not points:
        raise SpressoError(f"no rows with a bitrate and metric {metric!r} to plot")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in dict.fromkeys(r.method for r in points):
        rs = sorted((r for r in points if r.method == method), key=lambda r: r.bitrate_bps)
        x = np.array([r.bitrate_bps / 1000 for r in rs])
        iv = [r.metrics[metric] for r in rs]
        y = np.array([i.value for i in iv])
        err = np.array([[i.value - i.low for i in iv], [i.high - i.value for i in iv]])
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=method)
    title, higher = METRICS.get(metric, (metric, True))
    ax.set_xscale("log")
    ax.set_xlabel("bitrate (kbps)")
    ax.set_ylabel(f"{title} ({'higher' if higher else 'lower'} is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def spectrogram_png(wave: np.ndarray, sample_rate: int, path: str | Path, title: str = "") -> Path:
    """Log-magnitude STFT picture (dB, 0-24 kHz at 48 kHz) for the report."""
    plt = _pyplot()
    x = np.asarray(wave, dtype=np.float64).ravel()
    n_fft, hop = 1024, 256
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    db = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-6)
    fig, ax = plt.subplots(figsize=(5, 2.4), dpi=100)
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 90, vmax=db.max(),
              extent=[0, x.size / sample_rate, 0, sample_rate / 2000])
    ax.set_xlabel("s")
    ax.set_ylabel("kHz")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


@dataclass
class ExampleClip:
    name: str
    versions: dict[str, str | os.PathLike]  # label -> audio file; the first is the original


def write_html_report(
    out_dir: str | Path, rows: list[ResultRow], examples: list[ExampleClip] = (), title: str = "spresso evaluation",
    plots: dict[str, str | Path] | None = None,
) -> Path:
    """A static folder: index.html + table.md/json + plots + audio/ + spectrograms/ (no network needed)."""

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "spectrograms").mkdir(exist_ok=True)
    (out / "table.md").write_text(format_table(rows) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1), encoding="utf-8")
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:.85em}"
             "td,th{border:1px solid #ccc;padding:.3em .5em}th{background:#f4f4f4}.ex{display:flex;flex-wrap:wrap;gap:1em}"
             ".v{border:1px solid #ddd;padding:.5em;border-radius:6px}.v img{display:block;width:400px}</style></head><body>",
             f"<h1>{esc(title)}</h1><h2>Results</h2><p>Metric cells: value [95% bootstrap interval]. "
             "Bitrate: nominal (M log2 K x frame rate); actual: encoded bytes, headers included.</p>"]
    header, body = table_rows(rows)
    parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in b) + "</tr>" for b in body]
    parts.append("</table>")
    for metric, src in (plots or {}).items():
        dest = out / Path(src).name
        if Path(src).resolve() != dest.resolve():
            shutil.copyfile(src, dest)
        parts.append(f"<h3>{esc(METRICS.get(metric, (metric,))[0])} vs bitrate</h3><img src='{esc(dest.name)}' alt='{esc(metric)}'>")
    if examples:
        parts.append("<h2>Listen</h2>")
    for ci, ex in enumerate(examples):
        parts.append(f"<h3>{esc(ex.name)}</h3><div class='ex'>")
        for vi, (label, src) in enumerate(ex.versions.items()):
            wave, sr, _ = load_mono(src, 48000)
            stem = f"{ci:03d}_{vi:02d}"

            write_audio(out / "audio" / f"{stem}.wav", np.clip(wave, -1, 1), 48000, subtype="PCM_16")
            spectrogram_png(wave, 48000, out / "spectrograms" / f"{stem}.png", title=label)
            parts.append(f"<div class='v'><b>{esc(label)}</b><audio controls preload='none' src='audio/{stem}.wav'></audio>"
                         f"<img src='spectrograms/{stem}.png' alt='spectrogram of {esc(label)}'></div>")
        parts.append("</div>")
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
