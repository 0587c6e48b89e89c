"""The codec commands: `encode`, `decode` (with a bundle), `export` (make one), `peel` and `inspect` (no model).

    spresso encode IN OUT.spr --model BUNDLE [--kbps 0.3 | --codebooks m]
    spresso decode IN.spr OUT.wav --model BUNDLE [--steps 16] [--seed S] [--variations N] [--original-rate]
    spresso export --config demo [--register NAME [--alias champion]]

IN may be a file, a folder (every audio / .spr file in it) or a glob; with several inputs OUT is
a folder and each output is named after its input. Files are read and coded in groups so their
windows share device batches; files longer than two minutes stream from and to disk block by
block, so a recording of hours needs no more memory than a short one.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from spresso.cli.common import add_config_args
from spresso.cli.stages import stage_config
from spresso.core.errors import SpressoError


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SpressoError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpressoError(f"{path}: is a directory, expected a .spr file") from None
    except OSError as err:
        raise SpressoError(f"{path}: cannot read ({err.strerror or err})") from None


def _with_path(path: str, err: SpressoError) -> SpressoError:
    return type(err)(f"{path}: {err}")


def cmd_peel(args: argparse.Namespace) -> int:
    from spresso.codec.bitstream import decode_stream, peel
    from spresso.codec.errors import BitstreamError

    data = _read(args.input)
    try:
        out = peel(data, args.codebooks)
        stream = decode_stream(out)
    except BitstreamError as err:
        raise _with_path(args.input, err) from None
    try:
        Path(args.output).write_bytes(out)
    except OSError as err:
        raise SpressoError(f"{args.output}: cannot write ({err.strerror or err})") from None
    print(f"{args.output}: {stream.m} codebooks, {stream.bitrate_bps / 1000:.4g} kbps, {len(out)} bytes (was {len(data)})")
    return 0


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_inspect(args: argparse.Namespace) -> int:
    from spresso.codec.bitstream import describe
    from spresso.codec.errors import BitstreamError

    data = _read(args.file)
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


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a", ".opus")
GROUP = 8  # files read and coded together
LONG_SECONDS = 120.0  # longer files stream from and to disk block by block (bounded memory)


def expand_inputs(pattern: str, suffixes: tuple[str, ...]) -> tuple[list[Path], bool]:
    """(files, many): a file, a folder's matching files (recursive, sorted), or a glob's matches."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise SpressoError(f"{pattern}: no {'/'.join(suffixes)} files in this folder")
        return files, True
    if path.is_file():
        return [path], False
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise SpressoError(f"{pattern}: the pattern matches no file")
        return files, True
    raise SpressoError(f"{pattern}: no such file or folder")


def _outputs(inputs: list[Path], many: bool, output: str, suffix: str, root: str) -> list[Path]:
    out = Path(output)
    if not many and not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        return [out]
    if out.exists() and not out.is_dir():
        raise SpressoError(f"{output}: several inputs need an output folder, this is a file")
    out.mkdir(parents=True, exist_ok=True)
    base = Path(root) if Path(root).is_dir() else None
    names = []
    for p in inputs:
        rel = p.relative_to(base) if base is not None else Path(p.name)
        names.append(out / rel.with_suffix(suffix))
    for n in names:
        n.parent.mkdir(parents=True, exist_ok=True)
    return names


def _codec(args):
    import spresso

    if not args.model:
        raise SpressoError("give the codec bundle with --model (a folder, or models:/NAME@alias)")
    return spresso.load(args.model, device=args.device, batch_size=args.batch_size, compile=args.compile)


