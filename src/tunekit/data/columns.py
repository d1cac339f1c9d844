"""Columns and cells of a row: which columns identify each format, which each format reads, which are ignored on
purpose (metadata), which are refused and why (media, a column with a meaning the format cannot use, a misspelling,
another format's), which are unused (any other column: listed once, in a warning), and the cells that hold JSON.
:mod:`tunekit.data.formats` turns rows into examples under this policy.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Literal

from tunekit.errors import DatasetError

__all__ = [
    "FORMAT_COLUMNS",
    "IMAGE_COLUMNS",
    "MEDIA_UNSUPPORTED",
    "METADATA_COLUMNS",
    "SIGNATURES",
    "TEXT_ROWS_NO_IMAGES",
    "Format",
    "check_columns",
    "did_you_mean",
    "filled",
    "given",
    "no_duplicate_keys",
    "numeric_labels",
    "parse_json_cell",
    "renamed_answer_column",
    "unused_columns",
]

Format = Literal[
    "text",
    "prompt_completion",
    "alpaca",
    "messages",
    "sharegpt",
    "preference",
    "unpaired_preference",
    "prompt_only",
]

# Column sets that identify a format, checked in order (the more specific first: a preference row
# also has a prompt, a KTO row also has a prompt and a completion).
SIGNATURES: list[tuple[Format, tuple[str, ...]]] = [
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("preference", ("chosen", "rejected")),
    ("unpaired_preference", ("prompt", "completion", "label")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
    ("prompt_only", ("prompt",)),
]
# The columns each format reads (prompt-only rows take any column: the rest go to the reward functions). Every
# chat format reads a row-level ``tools`` column (the tool definitions the conversation may call).
# ``images`` (a list) or ``image`` (one): the row's images, in the order of their places in the conversation
# (tunekit.data.vision).
IMAGE_COLUMNS = ("images", "image")
FORMAT_COLUMNS: dict[str, frozenset[str]] = {
    "text": frozenset({"text"}),
    "prompt_completion": frozenset({"prompt", "completion", "system", "tools", *IMAGE_COLUMNS}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "tools", *IMAGE_COLUMNS}),
    "messages": frozenset({"messages", "system", "tools", *IMAGE_COLUMNS}),
    "sharegpt": frozenset({"conversations", "system", "tools", *IMAGE_COLUMNS}),
    "preference": frozenset({"prompt", "chosen", "rejected", "system", "tools", *IMAGE_COLUMNS}),
    "unpaired_preference": frozenset({"prompt", "completion", "label", "system", "tools", *IMAGE_COLUMNS}),
}
# Columns that say where a row comes from, not what to learn: ignored in every format, on purpose. "" and
# "Unnamed: 0" are the index column pandas writes into a CSV (and reads back) unless told index=False.
METADATA_COLUMNS = ("id", "uuid", "idx", "source", "metadata", "meta", "prompt_id", "", "Unnamed: 0")
# Column names of other tools' layouts, and what tunekit calls them (for "did you mean" hints).
_ALIASES = {
    "response": "completion",
    "answer": "completion",
    "question": "prompt",
    "query": "prompt",
    "conversation": "conversations",
    "system_prompt": "system",
    "kto_tag": "label",
}
_MEDIA = ("image_url", "pixel_values", "video", "videos", "audio")
# Columns that carry meaning no format reads at the row level (or that this format cannot carry): refused, saying what
# would read them. ``tools`` is here for the formats that do not read it (plain text).
_MEANINGFUL = {
    "functions": "'functions' is OpenAI's older name for the tool definitions, which tunekit reads from a 'tools' "
    "column: rename the column to 'tools'",
    "tool_calls": "tool calls belong on the assistant message that makes them (its 'tool_calls' key), not in a column "
    "of the row: move them into the conversation",
    "tools": "'tools' (the tool definitions) is read by the chat formats (messages, conversations, prompt / "
    "completion, instruction / output, preference pairs); {fmt!r} rows cannot carry tools: give the rows as a "
    "conversation, or remove the column",
    "reasoning_content": "a reasoning trace belongs on the assistant message it precedes (that message's "
    "'reasoning_content' key), not in a column of the row: move it into the conversation, or remove the column",
    "history": "'history' (earlier [instruction, response] turns) is read by Alpaca rows ('instruction' + 'output'), "
    "which the {fmt!r} format is not: give the earlier turns as part of the conversation, or remove the column",
}
for _name in ("reasoning", "thinking"):
    _MEANINGFUL[_name] = _MEANINGFUL["reasoning_content"]
# Every column name tunekit gives a meaning to: a column close to one of them is taken for a misspelling (an error),
# any other unknown column is unused (a warning).
_KNOWN_COLUMNS = frozenset().union(*FORMAT_COLUMNS.values(), _MEANINGFUL, ("label",))
MEDIA_UNSUPPORTED = (
    "audio and video data is not supported (tunekit trains on text, and on images with vision-language models: "
    "give images in an 'images' column or as image parts of a message): remove the column to train on the rest"
)
TEXT_ROWS_NO_IMAGES = (
    "'text' rows (raw text) cannot carry images; give the rows as a conversation ('messages' with '<image>' in a "
    "user turn, or image parts) to train a vision-language model on them, or remove the column"
)


def given(value: Any) -> bool:
    """Whether a cell is given (tables give every row every column, empty ones as None, or "" in a CSV)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def filled(value: Any) -> bool:
    """Whether a cell holds something that could be lost: given, and not an empty list or object."""
    return given(value) and not (isinstance(value, (list, dict)) and not value)


