"""The base of every config section: typed, validated, unknown keys refused."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Unknown keys are an error (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
