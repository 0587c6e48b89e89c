"""MUSHRA-style listening test (ITU-R BS.1534): build a self-contained page, summarise results.

:func:`build_listening_test` writes ``index.html`` plus ``audio/`` into a folder. Each trial is
one clip: the open reference, then (in a random order per listener and trial, under neutral
letters) the hidden reference, a 3.5 kHz low-pass anchor and every condition, each with a
0-100 slider. The page needs no server-side code or network: results are saved as a JSON
download. ``?selftest=1`` makes the page rate itself (for the headless-browser test) and write
the JSON into ``<pre id="result">``.

:func:`summarize` reads the JSON files, post-screens listeners who rate the hidden reference
below 90 in more than 15% of their trials (BS.1534), and gives each condition's mean with a
95% Student-t interval.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import stats
from scipy.signal import butter, sosfiltfilt

from spresso.audio.io import load_mono, write_audio
from spresso.core.errors import SpressoError

REFERENCE = "reference"  # the hidden reference's condition name in results
ANCHOR = "anchor_lp3k5"  # the 3.5 kHz low-pass anchor's condition name
FORMAT = "spresso-mushra-1"
SAMPLE_RATE = 48000


@dataclass
class Trial:
    clip: str
    reference: Path
    conditions: dict[str, Path]  # condition name -> audio file


def lowpass_anchor(wave: np.ndarray, sample_rate: int, cutoff_hz: float = 3500.0) -> np.ndarray:
    """The BS.1534 low anchor: the reference low-passed at 3.5 kHz (zero-phase 8th-order Butterworth)."""

    sos = butter(8, cutoff_hz, btype="low", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, wave).astype(np.float32)


def trials_from_folder(folder: str | Path) -> list[Trial]:
    """``<folder>/<clip>/reference.wav`` + ``<folder>/<clip>/<condition>.wav``; the same conditions in every clip."""
    root = Path(folder)
    if not root.is_dir():
        raise SpressoError(f"{root} is not a folder of <clip>/<condition>.wav files")
    trials = []
    for clip_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        ref = clip_dir / f"{REFERENCE}.wav"
        conds = {p.stem: p for p in sorted(clip_dir.glob("*.wav")) if p.stem != REFERENCE}
        if not ref.is_file():
            raise SpressoError(f"{clip_dir} has no {REFERENCE}.wav")
        if not conds:
            raise SpressoError(f"{clip_dir} has no condition files besides {REFERENCE}.wav")
        if ANCHOR in conds:
            raise SpressoError(f"{clip_dir}: the condition name {ANCHOR!r} is reserved for the generated anchor")
        trials.append(Trial(clip_dir.name, ref, conds))
    if not trials:
        raise SpressoError(f"{root} holds no clip folders")
    names = set(trials[0].conditions)
    for t in trials[1:]:
        if set(t.conditions) != names:
            raise SpressoError(f"clip {t.clip!r} has conditions {sorted(t.conditions)}, expected {sorted(names)}")
    return trials


def build_listening_test(
    trials: list[Trial], out_dir: str | Path, title: str = "spresso listening test", max_trials: int | None = None,
    seed: int = 0, anchor_hz: float = 3500.0,
) -> Path:
    """Write the page and its audio (48 kHz mono WAV, opaque file names) to ``out_dir``; returns index.html."""

    if max_trials is not None and max_trials < len(trials):
        trials = random.Random(seed).sample(trials, max_trials)
    out = Path(out_dir)
    audio_dir = out / "audio"
    if audio_dir.exists():
        shutil.rmtree(audio_dir)  # a rebuild must not leave stale stimuli behind
    audio_dir.mkdir(parents=True)
    test_id = hashlib.sha256(json.dumps([[t.clip, sorted(t.conditions)] for t in trials]).encode()).hexdigest()[:12]
    page_trials = []
    for t in trials:
        ref, _, _ = load_mono(t.reference, SAMPLE_RATE)
        waves = {REFERENCE: ref, ANCHOR: lowpass_anchor(ref, SAMPLE_RATE, anchor_hz)}
        for name, path in t.conditions.items():
            waves[name], _, _ = load_mono(path, SAMPLE_RATE)
        stimuli = {}
        for name, wave in waves.items():
            # opaque names, so the file list does not reveal which stimulus is which
            fname = hashlib.sha256(f"{test_id}/{t.clip}/{name}".encode()).hexdigest()[:16] + ".wav"
            write_audio(audio_dir / fname, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
            stimuli[name] = f"audio/{fname}"
        page_trials.append({"clip": t.clip, "reference": stimuli[REFERENCE], "stimuli": stimuli})
    config = {"format": FORMAT, "test_id": test_id, "title": title, "trials": page_trials}
    html = _PAGE.replace("__TITLE__", _escape(title)).replace("__CONFIG__", json.dumps(config).replace("</", "<\\/"))
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------- summary
@dataclass
class ConditionScore:
    mean: float
    low: float
    high: float
    n: int


@dataclass
class ListeningSummary:
    conditions: dict[str, ConditionScore]
    listeners: list[str]
    excluded: dict[str, float] = field(default_factory=dict)  # listener -> fraction of failed hidden refs

    def to_dict(self) -> dict:
        return {"conditions": {k: asdict(v) for k, v in self.conditions.items()},
                "listeners": self.listeners, "excluded": self.excluded}

    def table(self) -> str:
        rows = [f"{'condition':<24} {'mean':>6}  95% interval      n"]
        for name, s in sorted(self.conditions.items(), key=lambda kv: -kv[1].mean):
            rows.append(f"{name:<24} {s.mean:6.1f}  [{s.low:5.1f}, {s.high:5.1f}]  {s.n:4d}")
        rows.append(f"listeners kept: {len(self.listeners)}; excluded: {len(self.excluded)}"
                    + "".join(f"\n  {k}: hidden reference < 90 in {v:.0%} of trials" for k, v in self.excluded.items()))
        return "\n".join(rows)


def _t975(df: int) -> float:
    return float(stats.t.ppf(0.975, df))


def _load_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: not UTF-8 or not JSON (a binary file)
        raise SpressoError(f"cannot read listening-test result {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("trials"), list):
        raise SpressoError(f"{path} is not a {FORMAT} result file")
    return data


def summarize(json_files: Iterable[str | Path], ref_threshold: float = 90.0, max_fail_fraction: float = 0.15) -> ListeningSummary:
    """Per-condition means with 95% t-intervals after BS.1534 post-screening of listeners."""
    results = [(Path(p), _load_result(Path(p))) for p in json_files]
    if not results:
        raise SpressoError("no listening-test result files given")
    test_ids = {r.get("test_id") for _, r in results}
    if len(test_ids) > 1:
        raise SpressoError(f"result files come from different tests: {sorted(map(str, test_ids))}")
    ratings: dict[str, list[float]] = {}
    kept, excluded = [], {}
    for path, r in results:
        who = str(r.get("listener") or path.stem)
        trials = [t for t in r["trials"] if isinstance(t.get("ratings"), dict)]
        if not trials:
            raise SpressoError(f"{path} holds no rated trials")
        fails = sum(1 for t in trials if float(t["ratings"].get(REFERENCE, 0.0)) < ref_threshold)
        if fails / len(trials) > max_fail_fraction:
            excluded[who] = fails / len(trials)
            continue
        kept.append(who)
        for t in trials:
            for cond, value in t["ratings"].items():
                ratings.setdefault(cond, []).append(float(value))
    if not kept:
        raise SpressoError("every listener failed post-screening (hidden reference rated below 90 too often)")
    scores = {}
    for cond, vals in ratings.items():
        v = np.asarray(vals)
        mean = float(v.mean())
        half = _t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else float("nan")
        scores[cond] = ConditionScore(mean, mean - half, mean + half, int(v.size))
    return ListeningSummary(scores, kept, excluded)


# ---------------------------------------------------------------------------- the page
_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;padding:0 1em;color:#222}
.stim{display:flex;align-items:center;gap:1em;margin:.6em 0;padding:.4em;border:1px solid #ddd;border-radius:6px}
.stim .label{width:2em;font-weight:bold}.stim input[type=range]{flex:1}.stim output{width:3em;text-align:right}
.stim.unrated{border-color:#e99}button{padding:.5em 1.2em;margin:.3em}#result{white-space:pre-wrap;font-size:.8em}
.scale{display:flex;justify-content:space-between;font-size:.8em;color:#666;margin-left:16em;margin-right:4em}
</style></head><body>
<h1>__TITLE__</h1>
<div id="intro"><p>Each page plays a <b>reference</b> and several versions of it. Rate how close each version
is to the reference, from 0 (bad) to 100 (excellent). One of the versions is the reference itself: rate it 100.
Move every slider before going on. Your results are saved as a file at the end.</p>
<label>Your name or code: <input id="listener" autocomplete="off"></label> <button id="start">Start</button></div>
<div id="trial" hidden><h2 id="trial-title"></h2>
<div class="stim"><span class="label">Ref</span><audio id="ref-audio" controls preload="auto"></audio></div>
<div class="scale"><span>bad</span><span>poor</span><span>fair</span><span>good</span><span>excellent</span></div>
<div id="stimuli"></div><button id="next" disabled>Next</button> <span id="hint"></span></div>
<div id="done" hidden><p>Thank you. Save your results and send the file to the experimenter.</p>
<button id="download">Save results (JSON)</button></div>
<pre id="result" hidden></pre>
<script id="config" type="application/json">__CONFIG__</script>
<script>
"use strict";
const CONFIG = JSON.parse(document.getElementById("config").textContent);
const params = new URLSearchParams(location.search);
const SELFTEST = params.get("selftest") === "1";
const $ = (id) => document.getElementById(id);
const state = {listener: "", started: null, trials: [], index: 0, audio: {}};

function shuffle(a) {  // Fisher-Yates with the browser's RNG: a fresh order for each listener
  for (let i = a.length - 1; i > 0; i--) { const j = Math.floor(Math.random() * (i + 1)); [a[i], a[j]] = [a[j], a[i]]; }
  return a;
}
function trackAudio(el, key) {  // record whether every player could load its file
  el.addEventListener("loadedmetadata", () => { state.audio[key] = {duration: el.duration}; });
  el.addEventListener("error", () => { state.audio[key] = {error: String(el.error && el.error.code)}; });
}
function start() {
  state.listener = $("listener").value.trim() || "anonymous";
  state.started = new Date().toISOString();
  state.trials = shuffle(CONFIG.trials.map((t) => ({clip: t.clip, reference: t.reference,
    order: shuffle(Object.keys(t.stimuli)), stimuli: t.stimuli, ratings: {}, touched: {}})));
  $("intro").hidden = true; $("trial").hidden = false; show(0);
}
function show(i) {
  state.index = i;
  const t = state.trials[i];
  $("trial-title").textContent = `Trial ${i + 1} of ${state.trials.length}`;
  const ref = $("ref-audio"); ref.src = t.reference; trackAudio(ref, t.clip + "/ref");
  const box = $("stimuli"); box.textContent = "";
  t.order.forEach((cond, k) => {
    const row = document.createElement("div"); row.className = "stim unrated"; row.dataset.cond = cond;
    const label = document.createElement("span"); label.className = "label"; label.textContent = String.fromCharCode(65 + k);
    const audio = document.createElement("audio"); audio.controls = true; audio.preload = "auto"; audio.src = t.stimuli[cond];
    trackAudio(audio, t.clip + "/" + cond);
    audio.addEventListener("play", () => document.querySelectorAll("audio").forEach((o) => { if (o !== audio) o.pause(); }));
    const slider = document.createElement("input"); slider.type = "range"; slider.min = 0; slider.max = 100; slider.step = 1;
    slider.value = t.ratings[cond] ?? 50;
    const out = document.createElement("output"); out.textContent = t.touched[cond] ? slider.value : "–";
    slider.addEventListener("input", () => rate(cond, Number(slider.value), row, out));
    row.append(label, audio, slider, out); box.append(row);
  });
  update();
}
function rate(cond, value, row, out) {
  const t = state.trials[state.index];
  t.ratings[cond] = value; t.touched[cond] = true;
  if (row) { row.classList.remove("unrated"); out.textContent = String(value); }
  update();
}
function update() {
  const t = state.trials[state.index];
  const left = t.order.filter((c) => !t.touched[c]).length;
  $("next").disabled = left > 0;
  $("next").textContent = state.index + 1 < state.trials.length ? "Next" : "Finish";
  $("hint").textContent = left ? `${left} version(s) still to rate` : "";
}
function next() {
  if (state.index + 1 < state.trials.length) { show(state.index + 1); return; }
  $("trial").hidden = true; $("done").hidden = false; document.querySelectorAll("audio").forEach((a) => a.pause());
}
function results() {
  return {format: CONFIG.format, test_id: CONFIG.test_id, listener: state.listener, started: state.started,
    finished: new Date().toISOString(), user_agent: navigator.userAgent, audio: state.audio,
    trials: state.trials.map((t) => ({clip: t.clip, order: t.order, ratings: t.ratings}))};
}
function download() {
  const blob = new Blob([JSON.stringify(results(), null, 1)], {type: "application/json"});
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob);
  a.download = `mushra-${CONFIG.test_id}-${state.listener.replace(/[^A-Za-z0-9_-]/g, "_")}.json`;
  document.body.append(a); a.click(); a.remove();
}
$("start").addEventListener("click", start);
$("next").addEventListener("click", next);
$("download").addEventListener("click", download);

// Self-test: drive the real controls, wait for every player to load, then print the JSON.
function waitAudio(keys, ms) {
  return new Promise((resolve) => { const t0 = Date.now();
    (function poll() { if (keys.every((k) => state.audio[k]) || Date.now() - t0 > ms) resolve(); else setTimeout(poll, 50); })(); });
}
async function selftest() {
  $("listener").value = "selftest"; $("start").click();
  for (let i = 0; i < state.trials.length; i++) {
    const t = state.trials[i];
    await waitAudio([t.clip + "/ref"].concat(t.order.map((c) => t.clip + "/" + c)), 8000);
    document.querySelectorAll("#stimuli .stim").forEach((row, k) => {
      const slider = row.querySelector("input");
      slider.value = row.dataset.cond === "reference" ? 100 : row.dataset.cond === "anchor_lp3k5" ? 15 : 40 + 5 * k;
      slider.dispatchEvent(new Event("input"));
    });
    $("next").click();
  }
  const pre = $("result"); pre.textContent = JSON.stringify(results()); pre.hidden = false;
  document.title = "selftest-done";
}
if (SELFTEST) selftest();
</script></body></html>
"""
