"""The codec commands: `encode`, `decode` (with a bundle), `export` (make one), `peel` and `inspect` (no model).

    spresso encode IN... OUT --model BUNDLE [--kbps 0.3 | --codebooks m] [--overwrite] [--allow-partial]
    spresso decode IN.spr... OUT --model BUNDLE [--steps 16] [--seed S] [--variations N] [--original-rate] [--overwrite]
    spresso export --config demo [--register NAME [--alias champion]] [--overwrite]

IN may be files, folders (every audio / .spr file in them) or globs; with several inputs OUT is a
folder and each output is named after its input (:mod:`spresso.codec.paths` holds the naming
rules). Every output path is checked before a model is loaded: an output that is an input, an
existing file without ``--overwrite``, a folder that cannot be made. Files are read and coded in
groups so their windows share device batches; files longer than two minutes stream from and to
disk block by block (:mod:`spresso.codec.files`). A batch goes on past a bad file and lists every
failure at the end (exit 2 if any).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import spresso
from spresso.cli.common import add_config_args
from spresso.cli.examples import add_examples
from spresso.cli.stages import stage_config
from spresso.codec import paths
from spresso.codec.bitstream import (
    decode_stream,
    describe,
    peel,
    read_stream_file,
)
from spresso.codec.errors import BitstreamError
from spresso.core import storage
from spresso.core.errors import SpressoError
from spresso.core.outputs import check_outputs, write_file

ENCODE_DESCRIPTION = """audio -> .spr with a codec bundle

