"""`spresso peel` and `spresso inspect`: work on `.spr` files without a model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SpressoError


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
    from ..codec.bitstream import decode_stream, peel
    from ..codec.errors import BitstreamError

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
    from ..codec.bitstream import describe
    from ..codec.errors import BitstreamError

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


def register(commands, train) -> None:
    p = commands.add_parser("peel", help="drop codebooks from a .spr stream (lower bitrate, no re-encoding)")
    p.add_argument("input", metavar="IN.spr")
    p.add_argument("output", metavar="OUT.spr")
    p.add_argument("--codebooks", "-m", type=int, required=True, metavar="M", help="codebooks to keep (1..the stream's m)")
    p.set_defaults(func=cmd_peel)

    p = commands.add_parser("inspect", help="print the header fields and bitrate of a .spr stream")
    p.add_argument("file", metavar="FILE.spr")
    p.add_argument("--json", action="store_true", help="print the fields as JSON")
    p.set_defaults(func=cmd_inspect)
