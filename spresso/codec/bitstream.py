"""The `.spr` bitstream: a compact header, bit-packed codes (or float16 z), and a CRC-32.

Layout (format versions 1 to 3 share it; ``docs/bitstream.md`` is the normative description)::

    "SPR" | version u8 | model id prefix (4 bytes) | mode<<4 | rate index (u8)
    discrete:   quantizer<<5 | log2K (u8) | m varint            continuous: C varint
    n_frames varint | sample_count varint | sample_rate code varint | overlap varint
    payload | CRC-32 of everything before it (4 bytes, big-endian)

Every integer that can be large is an unsigned LEB128 varint (1 byte below 128, 3 bytes for
240000), so a 5 s clip at 0.096 kbps (60 bytes of codes) carries 21 bytes of header + checksum.
The payload length follows from the header, so a decoder detects truncation and trailing bytes
before it looks at the checksum. Encoding is canonical (shortest varints, table sample rates,
zero padding bits), so decode -> encode gives the same bytes; the decoder rejects anything else.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from spresso.codec import bitpack
from spresso.codec.errors import BitstreamError
from spresso.core import rates
from spresso.core.errors import SpressoError
from spresso.core.outputs import write_file

MAGIC = b"SPR"
FORMAT_VERSION = 3  # what this build writes
# What it reads. The layout is the same; they differ in the frame count (docs/bitstream.md, section 6):
# version 1 stores every frame of every window, versions 2 and 3 drop the last window's frames past the
# signal. Version 3 names the quantizer in the top 3 bits of the log2K byte (always 0, QINCo2, before it).
READ_VERSIONS = (1, 2, 3)
QUANTIZER_VERSION = 3  # the first version whose streams may name a quantizer other than QINCo2
# Quantizer codes (the log2K byte's top 3 bits): which of a bundle's quantizer kinds made the codes.
QUANTIZERS: tuple[str, ...] = ("qinco2", "rq")
QUANTIZER_SHIFT, LOG2K_MASK = 5, 0x1F
MODEL_ID_BYTES = 4
CRC_BYTES = 4
MODE_DISCRETE, MODE_CONTINUOUS = 0, 1
MODE_NAMES = {MODE_DISCRETE: "discrete", MODE_CONTINUOUS: "continuous"}
FLOAT16_BITS = 16
MAX_VARINT = (1 << 32) - 1  # every varint field fits in 32 bits: at most 5 bytes
# Sample-rate codes below 16 index this table (one byte for the usual rates); codes >= 16 are the rate in Hz.
# Appending a rate here needs a format version bump: an old decoder would refuse the new code.
SAMPLE_RATES: tuple[int, ...] = (48000, 44100, 32000, 24000, 22050, 16000, 11025, 8000, 96000, 88200, 192000, 176400, 12000)
_RATE_TABLE_SIZE = 16
_FIXED = len(MAGIC) + 1 + MODEL_ID_BYTES + 1  # magic, version, model id, mode/rate byte


# ---------------------------------------------------------------- model ids

def model_id_prefix(model_id) -> bytes:
    """The 4-byte prefix stored in a stream, from a bundle's content hash (bytes, or a hex string)."""
    if isinstance(model_id, str):
        try:
            raw = bytes.fromhex(model_id[: 2 * MODEL_ID_BYTES])
        except ValueError:
            raise BitstreamError(f"model id must be a hex string, got {model_id!r}") from None
    elif isinstance(model_id, (bytes, bytearray, memoryview)):
        raw = bytes(model_id[:MODEL_ID_BYTES])
    else:
        raise BitstreamError(f"model id must be bytes or a hex string, got {type(model_id).__name__}")
    if len(raw) != MODEL_ID_BYTES:
        raise BitstreamError(f"model id needs at least {MODEL_ID_BYTES} bytes ({2 * MODEL_ID_BYTES} hex digits), got {model_id!r}")
    return raw


# ---------------------------------------------------------------- varints

