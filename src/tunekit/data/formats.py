"""Record formats: detect them from the columns and normalise rows into examples.

Formats: ``text`` (raw text), ``prompt_completion``, ``alpaca`` (instruction, input, output),
``messages`` (OpenAI style role/content) and ``sharegpt`` (conversations with from/value).
Every chat-like format becomes a list of ``{"role", "content"}`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tunekit.errors import DatasetError

__all__ = ["Example", "NormalisedData", "detect_format", "normalise"]

Format = Literal["text", "prompt_completion", "alpaca", "messages", "sharegpt"]

# Column sets that identify a format, checked in order.
_SIGNATURES: list[tuple[Format, tuple[str, ...]]] = [
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
]
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One normalised example: raw ``text`` or chat ``messages``; ``row`` is 1-based."""

    row: int
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None


@dataclass
class NormalisedData:
    format: Format
    examples: list[Example]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)


def detect_format(rows: list[dict[str, Any]]) -> Format:
    """The format whose columns the first row has (filled columns first, then any column)."""
    if not rows:
        raise DatasetError("the dataset is empty: it has no rows to train on")
    if not isinstance(rows[0], dict):
        raise DatasetError(f"row 1: expected an object with named fields, got {type(rows[0]).__name__}", row=1)
    keys = set(rows[0])
    # Tables (CSV, parquet, DataFrame, Dataset) give every row every column, empty ones as None:
    # a text row in a table that also has prompt/completion columns is still a text row.
    filled = {k for k, v in rows[0].items() if v is not None}
    for candidates in (filled, keys):
        for fmt, cols in _SIGNATURES:
            if all(c in candidates for c in cols):
                return fmt
    raise DatasetError(
        f"row 1: cannot tell the data format from its fields {sorted(keys)}; expected one of: "
        "'text' | 'prompt' + 'completion' | 'instruction' + 'output' (+ 'input') | 'messages' | 'conversations'",
        row=1,
    )


def _need_str(row: dict[str, Any], i: int, name: str, *, allow_empty: bool = False) -> str:
    if name not in row or row[name] is None:
        raise DatasetError(f"row {i}: missing field {name!r}", row=i, field=name)
    value = row[name]
    if not isinstance(value, str):
        raise DatasetError(
            f"row {i}, field {name!r}: expected a string, got {type(value).__name__} ({value!r:.60})", row=i, field=name
        )
    if not allow_empty and not value.strip():
        raise DatasetError(f"row {i}, field {name!r}: empty string; every example needs text here", row=i, field=name)
    return value


def _check_messages(msgs: Any, i: int, name: str, *, role_key: str, content_key: str) -> tuple[dict[str, str], ...]:
    if not isinstance(msgs, list) or not msgs:
        raise DatasetError(f"row {i}, field {name!r}: expected a non-empty list of messages", row=i, field=name)
    out = []
    for j, m in enumerate(msgs):
        where = f"row {i}, field {name!r}, message {j + 1}"
        rk, ck = role_key, content_key
        if isinstance(m, dict) and rk not in m and "role" in m and "content" in m:
            rk, ck = "role", "content"  # many ShareGPT-style datasets use OpenAI keys in "conversations"
        if not isinstance(m, dict) or rk not in m or ck not in m:
            raise DatasetError(f"{where}: expected an object with {rk!r} and {ck!r}", row=i, field=name)
        raw_role = m[rk]
        # ShareGPT names roles differently; a non-string role (a list, a dict) is simply unknown.
        role = _SHAREGPT_ROLES.get(raw_role) if rk == "from" and isinstance(raw_role, str) else raw_role
        if not isinstance(role, str) or role not in ROLES:
            known = sorted(_SHAREGPT_ROLES) if rk == "from" else list(ROLES)
            raise DatasetError(f"{where}: unknown role {raw_role!r}; expected one of {known}", row=i, field=name)
        content = m[ck]
        if not isinstance(content, str):
            raise DatasetError(f"{where}: {ck!r} must be a string, got {type(content).__name__}", row=i, field=name)
        if role == "assistant" and not content.strip():
            raise DatasetError(f"{where}: empty assistant message; nothing to learn from", row=i, field=name)
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out]
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        raise DatasetError(f"row {i}, field {name!r}: a system message may only come first", row=i, field=name)
    for k, role in enumerate(body):
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            raise DatasetError(
                f"row {i}, field {name!r}: roles out of order at message {k + 1 + (len(roles) - len(body))} "
                f"(got {role!r}, expected {expected!r}); turns must alternate user, assistant, ...",
                row=i,
                field=name,
            )
    if not body or body[-1] != "assistant":
        raise DatasetError(
            f"row {i}, field {name!r}: the conversation must end with an assistant message (the text to learn)",
            row=i,
            field=name,
        )
    return tuple(out)


def _normalise_row(fmt: Format, row: dict[str, Any], i: int) -> Example:
    if fmt == "text":
        return Example(row=i, text=_need_str(row, i, "text"))
    if fmt == "prompt_completion":
        prompt = _need_str(row, i, "prompt")
        completion = _need_str(row, i, "completion")
        msgs: tuple[dict[str, str], ...] = (
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        )
        if isinstance(row.get("system"), str) and row["system"].strip():
            msgs = ({"role": "system", "content": row["system"]}, *msgs)
        return Example(row=i, messages=msgs)
    if fmt == "alpaca":
        instruction = _need_str(row, i, "instruction")
        output = _need_str(row, i, "output")
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise DatasetError(
                f"row {i}, field 'input': expected a string, got {type(extra).__name__}", row=i, field="input"
            )
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return Example(row=i, messages=({"role": "user", "content": user}, {"role": "assistant", "content": output}))
    if fmt == "messages":
        msgs = _check_messages(row.get("messages"), i, "messages", role_key="role", content_key="content")
        return Example(row=i, messages=msgs)
    msgs = _check_messages(row.get("conversations"), i, "conversations", role_key="from", content_key="value")
    return Example(row=i, messages=msgs)


def normalise(rows: list[dict[str, Any]], fmt: Format | None = None, *, on_bad_rows: str = "error") -> NormalisedData:
    """Validate every row and turn it into an :class:`Example`.

    With ``on_bad_rows="skip"`` malformed rows are dropped and listed in ``skipped``; otherwise the
    first one raises :class:`DatasetError` naming its row and field.
    """
    fmt = fmt or detect_format(rows)
    examples, skipped = [], []
    for i, row in enumerate(rows, 1):
        try:
            if not isinstance(row, dict):
                raise DatasetError(f"row {i}: expected an object with named fields, got {type(row).__name__}", row=i)
            examples.append(_normalise_row(fmt, row, i))
        except DatasetError as e:
            if on_bad_rows != "skip":
                raise
            skipped.append((i, str(e)))
    if not examples:
        raise DatasetError(f"no valid rows: all {len(rows)} rows were malformed (first: {skipped[0][1]})")
    return NormalisedData(fmt, examples, skipped)
