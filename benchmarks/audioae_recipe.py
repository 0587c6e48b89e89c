"""The AudioAE's small-compute recipe, one ablation row per change, in one command (issue 19, item 2).

Every row trains the workstation preset's AudioAE (``configs/workstation.yaml``, its model pinned to the
width-128 recipe the ablation started from: ``BASE``) with one change,
on the same shards, for the same wall-clock minutes (``audioae.train.time_limit_minutes``: the
lr decay and GAN start run on the training clock, so each row gets its whole schedule), on the
same number of cores (``--cores-per-row``; rows run ``--parallel`` at a time). The test split is
held out by file (the shard step assigns each source file to one split) and neither row trains on
it. Every row is then scored by the evaluation harness (``spresso eval``) on the same test clips,
beside Opus at 6 / 8 / 12 kbps and the floors (silence; each clip against another clip), and the
low-frequency share of the output's energy (20-140 Hz, the artifact the README noted) is measured
against the originals'. The valid-split mel distance logged during training gives each row's curve,
so the table says how it was still moving when the budget ran out.

    nice .venv/bin/python benchmarks/audioae_recipe.py --input ../shared/data/sfx-dev --minutes 12 \\
        --workdir /tmp/aerecipe --out benchmarks/results/audioae_recipe.json
    ... --rows base,ema --minutes 2 --clips 8          # a quick look
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# The recipe the rows change: the workstation preset as it was before this ablation (the demo's
# width-128 model), pinned so the table stays the same after the preset adopted a row.
BASE = ["audioae.model.width=128", "audioae.model.intermediate=384"]
# Each row: the --set overrides on top of BASE.
ROWS: dict[str, list[str]] = {
    "base": [],
    "no_gan": ["audioae.train.disc_start_step=100000000"],       # reconstruction losses for the whole budget
    "ema": ["audioae.train.ema_std=0.05"],                        # EDM2 power EMA of the generator's weights
    "batch16": ["audioae.train.batch_size=16"],                   # 4x the audio per step
    "crop1s": ["audioae.train.segment_seconds=1.0"],              # 2.6x longer crops, same batch
    "wide": ["audioae.model.width=256", "audioae.model.intermediate=768"],  # 3.6x the parameters
    "wave1k": ["audioae.train.waveform_l1_weight=1000"],          # a third of the waveform L1 weight
    "lr_const": ["audioae.train.lr_gamma=1.0"],                   # no decay over the budget
    # frame-rate buzz: 75% STFT overlap instead of 50% (hop 480 = one x0 frame stays)
    "nfft1920": ["audioae.model.n_fft=1920"],
    # second round: the first round's winners together
    "wide_ema": ["audioae.model.width=256", "audioae.model.intermediate=768", "audioae.train.ema_std=0.05"],
    "wider_ema": ["audioae.model.width=384", "audioae.model.intermediate=1152", "audioae.train.ema_std=0.05"],
    "wide_ema_wave1k": ["audioae.model.width=256", "audioae.model.intermediate=768", "audioae.train.ema_std=0.05",
                        "audioae.train.waveform_l1_weight=1000"],
}
LOW_BAND = (20.0, 140.0)
EVAL_RATE = 48000  # the evaluation sets hold 48 kHz clips


def spresso(*args: str, log: Path | None = None, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "spresso", *args]
    with open(log, "w") if log else open(os.devnull, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        raise SystemExit(f"failed (rc {rc}): {' '.join(cmd)}" + (f"; see {log}" if log else ""))


def common_sets(workdir: Path, data: Path, splits: tuple[float, float, float]) -> list[str]:
    train, valid, test = splits
    return ["--set", f"workdir={workdir}", "--set", f"data.shards_dir={data / 'shards'}",
            "--set", f"data.splits.train={train}", "--set", f"data.splits.valid={valid}", "--set", f"data.splits.test={test}"]


def train_row(name: str, overrides: list[str], args, data: Path) -> dict:
    """Train one row in its own workdir with its own local Ray of ``cores_per_row`` CPUs."""
    wd = Path(args.workdir) / name
    wd.mkdir(parents=True, exist_ok=True)
    sets = common_sets(wd, data, args.splits) + ["--set", f"runtime.num_cpus={args.cores_per_row}",
                                                  "--set", f"audioae.train.scaling.cpus_per_worker={args.cores_per_row}",
                                                  "--set", f"audioae.train.time_limit_minutes={args.minutes}",
                                                  "--set", "audioae.train.valid_every=1000"]
    for o in BASE + overrides:  # later --set wins: a row's own change over BASE
        sets += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.cores_per_row)}
    t0 = time.time()
    spresso("train", "audioae", "-c", "workstation", *sets, log=wd / "train.log", env=env)
    return {"name": name, "overrides": overrides, "wall_minutes": (time.time() - t0) / 60,
            "checkpoint": str(wd / "audioae" / "final"), "curve": valid_curve(wd)}


def valid_curve(wd: Path) -> list[dict]:
    """The row's valid-split mel distance and SI-SDR at each validation, with the minutes trained then."""
    from mlflow.tracking import MlflowClient  # lazy: seconds to import

    client = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("mlflow.runName", "").startswith("train_audioae") or "valid/mel_distance" in r.data.metrics]
    if not runs:
        return []
    run = runs[0].info.run_id
    mel = {m.step: m.value for m in client.get_metric_history(run, "valid/mel_distance")}
    sdr = {m.step: m.value for m in client.get_metric_history(run, "valid/si_sdr")}
    minutes = {m.step: m.value for m in client.get_metric_history(run, "train/elapsed_minutes")}
    out = []
    for step in sorted(mel):
        near = [s for s in minutes if s <= step]
        out.append({"step": step, "minutes": minutes[max(near)] if near else None,
                    "mel": mel[step], "si_sdr": sdr.get(step)})
    return out


