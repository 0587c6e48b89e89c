"""The codec commands: `encode`, `decode` (with a bundle), `export` (make one), `peel` and `inspect` (no model).

    spresso encode IN OUT.spr --model BUNDLE [--kbps 0.3 | --codebooks m]
    spresso decode IN.spr OUT.wav --model BUNDLE [--steps 16] [--seed S] [--variations N] [--original-rate]
    spresso export --config demo [--register NAME [--alias champion]]

IN may be a file, a folder (every audio / .spr file in it) or a glob; with several inputs OUT is
a folder and each output is named after its input. Files are read and coded in groups so their
windows share device batches; files longer than two minutes stream from and to disk block by
block, so a recording of hours needs no more memory than a short one (:mod:`spresso.codec.files`
holds that policy; this module parses arguments and prints).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import spresso
from spresso.cli.common import add_config_args
from spresso.cli.stages import stage_config
from spresso.codec.bitstream import (
    decode_stream,
    describe,
    peel,
    read_stream_file,
    write_stream_file,
)
from spresso.codec.errors import BitstreamError
from spresso.core.errors import SpressoError


def _with_path(path: str, err: SpressoError) -> SpressoError:
    return type(err)(f"{path}: {err}")


def cmd_peel(args: argparse.Namespace) -> int:
    data = read_stream_file(args.input)
    try:
        out = peel(data, args.codebooks)
        stream = decode_stream(out)
    except BitstreamError as err:
        raise _with_path(args.input, err) from None
    write_stream_file(args.output, out)
    print(f"{args.output}: {stream.m} codebooks, {stream.bitrate_bps / 1000:.4g} kbps, {len(out)} bytes (was {len(data)})")
    return 0


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_inspect(args: argparse.Namespace) -> int:
    data = read_stream_file(args.file)
    try:
        info = describe(data)
    except BitstreamError as err:
        raise _with_path(args.file, err) from None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {_fmt(value)}")
    return 0


def _codec(args):
    if not args.model:
        raise SpressoError("give the codec bundle with --model (a folder, an s3:// URL, or models:/NAME@alias)")
    return spresso.load(args.model, device=args.device, batch_size=args.batch_size, compile=args.compile)


def cmd_encode(args: argparse.Namespace) -> int:
    # lazy: torch (the codec) stays out of `spresso --help`
    from spresso.codec import files

    if args.kbps is not None and args.codebooks is not None:
        raise SpressoError("give --kbps or --codebooks, not both")
    inputs, many = files.expand_inputs(args.input, files.AUDIO_EXTENSIONS)
    outputs = files.output_paths(inputs, many, args.output, files.STREAM_SUFFIX, args.input)
    codec = _codec(args)
    files.encode_files(codec, list(zip(inputs, outputs)), kbps=args.kbps, codebooks=args.codebooks, progress=not args.quiet,
                       on_written=None if args.quiet else lambda dst, data: print(f"{dst}: {len(data)} bytes"))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    # lazy: torch (the codec) stays out of `spresso --help`
    from spresso.codec import files

    if not 1 <= args.variations <= 1000:
        raise SpressoError(f"--variations must be 1..1000, got {args.variations}")
    inputs, many = files.expand_inputs(args.input, (files.STREAM_SUFFIX,))
    suffix = Path(args.output).suffix if not many and Path(args.output).suffix else ".wav"
    outputs = files.output_paths(inputs, many, args.output, suffix, args.input)
    codec = _codec(args)
    files.decode_files(codec, list(zip(inputs, outputs)), steps=args.steps, seed=args.seed, variations=args.variations,
                       original_rate=args.original_rate, solver=args.solver, progress=not args.quiet,
                       on_written=None if args.quiet else lambda path, n, sr: print(f"{path}: {n / sr:.2f} s at {sr} Hz"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # lazy: exporting needs MLflow and the training stack
    from spresso.train.export import export

    cfg = stage_config(args)
    out = args.out or f"bundles/t{cfg.dae.t}{'c' if args.continuous else 'd'}"
    summary = export(cfg, cfg.path(out), audioae=args.audioae, stage=args.stage, quantizer=args.quantizer,
                     continuous=args.continuous, register=args.register, alias=args.alias,
                     parent_run_id=args.parent_run_id, m=args.codebooks)
    print(json.dumps(summary, indent=1))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="BUNDLE", help="codec bundle: a folder, an object-store URL (s3://…), or models:/NAME@alias / runs:/ID/bundle")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per device batch")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (GPU; slow first batch)")
    p.add_argument("--quiet", "-q", action="store_true")


def register(commands, train) -> None:
    p = commands.add_parser("encode", help="audio -> .spr with a codec bundle")
    p.add_argument("input", metavar="IN", help="audio file, folder or glob")
    p.add_argument("output", metavar="OUT", help="OUT.spr, or a folder for several inputs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kbps", type=float, default=None, help="target bitrate: the nearest operating point")
    g.add_argument("--codebooks", "-m", type=int, default=None, metavar="M", help="codebooks to use (1..the model's M)")
    _model_args(p)
    p.set_defaults(func=cmd_encode)

    p = commands.add_parser("decode", help=".spr -> audio with a codec bundle")
    p.add_argument("input", metavar="IN.spr", help=".spr file, folder or glob")
    p.add_argument("output", metavar="OUT", help="OUT.wav, or a folder for several inputs")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the bundle's)")
    p.add_argument("--solver", choices=("dpmpp2m", "heun"), default=None, help="ODE solver (default: the bundle's, dpmpp2m)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variations", type=int, default=1, metavar="N", help="N different renditions (OUT.v1.wav ...)")
    p.add_argument("--original-rate", action="store_true", help="resample to the input's original rate (default 48 kHz)")
    _model_args(p)
    p.set_defaults(func=cmd_decode)

    p = commands.add_parser("export", help="trained checkpoints -> codec bundle, logged to MLflow")
    add_config_args(p)
    p.add_argument("--t", type=int, default=None, help="pooling factor of the operating point [dae.t]")
    p.add_argument("--out", default=None, help="bundle folder, relative to the workdir (default bundles/t<t>d|c)")
    p.add_argument("--audioae", default=None, help="AudioAE checkpoint (default: the config's trained one)")
    p.add_argument("--stage", default=None, help="stage-3 (or stage-1) checkpoint (default: the config's)")
    p.add_argument("--quantizer", default=None, help="QINCo2 checkpoint (default: the config's)")
    p.add_argument("--continuous", action="store_true", help="continuous bundle (float16 z, stage 1, no quantizer)")
    p.add_argument("--codebooks", "--m", "-m", type=int, default=None, help="default codebooks m (default: the operating point's)")
    p.add_argument("--parent-run-id", default=None, help="MLflow run id of the pipeline run (lineage)")
    p.add_argument("--register", default=None, metavar="NAME", help="register the bundle as a model version of NAME")
    p.add_argument("--alias", default="champion", help="registry alias set with --register [champion]")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("peel", help="drop codebooks from a .spr stream (lower bitrate, no re-encoding)")
    p.add_argument("input", metavar="IN.spr")
    p.add_argument("output", metavar="OUT.spr")
    p.add_argument("--codebooks", "-m", type=int, required=True, metavar="M", help="codebooks to keep (1..the stream's m)")
    p.set_defaults(func=cmd_peel)

    p = commands.add_parser("inspect", help="print the header fields and bitrate of a .spr stream")
    p.add_argument("file", metavar="FILE.spr")
    p.add_argument("--json", action="store_true", help="print the fields as JSON")
    p.set_defaults(func=cmd_inspect)
