"""The base of every tunekit config: frozen, ``extra="forbid"``, errors in the user's words."""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from typing_extensions import Self

from tunekit.errors import ConfigError

# pydantic error types rephrased as "<field> must ..." (the value received is shown before it).
_RULES: dict[str, str] = {
    "greater_than": "{field} must be greater than {gt}",
    "greater_than_equal": "{field} must be at least {ge}",
    "less_than": "{field} must be less than {lt}",
    "less_than_equal": "{field} must be at most {le}",
    "finite_number": "{field} must be a finite number (not inf or nan)",
    "int_type": "{field} must be a whole number",
    "int_parsing": "{field} must be a whole number",
    "int_from_float": "{field} must be a whole number",
    "float_type": "{field} must be a number",
    "float_parsing": "{field} must be a number",
    "bool_type": "{field} must be True or False",
    "bool_parsing": "{field} must be True or False",
    "string_type": "{field} must be a string",
    "list_type": "{field} must be a list",
    "literal_error": "{field} must be one of {expected}",
}


# The largest whole number an option takes: what fits the 64-bit integers torch and numpy compute with.
MAX_INT = 2**63 - 1


def _kinds(annotation: Any) -> set[type]:
    """The scalar types an annotation accepts (``int | None`` -> {int, NoneType}; a Literal's values' types)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in get_args(annotation)}
    return {annotation} if isinstance(annotation, type) else set()


def _literal_words(annotation: Any) -> list[str]:
    """The string values of the Literals in an annotation (``bool | Literal["auto"]`` -> ["'auto'"])."""
    origin = get_origin(annotation)
    if origin is Literal:
        return [repr(a) for a in get_args(annotation) if isinstance(a, str)]
    if origin in (Union, types.UnionType, Annotated):
        return [w for a in get_args(annotation) for w in _literal_words(a)]
    return []


def check_scalar(name: str, value: Any, annotation: Any, default: Any = None) -> None:
    """What pydantic's lax mode lets through and a user does not mean: a boolean for a number (``epochs=True``, YAML
    ``max_steps: yes``), a number or a string for a boolean (``dora=1``, ``trust_remote_code="no"``), a whole number
    too large for the 64-bit integers training computes with. Raises ValueError in the user's words."""
    kinds = _kinds(annotation)
    if isinstance(value, (bytes, bytearray)) and str in kinds and bytes not in kinds:
        raise ValueError(f"{name} must be a string, got bytes; decode it first, e.g. value.decode('utf-8')")
    if isinstance(value, bool):
        if bool not in kinds and kinds & {int, float}:
            what = "a whole number" if float not in kinds else "a number"
            example = default if isinstance(default, (int, float)) and not isinstance(default, bool) else 1
            raise ValueError(
                f"{name} must be {what}, got a boolean (in YAML, yes/no/on/off are booleans too); write a number, "
                f"e.g. {name}={example}"
            )
        return
    if bool in kinds and not kinds & {int, float} and value is not None:
        if str not in kinds or not isinstance(value, str):
            if not isinstance(value, (str, int, float)):
                return  # a list, a dict: pydantic's own message says what is expected
            words = _literal_words(annotation)
            also = f" or {' or '.join(words)}" if words else ", or a string" if str in kinds else ""
            raise ValueError(f"{name} must be True or False{also}")
    if isinstance(value, int) and int in kinds and abs(value) > MAX_INT:
        raise ValueError(f"{name} is too large: at most {MAX_INT} (2**63 - 1)")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def suggest(name: str, options: list[str], aliases: Mapping[str, str] | None = None) -> str:
    """The nearest valid option for a misspelled or foreign (peft / transformers) option name."""
    key = _normalise_name(name)
    target = (aliases or {}).get(key)
    if target is None:
        by_key = {_normalise_name(o): o for o in options}
        target = by_key.get(key)
    if target is None:
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
        target = close[0] if close else None
    if target is not None:
        return f"did you mean {target!r}?"
    return f"valid options are {', '.join(sorted(options))}"


