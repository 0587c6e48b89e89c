"""Write the `.spr` test vectors: ``python tests/vectors/make_vectors.py`` (from the repo root).

Each vector is ``<name>.spr`` plus ``<name>.json`` with its bytes in hex, its decoded header fields
and its codes (or z as float16 bit patterns). ``tests/test_bitstream.py`` re-decodes every vector
and re-encodes it from the JSON, so any change of the format shows up as a failing test. Rerun this
script only for a deliberate format change (and bump ``FORMAT_VERSION``). The frame counts follow
section 6 of docs/bitstream.md, so each vector is also a stream a model of its rate would accept.
``v1/`` and ``v2/`` hold the version-1 and version-2 vectors, frozen: this script does not touch them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from spresso.codec.bitstream import Stream, decode_stream, encode_stream, peel  # noqa: E402

MODEL_ID = "5e1f0c0dec0ffee0"  # a made-up bundle hash; streams store its first 4 bytes


def build() -> dict[str, bytes]:
    rng = np.random.default_rng(20240607)
    out: dict[str, bytes] = {}
    # 5 s at 0.096 kbps: the paper's lowest operating point (8 codebooks of 2^12 at 1 Hz)
    out["t100_k4096_m8_5s"] = encode_stream(Stream.discrete(
        rng.integers(0, 4096, (5, 8)), 4096, model_id=MODEL_ID, time_factor=100, sample_count=240000))
    # the same codes made by an RQ quantizer (version 3 names it in the log2K byte's top bits)
    out["t100_k4096_m8_5s_rq"] = encode_stream(Stream.discrete(
        np.random.default_rng(100).integers(0, 4096, (5, 8)), 4096, model_id=MODEL_ID, time_factor=100,
        sample_count=240000, quantizer="rq"))
    # the same stream peeled to 3 codebooks (codebook 4's leading bits become zero padding)
    out["t100_k4096_m3_peeled"] = peel(out["t100_k4096_m8_5s"], 3)
    # 1.32 kbps: 12 x 2^10 at 11.1 Hz, a 10 s file at 44.1 kHz cut into three windows with 0.5 s overlap
    # (starts 0, 4.5, 9 s): 56 + 56 frames, then 12 for the last window's 1 s of signal
    out["t9_k1024_m12_10s_44k"] = encode_stream(Stream.discrete(
        np.random.default_rng(9).integers(0, 1024, (124, 12)), 1024,  # own generator: the vectors after it keep their codes
        model_id=MODEL_ID, time_factor=9, sample_count=441000,
        sample_rate=44100, overlap=50))
    # edge K = 2 (1-bit codes, 21 bits -> 3 bytes with 3 padding bits), a rate not in the table
    codes_k2 = np.array([[0, 0, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0]])  # docs section 10 spells them out
    out["t4_k2_m3_sr37800"] = encode_stream(Stream.discrete(
        codes_k2, 2, model_id=MODEL_ID, time_factor=4, sample_count=10584, sample_rate=37800))
    # edge K = 2^16 with extreme codes
    codes16 = np.array([[0, 65535], [1, 32768], [65534, 12345]])
    out["t20_k65536_m2"] = encode_stream(Stream.discrete(  # 0.5 s: 50 x0 frames -> 3 z frames at 5 Hz
        codes16, 65536, model_id=MODEL_ID, time_factor=20, sample_count=8000, sample_rate=16000))
    # continuous mode: float16 z [C=4, T=5], including signed zero, subnormal and the largest finite value
    z = np.array([[0.0, -0.0, 1.0, -2.5, 65504.0],
                  [6e-8, 0.333, -1e-3, 3.14, -65504.0],
                  [0.5, 0.25, 0.125, 0.0625, 0.03125],
                  [-1.0, 2.0, -3.0, 4.0, -5.0]], dtype=np.float16)
    out["continuous_t100_c4"] = encode_stream(Stream.continuous(
        z, model_id=MODEL_ID, time_factor=100, sample_count=240000, overlap=50))
    return out


def describe_vector(data: bytes) -> dict:
    stream = decode_stream(data)
    info = {"hex": data.hex(), "fields": stream.fields()}
    if stream.codes is not None:
        info["codes"] = stream.codes.tolist()  # [frames][codebooks]
    else:
        info["z_float16_bits"] = stream.z.view(np.uint16).tolist()  # [channels][frames], exact
        info["z"] = stream.z.astype(float).tolist()
    return info


def _to_json(info: dict) -> str:
    """Readable JSON: fields one per line, each row of codes / z on one line."""
    lines = []
    for key, value in info.items():
        if isinstance(value, list):
            rows = ",\n  ".join(json.dumps(row) for row in value)
            lines.append(f' "{key}": [\n  {rows}\n ]')
        else:
            lines.append(f' "{key}": ' + json.dumps(value, indent=1).replace("\n", "\n "))
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    for name, data in build().items():
        (HERE / f"{name}.spr").write_bytes(data)
        (HERE / f"{name}.json").write_text(_to_json(describe_vector(data)))
        print(f"{name}.spr  {len(data)} bytes")


if __name__ == "__main__":
    main()
