"""Opus through FFmpeg's libopus (PyAV): the classical codec a user would otherwise pick.

The stream is a complete Ogg Opus file (headers included), so its size is the actual bitrate a
user pays. libopus runs at 48, 24, 16, 12 or 8 kHz; below ~8 kbps it switches to SILK
narrowband internally whatever the input rate. FFmpeg's Ogg demuxer applies the pre-skip, so
the decoded audio is aligned with the input (checked in the tests).
"""
from __future__ import annotations

import io

import numpy as np

from spresso.core.errors import SpressoError
from spresso.eval.adapter import CodecAdapter, CodecInfo

OPUS_RATES = (48000, 24000, 16000, 12000, 8000)
MIN_KBPS, MAX_KBPS = 0.5, 512.0  # libopus's accepted range (ffmpeg clamps to it)


class OpusAdapter(CodecAdapter):
    def __init__(self, kbps: float = 6.0, sample_rate: int = 48000):
        if sample_rate not in OPUS_RATES:
            raise SpressoError(f"Opus runs at {', '.join(map(str, OPUS_RATES))} Hz, not {sample_rate}")
        if not MIN_KBPS <= kbps <= MAX_KBPS:
            raise SpressoError(f"Opus bitrate must be within {MIN_KBPS}-{MAX_KBPS} kbps, got {kbps}")
        self.kbps = float(kbps)
        variant = f"{kbps:g} kbps" + ("" if sample_rate == 48000 else f" @ {sample_rate // 1000} kHz")
        self.info = CodecInfo("Opus", variant, sample_rate, frame_rate_hz=50.0, nominal_bitrate_bps=self.kbps * 1000)

    def available(self) -> tuple[bool, str]:
        try:
            import av  # lazy: PyAV loads FFmpeg; only the Opus baseline needs it
        except ImportError as err:
            return False, f"PyAV is not installed ({err})"
        if "libopus" not in av.codecs_available:
            return False, "FFmpeg in PyAV was built without libopus"
        return True, ""

    def encode(self, wave: np.ndarray) -> bytes:
        import av  # lazy: PyAV loads FFmpeg; only the Opus baseline needs it

        x = np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)[None, :]
        buf = io.BytesIO()
        with av.open(buf, "w", format="ogg") as container:
            stream = container.add_stream("libopus", rate=self.info.sample_rate)
            stream.bit_rate = int(self.kbps * 1000)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
            frame.sample_rate = self.info.sample_rate
            frame.pts = 0
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):  # flush the encoder's look-ahead
                container.mux(packet)
        return buf.getvalue()

    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        import av  # lazy: PyAV loads FFmpeg; only the Opus baseline needs it

        try:
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.audio[0]
                # Opus always decodes at 48 kHz: resample to the adapter's rate inside FFmpeg.
                resampler = av.AudioResampler(format="flt", layout="mono", rate=self.info.sample_rate)
                parts = [r.to_ndarray().reshape(-1) for f in container.decode(stream) for r in resampler.resample(f)]
                parts += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
        except av.FFmpegError as err:
            raise SpressoError(f"cannot decode Opus stream: {err}") from None
        out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        out = out[:num_samples] if out.size >= num_samples else np.pad(out, (0, num_samples - out.size))
        return out.astype(np.float32)
