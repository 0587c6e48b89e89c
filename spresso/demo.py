"""`make demo`: what exists of the pipeline, end to end, on the embedded default.

For now: synthesise a small procedural corpus into work/demo/corpus, shard it with the demo
config (plus any --input folders), and print what was made. Rerunning is cheap: the corpus is
regenerated only when missing and the shards report "up to date".
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from .errors import SpressoError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spresso.demo", description=__doc__)
    parser.add_argument("--input", nargs="*", default=[], help="more audio folders to shard with the corpus")
    parser.add_argument("--minutes", type=float, default=8.0, help="minutes of procedural audio [8]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from .audio.synth import corpus_summary, synth_corpus
    from .config import load_config
    from .data.reader import read_manifest, read_rejects, shard_paths
    from .data.shard import shard

    try:
        cfg = load_config(args.config, args.overrides)
        corpus = Path(cfg.path("corpus"))
        stamp = corpus / ".synth.json"
        want = {"minutes": args.minutes, "seed": args.seed}
        if not stamp.exists() or json.loads(stamp.read_text()) != want:
            shutil.rmtree(corpus, ignore_errors=True)  # a different corpus: start clean
            files = synth_corpus(corpus, args.minutes, args.seed)
            stamp.write_text(json.dumps(want))
            print("corpus:", json.dumps(corpus_summary(files)))
        result = shard([str(corpus), *args.input], cfg)
    except SpressoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(result.summary())
    for split, info in result.info.get("splits", {}).items():
        print(f"  {split:6s} {info['clips']:5d} clips  {info['hours'] * 60:6.2f} min  {len(shard_paths(result.out, split))} tar(s)")
    manifest = read_manifest(result.out)
    shown = {}
    for row in manifest.to_pylist():  # one clip of each of a few sources
        if row["source"] not in shown and len(shown) < 6:
            shown[row["source"]] = row
            print(f"  {row['split']:5s} {row['key']}  {row['valid_samples'] / 48000:4.2f} s  \"{row['caption']}\"")
    rejects = read_rejects(result.out).to_pylist()
    for r in rejects[:5]:
        print(f"  rejected {r['source']}: {r['reason']}")
    print(f"manifest: {result.out}/manifest.parquet  dataset digest: {result.digest}")
    if result.run_id:
        print(f"mlflow run: {result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
