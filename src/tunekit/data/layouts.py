"""Foreign layouts: rows laid out as other tools publish them, rewritten into the formats tunekit reads.

A pre-pass before :func:`tunekit.data.formats.normalise`: :func:`detect_layout` tells the layout from row 1's
columns, and :attr:`Layout.rewrite` turns each row into a row of a canonical format (one row in, one row out, so
row numbers stay the user's). The columns a layout does not consume pass through, under the same column policy.

- ``sharegpt_preference`` (LLaMA-Factory): ``conversations`` (ending with a human turn) + ``chosen`` and
  ``rejected`` as single message objects -> ``prompt`` / ``chosen`` / ``rejected``.
- ``openai_preference`` (OpenAI preference fine-tuning): ``input`` (``messages``, ``tools``) + ``preferred_output``
  + ``non_preferred_output`` -> ``prompt`` / ``chosen`` / ``rejected`` (+ ``tools``).
- ``kto_messages`` / ``kto_conversations`` / ``kto_alpaca``: a conversation (or an Alpaca row) + ``label`` ->
  ``prompt`` (everything before the last assistant turn) + ``completion`` (that turn) + ``label``: KTO data.
- ``implicit_prompt`` (TRL): ``chosen`` and ``rejected`` as whole conversations, no ``prompt`` -> the longest
  shared leading messages are the prompt.
- ``alpaca_history`` (LLaMA-Factory): ``instruction`` / ``input`` / ``output`` + ``history`` (earlier
  ``[instruction, response]`` pairs) -> ``messages``; the earlier answers are context (``"train": false``), only
  ``output`` trains.

ShareGPT turns (``from`` / ``value``) are rewritten as ``role`` / ``content`` messages (``human`` -> ``user``,
``gpt`` -> ``assistant``); their other keys are kept for the message model to read.

Example:
    >>> from tunekit.data.layouts import detect_layout
    >>> chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    >>> rows = [{"messages": chat, "label": True}]
    >>> layout = detect_layout(rows)
    >>> layout.name, layout.format
    ('kto_messages', 'unpaired_preference')
    >>> layout.rewrite(rows[0], 1)["completion"]
    [{'role': 'assistant', 'content': '4'}]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunekit.data.columns import Format, filled, given, parse_json_cell
from tunekit.errors import DatasetError

__all__ = ["LAYOUTS", "Layout", "detect_layout"]

Row = dict[str, Any]
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Layout:
    """A foreign layout: its ``name``, the ``columns`` that identify it (all present in row 1), the canonical
    ``format`` its rows are rewritten into, the columns it ``reads`` (consumes), and ``rewrite(row, i)``."""

    name: str
    columns: tuple[str, ...]
    format: Format
    reads: frozenset[str]
    rewrite: Callable[[Row, int], Row]
    absent: tuple[str, ...] = ()  # columns row 1 must not have


def _turns(value: Any, i: int, name: str) -> list[Any]:
    """A message list (a JSON list in a CSV cell is parsed), ShareGPT turns rewritten as role / content."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = parse_json_cell(value, i, name)
    if not isinstance(value, list) or not value:
        raise DatasetError(f"row {i}, field {name!r}: expected a non-empty list of messages", row=i, field=name)
    return [_turn(m) for m in value]


def _turn(m: Any) -> Any:
    if not isinstance(m, dict) or "from" not in m or "role" in m:
        return m  # role / content already (or not a message: the format's checks say what is wrong)
    role = m["from"]
    out = {"role": _SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role}
    if "value" in m:
        out["content"] = m["value"]
    out.update((k, v) for k, v in m.items() if k not in ("from", "value"))
    return out


def _rest(row: Row, layout_reads: frozenset[str]) -> Row:
    """The columns a layout does not consume (metadata, system, ...), passed on to the format's checks."""
    return {k: v for k, v in row.items() if k not in layout_reads}


def _role(m: Any) -> Any:
    return m.get("role") if isinstance(m, dict) else None


# --- preference pairs ---------------------------------------------------------------------------------------------


def _answer_object(value: Any, i: int, name: str) -> list[Any]:
    """LLaMA-Factory's ``chosen`` / ``rejected``: one message object (a list of messages is taken as it is)."""
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        value = parse_json_cell(value, i, name)
    if isinstance(value, dict):
        return [_turn(value)]
    if isinstance(value, list):
        return _turns(value, i, name)
    raise DatasetError(
        f"row {i}, field {name!r}: expected a message object beside 'conversations' (LLaMA-Factory's preference "
        f'layout: {{"from": "gpt", "value": "..."}}), got {type(value).__name__} ({value!r:.60})',
        row=i,
        field=name,
    )


