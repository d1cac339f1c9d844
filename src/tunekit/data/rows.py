"""Rows for trainers that tokenise themselves (preference and online RL objectives).

tunekit tokenises SFT data itself (labels masked by position); trl's preference and RL trainers
instead take conversational rows (``prompt`` / ``chosen`` / ``rejected`` / ``completion`` as chat
messages) and render them with the tokenizer's chat template, the one tunekit installed. This
module turns normalised examples into those rows and checks their lengths first, because trl
drops rows that do not fit silently, and bad data must never train silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunekit.data.formats import Example, Messages, NormalisedData
from tunekit.data.templates import render, template_messages
from tunekit.errors import DatasetError
from tunekit.plan import SourceFigures

__all__ = ["IMAGES", "MESSAGE_COLUMNS", "PROMPT_MESSAGES", "PROMPT_TEXT", "TrainerRows", "prepare_row", "prepare_rows"]

# Hidden column: a prompt the user gave as a plain string, handed back to reward functions as such.
PROMPT_TEXT = "_tunekit_prompt"
# Hidden column: the prompt's messages, when tunekit rendered the prompt itself (online RL prompts with tools).
PROMPT_MESSAGES = "_tunekit_prompt_messages"
# The column of each row's images (PIL images, in the order of the prompt's {"type": "image"} parts): trl's DPO
# trainer reads it and hands the images to the processor with the prompt (DataCollatorForVisionPreference).
IMAGES = "images"
MESSAGE_COLUMNS = ("prompt", "chosen", "rejected", "completion")


@dataclass
class TrainerRows:
    """Rows in trl's column layout, with their 1-based row numbers and token counts."""

    format: str
    records: Sequence[dict[str, Any]]  # a list, or read from an Arrow table (tunekit.data.arrow)
    rows: Sequence[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0
    num_tokens: int = 0
    chunk: int | None = None  # rows per table built at a time (None: all at once)
    sources: list[SourceFigures] = field(default_factory=list)  # per source of a tk.Mix
    directory: str | None = None  # where the chunks' tables are written (None: they are kept in memory)
    owner: Any = None  # what keeps ``directory`` on disk (the normalised data whose work directory it is)

    def to_dataset(self) -> Any:
        """The rows as a ``datasets.Dataset``; with ``chunk``, built ``chunk`` rows at a time and concatenated (the
        records never all in one list; ``datasets`` aligns a column that is empty in one part with the others), each
        part written to an Arrow file in ``directory`` and memory-mapped from there when it is given."""
        structured = _structured_columns(self.records)
        if self.chunk is None:
            return _dataset(self.records, structured)
        from datasets import Dataset, concatenate_datasets

        n = len(self.records)
        parts = []
        for k in range(0, n, self.chunk):
            part = _dataset(self.records[k : k + self.chunk], structured)
            if self.directory is not None:
                part = Dataset.from_file(_written(part, self.directory))
            parts.append(part)
        try:
            return concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        except (TypeError, ValueError) as e:
            raise _table_error(self.records, e) from None


def _written(part: Any, directory: str) -> str:
    """``part``'s table (its features in its schema) written to a new Arrow file in ``directory``: its path."""
    import pyarrow as pa

    fd, path = tempfile.mkstemp(prefix="trl-rows-", suffix=".arrow", dir=directory)
    os.close(fd)
    table = part.data.table
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def _structured_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    """Message columns with more than role and content in some row (tool calls, whose arguments differ from row to
    row), stored as JSON: Arrow would merge every row's keys into one struct and hand the template null-valued extra
    keys."""
    found: set[str] = set()
    for r in records:
        found.update(k for k in MESSAGE_COLUMNS if k not in found and _structured(r.get(k)))
        if PROMPT_MESSAGES in r:
            found.add(PROMPT_MESSAGES)
    return sorted(found)


def _table_error(records: Sequence[dict[str, Any]], e: Exception) -> DatasetError:
    extra = sorted({k for r in records for k in r} - {"prompt", "chosen", "rejected", "completion"})
    return DatasetError(
        f"the rows cannot form one table ({e}); a column must hold the same kind of value in every row "
        f"(columns: {extra})"
    )


def _dataset(records: Sequence[dict[str, Any]], structured: list[str]) -> Any:
    from datasets import Dataset, Features, Json, List

    records = list(records)
    try:
        if structured:
            rest = Dataset.from_list([{k: v for k, v in r.items() if k not in structured} for r in records])
            features = Features({**rest.features, **{k: List(Json()) for k in structured}})
            return Dataset.from_list(records, features=features)
        return Dataset.from_list(records)
    except (TypeError, ValueError) as e:  # pyarrow's errors subclass these
        raise _table_error(records, e) from None


def _structured(value: Any) -> bool:
    """Messages Arrow cannot hold as one struct type: with more keys than role and content, or with content parts
    (a prompt with images: a list of ``{"type": ...}`` parts, beside string contents)."""
    return isinstance(value, list) and any(
        isinstance(m, dict) and (set(m) - {"role", "content"} or isinstance(m.get("content"), list)) for m in value
    )


def _as_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every message's content as a list of parts (a string as one text part). trl's vision collator
    (``prepare_multimodal_messages``) puts a row's images before the first user message whose content is a string
    when it finds one, so the prompt of a row with images must have none."""
    return [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m
        for m in messages
    ]


def _count(tokenizer: Any, messages: Messages, *, generation_prompt: bool, tools: Any = None) -> int:
    text = render(tokenizer, list(messages), add_generation_prompt=generation_prompt, tools=tools)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _record(tokenizer: Any, ex: Example, *, prompt_as_text: bool, with_tools: bool) -> dict[str, Any]:
    """The example as trl reads it. Reasoning goes under the key the template reads (trl renders the messages with
    it); tools as the JSON string trl's preference trainers read. Online RL prompts with tools are rendered here
    (trl's GRPO / RLOO take tools as Python functions to run, not per-row schemas), the messages kept for the
    reward functions."""
    prompt = template_messages(tokenizer, list(ex.prompt or ()))
    tools = {"tools": json.dumps(list(ex.tools), ensure_ascii=False) if ex.tools else None} if with_tools else {}
    if ex.chosen is not None:
        chosen, rejected = (template_messages(tokenizer, list(a or ())) for a in (ex.chosen, ex.rejected))
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **tools}
    if ex.completion is not None:
        completion = template_messages(tokenizer, list(ex.completion))
        return {"prompt": prompt, "completion": completion, "label": bool(ex.label), **tools}
    if prompt_as_text:
        shown = render(tokenizer, list(ex.prompt or ()), add_generation_prompt=True, tools=ex.tools)
        extra = {PROMPT_MESSAGES: list(ex.prompt or ())}
        return {"prompt": shown, PROMPT_TEXT: ex.prompt_text, **extra, **(ex.columns or {})}
    return {"prompt": prompt, PROMPT_TEXT: ex.prompt_text, **(ex.columns or {})}


def prepare_row(
    tokenizer: Any,
    ex: Example,
    fmt: str,
    *,
    max_length: int,
    whole_pairs: bool = False,
    on_bad_rows: str = "error",
    prompt_as_text: bool = False,
    with_tools: bool = False,
    with_images: bool = False,
) -> tuple[dict[str, Any] | None, str | None, bool, int]:
    """One example of :func:`prepare_rows`: its record (None when skipped), why it was skipped, whether its answers
    will be truncated, and its token count; raises DatasetError for a bad row unless ``on_bad_rows="skip"``.
    ``with_images``: some row of the data holds images, so every record has the images column."""
    if ex.prompt is None:
        raise DatasetError(
            f"row {ex.row}: expected a prompt (preference, unpaired preference or prompt-only data), got {fmt!r} data"
        )
    prompt_len = _count(tokenizer, ex.prompt, generation_prompt=True, tools=ex.tools)
    answers = [a for a in (ex.chosen, ex.rejected, ex.completion) if a is not None]
    full = [_count(tokenizer, (*ex.prompt, *a), generation_prompt=False, tools=ex.tools) for a in answers]
    reason = None
    if prompt_len >= max_length:
        reason = (
            f"row {ex.row}: the prompt alone is {prompt_len} tokens, which fills max_length={max_length}; "
            "raise Training(max_length=...) or shorten the prompt"
        )
    elif whole_pairs and full and max(full) > max_length:
        reason = (
            f"row {ex.row}: {max(full)} tokens, longer than max_length={max_length}, and a reward model cannot "
            "score a truncated answer; raise Training(max_length=...) or shorten the row"
        )
    if reason is not None:
        if on_bad_rows == "skip":
            return None, reason, False, 0
        raise DatasetError(reason, row=ex.row)
    record = _record(tokenizer, ex, prompt_as_text=prompt_as_text, with_tools=with_tools)
    if with_images:  # every row has the column (a text row: no images), as Arrow needs
        images = list(getattr(ex, "images", ()) or ())
        record = {**record, "prompt": _as_parts(record["prompt"]) if images else record["prompt"], IMAGES: images}
    tokens = min(sum(full), max_length * len(full)) if full else prompt_len
    return record, None, bool(full and max(full) > max_length), tokens


def prepare_rows(
    tokenizer: Any,
    norm: NormalisedData,
    *,
    max_length: int,
    whole_pairs: bool = False,
    on_bad_rows: str = "error",
) -> TrainerRows:
    """Rows for trl from normalised preference, unpaired-preference or prompt-only data.

    A row whose prompt alone fills ``max_length`` is bad (nothing of the answer would remain).
    With ``whole_pairs`` (reward models, which cannot truncate a pair) a row longer than
    ``max_length`` is bad too; otherwise long answers are truncated by the trainer and counted.
    """
    out = TrainerRows(norm.format, [], [])
    with_tools = any(ex.tools for ex in norm.examples)
    with_images = any(getattr(ex, "images", ()) for ex in norm.examples)
    prompt_as_text = norm.format == "prompt_only" and with_tools
    for ex in norm.examples:
        record, reason, truncated, tokens = prepare_row(
            tokenizer, ex, norm.format, max_length=max_length, whole_pairs=whole_pairs, on_bad_rows=on_bad_rows,
            prompt_as_text=prompt_as_text, with_tools=with_tools, with_images=with_images,
        )  # fmt: skip
        if record is None:
            out.skipped.append((ex.row, str(reason)))
            continue
        out.truncated += truncated
        out.records.append(record)  # type: ignore[attr-defined]
        out.rows.append(ex.row)  # type: ignore[attr-defined]
        out.num_tokens += tokens
    if not out.records:
        raise DatasetError(f"no row fits max_length={max_length}; raise Training(max_length=...)")
    return out