def low_band_share(checkpoints: dict[str, str], shards: Path, n: int) -> dict[str, float]:
    """Mean share of each output's energy in 20-140 Hz on the test clips (``original``: the inputs')."""
    import torch

    from spresso.eval.sets import from_shards
    from spresso.models.audioae import load_audioae

    clips = from_shards(str(shards), "test", n).clips

    def share(wave: np.ndarray, sr: int) -> float:
        spec = np.abs(np.fft.rfft(wave)) ** 2
        f = np.fft.rfftfreq(wave.shape[-1], 1 / sr)
        return float(spec[(f >= LOW_BAND[0]) & (f < LOW_BAND[1])].sum() / max(spec.sum(), 1e-12))

    out = {"original": float(np.mean([share(c.wave, EVAL_RATE) for c in clips]))}
    for name, ckpt in checkpoints.items():
        model = load_audioae(ckpt)
        vals = []
        with torch.no_grad():
            for c in clips:
                n_frames = max(1, len(c.wave) // model.hop)
                x = torch.from_numpy(np.ascontiguousarray(c.wave[: n_frames * model.hop], dtype=np.float32))[None]
                vals.append(share(model(x)[0].numpy(), model.sample_rate))
        out[name] = float(np.mean(vals))
    return out


def paired_differences(eval_out: Path, rows: list[str], base: str) -> dict[str, dict]:
    """Per-clip differences of each row from ``base`` (same clips), with bootstrap intervals: finer
    than comparing two rows' own intervals, which mostly measure how the clips differ."""
    from spresso.eval.bootstrap import bootstrap_mean

    per_clip = json.loads((eval_out / "per_clip.json").read_text())["codecs"]
    out = {}
    for name in rows:
        if name == base or name not in per_clip:
            continue
        out[name] = {m: bootstrap_mean(np.asarray(per_clip[name][m]) - np.asarray(per_clip[base][m]), seed=0)
                     for m in ("mel", "aisfx_cos") if m in per_clip[name] and m in per_clip[base]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="folder of sound effects (sharded once, held out by file)")
    p.add_argument("--workdir", default="/tmp/audioae-recipe")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--minutes", type=float, default=12.0, help="training minutes per row")
    p.add_argument("--parallel", type=int, default=2, help="rows trained at once")
    p.add_argument("--cores-per-row", type=int, default=1)
    p.add_argument("--clips", type=int, default=48, help="test clips scored")
    p.add_argument("--splits", type=lambda s: tuple(float(v) for v in s.split(",")), default=(0.85, 0.05, 0.10),
                   help="train,valid,test fractions (by file)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    work = Path(args.workdir)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    spresso("shard", "-c", "workstation", "--input", str(Path(args.input).resolve()), *common_sets(data, data, args.splits),
            log=data / "shard.log")
    print(f"shards ready in {time.time() - t0:.0f} s: {data / 'shards'}", flush=True)

    results: dict[str, dict] = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        for r in pool.map(lambda n: train_row(n, ROWS[n], args, data), rows):
            results[r["name"]] = r
            last = r["curve"][-1] if r["curve"] else {}
            print(f"{r['name']:>9}: {r['wall_minutes']:.1f} min, valid mel {last.get('mel', float('nan')):.3f} at step {last.get('step')}", flush=True)

    codecs = [f"--codec={n}=audioae:{r['checkpoint']}" for n, r in results.items()]
    codecs += ["--codec=opus6=opus:6", "--codec=opus8=opus:8", "--codec=opus12=opus:12", "--codec=silence=silence:"]
    eval_out = work / "eval"
    spresso("eval", "-c", "workstation", *common_sets(data, data, args.splits), "--set", "eval.floors=true",
            "--set-split", "test", "--clips", str(args.clips), "--out", str(eval_out), *codecs, log=work / "eval.log")
    # results.json holds the rows in table.csv's order; table.csv names them.
    with open(eval_out / "table.csv", newline="", encoding="utf-8") as f:
        names = [line[0] for line in list(csv.reader(f))[1:]]
    table = dict(zip(names, json.loads((eval_out / "results.json").read_text())))
    lows = low_band_share({n: r["checkpoint"] for n, r in results.items()}, data / "shards", args.clips)

    def metric(row: str, m: str):
        return table.get(row, {}).get("metrics", {}).get(m, {}).get("value")

    print(f"\n{args.minutes:g} min per row, {args.cores_per_row} core(s) each, {args.clips} test clips (held out by file)")
    print("| row | valid mel at end (curve) | test mel | aisfx cos | KAD | SI-SDR | 20-140 Hz share |")
    print("|---|---|---|---|---|---|---|")
    for name in [*results, *(n for n in table if n not in results)]:
        curve = results.get(name, {}).get("curve", [])
        trace = " / ".join(f"{c['mel']:.2f}" for c in curve[-4:]) if curve else "-"
        vals = [metric(name, m) for m in ("mel", "aisfx_cos", "kad_aisfx", "si_sdr")]
        fmt = " | ".join("-" if v is None else f"{v:.3f}" for v in vals)
        low = lows.get(name)
        print(f"| {name} | {trace} | {fmt} | {'-' if low is None else f'{low:.3f}'} |")
    print(f"| original | - | - | - | - | - | {lows['original']:.3f} |")
    paired = paired_differences(eval_out, list(results), "base") if "base" in results else {}
    if paired:
        print("\nPaired against base on the same clips (mean difference [95% bootstrap interval]; mel: lower is better):")
        for name, d in paired.items():
            print(f"  {name:>18}: mel {d['mel']}   aisfx cos {d['aisfx_cos']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"minutes": args.minutes, "cores_per_row": args.cores_per_row,
                                              "clips": args.clips, "splits": args.splits, "rows": results,
                                              "eval": table, "low_band_share": lows,
                                              "paired_vs_base": {n: {m: iv.to_dict() for m, iv in d.items()} for n, d in paired.items()},
                                              "date": time.strftime("%Y-%m-%d")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
