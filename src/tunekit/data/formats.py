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
these formats first. Messages are read by :mod:`tunekit.data.messages` (tool calls, tool results, reasoning, and
per-turn ``"train": false``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tunekit.data.columns import IMAGE_COLUMNS, SIGNATURES, Format, check_columns, given
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import Layout, detect_layout
from tunekit.data.messages import Messages, parse_messages, parse_tools
from tunekit.data.vision import place_images
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
Tools = tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Example:
    """One normalised example; ``row`` is 1-based.

    Demonstrations have raw ``text`` or chat ``messages``. Preference pairs have ``prompt``,
    ``chosen`` and ``rejected``; unpaired preferences ``prompt``, ``completion`` and ``label``;
    RL prompts ``prompt`` and the row's other ``columns``. ``prompt`` is the conversation so far
    (ending with a user message); answers are assistant messages. ``prompt_text`` keeps a prompt
    given as a plain string, which is what reward functions then receive. ``trained`` says, per
    assistant message of ``messages``, whether the row said to train on it (``"train": false``, a weight of 0:
    not; None: the row did not say, and ``SFT(train_on=...)`` decides). ``tools``: the function schemas the
    conversation may call (OpenAI's shape), rendered by the chat template. ``images``: the row's images
    (``PIL.Image.Image``, RGB, within the pixel budget), in the order of the ``{"type": "image"}`` parts of the
    messages that hold them (:mod:`tunekit.data.vision`); empty for a text-only row.
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
    trained: tuple[bool | None, ...] | None = None  # per assistant message of ``messages``; None: none said
    tools: Tools | None = None
    images: tuple[Any, ...] = ()  # PIL images, in the order of their {"type": "image"} parts (tunekit.data.vision)


@dataclass
class NormalisedData:
    format: Format
    examples: Sequence[Example]  # a list, or read from an Arrow table (tunekit.data.arrow.ExampleColumn)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)

    @property
    def has_images(self) -> bool:
        """Whether any example holds an image (a vision row)."""
        return any(ex.images for ex in self.examples)


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
    first: str = "user",
    last: str = "assistant",
    tools: Tools | None = None,
) -> Messages:
    """Validate a message list (see :mod:`tunekit.data.messages`): a whole conversation, a prompt (ending with the
    user, or tool results) or an answer. A turn may leave training (``"train": false``) only in a whole
    conversation (:func:`_conversation`)."""
    out, flags = parse_messages(msgs, i, name, first=first, last=last, tools=tools)
    for j, flag in enumerate(flags):
        if flag is False:
            raise DatasetError(
                f"row {i}, field {name!r}, message {j + 1}: a per-turn training flag ('train', 'loss_weight', "
                "'weight') is read in a whole conversation ('messages' or 'conversations' rows) only; remove it, or "
                "give the row as a conversation",
                row=i,
                field=name,
            )
    return out


def _conversation(row: dict[str, Any], i: int, name: str, tools: Tools | None) -> Example:
    """A whole conversation (``messages`` / ``conversations``), with ``system`` and ``tools`` columns and per-turn
    training flags."""
    msgs, flags = parse_messages(row.get(name), i, name, first="user", last="assistant", tools=tools)
    system = _system(row, i)
    if system and msgs[0]["role"] == "system":
        raise DatasetError(
            f"row {i}: both a 'system' column and a system message in {name!r}; keep one of them",
            row=i,
            field="system",
        )
    trained = tuple(f for m, f in zip(msgs, flags) if m["role"] == "assistant")
    if all(f is False for f in trained):
        raise DatasetError(
            f"row {i}, field {name!r}: every assistant message says not to train on it ('train': false, or a "
            "weight of 0), so nothing is left to train on; let at least one train, or leave the row out",
            row=i,
            field=name,
        )
    return Example(
        row=i,
        messages=(*system, *msgs),
        trained=None if all(f is None for f in trained) else trained,
        tools=tools,
    )


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


def _prompt(row: dict[str, Any], i: int, tools: Tools | None = None) -> tuple[Messages, str | None]:
    """The prompt as messages ending with a user turn (or tool results), and the plain string when it was one."""
    value = row.get("prompt")
    if isinstance(value, list):
        msgs, system = _check_messages(value, i, "prompt", last="user", tools=tools), _system(row, i)
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


def _answer(row: dict[str, Any], i: int, name: str, tools: Tools | None = None) -> Messages:
    """An answer: a string (one assistant message) or a list of messages from the assistant's turn on."""
    value = row.get(name)
    if isinstance(value, dict) and ("role" in value or "from" in value):
        value = [value]  # one message object (ShareGPT preference data gives chosen / rejected so)
    if isinstance(value, list):
        return _check_messages(value, i, name, first="assistant", last="assistant", tools=tools)
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


def _preference(row: dict[str, Any], i: int, tools: Tools | None) -> Example:
    prompt, text = _prompt(row, i, tools)
    chosen, rejected = _answer(row, i, "chosen", tools), _answer(row, i, "rejected", tools)
    if chosen == rejected:
        raise DatasetError(
            f"row {i}, field 'rejected': identical to 'chosen' ({_shown(chosen)}); a preference pair needs two "
            "different answers: fix or drop the row",
            row=i,
            field="rejected",
        )
    return Example(row=i, prompt=prompt, chosen=chosen, rejected=rejected, prompt_text=text, tools=tools)


def _shown(msgs: Messages) -> str:
    content = msgs[0]["content"] if len(msgs) == 1 else str([m["content"] for m in msgs])
    return repr(content) if len(content) <= 60 else repr(content[:57] + "...")


def _prompt_only(row: dict[str, Any], i: int, tools: Tools | None) -> Example:
    prompt, text = _prompt(row, i, tools)
    for name in RESERVED_COLUMNS:
        if name in row:
            raise DatasetError(
                f"row {i}, field {name!r}: this column name is reserved (trl passes its own {name!r} to reward "
                "functions); rename the column",
                row=i,
                field=name,
            )
    columns = {k: v for k, v in row.items() if k not in ("prompt", "system", "tools", *IMAGE_COLUMNS)}
    return Example(row=i, prompt=prompt, prompt_text=text, columns=columns, tools=tools)


def normalise_row(
    fmt: Format, row: dict[str, Any], i: int, *, layout: Layout | None = None, images: ImageOptions | None = None
) -> Example:
    """Row ``i`` (1-based, as the user counts) of format ``fmt`` as an :class:`Example`; raises DatasetError.
    ``layout``: the foreign layout the data is in (:func:`tunekit.data.layouts.detect_layout`), rewritten first.
    ``images``: how the row's images are read (the pixel budget, the folder relative paths start from)."""
    if layout is not None:
        row = layout.rewrite(row, i)
    check_columns(fmt, row, i)
    if fmt == "text":
        return Example(row=i, text=_need_str(row, i, "text"))
    ex = _example(fmt, row, i)
    fields = _labelled(fmt, ex, row, i)
    placed, read = place_images([(label, msgs) for label, _, msgs in fields], row, i, images, answers=_ANSWERS)
    if not read:
        return ex
    joined: dict[str, Any] = {}
    for (_, attr, _), msgs in zip(fields, placed):
        joined[attr] = (*joined.get(attr, ()), *(msgs or ()))
    return replace(ex, **joined, images=read)


# Preference answers hold no image (the images of a pair go in its prompt); a KTO completion is an answer too.
_ANSWERS = frozenset({"chosen", "rejected", "completion"})
_FIELDS = ("prompt", "completion", "chosen", "rejected")


def _labelled(fmt: Format, ex: Example, row: dict[str, Any], i: int) -> list[tuple[str, str, Messages]]:
    """The example's messages as (the column the user wrote them in, the Example field, messages), prompt first:
    where images are placed, and what their errors name."""
    if fmt in ("messages", "sharegpt", "alpaca"):
        label = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction"}[fmt]
        return [(label, "messages", ex.messages or ())]
    if fmt == "prompt_completion":  # split back into the prompt and the completion (the row's own columns)
        messages = ex.messages or ()
        n = len(messages) - len(_answer(row, i, "completion", ex.tools))
        return [("prompt", "messages", messages[:n]), ("completion", "messages", messages[n:])]
    return [(name, name, getattr(ex, name)) for name in _FIELDS if getattr(ex, name) is not None]


def _example(fmt: Format, row: dict[str, Any], i: int) -> Example:
    if fmt == "text":
        return Example(row=i, text=_need_str(row, i, "text"))
    tools = parse_tools(row.get("tools"), i)  # every other format may carry the schemas its conversations call
    if fmt == "preference":
        return _preference(row, i, tools)
    if fmt == "unpaired_preference":
        question, text = _prompt(row, i, tools)
        answer = _answer(row, i, "completion", tools)
        label = _label(row, i)
        return Example(row=i, prompt=question, completion=answer, label=label, prompt_text=text, tools=tools)
    if fmt == "prompt_only":
        return _prompt_only(row, i, tools)
    if fmt == "prompt_completion":
        # The prompt may be a string or chat messages (trl's conversational prompt/completion), as for pairs.
        messages = (*_prompt(row, i, tools)[0], *_answer(row, i, "completion", tools))
        return Example(row=i, messages=messages, tools=tools)
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
        return Example(row=i, messages=(*_system(row, i), *turns), tools=tools)
    if fmt == "messages":
        return _conversation(row, i, "messages", tools)
    return _conversation(row, i, "conversations", tools)


def normalise(
    rows: list[dict[str, Any]],
    fmt: Format | None = None,
    *,
    on_bad_rows: str = "error",
    images: ImageOptions | None = None,
) -> NormalisedData:
    """Validate every row and turn it into an :class:`Example`.

    With ``on_bad_rows="skip"`` malformed rows are dropped and listed in ``skipped``; otherwise the
    first one raises :class:`DatasetError` naming its row and field. ``images``: how the rows' images are read
    (:class:`tunekit.data.images.ImageOptions`: the pixel budget, the folder relative paths start from).
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
            examples.append(normalise_row(fmt, row, i, layout=layout, images=images))
        except DatasetError as e:
            if on_bad_rows != "skip":
                raise
            skipped.append((i, str(e)))
    if not examples:
        raise DatasetError(f"no valid rows: all {len(rows)} rows were malformed (first: {skipped[0][1]})")
    return NormalisedData(fmt, examples, skipped)
