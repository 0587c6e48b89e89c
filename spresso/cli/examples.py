"""Two or three real examples at the end of each command's --help (tests/test_cli_help.py parses every one),
keyed by the command's words after `spresso`.
"""
from __future__ import annotations

import argparse

EXAMPLES: dict[str, list[str]] = {
    "train audioae": [
        "spresso train audioae --config demo",
        "spresso train audioae --config configs/audioae-cpu.yaml --set audioae.steps=2000",
        "spresso train audioae --config demo --force          # retrain even if an equal run finished",
    ],
    "train dit": [
        "spresso train dit --config demo",
        "spresso train dit --config paper --set dit.train.steps=1000",
    ],
    "train stage1": [
        "spresso train stage1 --config demo --t 100",
        "spresso train stage1 --config paper --t 9 --set dae.stage1.steps=5000",
    ],
    "train stage3": [
        "spresso train stage3 --config demo --t 100",
        "spresso train stage3 --config paper --t 9",
    ],
    "train qinco2": [
        "spresso train qinco2 --config demo",
        "spresso train qinco2 --config demo --rq-train-type default",
    ],
    "config": [
        "spresso config --config demo",
        "spresso config --config paper --set workdir=s3://bucket/run1",
    ],
    "synth-corpus": [
        "spresso synth-corpus --output work/demo/corpus",
        "spresso synth-corpus --output /data/synth --minutes 60 --seed 3",
    ],
    "shard": [
        "spresso shard --input /data/sfx --config demo",
        "spresso shard --input /data/sfx /data/more --output /data/shards --captions captions.csv",
    ],
    "precompute-latents": [
        "spresso precompute-latents --config demo",
        "spresso precompute-latents --config demo --max-blocks 4      # a first part; a rerun resumes",
    ],
    "embed-captions": [
        "spresso embed-captions --config demo",
        "spresso embed-captions --config paper --no-progress",
    ],
    "generate": [
        "spresso generate --config demo --prompt 'a door slams' --out door.wav",
        "spresso generate --config demo --prompt 'rain on a tin roof' --out rain.wav --seconds 5 --seed 2",
    ],
    "quantize": [
        "spresso quantize --config demo --input work/demo/dae/d96/z --output codes.zarr",
        "spresso quantize --config demo --input z.zarr --output codes.zarr --beam 16 --m 3,6,12",
    ],
    "precompute-z": [
        "spresso precompute-z --config demo --t 100",
        "spresso precompute-z --config paper --t 9 --max-blocks 8",
    ],
    "eval": [
        "spresso eval --config demo --codec d96=spresso:work/demo/bundles/d96",
        "spresso eval --config demo --codec opus6=opus:6 --folder /data/heldout --clips 40",
    ],
    "listening-test": [
        "spresso listening-test --eval work/demo/eval/test-1a2b3c4d --out listening",
        "spresso listening-test summarize results/*.json --json summary.json",
    ],
    "listening-test summarize": [
        "spresso listening-test summarize alice.json bob.json",
        "spresso listening-test summarize results/*.json --json summary.json --overwrite",
    ],
    "pipeline run": [
        "spresso pipeline run demo",
        "spresso pipeline run configs/paper.yaml --dry-run",
        "spresso pipeline run demo --only stage3@d96 --force stage3@d96",
    ],
    "pipeline status": [
        "spresso pipeline status demo",
        "spresso pipeline status configs/paper.yaml --tracking-uri https://mlflow.spresso.internal",
    ],
    "pipeline graph": [
        "spresso pipeline graph demo --out dag.png",
        "spresso pipeline graph demo --status --out dag.svg",
    ],
    "runs compare": [
        "spresso runs compare --config demo",
        "spresso runs compare --config demo -m fad --stage evaluate",
    ],
    "encode": [
        "spresso encode boom.wav boom.spr --model work/demo/bundles/d96",
        "spresso encode sfx/ codes/ --model models:/spresso@champion --kbps 0.1",
        "spresso encode 'takes/*.ogg' codes/ --model work/demo/bundles/d96 --codebooks 4 --overwrite",
    ],
    "decode": [
        "spresso decode boom.spr boom.wav --model work/demo/bundles/d96",
        "spresso decode codes/ decoded/ --model work/demo/bundles/d96 --steps 16 --original-rate",
        "spresso decode boom.spr boom.flac --model work/demo/bundles/d96 --variations 3 --seed 7",
    ],
    "export": [
        "spresso export --config demo",
        "spresso export --config demo --t 100 --out bundles/d96 --register spresso --alias champion",
        "spresso export --config paper --continuous --overwrite",
    ],
    "peel": [
        "spresso peel boom.spr boom_low.spr --codebooks 4",
        "spresso peel boom.spr boom_1.spr -m 1 --overwrite     # then: spresso inspect boom_1.spr",
    ],
    "inspect": [
        "spresso inspect boom.spr",
        "spresso inspect boom.spr --json",
    ],
    "lineage": [
        "spresso lineage 3f9c2a1b --config demo",
        "spresso lineage work/demo/bundles/d96 --config demo",
    ],
}


def epilog(lines: list[str]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_examples(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """End ``parser``'s help with the examples of ``command`` (kept as written, not re-wrapped)."""
    parser.epilog = epilog(EXAMPLES[command])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
