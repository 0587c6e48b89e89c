"""Evaluation settings: metrics, embedding backend and the evaluation set."""
from __future__ import annotations

from .base import Section


class EvalConfig(Section):
    embedding: str = "aisfx"
    num_clips: int = 500
    seed: int = 0
