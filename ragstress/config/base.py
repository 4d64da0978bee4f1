"""The one base class every configuration model derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Frozen, no unknown keys: a typo in a YAML file is an error, never a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class LocatedValueError(ValueError):
    """A validation problem about a key deeper than the validator that finds it (a model
    validator checking references between stages): ``loc`` is the path from the validated
    model to that key, so the loader can point at its line."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
