"""Paths that may be local folders or fsspec URLs."""
from __future__ import annotations

from pathlib import Path


def absolute(path: str | Path) -> str:
    """An absolute local path (Ray needs them: workers do not share the driver's cwd); URLs unchanged."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())