Stereo and multichannel input becomes mono: the mid (mean of the channels); when the channels cancel
in the mid (e.g. L = -R, mid more than 20 dB below the loudest channel) the loudest channel is kept
instead. Each output line says which, and the codebooks and bitrate chosen."""
OVERWRITE_HELP = "replace existing outputs (default: refuse, and keep them)"


def _with_path(path: str, err: SpressoError) -> SpressoError:
    return type(err)(f"{path}: {err}")


def cmd_peel(args: argparse.Namespace) -> int:
    out = check_outputs([args.output], [args.input], overwrite=args.overwrite)[0]
    paths.check_suffix(out, (paths.STREAM_SUFFIX,), "peel")
    data = read_stream_file(args.input)
    try:
        peeled = peel(data, args.codebooks)
        stream = decode_stream(peeled)
    except BitstreamError as err:
        raise _with_path(args.input, err) from None
    write_file(out, peeled, overwrite=args.overwrite)
    print(f"{out}: {stream.m} codebooks, {stream.bitrate_bps / 1000:.4g} kbps, {len(peeled)} bytes (was {len(data)})")
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


def _need_model(args) -> None:
    if not args.model:
        raise SpressoError("give the codec bundle with --model (a folder, an s3:// URL, or models:/NAME@alias)")


def _codec(args):
    _need_model(args)
    return spresso.load(args.model, device=args.device, batch_size=args.batch_size, compile=args.compile)


def _plan(args, suffixes, out_suffix, allowed, what) -> tuple[list[Path], list[Path], bool]:
    """Inputs and checked outputs (before any model is loaded)."""
    inputs, many = paths.expand_inputs(args.input, suffixes)
    many = many or len(inputs) > 1
    folder = paths.is_folder_output(args.output, many)
    suffix = out_suffix if folder or not Path(args.output).suffix else Path(args.output).suffix
    outputs = paths.output_paths(inputs, many, args.output, suffix, args.input)
    if not folder:
        paths.check_suffix(outputs[0], allowed, what)
    return inputs, outputs, many


def _finish(failures: list, total: int) -> int:
    """Every failure of a batch, one line each, then one error line; 0 when none failed."""
    if not failures:
        return 0
    for src, reason in failures:
        print(f"failed: {src}: {reason}", file=sys.stderr)
    raise SpressoError(f"{len(failures)} of {total} files failed (listed above); the others were written")


def cmd_encode(args: argparse.Namespace) -> int:
    # lazy: soundfile and soxr stay out of `spresso --help`
    from spresso.audio.io import AUDIO_EXTENSIONS

    _need_model(args)
    inputs, outputs, many = _plan(args, AUDIO_EXTENSIONS, paths.STREAM_SUFFIX, (paths.STREAM_SUFFIX,), "encode")
    check_outputs(outputs, inputs, overwrite=args.overwrite)
    # lazy: torch (the codec) stays out of `spresso --help` and of the path checks above
    from spresso.codec import files

    codec = _codec(args)
    failures = files.encode_files(
        codec, list(zip(inputs, outputs)), kbps=args.kbps, codebooks=args.codebooks, progress=not args.quiet,
        allow_partial=args.allow_partial, overwrite=args.overwrite, keep_going=many,
        on_written=None if args.quiet else lambda done: print(done.describe()),
        on_partial=lambda src, note: print(f"warning: {src}: {note}", file=sys.stderr))
    return _finish(failures, len(inputs))


def cmd_decode(args: argparse.Namespace) -> int:
    if not 1 <= args.variations <= 1000:
        raise SpressoError(f"--variations must be 1..1000, got {args.variations}")
    _need_model(args)
    inputs, outputs, many = _plan(args, (paths.STREAM_SUFFIX,), ".wav", paths.WRITABLE_AUDIO, "decode")
    takes = [paths.take_path(dst, v, args.variations) for dst in outputs for v in range(args.variations)]
    check_outputs(takes, inputs, overwrite=args.overwrite)
    # lazy: torch (the codec) stays out of `spresso --help` and of the path checks above
    from spresso.codec import files

    codec = _codec(args)
    failures = files.decode_files(
        codec, list(zip(inputs, outputs)), steps=args.steps, seed=args.seed, variations=args.variations,
        original_rate=args.original_rate, solver=args.solver, progress=not args.quiet, overwrite=args.overwrite,
        keep_going=many, on_written=None if args.quiet else lambda path, n, sr: print(f"{path}: {n / sr:.2f} s at {sr} Hz"))
    return _finish(failures, len(inputs))


def cmd_export(args: argparse.Namespace) -> int:
    # lazy: exporting needs MLflow and the training stack
    from spresso.core.bundle_io import MANIFEST  # lazy: as above (torch)
    from spresso.train.export import export  # lazy: as above

    cfg = stage_config(args)
    out = args.out or f"bundles/t{cfg.dae.t}{'c' if args.continuous else 'd'}"
    if not args.overwrite and storage.exists(storage.join(cfg.path(out), MANIFEST)):
        raise SpressoError(f"{cfg.path(out)}: a bundle is already there (pass --overwrite to replace it)")
    summary = export(cfg, cfg.path(out), audioae=args.audioae, stage=args.stage, quantizer=args.quantizer,
                     continuous=args.continuous, register=args.register, alias=args.alias,
                     parent_run_id=args.parent_run_id, m=args.codebooks)
    print(json.dumps(summary, indent=1))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="BUNDLE", help="codec bundle: a folder, an object-store URL (s3://…), or models:/NAME@alias / runs:/ID/bundle")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="windows per device batch (at least 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (GPU; slow first batch)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", "-q", action="store_true")


def _parser(commands, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return add_examples(commands.add_parser(name, help=help, description=description or help), name)


def register(commands, train) -> None:
    p = _parser(commands, "encode", "audio -> .spr with a codec bundle", ENCODE_DESCRIPTION)
    p.add_argument("input", metavar="IN", nargs="+", help="audio file(s), folder(s) or quoted glob(s)")
    p.add_argument("output", metavar="OUT", help="OUT.spr, or a folder (several inputs, a name ending in /, or an existing folder)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kbps", type=float, default=None, help="target bitrate: the nearest operating point (within the model's range)")
    g.add_argument("--codebooks", "-m", type=int, default=None, metavar="M", help="codebooks to use (1..the model's M)")
    p.add_argument("--allow-partial", action="store_true",
                   help="encode what is readable of a file cut short (default: refuse it); a warning says what was kept")
    _model_args(p)
    p.set_defaults(func=cmd_encode)

    p = _parser(commands, "decode", ".spr -> audio with a codec bundle")
    p.add_argument("input", metavar="IN.spr", nargs="+", help=".spr file(s), folder(s) or quoted glob(s)")
    p.add_argument("output", metavar="OUT", help="OUT.wav (.flac, .ogg, .aiff), or a folder (several inputs, a name ending in /, "
                                                 "or an existing folder)")
    p.add_argument("--steps", type=_positive_int, default=None, help="diffusion steps (default: the bundle's)")
    p.add_argument("--solver", choices=("dpmpp2m", "heun"), default=None, help="ODE solver (default: the bundle's, dpmpp2m)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variations", type=int, default=1, metavar="N", help="N different renditions (OUT.v1.wav ...)")
    p.add_argument("--original-rate", action="store_true", help="resample to the input's original rate (default 48 kHz)")
    _model_args(p)
    p.set_defaults(func=cmd_decode)

    p = _parser(commands, "export", "trained checkpoints -> codec bundle, logged to MLflow")
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
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already at --out (default: refuse)")
    p.set_defaults(func=cmd_export)

    p = _parser(commands, "peel", "drop codebooks from a .spr stream (lower bitrate, no re-encoding)")
    p.add_argument("input", metavar="IN.spr")
    p.add_argument("output", metavar="OUT.spr")
    p.add_argument("--codebooks", "-m", type=int, required=True, metavar="M", help="codebooks to keep (1..the stream's m)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_peel)

    p = _parser(commands, "inspect", "print the header fields and bitrate of a .spr stream")
    p.add_argument("file", metavar="FILE.spr")
    p.add_argument("--json", action="store_true", help="print the fields as JSON")
    p.set_defaults(func=cmd_inspect)