def _groups(items: list, size: int = GROUP):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def cmd_encode(args: argparse.Namespace) -> int:
    from spresso.audio.io import read_audio

    if args.kbps is not None and args.codebooks is not None:
        raise SpressoError("give --kbps or --codebooks, not both")
    inputs, many = expand_inputs(args.input, AUDIO_SUFFIXES)
    outputs = _outputs(inputs, many, args.output, ".spr", args.input)
    codec = _codec(args)
    from spresso.codec.streaming import duration_seconds

    long, short = [], []
    for pair in zip(inputs, outputs):
        (long if (duration_seconds(pair[0]) or 0.0) > LONG_SECONDS else short).append(pair)
    for src, dst in long:  # one at a time, read block by block
        try:
            data = codec.encode_file(src, kbps=args.kbps, codebooks=args.codebooks, progress=not args.quiet)
        except SpressoError as err:
            raise SpressoError(f"{src}: {err}") from None
        _write(dst, data)
        if not args.quiet:
            print(f"{dst}: {len(data)} bytes")
    for group in _groups(short):
        items = []
        for src, _ in group:
            try:
                items.append(read_audio(src))
            except SpressoError as err:
                raise SpressoError(f"{src}: {err}") from None
        try:
            datas = codec.encode_batch(items, kbps=args.kbps, codebooks=args.codebooks, progress=not args.quiet)
        except SpressoError as err:
            if len(group) == 1:
                raise SpressoError(f"{group[0][0]}: {err}") from None
            datas = []  # find which file of the group it is, for a one-line error naming it
            for (src, _), item in zip(group, items):
                try:
                    datas.extend(codec.encode_batch([item], kbps=args.kbps, codebooks=args.codebooks))
                except SpressoError as err1:
                    raise SpressoError(f"{src}: {err1}") from None
        for (src, dst), data in zip(group, datas):
            _write(dst, data)
            if not args.quiet:
                print(f"{dst}: {len(data)} bytes")
    return 0


def _write(path: Path, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as err:
        raise SpressoError(f"{path}: cannot write ({err.strerror or err})") from None


def cmd_decode(args: argparse.Namespace) -> int:
    from spresso.audio.io import write_audio

    if not 1 <= args.variations <= 1000:
        raise SpressoError(f"--variations must be 1..1000, got {args.variations}")
    inputs, many = expand_inputs(args.input, (".spr",))
    suffix = Path(args.output).suffix if not many and Path(args.output).suffix else ".wav"
    outputs = _outputs(inputs, many, args.output, suffix, args.input)
    codec = _codec(args)
    for group in _groups(list(zip(inputs, outputs))):
        datas = [_read(str(src)) for src, _ in group]
        short = []
        for (src, dst), data in zip(group, datas):  # verify each first, so an error names its file
            try:
                stream = codec.parse(data)
            except SpressoError as err:
                raise SpressoError(f"{src}: {err}") from None
            if stream.sample_count / stream.sample_rate > LONG_SECONDS:
                _decode_long(codec, args, src, dst, data)
            else:
                short.append(((src, dst), data))
        if not short:
            continue
        results = codec.decode_batch([d for _, d in short], steps=args.steps, seed=args.seed, variations=args.variations,
                                     original_rate=args.original_rate, solver=args.solver, progress=not args.quiet)
        for ((src, dst), _), (wave, sr) in zip(short, results):
            takes = [wave] if args.variations == 1 else list(wave)
            for v, take in enumerate(takes):
                path = _take_path(dst, v, args.variations)
                try:
                    write_audio(path, take, sr)
                except SpressoError:
                    raise
                except Exception as err:
                    raise SpressoError(f"{path}: cannot write ({str(err).splitlines()[0]})") from None
                if not args.quiet:
                    print(f"{path}: {take.shape[-1] / sr:.2f} s at {sr} Hz")
    return 0


def _take_path(dst: Path, v: int, variations: int) -> Path:
    return dst if variations == 1 else dst.with_name(f"{dst.stem}.v{v + 1}{dst.suffix}")


def _decode_long(codec, args, src: Path, dst: Path, data: bytes) -> None:
    """A long stream decoded straight to its file(s), window batch by window batch."""
    for v in range(args.variations):
        path = _take_path(dst, v, args.variations)
        try:
            n, sr = codec.decode_to_file(data, path, steps=args.steps, seed=args.seed, variation=v,
                                         original_rate=args.original_rate, solver=args.solver, progress=not args.quiet)
        except SpressoError as err:
            raise SpressoError(f"{src}: {err}") from None
        if not args.quiet:
            print(f"{path}: {n / sr:.2f} s at {sr} Hz")


def cmd_export(args: argparse.Namespace) -> int:
    # lazy: keeps `spresso --help` free of torch and MLflow
    from spresso.train.export import export

    cfg = stage_config(args)
    out = args.out or f"bundles/t{cfg.dae.t}{'c' if args.continuous else 'd'}"
    summary = export(cfg, cfg.path(out), audioae=args.audioae, stage=args.stage, quantizer=args.quantizer,
                     continuous=args.continuous, register=args.register, alias=args.alias,
                     parent_run_id=args.parent_run_id, m=args.codebooks)
    print(json.dumps(summary, indent=1))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="BUNDLE", help="codec bundle folder, or models:/NAME@alias / runs:/ID/bundle")
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
