"""The base of every tunekit config: frozen, ``extra="forbid"``, errors in the user's words."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tunekit.errors import ConfigError


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"valid options are {', '.join(sorted(options))}"


def format_validation_error(cls_name: str, fields: list[str], err: ValidationError) -> str:
    """Turn a pydantic ValidationError into one sentence per problem, naming value and fix."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "value"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"{cls_name}({loc}=...): unknown option {loc!r}; {_suggest(str(loc), fields)}")
            continue
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{cls_name}({loc}={value!r}): {msg}")
    return "\n".join(lines)


class Config(BaseModel):
    """Frozen, strict pydantic model; invalid input raises :class:`tunekit.ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(
                format_validation_error(type(self).__name__, list(type(self).model_fields), err)
            ) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build from a plain dict (as read from JSON or YAML), with tunekit's error messages."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping of options, got {type(data).__name__}")
        return cls(**data)