_SHAREGPT_PAIR = frozenset({"conversations", "chosen", "rejected"})


def _sharegpt_preference(row: Row, i: int) -> Row:
    return {
        **_rest(row, _SHAREGPT_PAIR),
        "prompt": _turns(row.get("conversations"), i, "conversations"),
        "chosen": _answer_object(row.get("chosen"), i, "chosen"),
        "rejected": _answer_object(row.get("rejected"), i, "rejected"),
    }


_OPENAI_PAIR = frozenset({"input", "preferred_output", "non_preferred_output"})
# Keys of OpenAI's ``input`` object: the conversation and the tools it may call are read; parallel_tool_calls is a
# setting of the API call (whether the model may call several tools at once), not something to learn, and is ignored.
_OPENAI_INPUT = ("messages", "tools", "parallel_tool_calls")


def _openai_preference(row: Row, i: int) -> Row:
    given_input = row.get("input")
    if isinstance(given_input, str) and given_input.strip().startswith("{"):
        given_input = parse_json_cell(given_input, i, "input")
    if not isinstance(given_input, dict) or "messages" not in given_input:
        raise DatasetError(
            f"row {i}, field 'input': expected an object holding the prompt's 'messages' (OpenAI's preference "
            f'layout: {{"messages": [...], "tools": [...]}}), got {given_input!r:.80}',
            row=i,
            field="input",
        )
    for key, value in given_input.items():
        if key not in _OPENAI_INPUT and filled(value):
            raise DatasetError(
                f"row {i}, field 'input': unknown key {key!r}; OpenAI's 'input' holds 'messages' and 'tools' (and "
                "'parallel_tool_calls', ignored), and tunekit never drops a key silently: remove it",
                row=i,
                field="input",
            )
    out = {
        **_rest(row, _OPENAI_PAIR),
        "prompt": _turns(given_input["messages"], i, "input"),
        "chosen": _answer_object(row.get("preferred_output"), i, "preferred_output"),
        "rejected": _answer_object(row.get("non_preferred_output"), i, "non_preferred_output"),
    }
    if filled(given_input.get("tools")):
        if filled(row.get("tools")):
            raise DatasetError(
                f"row {i}: tools are given twice, in 'input' and in a 'tools' column; keep one of them",
                row=i,
                field="tools",
            )
        out["tools"] = given_input["tools"]
    return out


