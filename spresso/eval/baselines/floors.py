"""Floors a codec must clear to carry any information about its input.

- :class:`SilenceAdapter` (``silence:``): decodes every stream to silence, at 0 bytes. A codec whose
  KAD or mel distance is no better than silence's has not reproduced the input's content.
- The unrelated-clip floor is not an adapter (it needs the other clips of the set): the harness
  scores each clip against the next clip of the set (``eval.floors``).
"""
from __future__ import annotations

import numpy as np

from spresso.eval.adapter import CodecAdapter, CodecInfo


class SilenceAdapter(CodecAdapter):
    info = CodecInfo("Silence", "floor", 48000, nominal_bitrate_bps=None)

    def encode(self, wave: np.ndarray) -> bytes:
        return b""

    def decode(self, data: bytes, num_samples: int) -> np.ndarray:
        return np.zeros(num_samples, np.float32)
