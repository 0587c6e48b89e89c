"""The MUSHRA page in headless Chromium (loads, players load audio, accepts ratings, gives JSON),
the BS.1534 post-screening summary, and the CLI."""
import functools
import html
import json
import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from spresso.audio.io import write_audio
from spresso.cli import main
from spresso.core.errors import SpressoError
from spresso.eval.listening import (
    ANCHOR,
    REFERENCE,
    build_listening_test,
    lowpass_anchor,
    summarize,
    trials_from_folder,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def eval_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "eval"
    for clip in ("door", "boom"):
        (root / clip).mkdir(parents=True)
        ref = (0.2 * rng.standard_normal(24000)).astype(np.float32)
        write_audio(root / clip / "reference.wav", ref, 48000)
        write_audio(root / clip / "codec_a.wav", 0.5 * ref, 48000)
        write_audio(root / clip / "codec_b.wav", ref[::-2].copy(), 24000)  # other rates are resampled
    return root


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_in_headless_chromium(eval_folder, tmp_path):
    out = tmp_path / "page"
    assert main(["listening-test", "--eval", str(eval_folder), "--out", str(out)]) == 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html?selftest=1"
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=30000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )
    finally:
        server.shutdown()
    assert "<title>selftest-done</title>" in proc.stdout, proc.stderr[-2000:]
    result = json.loads(html.unescape(re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S).group(1)))
    assert result["format"] == "spresso-mushra-1" and result["listener"] == "selftest"
    # every player (open reference + 4 stimuli per clip) loaded its audio: 0.5 s each
    assert len(result["audio"]) == 2 * 5
    for key, info in result["audio"].items():
        assert "error" not in info, key
        assert info["duration"] == pytest.approx(0.5, abs=0.01), key
    assert {t["clip"] for t in result["trials"]} == {"door", "boom"}
    for t in result["trials"]:
        assert set(t["ratings"]) == {REFERENCE, ANCHOR, "codec_a", "codec_b"} == set(t["order"])
        assert t["ratings"][REFERENCE] == 100 and t["ratings"][ANCHOR] == 15
    path = tmp_path / "listener.json"
    path.write_text(json.dumps(result))
    summary = summarize([path])
    assert summary.conditions[REFERENCE].mean == 100 and summary.listeners == ["selftest"]


def _result(name, ref_scores, cond=60.0, test_id="t1"):
    return {"format": "spresso-mushra-1", "test_id": test_id, "listener": name,
            "trials": [{"clip": f"c{i}", "ratings": {REFERENCE: r, ANCHOR: 10.0, "codec": cond + i}}
                       for i, r in enumerate(ref_scores)]}


def test_summarize_post_screens_and_gives_t_intervals(tmp_path, capsys):
    files = []
    for res in (_result("good1", [100] * 10), _result("good2", [95] * 9 + [80]),  # 10% below 90: kept
                _result("bad", [100] * 8 + [50, 70], cond=0.0)):  # 20% below 90: excluded
        p = tmp_path / f"{res['listener']}.json"
        p.write_text(json.dumps(res))
        files.append(p)
    s = summarize(files)
    assert s.listeners == ["good1", "good2"] and s.excluded == {"bad": pytest.approx(0.2)}
    codec = s.conditions["codec"]
    vals = np.array([60.0 + i for i in range(10)] * 2)
    half = 2.093 * vals.std(ddof=1) / np.sqrt(20)  # t_{0.975, 19} = 2.093
    assert codec.n == 20 and codec.mean == pytest.approx(vals.mean())
    assert codec.high - codec.mean == pytest.approx(half, rel=1e-3)
    assert main(["listening-test", "summarize", *map(str, files), "--json", str(tmp_path / "s.json")]) == 0
    assert "excluded: 1" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["excluded"] == {"bad": pytest.approx(0.2)}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_result("x", [100], test_id="t2")))
    with pytest.raises(SpressoError, match="different tests"):
        summarize([files[0], other])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(SpressoError, match="not a spresso-mushra-1"):
        summarize([tmp_path / "junk.json"])


def test_anchor_and_folder_checks(eval_folder, tmp_path, capsys):
    sr = 48000
    t = np.arange(sr) / sr
    anchor = lowpass_anchor(np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 8000 * t), sr)
    spec = np.abs(np.fft.rfft(anchor))
    assert spec[1000] > 100 * spec[8000]  # 1 kHz kept, 8 kHz removed
    trials = trials_from_folder(eval_folder)
    assert [tr.clip for tr in trials] == ["boom", "door"] and set(trials[0].conditions) == {"codec_a", "codec_b"}
    index = build_listening_test(trials, tmp_path / "p", max_trials=1)
    page = index.read_text()
    assert page.count('"clip"') == 1 and "codec_a" in page and "http" not in page.split("<script id")[0]
    assert len(list((tmp_path / "p" / "audio").glob("*.wav"))) == 4
    (eval_folder / "boom" / "codec_a.wav").unlink()
    with pytest.raises(SpressoError, match="expected"):
        trials_from_folder(eval_folder)
    assert main(["listening-test", "--eval", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