def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit = more bytes follow."""
    if not 0 <= value <= MAX_VARINT:
        raise BitstreamError(f"value {value} does not fit a header field (0..{MAX_VARINT})")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int, name: str) -> tuple[int, int]:
    """Read one canonical varint at ``pos``; returns (value, next position)."""
    value = shift = 0
    for i in range(5):
        if pos + i >= len(data):
            raise BitstreamError(f"truncated stream: header ends inside the {name} field")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if i and byte == 0:
                raise BitstreamError(f"corrupt header: over-long encoding of the {name} field")
            if value > MAX_VARINT:
                break
            return value, pos + i + 1
    raise BitstreamError(f"corrupt header: the {name} field is too large")


def _sample_rate_code(rate: int) -> int:
    return SAMPLE_RATES.index(rate) if rate in SAMPLE_RATES else rate


# ---------------------------------------------------------------- the stream

@dataclass(frozen=True, eq=False)
class Stream:
    """One decoded `.spr` stream. Exactly one of ``codes`` (discrete) and ``z`` (continuous) is set.

    codes: [n_frames, m] integers in [0, 2**log2k), codebook j in column j (the quantizer's step order).
    quantizer: which quantizer made the codes, one of :data:`QUANTIZERS` (discrete streams; None for continuous).
    z: [C, n_frames] float16 (the continuous operating points).
    time_factor: the latent encoder's pooling t (one of ``rates.TIME_FACTORS``).
    sample_count / sample_rate: the original signal's length and rate (restored on decode).
    overlap: crossfade between consecutive 5 s windows, in x0 frames (10 ms each), so the decoder
        joins windows the way the encoder cut them.
    """

    model_id: bytes
    time_factor: int
    sample_count: int
    sample_rate: int
    overlap: int = 0
    codes: Optional[np.ndarray] = None
    log2k: Optional[int] = None
    z: Optional[np.ndarray] = None
    version: int = field(default=FORMAT_VERSION)
    quantizer: Optional[str] = None  # discrete: defaults to "qinco2"

    # -- constructors
    @classmethod
    def discrete(cls, codes, K: int, *, model_id, time_factor: int, sample_count: int,
                 sample_rate: int = 48000, overlap: int = 0, version: int = FORMAT_VERSION,
                 quantizer: str = "qinco2") -> "Stream":
        if not isinstance(K, (int, np.integer)) or K < 2 or K & (K - 1):
            raise BitstreamError(f"codebook size K must be a power of two 2..65536, got {K!r}")
        return cls(model_id=model_id_prefix(model_id), time_factor=time_factor, sample_count=sample_count,
                   sample_rate=sample_rate, overlap=overlap, codes=codes, log2k=int(K).bit_length() - 1, version=version,
                   quantizer=quantizer)

    @classmethod
    def continuous(cls, z, *, model_id, time_factor: int, sample_count: int,
                   sample_rate: int = 48000, overlap: int = 0, version: int = FORMAT_VERSION) -> "Stream":
        return cls(model_id=model_id_prefix(model_id), time_factor=time_factor, sample_count=sample_count,
                   sample_rate=sample_rate, overlap=overlap, z=z, version=version)

    def __post_init__(self):
        # Validation here means a Stream that exists can always be encoded, and every decoded one is valid.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.version not in READ_VERSIONS:
            raise BitstreamError(f"unknown .spr format version {self.version} (this build reads versions {_versions()})")
        if not isinstance(self.model_id, bytes) or len(self.model_id) != MODEL_ID_BYTES:
            set_("model_id", model_id_prefix(self.model_id))
        if self.time_factor not in rates.TIME_FACTORS:
            raise BitstreamError(f"time factor {self.time_factor} is not an operating point (one of {rates.TIME_FACTORS})")
        for name, lo in (("sample_count", 1), ("sample_rate", 1), ("overlap", 0)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or not lo <= int(v) <= MAX_VARINT:
                raise BitstreamError(f"{name} must be an integer {lo}..{MAX_VARINT}, got {v!r}")
            set_(name, int(v))
        if (self.codes is None) == (self.z is None):
            raise BitstreamError("a stream holds either discrete codes or continuous z, exactly one")
        if self.codes is not None:
            set_("quantizer", "qinco2" if self.quantizer is None else self.quantizer)
            if self.quantizer not in QUANTIZERS:
                raise BitstreamError(f"unknown quantizer {self.quantizer!r} (one of {', '.join(QUANTIZERS)})")
            if self.quantizer != "qinco2" and self.version < QUANTIZER_VERSION:
                raise BitstreamError(f"{self.quantizer} codes need format version {QUANTIZER_VERSION} or later (got {self.version})")
            if self.log2k is None or not bitpack.MIN_BITS <= self.log2k <= bitpack.MAX_BITS:
                raise BitstreamError(f"log2 K must be 1..16, got {self.log2k!r}")
            c = np.asarray(self.codes)
            if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
                raise BitstreamError(f"codes must be [frames >= 1, codebooks >= 1], got shape {c.shape}")
            if not np.issubdtype(c.dtype, np.integer):
                raise BitstreamError(f"codes must be integers, got dtype {c.dtype}")
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi >= 1 << self.log2k:
                bad = lo if lo < 0 else hi
                raise BitstreamError(f"code {bad} out of range for K = {1 << self.log2k} (must be 0..{(1 << self.log2k) - 1})")
            if c.shape[0] > MAX_VARINT or c.shape[1] > MAX_VARINT:
                raise BitstreamError(f"too many frames or codebooks: {c.shape}")
            c = c.astype(np.int64)
            c.setflags(write=False)
            set_("codes", c)
        else:
            if self.log2k is not None or self.quantizer is not None:
                raise BitstreamError("a continuous stream has no codebook size or quantizer")
            z = np.asarray(self.z)
            if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
                raise BitstreamError(f"z must be [channels >= 1, frames >= 1], got shape {z.shape}")
            if not np.issubdtype(z.dtype, np.floating):
                raise BitstreamError(f"z must be floating point, got dtype {z.dtype}")
            with np.errstate(over="ignore"):  # overflow to inf is reported just below
                z = z.astype(np.float16)
            if not np.isfinite(z).all():
                raise BitstreamError("z holds values that are not finite in float16 (NaN, inf or beyond +-65504)")
            z.setflags(write=False)
            set_("z", z)

    # -- derived fields
    @property
    def mode(self) -> str:
        return "discrete" if self.codes is not None else "continuous"

    @property
    def rate_index(self) -> int:
        return rates.TIME_FACTORS.index(self.time_factor)

    @property
    def frame_rate(self) -> float:
        return rates.frame_rate(self.time_factor)

    @property
    def n_frames(self) -> int:
        return self.codes.shape[0] if self.codes is not None else self.z.shape[1]

    @property
    def m(self) -> Optional[int]:
        return self.codes.shape[1] if self.codes is not None else None

    @property
    def K(self) -> Optional[int]:
        return 1 << self.log2k if self.log2k is not None else None

    @property
    def channels(self) -> Optional[int]:
        return self.z.shape[0] if self.z is not None else None

    @property
    def duration_s(self) -> float:
        return self.sample_count / self.sample_rate

    @property
    def bitrate_bps(self) -> float:
        """Nominal payload bitrate: m x log2 K x frame rate (discrete), C x 16 x frame rate (continuous)."""
        if self.codes is not None:
            return rates.bitrate_bps(self.m, self.K, self.time_factor)
        return rates.continuous_bitrate_bps(self.channels, self.time_factor, FLOAT16_BITS)

    def payload_nbytes(self) -> int:
        if self.codes is not None:
            return bitpack.packed_nbytes(self.n_frames * self.m, self.log2k)
        return self.channels * self.n_frames * 2

    def peel(self, m: int) -> "Stream":
        """The same stream keeping only the first ``m`` codebooks."""
        if self.codes is None:
            raise BitstreamError("only a discrete stream can be peeled (this one holds continuous z)")
        if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or not 1 <= m <= self.m:
            raise BitstreamError(f"cannot keep {m} codebooks: the stream has {self.m} (choose 1..{self.m})")
        return Stream(model_id=self.model_id, time_factor=self.time_factor, sample_count=self.sample_count,
                      sample_rate=self.sample_rate, overlap=self.overlap, codes=self.codes[:, :m], log2k=self.log2k,
                      version=self.version, quantizer=self.quantizer)  # the version's frame rule stays: same bytes as peel()

    def fields(self) -> dict:
        """Header fields as plain Python values (for `spresso inspect` and test vectors)."""
        out = {
            "version": self.version, "model_id": self.model_id.hex(), "mode": self.mode,
            "time_factor": self.time_factor, "rate_index": self.rate_index, "frame_rate_hz": self.frame_rate,
            "n_frames": self.n_frames, "sample_count": self.sample_count, "sample_rate": self.sample_rate,
            "duration_s": self.duration_s, "overlap": self.overlap,
        }
        if self.codes is not None:
            out.update(log2k=self.log2k, K=self.K, m=self.m, quantizer=self.quantizer)
        else:
            out.update(channels=self.channels)
        out["bitrate_bps"] = self.bitrate_bps
        return out


# ---------------------------------------------------------------- encode

def _header(stream: Stream) -> bytes:
    mode = MODE_DISCRETE if stream.codes is not None else MODE_CONTINUOUS
    head = bytearray(MAGIC)
    head.append(stream.version)
    head += stream.model_id
    head.append(mode << 4 | stream.rate_index)
    if mode == MODE_DISCRETE:
        head.append(QUANTIZERS.index(stream.quantizer) << QUANTIZER_SHIFT | stream.log2k)
        head += encode_varint(stream.m)
    else:
        head += encode_varint(stream.channels)
    for value in (stream.n_frames, stream.sample_count, _sample_rate_code(stream.sample_rate), stream.overlap):
        head += encode_varint(value)
    return bytes(head)


def _seal(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(CRC_BYTES, "big")


def encode_stream(stream: Stream) -> bytes:
    """Serialise a :class:`Stream` to `.spr` bytes (canonical: one byte string per stream)."""
    if stream.codes is not None:
        payload = bitpack.pack_codes(stream.codes, stream.log2k)
    else:
        payload = stream.z.astype("<f2").tobytes(order="C")  # [C, T] row-major, little-endian binary16
    return _seal(_header(stream) + payload)


def header_nbytes(stream: Stream) -> int:
    """Bytes of header + checksum (everything but the payload)."""
    return len(_header(stream)) + CRC_BYTES


# ---------------------------------------------------------------- decode

@dataclass(frozen=True)
class _Parsed:
    version: int
    model_id: bytes
    mode: int
    time_factor: int
    log2k: Optional[int]
    quantizer: Optional[str]
    m: Optional[int]
    channels: Optional[int]
    n_frames: int
    sample_count: int
    sample_rate: int
    overlap: int
    payload_start: int
    payload_end: int


def _versions() -> str:
    return ", ".join(str(v) for v in READ_VERSIONS[:-1]) + f" and {READ_VERSIONS[-1]}"


def _parse(data) -> _Parsed:
    """Check everything but the payload's meaning: magic, version, fields, length, checksum, padding."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"a stream is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) + 1:
        if MAGIC.startswith(data[: len(MAGIC)]) and data:
            raise BitstreamError(f"truncated stream: only {len(data)} bytes")
        raise BitstreamError("not a .spr stream (wrong magic)" if data else "empty stream (0 bytes)")
    if data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not a .spr stream (wrong magic)")
    version = data[len(MAGIC)]
    if version not in READ_VERSIONS:
        raise BitstreamError(f"unknown .spr format version {version} (this build reads versions {_versions()})")
    if len(data) < _FIXED:
        raise BitstreamError(f"truncated stream: only {len(data)} bytes")
    model_id = data[len(MAGIC) + 1: len(MAGIC) + 1 + MODEL_ID_BYTES]
    mode, rate_index = data[_FIXED - 1] >> 4, data[_FIXED - 1] & 0x0F
    if mode not in MODE_NAMES:
        raise BitstreamError(f"corrupt header: unknown mode {mode}")
    if rate_index >= len(rates.TIME_FACTORS):
        raise BitstreamError(f"corrupt header: unknown frame-rate index {rate_index}")
    pos = _FIXED
    log2k = m = channels = quantizer = None
    if mode == MODE_DISCRETE:
        if pos >= len(data):
            raise BitstreamError("truncated stream: header ends inside the log2 K field")
        log2k, pos = data[pos], pos + 1
        if version >= QUANTIZER_VERSION:  # before version 3 the top bits are part of log2 K (and must be 0)
            code, log2k = log2k >> QUANTIZER_SHIFT, log2k & LOG2K_MASK
            if code >= len(QUANTIZERS):
                raise BitstreamError(f"corrupt header: unknown quantizer code {code}")
            quantizer = QUANTIZERS[code]
        else:
            quantizer = "qinco2"
        if not bitpack.MIN_BITS <= log2k <= bitpack.MAX_BITS:
            raise BitstreamError(f"corrupt header: log2 K = {log2k} (must be 1..16)")
        m, pos = decode_varint(data, pos, "codebook count")
        if m < 1:
            raise BitstreamError("corrupt header: 0 codebooks")
    else:
        channels, pos = decode_varint(data, pos, "channel count")
        if channels < 1:
            raise BitstreamError("corrupt header: 0 channels")
    n_frames, pos = decode_varint(data, pos, "frame count")
    sample_count, pos = decode_varint(data, pos, "sample count")
    rate_code, pos = decode_varint(data, pos, "sample rate")
    overlap, pos = decode_varint(data, pos, "overlap")
    if n_frames < 1:
        raise BitstreamError("corrupt header: 0 frames")
    if sample_count < 1:
        raise BitstreamError("corrupt header: 0 samples")
    if rate_code < _RATE_TABLE_SIZE:
        if rate_code >= len(SAMPLE_RATES):
            raise BitstreamError(f"corrupt header: unknown sample-rate code {rate_code}")
        sample_rate = SAMPLE_RATES[rate_code]
    elif rate_code in SAMPLE_RATES:
        raise BitstreamError(f"corrupt header: non-canonical sample rate {rate_code} (must use its table code)")
    else:
        sample_rate = rate_code
    if mode == MODE_DISCRETE:
        payload_bits = n_frames * m * log2k
        payload_len = (payload_bits + 7) // 8
    else:
        payload_len = channels * n_frames * 2
    expected = pos + payload_len + CRC_BYTES
    if len(data) < expected:
        raise BitstreamError(f"truncated stream (or damaged header): the header announces {expected} bytes, got {len(data)}")
    if len(data) > expected:
        if zlib.crc32(data[: expected - CRC_BYTES]) == int.from_bytes(data[expected - CRC_BYTES: expected], "big"):
            raise BitstreamError(f"{len(data) - expected} trailing bytes after the end of the stream ({expected} bytes)")
        raise BitstreamError(f"corrupt stream: length {len(data)} does not match the header ({expected} bytes) and the checksum fails")
    stored = int.from_bytes(data[-CRC_BYTES:], "big")
    actual = zlib.crc32(data[:-CRC_BYTES])
    if stored != actual:
        raise BitstreamError(f"checksum mismatch (stored {stored:08x}, computed {actual:08x}): the stream is damaged")
    if mode == MODE_DISCRETE and not bitpack.tail_bits_zero(data[pos:-CRC_BYTES], payload_bits):
        raise BitstreamError("corrupt stream: padding bits after the last code are not zero")
    return _Parsed(version, model_id, mode, rates.TIME_FACTORS[rate_index], log2k, quantizer, m, channels, n_frames,
                   sample_count, sample_rate, overlap, pos, len(data) - CRC_BYTES)


def _check_model(parsed: _Parsed, expected_model_id) -> None:
    if expected_model_id is None:
        return
    want = model_id_prefix(expected_model_id)
    if parsed.model_id != want:
        made = f" with {parsed.quantizer} codes" if parsed.quantizer else ""
        raise BitstreamError(f"stream for another model: it was made by model {parsed.model_id.hex()}{made}, this model is {want.hex()}")


def decode_stream(data, expected_model_id=None) -> Stream:
    """Parse and verify `.spr` bytes. Raises :class:`BitstreamError` (and nothing else) on any bad input."""
    p = _parse(data)
    _check_model(p, expected_model_id)
    payload = bytes(data[p.payload_start: p.payload_end])
    common = dict(model_id=p.model_id, time_factor=p.time_factor, sample_count=p.sample_count,
                  sample_rate=p.sample_rate, overlap=p.overlap, version=p.version)
    if p.mode == MODE_DISCRETE:
        codes = bitpack.unpack_codes(payload, p.n_frames, p.m, p.log2k)
        return Stream(codes=codes, log2k=p.log2k, quantizer=p.quantizer, **common)
    z = np.frombuffer(payload, dtype="<f2").reshape(p.channels, p.n_frames)
    return Stream(z=z.astype(np.float16), **common)


def peel(data, m: int, expected_model_id=None) -> bytes:
    """Keep the first ``m`` codebooks of a discrete stream: a byte slice of the payload, no re-encoding.

    The step-major payload's first ceil(T*m*log2K / 8) bytes are exactly the first m codebooks; the
    bits of codebook m+1 that share the last byte are zeroed (canonical padding), the header's m is
    rewritten and the checksum recomputed. ``m`` equal to the stream's m returns the input unchanged.
    """
    p = _parse(data)
    _check_model(p, expected_model_id)
    if p.mode != MODE_DISCRETE:
        raise BitstreamError("only a discrete stream can be peeled (this one holds continuous z)")
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or not 1 <= m <= p.m:
        raise BitstreamError(f"cannot keep {m} codebooks: the stream has {p.m} (choose 1..{p.m})")
    data = bytes(data)
    if m == p.m:
        return data
    head = bytearray(data[:_FIXED + 1])  # through the quantizer / log2 K byte
    head += encode_varint(int(m))
    for value in (p.n_frames, p.sample_count, _sample_rate_code(p.sample_rate), p.overlap):
        head += encode_varint(value)
    payload = bitpack.truncate_codes(data[p.payload_start: p.payload_end], p.n_frames, int(m), p.log2k)
    return _seal(bytes(head) + payload)


def describe(data) -> dict:
    """Header fields of a verified stream plus its sizes (what `spresso inspect` prints)."""
    stream = decode_stream(data)
    out = stream.fields()
    out["file_bytes"] = len(data)
    out["payload_bytes"] = stream.payload_nbytes()
    out["overhead_bytes"] = len(data) - out["payload_bytes"]
    out["file_bitrate_bps"] = len(data) * 8 / stream.duration_s
    return out


# -- files ---------------------------------------------------------------------------------------
def read_stream_file(path: str | Path) -> bytes:
    """A `.spr` file's bytes; a one-line error naming the path otherwise."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SpressoError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpressoError(f"{path}: is a directory, expected a .spr file") from None
    except OSError as err:
        raise SpressoError(f"{path}: cannot read ({err.strerror or err})") from None


def write_stream_file(path: str | Path, data: bytes) -> None:
    """Write `.spr` bytes whole (a temporary name renamed into place); a one-line error naming the path otherwise."""
    write_file(path, data)
