"""Record formats: detect them from the columns and normalise rows into examples.

Formats: ``text`` (raw text), ``prompt_completion``, ``alpaca`` (instruction, input, output),
``messages`` (OpenAI style role/content) and ``sharegpt`` (conversations with from/value) train
language models on demonstrations. Three more carry preferences and prompts:

- ``preference``: ``prompt``, ``chosen``, ``rejected`` (pairs for reward models, DPO, ORPO, KTO);
- ``unpaired_preference``: ``prompt``, ``completion``, ``label`` (``True`` = desirable; KTO);
- ``prompt_only``: ``prompt`` and any other columns, with no ``completion`` / ``chosen`` column
  (prompts for online RL; the other columns go to the reward functions).

Every chat-like format becomes a list of ``{"role", "content"}`` messages: a prompt given as a
string is one user message, an answer given as a string one assistant message.

A column is used or refused, never dropped: each format reads its own columns (and ``system``), the
metadata columns in ``columns.METADATA_COLUMNS`` are ignored on purpose, a column with a meaning the format cannot
use (or that looks like a typo of a known one) raises a :class:`DatasetError` naming it, and any other column is
unused (``columns.unused_columns``: a warning lists them). Prompt-only rows are the exception: their other columns
go to the reward functions. Rows in another tool's layout (:mod:`tunekit.data.layouts`) are rewritten into one of
these formats first. In a conversation, an assistant message may
carry OpenAI's ``"weight": 0`` (do not train on this turn) or ``1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunekit.data.columns import (
    MEDIA_UNSUPPORTED,
    SIGNATURES,
    TOOLS_UNSUPPORTED,
    Format,
    check_columns,
    did_you_mean,
    filled,
    given,
    parse_json_cell,
)
from tunekit.data.layouts import Layout, detect_layout
from tunekit.errors import DatasetError

__all__ = [
    "RESERVED_COLUMNS",
    "Example",
    "NormalisedData",
    "detect_format",
    "normalise",
    "normalise_row",
]

_MISSING_FIX = "add it to every row"
_OBJECT_FIX = "write each row as an object"

# A prompt-only (RL) dataset is one whose rows have no column of the demonstration or preference
# formats at all; a half-filled prompt/completion row is a bad SFT row, not an RL prompt.
_NOT_PROMPT_ONLY = ("completion", "chosen", "rejected", "label", "text", "messages", "conversations", "output")
# The keyword arguments trl (1.16's GRPO / RLOO) passes reward functions besides the data columns: a data column of
# that name would be overwritten, so prompt-only rows refuse it, and the reward wrapper (backends/hf/rewards.py) keeps
# these out of what the user's function receives. The one list of them.
RESERVED_COLUMNS = (
    "prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments",
)  # fmt: skip
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
ROLES = ("system", "user", "assistant")

_TOOL_KEYS = ("tool_calls", "function_call", "tool_call_id")
_TOOL_ROLES = ("tool", "function", "ipython", "function_call", "observation")


Messages = tuple[dict[str, str], ...]


@dataclass(frozen=True)
class Example:
    """One normalised example; ``row`` is 1-based.

    Demonstrations have raw ``text`` or chat ``messages``. Preference pairs have ``prompt``,
    ``chosen`` and ``rejected``; unpaired preferences ``prompt``, ``completion`` and ``label``;
    RL prompts ``prompt`` and the row's other ``columns``. ``prompt`` is the conversation so far
    (ending with a user message); answers are assistant messages. ``prompt_text`` keeps a prompt
    given as a plain string, which is what reward functions then receive. ``trained`` says, per
    assistant message of ``messages``, whether it is trained on (OpenAI's ``"weight": 0`` turns are not).
    """

    row: int
    text: str | None = None
    messages: Messages | None = None
    prompt: Messages | None = None
    chosen: Messages | None = None
    rejected: Messages | None = None
    completion: Messages | None = None
    label: bool | None = None
    prompt_text: str | None = None
    columns: dict[str, Any] | None = None
    trained: tuple[bool, ...] | None = None  # per assistant message of ``messages``; None: every one trains


@dataclass
class NormalisedData:
    format: Format
    examples: list[Example]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)


def detect_format(rows: list[dict[str, Any]]) -> Format:
    """The format whose columns the first row has (filled columns first, then any column)."""
    if not rows:
        raise DatasetError("the dataset is empty: it has no rows to train on; add at least one example")
    if not isinstance(rows[0], dict):
        raise DatasetError(
            f"row 1: expected an object with named fields, got {type(rows[0]).__name__}; {_OBJECT_FIX}", row=1
        )
    layout = detect_layout(rows)  # another tool's layout (tunekit.data.layouts), rewritten into a format below
    if layout is not None:
        return layout.format
    keys = set(rows[0])
    # Tables (CSV, parquet, DataFrame, Dataset) give every row every column, empty ones as None:
    # a text row in a table that also has prompt/completion columns is still a text row.
    filled = {k for k, v in rows[0].items() if given(v)}
    for candidates in (filled, keys):
        for fmt, cols in SIGNATURES:
            if fmt == "prompt_only" and any(c in keys for c in _NOT_PROMPT_ONLY):
                continue
            if fmt == "prompt_completion" and "label" in keys:
                continue  # a label column makes KTO data, even when row 1's label is missing
            if all(c in candidates for c in cols):
                return fmt
    raise DatasetError(
        f"row 1: cannot tell the data format from its fields {sorted(keys, key=str)}; expected one of: "
        "'text' | 'prompt' + 'completion' | 'instruction' + 'output' (+ 'input') | 'messages' | 'conversations' "
        "| 'prompt' + 'chosen' + 'rejected' | 'prompt' + 'completion' + 'label' | 'prompt' alone (RL prompts)",
        row=1,
    )


def _need_str(row: dict[str, Any], i: int, name: str, *, allow_empty: bool = False) -> str:
    if name not in row or row[name] is None:
        raise DatasetError(f"row {i}: missing field {name!r}; {_MISSING_FIX}", row=i, field=name)
    value = row[name]
    if not isinstance(value, str):
        raise DatasetError(
            f"row {i}, field {name!r}: expected a string, got {type(value).__name__} ({value!r:.60})", row=i, field=name
        )
    if not allow_empty and not value.strip():
        raise DatasetError(f"row {i}, field {name!r}: empty string; every example needs text here", row=i, field=name)
    return value


def _check_messages(
    msgs: Any,
    i: int,
    name: str,
    *,
    role_key: str = "role",
    content_key: str = "content",
    first: str = "user",
    last: str = "assistant",
) -> Messages:
    """Validate a message list whose turns alternate from ``first`` to ``last`` (a system message may lead
    when ``first`` is the user): a whole conversation, a prompt (ending with the user) or an answer.
    A ``weight`` must be 1 here: only a whole conversation may leave a turn out (:func:`_conversation`)."""
    out, weights = _messages(msgs, i, name, role_key=role_key, content_key=content_key, first=first, last=last)
    for j, w in enumerate(weights):
        if not w:
            raise DatasetError(
                f"row {i}, field {name!r}, message {j + 1}: 'weight': 0 (leave this turn out of training) is read "
                "in a whole conversation ('messages' or 'conversations' rows) only; remove the message, or give "
                "the row as a conversation",
                row=i,
                field=name,
            )
    return out


def _weight(m: dict[str, Any], role: str, where: str, i: int, name: str) -> bool:
    value = m.get("weight")
    if value is None:
        return True
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        if role != "assistant":
            raise DatasetError(
                f"{where}: 'weight' is only read on assistant messages (the turns trained on), not on a "
                f"{role} message; remove it",
                row=i,
                field=name,
            )
        return bool(value)
    raise DatasetError(
        f"{where}: 'weight' must be 0 (do not train on this turn) or 1 (train on it), got {value!r:.60}",
        row=i,
        field=name,
    )


def _messages(
    msgs: Any,
    i: int,
    name: str,
    *,
    role_key: str,
    content_key: str,
    first: str,
    last: str,
) -> tuple[Messages, tuple[bool, ...]]:
    """The validated messages and, per message, whether it trains (``weight``; only assistant ones may be 0)."""
    if isinstance(msgs, str) and msgs.strip().startswith("["):
        msgs = parse_json_cell(msgs, i, name)  # a CSV cell (or a double-encoded column) holding the JSON list
    if not isinstance(msgs, list) or not msgs:
        raise DatasetError(f"row {i}, field {name!r}: expected a non-empty list of messages", row=i, field=name)
    out: list[dict[str, str]] = []
    weights: list[bool] = []
    for j, m in enumerate(msgs):
        where = f"row {i}, field {name!r}, message {j + 1}"
        rk, ck = role_key, content_key
        if isinstance(m, dict) and rk not in m and "role" in m:
            rk, ck = "role", "content"  # many ShareGPT-style datasets use OpenAI keys in "conversations"
        if isinstance(m, dict) and (m.get(rk) in _TOOL_ROLES or any(filled(m.get(k)) for k in _TOOL_KEYS)):
            raise DatasetError(f"{where}: {TOOLS_UNSUPPORTED}", row=i, field=name)
        if not isinstance(m, dict) or rk not in m or ck not in m:
            keys = [k for k in m if k not in (rk, ck)] if isinstance(m, dict) else []
            hint = "".join(did_you_mean(k, {rk, ck}) for k in keys)
            raise DatasetError(f"{where}: expected an object with {rk!r} and {ck!r}{hint}", row=i, field=name)
        for key, value in m.items():
            if key in (rk, ck, "weight", "name") or not filled(value):
                continue  # a speaker's "name" is ignored, as documented; an empty key loses nothing
            raise DatasetError(
                f"{where}: unknown key {key!r}{did_you_mean(key, {rk, ck, 'weight'})}; a message holds {rk!r}, "
                f"{ck!r} and (on an assistant turn) 'weight', and tunekit never drops a key silently: remove it",
                row=i,
                field=name,
            )
        raw_role = m[rk]
        # ShareGPT names roles differently; a non-string role (a list, a dict) is simply unknown.
        role = _SHAREGPT_ROLES.get(raw_role) if rk == "from" and isinstance(raw_role, str) else raw_role
        if not isinstance(role, str) or role not in ROLES:
            known = sorted(_SHAREGPT_ROLES) if rk == "from" else list(ROLES)
            raise DatasetError(f"{where}: unknown role {raw_role!r}; expected one of {known}", row=i, field=name)
        content = m[ck]
        if isinstance(content, list) and any(isinstance(part, dict) and part.get("type") != "text" for part in content):
            raise DatasetError(
                f"{where}: {MEDIA_UNSUPPORTED.replace('the column', 'the non-text parts')}", row=i, field=name
            )
        if not isinstance(content, str):
            raise DatasetError(
                f"{where}: {ck!r} must be a string, got {type(content).__name__}"
                + (" (a list of content parts: join their text into one string)" if isinstance(content, list) else ""),
                row=i,
                field=name,
            )
        if role == "assistant" and not content.strip():
            raise DatasetError(f"{where}: empty assistant message; nothing to learn from", row=i, field=name)
        weights.append(_weight(m, role, where, i, name))
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out]
    body = roles[1:] if roles[0] == "system" and first == "user" else roles
    if "system" in body:
        where = "may only come first" if first == "user" else "cannot be part of an answer"
        raise DatasetError(f"row {i}, field {name!r}: a system message {where}", row=i, field=name)
    other = "assistant" if first == "user" else "user"
    for k, role in enumerate(body):
        expected = first if k % 2 == 0 else other
        if role != expected:
            raise DatasetError(
                f"row {i}, field {name!r}: roles out of order at message {k + 1 + (len(roles) - len(body))} "
                f"(got {role!r}, expected {expected!r}); turns must alternate {first}, {other}, ...",
                row=i,
                field=name,
            )
    if not body or body[-1] != last:
        what = {
            ("user", "assistant"): "the conversation must end with an assistant message (the text to learn); add "
            "the answer",
            ("user", "user"): "the prompt must end with a user message (the turn to answer)",
            ("assistant", "assistant"): "the answer must end with an assistant message",
        }[(first, last)]
        raise DatasetError(f"row {i}, field {name!r}: {what}", row=i, field=name)
    return tuple(out), tuple(weights)


def _conversation(row: dict[str, Any], i: int, name: str, role_key: str, content_key: str) -> Example:
    """A whole conversation (``messages`` / ``conversations``), with a ``system`` column and per-turn weights."""
    msgs, weights = _messages(
        row.get(name), i, name, role_key=role_key, content_key=content_key, first="user", last="assistant"
    )
    system = _system(row, i)
    if system and msgs[0]["role"] == "system":
        raise DatasetError(
            f"row {i}: both a 'system' column and a system message in {name!r}; keep one of them",
            row=i,
            field="system",
        )
    trained = tuple(w for m, w in zip(msgs, weights) if m["role"] == "assistant")
    if not any(trained):
        raise DatasetError(
            f"row {i}, field {name!r}: every assistant message has 'weight': 0, so nothing is left to train on; "
            "set 'weight': 1 on at least one, or leave the row out",
            row=i,
            field=name,
        )
    return Example(row=i, messages=(*system, *msgs), trained=None if all(trained) else trained)


def _system(row: dict[str, Any], i: int) -> Messages:
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise DatasetError(
            f"row {i}, field 'system': expected a string, got {type(system).__name__} ({system!r:.60}); "
            "write the system prompt as text",
            row=i,
            field="system",
        )
    return ({"role": "system", "content": system},) if system and system.strip() else ()


def _prompt(row: dict[str, Any], i: int) -> tuple[Messages, str | None]:
    """The prompt as messages ending with a user turn, and the plain string when it was one."""
    value = row.get("prompt")
    if isinstance(value, list):
        msgs, system = _check_messages(value, i, "prompt", last="user"), _system(row, i)
        if system and msgs[0]["role"] == "system":
            raise DatasetError(
                f"row {i}: both a 'system' column and a system message in 'prompt'; keep one of them",
                row=i,
                field="system",
            )
        return (*system, *msgs), None
    if value is not None and not isinstance(value, str):
        raise DatasetError(
            f"row {i}, field 'prompt': expected a string or a list of chat messages, got {type(value).__name__} "
            f"({value!r:.60}); write it as text, or as a list of {{'role', 'content'}} messages",
            row=i,
            field="prompt",
        )
    text = _need_str(row, i, "prompt")
    return (*_system(row, i), {"role": "user", "content": text}), text


def _answer(row: dict[str, Any], i: int, name: str) -> Messages:
    """An answer: a string (one assistant message) or a list of messages from the assistant's turn on."""
    value = row.get(name)
    if isinstance(value, list):
        return _check_messages(value, i, name, first="assistant", last="assistant")
    if value is not None and not isinstance(value, str):
        raise DatasetError(
            f"row {i}, field {name!r}: expected a string or a list of chat messages, got {type(value).__name__} "
            f"({value!r:.60}); write it as text, or as a list of {{'role', 'content'}} messages",
            row=i,
            field=name,
        )
    return ({"role": "assistant", "content": _need_str(row, i, name)},)


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _label(row: dict[str, Any], i: int) -> bool:
    value = row.get("label")
    if value is None:
        raise DatasetError(f"row {i}: missing field 'label'; {_MISSING_FIX}", row=i, field="label")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:  # CSV cells are strings
        return value.strip().lower() in _TRUE
    raise DatasetError(
        f"row {i}, field 'label': expected True (a desirable completion) or False (an undesirable one), "
        f"got {value!r:.60}; a 'label' column beside 'prompt' and 'completion' makes KTO data (for SFT, drop or "
        "rename the column)",
        row=i,
        field="label",
    )


def _preference(row: dict[str, Any], i: int) -> Example:
    prompt, text = _prompt(row, i)
    chosen, rejected = _answer(row, i, "chosen"), _answer(row, i, "rejected")
    if chosen == rejected:
        raise DatasetError(
            f"row {i}, field 'rejected': identical to 'chosen' ({_shown(chosen)}); a preference pair needs two "
            "different answers: fix or drop the row",
            row=i,
            field="rejected",
        )
    return Example(row=i, prompt=prompt, chosen=chosen, rejected=rejected, prompt_text=text)


def _shown(msgs: Messages) -> str:
    content = msgs[0]["content"] if len(msgs) == 1 else str([m["content"] for m in msgs])
    return repr(content) if len(content) <= 60 else repr(content[:57] + "...")


def _prompt_only(row: dict[str, Any], i: int) -> Example:
    prompt, text = _prompt(row, i)
    for name in RESERVED_COLUMNS:
        if name in row:
            raise DatasetError(
                f"row {i}, field {name!r}: this column name is reserved (trl passes its own {name!r} to reward "
                "functions); rename the column",
                row=i,
                field=name,
            )
    columns = {k: v for k, v in row.items() if k not in ("prompt", "system")}
    return Example(row=i, prompt=prompt, prompt_text=text, columns=columns)


def normalise_row(fmt: Format, row: dict[str, Any], i: int, *, layout: Layout | None = None) -> Example:
    """Row ``i`` (1-based, as the user counts) of format ``fmt`` as an :class:`Example`; raises DatasetError.
    ``layout``: the foreign layout the data is in (:func:`tunekit.data.layouts.detect_layout`), rewritten first."""
    if layout is not None:
        row = layout.rewrite(row, i)
    check_columns(fmt, row, i)
    if fmt == "preference":
        return _preference(row, i)
    if fmt == "unpaired_preference":
        question, given = _prompt(row, i)
        answer = _answer(row, i, "completion")
        return Example(row=i, prompt=question, completion=answer, label=_label(row, i), prompt_text=given)
    if fmt == "prompt_only":
        return _prompt_only(row, i)
    if fmt == "text":
        return Example(row=i, text=_need_str(row, i, "text"))
    if fmt == "prompt_completion":
        # The prompt may be a string or chat messages (trl's conversational prompt/completion), as for pairs.
        return Example(row=i, messages=(*_prompt(row, i)[0], *_answer(row, i, "completion")))
    if fmt == "alpaca":
        instruction = _need_str(row, i, "instruction")
        output = _need_str(row, i, "output")
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise DatasetError(
                f"row {i}, field 'input': expected a string, got {type(extra).__name__}", row=i, field="input"
            )
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        turns = ({"role": "user", "content": user}, {"role": "assistant", "content": output})
        return Example(row=i, messages=(*_system(row, i), *turns))
    if fmt == "messages":
        return _conversation(row, i, "messages", "role", "content")
    return _conversation(row, i, "conversations", "from", "value")


def normalise(rows: list[dict[str, Any]], fmt: Format | None = None, *, on_bad_rows: str = "error") -> NormalisedData:
    """Validate every row and turn it into an :class:`Example`.

    With ``on_bad_rows="skip"`` malformed rows are dropped and listed in ``skipped``; otherwise the
    first one raises :class:`DatasetError` naming its row and field.
    """
    fmt = fmt or detect_format(rows)
    layout = detect_layout(rows)
    examples, skipped = [], []
    for i, row in enumerate(rows, 1):
        try:
            if not isinstance(row, dict):
                raise DatasetError(
                    f"row {i}: expected an object with named fields, got {type(row).__name__}; {_OBJECT_FIX}", row=i
                )
            examples.append(normalise_row(fmt, row, i, layout=layout))
        except DatasetError as e:
            if on_bad_rows != "skip":
                raise
            skipped.append((i, str(e)))
    if not examples:
        raise DatasetError(f"no valid rows: all {len(rows)} rows were malformed (first: {skipped[0][1]})")
    return NormalisedData(fmt, examples, skipped)