def _implicit_prompt(row: Row, i: int) -> Row:
    """TRL's implicit prompt: ``chosen`` and ``rejected`` are whole conversations sharing the prompt's turns."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, list) and not isinstance(rejected, list) and not _is_json_list(chosen):
        raise DatasetError(
            f"row {i}: 'chosen' and 'rejected' with no 'prompt' column, given as text: there is no shared "
            "conversation to split the prompt from; add a 'prompt' column, or give 'chosen' and 'rejected' as "
            "whole conversations that start with the same prompt turns",
            row=i,
            field="prompt",
        )
    chosen, rejected = _turns(chosen, i, "chosen"), _turns(rejected, i, "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DatasetError(
            f"row {i}: no 'prompt' column, and 'chosen' and 'rejected' share no leading message (the prompt is "
            "taken from the messages they share); start both with the same prompt turns, or add a 'prompt' column",
            row=i,
            field="prompt",
        )
    if shared in (len(chosen), len(rejected)):
        name = "chosen" if shared == len(chosen) else "rejected"
        raise DatasetError(
            f"row {i}, field {name!r}: every message of it is shared with the other answer, so no answer is left "
            "once the shared prompt is taken out (no 'prompt' column); give the two answers after the same prompt",
            row=i,
            field=name,
        )
    if _role(chosen[shared - 1]) != "user":
        raise DatasetError(
            f"row {i}: no 'prompt' column, and the messages 'chosen' and 'rejected' share end with a "
            f"{_role(chosen[shared - 1])!r} turn, but a prompt must end with a user turn (the answers differ only "
            "later in the assistant's turn); add a 'prompt' column that says where the answers start",
            row=i,
            field="prompt",
        )
    return {**_rest(row, frozenset({"chosen", "rejected"})), "prompt": chosen[:shared], "chosen": chosen[shared:],
            "rejected": rejected[shared:]}  # fmt: skip


def _is_json_list(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("[")


# --- KTO: a label beside a conversation ---------------------------------------------------------------------------


def _split_last_answer(msgs: list[Any], i: int, name: str) -> tuple[list[Any], list[Any]]:
    last = _role(msgs[-1])
    if last != "assistant":
        raise DatasetError(
            f"row {i}, field {name!r}: a 'label' marks the last assistant turn desirable or not (KTO), but the "
            f"conversation ends with a {last!r} turn; end it with the answer the label judges, or remove the "
            "'label' column to train on the conversation (SFT)",
            row=i,
            field=name,
        )
    if len(msgs) < 2:
        raise DatasetError(
            f"row {i}, field {name!r}: the conversation is the answer alone; KTO needs the prompt before it",
            row=i,
            field=name,
        )
    return msgs[:-1], msgs[-1:]


def _kto_conversation(name: str) -> Callable[[Row, int], Row]:
    def rewrite(row: Row, i: int) -> Row:
        prompt, completion = _split_last_answer(_turns(row.get(name), i, name), i, name)
        return {**_rest(row, frozenset({name})), "prompt": prompt, "completion": completion}

    return rewrite


# --- Alpaca: history, label ---------------------------------------------------------------------------------------


def _text(row: Row, i: int, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else f"got {type(value).__name__} ({value!r:.60})"
        raise DatasetError(f"row {i}, field {name!r}: expected a non-empty string, {got}", row=i, field=name)
    return value


def _alpaca_user(row: Row, i: int) -> str:
    instruction, extra = _text(row, i, "instruction"), row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DatasetError(
            f"row {i}, field 'input': expected a string, got {type(extra).__name__}", row=i, field="input"
        )
    return f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction


def _history(row: Row, i: int) -> list[dict[str, Any]]:
    """LLaMA-Factory's ``history``: ``[[instruction, response], ...]`` before the current turn, as messages."""
    value = row.get("history")
    if isinstance(value, str) and _is_json_list(value):
        value = parse_json_cell(value, i, "history")
    if not given(value) or value == []:
        return []
    out: list[dict[str, Any]] = []
    for k, pair in enumerate(value if isinstance(value, list) else [value]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)):
            raise DatasetError(
                f"row {i}, field 'history', turn {k + 1}: expected an [instruction, response] pair of strings "
                f"(LLaMA-Factory's layout: the turns before this one), got {pair!r:.80}",
                row=i,
                field="history",
            )
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


_ALPACA = frozenset({"instruction", "input", "output", "history"})


def _alpaca_history(row: Row, i: int) -> Row:
    earlier = [{**m, "train": False} if m["role"] == "assistant" else m for m in _history(row, i)]
    user, output = _alpaca_user(row, i), _text(row, i, "output")
    turns = [*earlier, {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {**_rest(row, _ALPACA), "messages": turns}


def _kto_alpaca(row: Row, i: int) -> Row:
    earlier, user = _history(row, i), _alpaca_user(row, i)
    prompt: str | list[dict[str, Any]] = [*earlier, {"role": "user", "content": user}] if earlier else user
    return {**_rest(row, _ALPACA), "prompt": prompt, "completion": _text(row, i, "output")}


# Checked in order, the more specific first.
LAYOUTS = (
    Layout("openai_preference", tuple(sorted(_OPENAI_PAIR)), "preference", _OPENAI_PAIR, _openai_preference),
    Layout("sharegpt_preference", ("conversations", "chosen", "rejected"), "preference", _SHAREGPT_PAIR,
           _sharegpt_preference),
    Layout("kto_messages", ("messages", "label"), "unpaired_preference", frozenset({"messages"}),
           _kto_conversation("messages")),
    Layout("kto_conversations", ("conversations", "label"), "unpaired_preference", frozenset({"conversations"}),
           _kto_conversation("conversations")),
    Layout("kto_alpaca", ("instruction", "output", "label"), "unpaired_preference", _ALPACA, _kto_alpaca),
    Layout("alpaca_history", ("instruction", "output", "history"), "messages", _ALPACA, _alpaca_history),
    Layout("implicit_prompt", ("chosen", "rejected"), "preference", frozenset({"chosen", "rejected"}),
           _implicit_prompt, absent=("prompt", "messages", "conversations", "instruction")),
)  # fmt: skip


def detect_layout(rows: list[Any]) -> Layout | None:
    """The foreign layout row 1 is in (all its columns present, given or empty as a table gives them), or ``None``
    for rows already in a format :func:`tunekit.data.formats.detect_format` reads."""
    if not rows or not isinstance(rows[0], dict):
        return None
    keys = set(rows[0])
    for layout in LAYOUTS:
        if keys.issuperset(layout.columns) and not keys.intersection(layout.absent):
            return layout
    return None
