"""QINCo2 settings: the offline neural quantizer of z."""
from __future__ import annotations

from typing import Literal

from .base import Section


class QINCo2Config(Section):
    preset: Literal["S", "M", "L"] = "S"
    K: int = 1024
    M: int = 20
    checkpoint_dir: str = "qinco2"