def did_you_mean(name: Any, known: set[str] | frozenset[str]) -> str:
    if not isinstance(name, str):
        return ""
    options = sorted(set(known) | set(_ALIASES))
    close = difflib.get_close_matches(name.lower(), options, n=1, cutoff=0.75)
    if not close:
        return ""
    guess = close[0]
    if guess in _ALIASES and _ALIASES[guess] != name:
        reads = f"tunekit reads that from {_ALIASES[guess]!r}: rename the column to it"
        return f" ({reads})" if guess == name else f" (did you mean {guess!r}? {reads})"
    return f" (did you mean {guess!r}?)" if guess != name else ""


def renamed_answer_column(row: dict[str, Any]) -> str | None:
    """A hint for a prompt-only row whose answer column seems misnamed (``response``, ``reponse``, ...)."""
    answers = {"completion", "chosen", "rejected", "label"} | {k for k, v in _ALIASES.items() if v == "completion"}
    for key, value in row.items():
        if isinstance(key, str) and filled(value) and difflib.get_close_matches(key.lower(), sorted(answers), 1, 0.75):
            return f"column {key!r}{did_you_mean(key, answers)}"
    return None


def _row_format(row: dict[str, Any], filled: set[Any] | None = None) -> Format | None:
    """The format row ``row`` alone is in, judged from its filled columns (``None``: no format's; ``filled``: its
    given columns, when the caller has them)."""
    filled = {k for k, v in row.items() if given(v)} if filled is None else filled
    for fmt, cols in SIGNATURES:
        if fmt != "prompt_only" and filled.issuperset(cols):
            return fmt
    return None


_SIGNATURE = {fmt: frozenset(cols) for fmt, cols in SIGNATURES}


