"""`make demo`: the whole S-PRESSO workflow, end to end, on the embedded default.

1. synthesise a procedural sound-effect corpus into ``<workdir>/corpus`` (plus any ``--input`` folders);
2. run the stage DAG of ``configs/demo.yaml`` (``spresso pipeline run``): shards, AudioAE, x0
   cache, caption embeddings + DiT, then per operating point stage 1, z cache, QINCo2, stage 3,
   the codec bundle and its evaluation — local Ray, SQLite MLflow, local folders;
3. encode a few test clips to ``.spr`` with every bundle (discrete bundles at two bitrates: all
   m codebooks and half of them) and decode them back to 48 kHz audio;
4. print where everything is, and how to open the MLflow UI.

A second run reuses every stage (the DAG's cache) and every ``.spr``/decoded file whose
bundle did not change, so it finishes in seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from spresso.audio.io import write_audio
from spresso.audio.synth import corpus_summary, synth_corpus
from spresso.codec.codec import load
from spresso.config import load_config
from spresso.core.bundle_io import read_bundle_manifest
from spresso.core.errors import SpressoError
from spresso.core.rates import bitrate_bps, frame_rate
from spresso.data.reader import iter_clips, read_manifest, shard_paths
from spresso.pipeline import run_pipeline
from spresso.pipeline.publish import register_bundles

log = logging.getLogger("spresso.demo")


def ensure_corpus(cfg, minutes: float, seed: int) -> Path:
    """The procedural corpus, regenerated only when missing or made with other settings."""

    corpus = Path(cfg.path("corpus"))
    stamp = corpus / ".synth.json"
    want = {"minutes": minutes, "seed": seed}
    if not stamp.exists() or json.loads(stamp.read_text()) != want:
        shutil.rmtree(corpus, ignore_errors=True)  # a different corpus: start clean
        print(f"synthesising {minutes:g} minutes of procedural sound effects into {corpus} ...", flush=True)
        files = synth_corpus(corpus, minutes, seed)
        stamp.write_text(json.dumps(want))
        print("corpus:", json.dumps(corpus_summary(files)), flush=True)
    return corpus


def demo_clips(cfg, n: int) -> list[dict]:
    """``n`` clips of the test split (different sources first), as the shards hold them."""

    shards = cfg.path(cfg.data.shards_dir)
    split = "test" if shard_paths(shards, "test") else "train"
    rows = [r for r in read_manifest(shards).to_pylist() if r["split"] == split]
    # Prefer clips of at least a second, from different sources; fall back to whatever the split has.
    rows.sort(key=lambda r: r["valid_samples"] < 48000)
    wanted, seen = [], set()
    for row in rows:
        if row["source"] not in seen:
            wanted.append(row["key"])
            seen.add(row["source"])
        if len(wanted) == n:
            break
    clips = [c for c in iter_clips(shard_paths(shards, split)) if c["key"] in set(wanted)]
    return sorted(clips, key=lambda c: wanted.index(c["key"]))


def codec_roundtrips(bundle: str, out_dir: Path, clips: list[dict]) -> list[dict]:
    """Encode every clip to .spr (two bitrates for a discrete bundle), decode it; reuse files of the same bundle."""

    manifest = read_bundle_manifest(bundle)
    rates = [None] if manifest["mode"] == "continuous" else sorted({int(manifest["m"]), max(1, int(manifest["m"]) // 2)}, reverse=True)
    stamp = out_dir / ".made.json"
    want = {"model_id": manifest["model_id"], "clips": [c["key"] for c in clips], "rates": rates}
    made = []
    if stamp.exists() and json.loads(stamp.read_text()).get("want") == want:
        return json.loads(stamp.read_text())["files"]

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    codec = load(bundle)
    for clip in clips:
        wave = clip["wave"][: clip["valid_samples"]]
        write_audio(out_dir / f"{clip['key']}.original.wav", wave, 48000, subtype="PCM_16")
        for m in rates:
            tag = "z16" if m is None else f"m{m}"
            t0 = time.perf_counter()
            data = codec.encode(wave, 48000, codebooks=m)
            spr = out_dir / f"{clip['key']}.{tag}.spr"
            spr.write_bytes(data)
            audio, sr = codec.decode(data)
            wav = out_dir / f"{clip['key']}.{tag}.wav"
            write_audio(wav, audio, sr, subtype="PCM_16")
            kbps = len(data) * 8 / (len(wave) / 48000) / 1000
            made.append({"clip": clip["key"], "spr": str(spr), "wav": str(wav), "bytes": len(data), "kbps": round(kbps, 3),
                         "codebooks": m, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"  {Path(bundle).name}: {clip['key']} -> {spr.name} ({len(data)} B, {kbps:.3f} kbps incl. header) -> {wav.name}",
                  flush=True)
    stamp.write_text(json.dumps({"want": want, "files": made}, indent=1))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spresso.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="*", default=[], help="more audio folders to train on, with the corpus")
    parser.add_argument("--minutes", type=float, default=16.0, help="minutes of procedural audio [16]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=2, help="test clips to encode and decode [2]")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    t_start = time.perf_counter()
    try:
        cfg = load_config(args.config, args.overrides)
        ensure_corpus(cfg, args.minutes, args.seed)
        cfg.pipeline.inputs = [*cfg.pipeline.inputs, *(str(Path(p).resolve()) for p in args.input)]
        result = run_pipeline(cfg)
        print()
        print(result.table())
        if not result.ok:
            print(f"\npipeline run {result.parent_run_id} did not finish: see the failed stages above; "
                  "rerun `make demo` to resume", file=sys.stderr)
            return 1
        register_bundles(cfg, result)  # so spresso.load("models:/spresso@champion") finds the d96 bundle
        bundles = {o.name.split("@", 1)[1]: o.outputs["bundle"].uri for o in result.outcomes.values()
                   if o.name.startswith("export@") and "bundle" in o.outputs}
        reports = {o.name.split("@", 1)[1]: o.outputs["report"].uri for o in result.outcomes.values()
                   if o.name.startswith("evaluate@") and "report" in o.outputs}
        print("\nencoding and decoding test clips ...", flush=True)
        clips = demo_clips(cfg, args.clips)
        made = {p: codec_roundtrips(b, Path(cfg.path("demo_codec")) / p, clips) for p, b in bundles.items()}
    except SpressoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summarize(cfg, result, bundles, reports, made, time.perf_counter() - t_start)
    return 0


def summarize(cfg, result, bundles: dict, reports: dict, made: dict, seconds: float) -> None:
    print("\n" + "=" * 78)
    print(f"spresso demo finished in {seconds / 60:.1f} min  "
          f"({', '.join(f'{v} {k}' for k, v in result.counts().items())})")
    for point, bundle in bundles.items():
        m = read_bundle_manifest(bundle)
        rate = ("continuous float16 z" if m["mode"] == "continuous" else
                f"K={m['K']} M={m['M']} m={m['m']}: {bitrate_bps(m['m'], m['K'], m['t']) / 1000:.3f} kbps")
        print(f"\n[{point}] {frame_rate(m['t']):.1f} Hz, {rate}")
        print(f"  bundle       {bundle}   (spresso.load(...) / spresso decode IN.spr OUT.wav --model ...)")
        if cfg.pipeline.registered_model:
            aliases = [point] + (["champion"] if point == cfg.pipeline.champion_point() else [])
            print(f"  registered   {'  '.join(f'models:/{cfg.pipeline.registered_model}@{a}' for a in aliases)}")
        for f in made.get(point, []):
            what = "z float16" if f["codebooks"] is None else f"{f['codebooks']} codebooks"
            print(f"  .spr         {f['spr']}  ({what}, {f['bytes']} B, {f['kbps']} kbps)")
            print(f"  decoded      {f['wav']}")
        if point in reports:
            report = Path(reports[point])
            print(f"  evaluation   {report / 'table.md'}")
            print(f"  report       {report / 'index.html'}")
            table = report / "table.md"
            if table.exists():
                print("    " + table.read_text().strip().replace("\n", "\n    "))
    uri = result.tracking_uri
    print(f"\nMLflow: {'mlflow ui --backend-store-uri ' + uri if not uri.startswith('http') else uri}"
          f"   (pipeline run {result.parent_run_id}; experiment '{cfg.runtime.experiment}')")
    print(f"status: spresso pipeline status {'demo' if cfg.workdir == 'work/demo' else '<config>'}")


if __name__ == "__main__":
    sys.exit(main())
