"""``tk.Data``: data whose columns, message keys or roles have other names than tunekit's, and the renaming.

``columns`` maps tunekit's column name to the file's (``{"messages": "dialog", "system": "sys_prompt"}``);
``roles`` maps tunekit's message keys and roles to the file's (``{"role": "speaker", "content": "text",
"user": "customer", "assistant": "agent"}``). LLaMA-Factory's ``dataset_info.json`` names are accepted too: its
``tags`` (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``, ``observation_tag``,
``function_tag``) as ``roles`` keys, and its ``kto_tag`` column as ``label``. The rows are renamed one for one as
they are loaded (:func:`tunekit.data.loading.load_rows`), before anything reads them.

Example:
    >>> import tunekit as tk
    >>> data = tk.Data("chats.jsonl", columns={"messages": "dialog"}, roles={"user": "customer", "assistant": "agent"})
    >>> from tunekit.data.mapping import rename
    >>> row = {"dialog": [{"role": "customer", "content": "Hi"}, {"role": "agent", "content": "Hello!"}]}
    >>> rename([row], data)[0]["messages"][0]
    {'role': 'user', 'content': 'Hi'}
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import Field, field_validator, model_validator

from tunekit._config import Config
from tunekit.data.columns import FORMAT_COLUMNS, parse_json_cell
from tunekit.errors import ConfigError, DatasetError

__all__ = ["COLUMN_KEYS", "ROLE_KEYS", "Data", "rename", "rename_row", "rename_rows"]

# tunekit's column names a mapping may name (and LLaMA-Factory's name for the KTO label).
COLUMN_KEYS: dict[str, str] = {
    **{name: name for cols in FORMAT_COLUMNS.values() for name in sorted(cols)},
    "history": "history",
    "label": "label",
    "kto_tag": "label",
}
# tunekit's message keys and roles a mapping may name, with LLaMA-Factory's tag names: name -> (what, tunekit's name).
ROLE_KEYS: dict[str, tuple[str, str]] = {
    "role": ("key", "role"),
    "role_tag": ("key", "role"),
    "content": ("key", "content"),
    "content_tag": ("key", "content"),
    "user": ("role", "user"),
    "user_tag": ("role", "user"),
    "assistant": ("role", "assistant"),
    "assistant_tag": ("role", "assistant"),
    "system": ("role", "system"),
    "system_tag": ("role", "system"),
    "tool": ("role", "tool"),
    "observation_tag": ("role", "tool"),
    "function_call": ("role", "function_call"),
    "function_tag": ("role", "function_call"),
}
# The columns that hold messages, whose keys and roles ``roles`` renames.
_MESSAGE_COLUMNS = ("messages", "conversations", "prompt", "chosen", "rejected", "completion")


def _check_keys(option: str, given: dict[str, str], known: list[str]) -> dict[str, str]:
    for key, value in given.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"Data({option}={{{key!r}: {value!r}}}): unknown {option[:-1]} {key!r}; {hint}the keys are tunekit's "
                f"names, the values the file's: one of {known}"
            )
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"Data({option}={{{key!r}: {value!r}}}): the file's name must be a non-empty string, "
                f"got {type(value).__name__}"
            )
    return given


class Data(Config):
    """Training or eval data with its own column, key and role names: accepted wherever data is (``fit``,
    ``eval_data``, ``plan``, ``prepare``, a YAML config's ``data:``, ``tunekit validate-data --columns``).

    ``tk.Data(source, columns={tunekit's: file's}, roles={tunekit's: file's})``; ``source`` is what ``fit`` takes
    (a path, a dataset directory, a dataset name such as ``"org/name"``, a list of dicts, a ``datasets.Dataset``, a
    DataFrame). A dataset name or directory is read through ``datasets`` (:mod:`tunekit.data.sources`; offline from
    the local ``datasets`` cache) with ``split`` (default: its only split, else ``train`` for training data),
    ``subset`` (the dataset's configuration) and ``revision`` (a branch, tag or commit on the hub). ``streaming=True``
    reads the rows as training consumes them (:mod:`tunekit.data.streaming`: data larger than memory, every objective
    but ORPO and SimPO, ``Training(max_steps=...)`` required), in the file's order or, with ``shuffle_buffer=N``, drawn
    at random from a buffer of ``N`` rows by ``Training(seed=...)``. ``columns``
    keys: ``messages``, ``conversations``, ``prompt``, ``completion``, ``chosen``, ``rejected``, ``label`` (or
    ``kto_tag``), ``instruction``, ``input``, ``output``, ``history``, ``text``, ``system``, ``tools``. ``roles`` keys:
    ``role`` and ``content`` (the message keys), ``user``, ``assistant``, ``system``, ``tool``, ``function_call``
    (the roles), or LLaMA-Factory's ``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``,
    ``observation_tag``, ``function_tag``.

    Example:
        >>> import tunekit as tk
        >>> tk.Data("qa.csv", columns={"prompt": "question", "completion": "answer"}).columns
        {'prompt': 'question', 'completion': 'answer'}
        >>> tk.Data("HuggingFaceH4/no_robots", split="test").split
        'test'
        >>> tk.Data("huge.jsonl", streaming=True).streaming
        True
        >>> tk.Data("huge.jsonl", streaming=True, shuffle_buffer=10_000).shuffle_buffer
        10000
    """

    source: Any = Field(
        description="The data: a path (.jsonl, .json, .csv, .parquet), a dataset name or directory, rows, a Dataset, "
        "a DataFrame."
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="tunekit's column name -> the file's, e.g. {messages: dialog}."
    )
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="tunekit's message key or role -> the file's, e.g. {role: speaker, user: customer}.",
    )
    split: str | None = Field(
        None, description="A dataset name's or directory's split, e.g. train or test[:10%]; default: train."
    )
    subset: str | None = Field(None, description="A dataset name's subset (its configuration), e.g. main.")
    revision: str | None = Field(None, description="A hub dataset's branch, tag or commit.")
    streaming: bool = Field(
        False,
        description="Read the rows as training consumes them, never all at once (data larger than memory); needs "
        "Training(max_steps=...).",
    )
    shuffle_buffer: int | None = Field(
        None,
        description="A stream's rows drawn at random from a buffer of this many (datasets' buffered shuffle, by "
        "Training(seed=...)); default: the file's order.",
    )

    def __init__(self, source: Any = None, /, **data: Any) -> None:
        if source is not None:
            if "source" in data or "path" in data:
                raise ConfigError("Data(...): the data is given twice (positionally and as source=/path=); keep one")
            data["source"] = source
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _path(cls, data: Any) -> Any:
        """``path:`` (how a YAML config names the file) is ``source``."""
        if isinstance(data, dict) and "path" in data:
            if "source" in data:
                raise ConfigError("Data: give the data as path or as source, not both")
            data = {("source" if k == "path" else k): v for k, v in data.items()}
        if isinstance(data, dict) and "source" not in data:
            given = ", ".join(f"{k}=..." for k in data)
            raise ConfigError(
                f"Data({given}): the data (source) is missing; pass it first, e.g. tk.Data('train.jsonl', "
                "columns={...})"
            )
        if isinstance(data, dict) and data["source"] is None:
            raise ConfigError(
                "Data(source=None): the data is missing; pass it first, e.g. tk.Data('train.jsonl', columns={...})"
            )
        return data

    @field_validator("shuffle_buffer", mode="before")
    @classmethod
    def _buffer(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"Data(shuffle_buffer={v!r:.60}): expected a number of rows (1 or more), or leave it out")
        return v

    @model_validator(mode="after")
    def _shuffled_stream(self) -> Data:
        if self.shuffle_buffer is not None and not self.streaming:
            raise ConfigError(
                f"Data(shuffle_buffer={self.shuffle_buffer}) shuffles a stream: pass streaming=True too (data held in "
                "memory is shuffled whole by the trainer already)"
            )
        return self

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        table = (hasattr(v, "to_dict") and hasattr(v, "columns")) or hasattr(v, "column_names")
        if isinstance(v, str) or table or (isinstance(v, list) and all(isinstance(row, dict) for row in v)):
            return v
        raise ConfigError(
            f"Data(source={v!r:.60}): expected a path (.jsonl, .json, .csv, .parquet), a dataset name (org/name), a "
            f"list of rows (dicts), a datasets.Dataset or a pandas DataFrame, got {type(v).__name__}"
        )

    @field_validator("split", "subset", "revision", mode="before")
    @classmethod
    def _named(cls, v: Any, info: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"Data({info.field_name}={v!r:.60}): expected a non-empty string, or leave it out")
        return v

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ConfigError(f"Data(columns={v!r:.60}): expected a mapping of tunekit's column name to the file's")
        _check_keys("columns", v, list(COLUMN_KEYS))
        targets = [COLUMN_KEYS[k] for k in v]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ConfigError(f"Data(columns=...): the column {twice[0]!r} is mapped twice; keep one of its names")
        return v

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ConfigError(f"Data(roles={v!r:.60}): expected a mapping of tunekit's key or role to the file's")
        _check_keys("roles", v, list(ROLE_KEYS))
        targets = [ROLE_KEYS[k] for k in v]
        twice = sorted({t[1] for t in targets if targets.count(t) > 1})
        if twice:
            raise ConfigError(f"Data(roles=...): {twice[0]!r} is mapped twice; keep one of its names")
        return v


def rename(rows: list[dict[str, Any]], data: Data) -> list[dict[str, Any]]:
    """``rows`` with ``data``'s column, key and role names turned into tunekit's (one row out per row in)."""
    if rows:
        _check_first(rows[0], data)
    if not data.columns and not data.roles:
        return rows
    return [rename_row(row, i, data) for i, row in enumerate(rows, 1)]


def rename_rows(rows: Iterable[dict[str, Any]], data: Data) -> Iterator[dict[str, Any]]:
    """:func:`rename` one row at a time (the Arrow data driver's rows, read a chunk at a time)."""
    for i, row in enumerate(rows, 1):
        if i == 1:
            _check_first(row, data)
        yield rename_row(row, i, data)


def _check_first(first: dict[str, Any], data: Data) -> None:
    """Refuse a mapping that names a column row 1 does not have."""
    missing = [theirs for ours, theirs in data.columns.items() if theirs not in first]
    if missing:
        ours = next(k for k, v in data.columns.items() if v == missing[0])
        raise DatasetError(
            f"row 1: no column {missing[0]!r}, which Data(columns={{{ours!r}: {missing[0]!r}}}) names; row 1 has "
            f"{sorted(map(str, first))}: fix the name in the mapping",
            row=1,
            field=missing[0],
        )


def rename_row(row: dict[str, Any], i: int, data: Data) -> dict[str, Any]:
    """Row ``i`` (1-based) with ``data``'s column, key and role names turned into tunekit's (streamed rows are
    renamed one at a time)."""
    columns = {COLUMN_KEYS[ours]: theirs for ours, theirs in data.columns.items()}
    keys = {ROLE_KEYS[k][1]: v for k, v in data.roles.items() if ROLE_KEYS[k][0] == "key"}
    values = {v: ROLE_KEYS[k][1] for k, v in data.roles.items() if ROLE_KEYS[k][0] == "role"}
    if not columns and not keys and not values:
        return row
    return _rename_row(row, i, columns, keys, values)


def _rename_row(
    row: dict[str, Any], i: int, columns: dict[str, str], keys: dict[str, str], values: dict[str, str]
) -> dict[str, Any]:
    taken = set(columns.values())
    out = {k: v for k, v in row.items() if k not in taken}
    for ours, theirs in columns.items():
        if theirs not in row:
            continue
        if ours in out:
            raise DatasetError(
                f"row {i}: the file has a column {ours!r} and Data(columns=...) maps {theirs!r} to {ours!r} too; "
                "rename one of them in the mapping",
                row=i,
                field=ours,
            )
        out[ours] = row[theirs]
    if keys or values:
        for name in _MESSAGE_COLUMNS:
            if name in out:
                out[name] = _rename_messages(out[name], i, name, keys, values)
    return out


def _rename_messages(value: Any, i: int, name: str, keys: dict[str, str], values: dict[str, str]) -> Any:
    if isinstance(value, str) and value.strip().startswith(("[", "{")):
        value = parse_json_cell(value, i, name)  # a CSV cell holding the messages as JSON
    if isinstance(value, dict):
        return _rename_message(value, keys, values)
    if isinstance(value, list):
        return [_rename_message(m, keys, values) if isinstance(m, dict) else m for m in value]
    return value  # a prompt or answer given as text: no message keys to rename


def _rename_message(m: dict[str, Any], keys: dict[str, str], values: dict[str, str]) -> dict[str, Any]:
    theirs = {v: k for k, v in keys.items()}
    out = {theirs.get(k, k): v for k, v in m.items()}
    role_key = "role" if "role" in out else "from" if "from" in out else None
    if role_key is not None and isinstance(out[role_key], str):
        out[role_key] = values.get(out[role_key], out[role_key])
    return out