def _call(cls_name: str, data: Mapping[str, Any]) -> str:
    return f"{cls_name}({', '.join(f'{k}={_shown(v)}' for k, v in data.items())})"


def _plain(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v  # "greater than 0", not "0.0"


def _rephrase(field: str, e: Any) -> str:
    rule = _RULES.get(e["type"])
    if rule is not None:
        try:
            return rule.format(field=field, **{k: _plain(v) for k, v in (e.get("ctx") or {}).items()})
        except (KeyError, IndexError):
            pass
    msg = str(e["msg"])
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Input should"):
        return f"{field} should" + msg[len("Input should") :]
    return msg


def format_validation_error(
    cls_name: str,
    fields: list[str],
    err: ValidationError,
    *,
    aliases: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> str:
    """Turn a pydantic ValidationError into one sentence per problem, naming value and fix."""
    lines: list[str] = []
    seen: dict[str, int] = {}  # field -> index in lines, to merge the branches of a union
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # raised by a nested config: already in the user's words
            lines.append(str(cause))
            continue
        loc = e["loc"]
        value = e.get("input")
        if e["type"] == "json_invalid":
            lines.append(f"{cls_name}: invalid JSON ({(e.get('ctx') or {}).get('error', e['msg'])})")
            continue
        if not loc:  # a model-level rule, about several options together
            shown = data if data is not None else value if isinstance(value, Mapping) else {}
            lines.append(f"{_call(cls_name, shown)}: {_rephrase('value', e)}")
            continue
        field = str(loc[0])
        if e["type"] == "extra_forbidden":
            hint = suggest(field, fields, aliases) if fields else f"{cls_name} takes no options"
            lines.append(f"{cls_name}({field}={_shown(value)}): unknown option {field!r}; {hint}")
            continue
        if data is not None and field in data:
            value = data[field]  # the whole value, not the part one branch of a union looked at
        text = _rephrase(field, e)
        if field in seen:
            lines[seen[field]] += f", or {text.removeprefix(field + ' ')}"
            continue
        seen[field] = len(lines)
        lines.append(f"{cls_name}({field}={_shown(value)}): {text}")
    return "\n".join(lines)


def _config_error(cls: type[Config], err: ValidationError, data: Mapping[str, Any] | None = None) -> ConfigError:
    return ConfigError(
        format_validation_error(cls.__name__, list(cls.model_fields), err, aliases=cls._aliases, data=data)
    )


class Config(BaseModel):
    """Frozen, strict pydantic model; invalid input raises :class:`tunekit.ConfigError`.

    Subclasses may set ``_aliases`` (lower-case foreign or common option name -> field name), so
    that e.g. ``LoRA(rank=8)`` suggests ``r`` rather than the nearest spelling.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    _aliases: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _strict_scalars(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if field is None:
                    continue
                try:
                    check_scalar(name, value, field.annotation, field.default)
                except ValueError as e:
                    raise ConfigError(f"{cls.__name__}({name}={_shown(value)}): {e}") from None
        return data

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise _config_error(type(self), err, data) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(
            f"{type(self).__name__}({name}={value!r}): configs are frozen and cannot be changed; "
            f"make a changed copy with .model_copy(update={{{name!r}: {value!r}}})"
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with ``update``, the changed options are validated like the constructor's."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self)(**{**self.model_dump(), **update})

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        """pydantic's ``model_validate``, raising :class:`ConfigError` like the constructor."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as err:
            raise _config_error(cls, err, obj if isinstance(obj, Mapping) else None) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Self:
        """pydantic's ``model_validate_json``, raising :class:`ConfigError` like the constructor."""
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as err:
            raise _config_error(cls, err) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a plain dict (as read from JSON or YAML), with tunekit's error messages."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping of options, got {type(data).__name__}")
        return cls(**data)
