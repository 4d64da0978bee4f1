"""The one base class every configuration model derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Frozen, no unknown keys: a typo in a YAML file is an error, never a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