def check_columns(fmt: Format, row: dict[str, Any], i: int) -> None:
    """Refuse a row of another format than the data's, and columns the format does not read."""
    present = {k for k, v in row.items() if given(v)}
    own = _row_format(row, present)
    mine = present >= _SIGNATURE[fmt]
    if own is not None and own != fmt and not mine and not _SIGNATURE[own] <= FORMAT_COLUMNS.get(fmt, set()):
        raise DatasetError(
            f"row {i} is in the {own!r} format ({' + '.join(repr(c) for c in dict(SIGNATURES)[own])} columns) but the "
            f"data is in the {fmt!r} format (that of row 1); one dataset holds one format: convert row {i} to "
            f"the {fmt!r} columns, or train the two formats from separate files",
            row=i,
        )
    if fmt == "prompt_only":
        return
    known = FORMAT_COLUMNS[fmt]
    for key, value in row.items():
        if key in known or key in METADATA_COLUMNS or not filled(value):
            continue
        where = f"row {i}, column {key!r}"
        if key in _MEDIA:
            raise DatasetError(f"{where}: {MEDIA_UNSUPPORTED}", row=i, field=str(key))
        if key in IMAGE_COLUMNS:
            raise DatasetError(f"{where}: {TEXT_ROWS_NO_IMAGES}", row=i, field=str(key))
        if key in _MEANINGFUL:
            raise DatasetError(f"{where}: {_MEANINGFUL[key].format(fmt=fmt)}", row=i, field=str(key))
        if key == "label":
            raise DatasetError(
                f"{where}: 'label' is read by KTO (it marks an answer desirable or not, on 'prompt' + 'completion' "
                f"+ 'label' rows, or beside a conversation whose last turn is the answer); the {fmt!r} format cannot "
                "use it: remove the column, or give the rows as one of KTO's layouts and pass objective=tk.KTO()",
                row=i,
                field="label",
            )
        owner = next((f for f, cols in FORMAT_COLUMNS.items() if key in cols), None)
        hint = did_you_mean(key, known | _KNOWN_COLUMNS)
        if owner is None and not hint and isinstance(key, str):
            continue  # unused: listed once per dataset by unused_columns (a warning), not an error
        what = f"column {key!r} belongs to the {owner!r} format" if owner else f"unknown column {key!r}"
        raise DatasetError(
            f"row {i}: {what}{hint}; the data is in the {fmt!r} format, which reads "
            f"{sorted(known)} (and ignores {list(METADATA_COLUMNS[:6])}), and tunekit never drops a column "
            "silently: rename the column, or remove it if it holds nothing to train on",
            row=i,
            field=str(key),
        )


def unused_columns(fmt: Format, rows: list[dict[str, Any]], reads: frozenset[str] = frozenset()) -> list[str]:
    """The filled columns of ``rows`` that nothing reads and that :func:`check_columns` lets pass (no near miss of a
    known name, no meaning tunekit knows): tunekit does not train on them, and says so once per dataset.
    ``reads``: the columns a layout (:mod:`tunekit.data.layouts`) consumed before the format saw the rows."""
    if fmt == "prompt_only":
        return []  # the other columns of prompts go to the reward functions
    known = FORMAT_COLUMNS[fmt] | reads
    out: dict[str, None] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        for key, value in row.items():
            if key in out or key in known or key in METADATA_COLUMNS or not isinstance(key, str) or not filled(value):
                continue
            if key in _MEDIA or key in IMAGE_COLUMNS or key in _MEANINGFUL or key == "label" or key in _KNOWN_COLUMNS:
                continue  # refused by check_columns
            if not did_you_mean(key, known | _KNOWN_COLUMNS):
                out[key] = None
    return list(out)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads(..., object_pairs_hook=...)``: refuse an object with a key twice (JSON would keep the last)."""
    out = dict(pairs)
    if len(out) == len(pairs):  # no key twice (built in C: the common case)
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return out


def parse_json_cell(value: str, i: int, name: str) -> Any:
    """A JSON list held in a string cell (a CSV cannot hold a list): parsed, or a DatasetError naming the cell."""
    try:
        return json.loads(value, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"row {i}, field {name!r}: the cell holds text that is not valid JSON ({e.msg} at character {e.pos}); "
            f"a {name!r} cell must be a JSON list of messages, e.g. "
            '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]',
            row=i,
            field=name,
        ) from None
    except _DuplicateKey as e:
        raise DatasetError(
            f"row {i}, field {name!r}: the key {e.key!r} appears twice in one message (JSON would keep only the "
            "last); remove or rename one",
            row=i,
            field=name,
        ) from None


def numeric_labels(rows: list[dict[str, Any]]) -> list[int]:
    """The 1-based rows whose ``label`` is a number (``0`` / ``1``, or such text) rather than True / False."""
    out = []
    for i, row in enumerate(rows, 1):
        value = row.get("label") if isinstance(row, dict) else None
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip() in ("0", "1")):
            out.append(i)
    return out
