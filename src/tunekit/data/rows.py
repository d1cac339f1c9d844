"""Rows for trainers that tokenise themselves (preference and online RL objectives).

tunekit tokenises SFT data itself (labels masked by position); trl's preference and RL trainers
instead take conversational rows (``prompt`` / ``chosen`` / ``rejected`` / ``completion`` as chat
messages) and render them with the tokenizer's chat template, the one tunekit installed. This
module turns normalised examples into those rows and checks their lengths first, because trl
drops rows that do not fit silently, and bad data must never train silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunekit.data.formats import Example, Messages, NormalisedData
from tunekit.data.templates import render, template_messages
from tunekit.errors import DatasetError
from tunekit.plan import SourceFigures

__all__ = ["IMAGES", "MESSAGE_COLUMNS", "PROMPT_MESSAGES", "PROMPT_TEXT", "TrainerRows", "prepare_rows"]

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
    records: list[dict[str, Any]]
    rows: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0
    num_tokens: int = 0
    sources: list[SourceFigures] = field(default_factory=list)  # per source of a tk.Mix

    def to_dataset(self) -> Any:
        from datasets import Dataset, Features, Json, List

        # Messages with more than role and content (tool calls, whose arguments differ from row to row) are stored as
        # JSON: Arrow would merge every row's keys into one struct and hand the template null-valued extra keys.
        structured = sorted(
            {k for r in self.records for k in MESSAGE_COLUMNS if _structured(r.get(k))}
            | ({PROMPT_MESSAGES} if any(PROMPT_MESSAGES in r for r in self.records) else set())
        )
        try:
            if structured:
                rest = Dataset.from_list([{k: v for k, v in r.items() if k not in structured} for r in self.records])
                features = Features({**rest.features, **{k: List(Json()) for k in structured}})
                return Dataset.from_list(self.records, features=features)
            return Dataset.from_list(self.records)
        except (TypeError, ValueError) as e:  # pyarrow's errors subclass these
            extra = sorted({k for r in self.records for k in r} - {"prompt", "chosen", "rejected", "completion"})
            raise DatasetError(
                f"the rows cannot form one table ({e}); a column must hold the same kind of value in every row "
                f"(columns: {extra})"
            ) from None


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
        if ex.prompt is None:
            raise DatasetError(
                f"row {ex.row}: expected a prompt (preference, unpaired preference or prompt-only data), "
                f"got {norm.format!r} data"
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
                out.skipped.append((ex.row, reason))
                continue
            raise DatasetError(reason, row=ex.row)
        if full and max(full) > max_length:
            out.truncated += 1
        record = _record(tokenizer, ex, prompt_as_text=prompt_as_text, with_tools=with_tools)
        if with_images:  # every row has the column (a text row: no images), as Arrow needs
            images = list(getattr(ex, "images", ()) or ())
            record = {**record, "prompt": _as_parts(record["prompt"]) if images else record["prompt"], IMAGES: images}
        out.records.append(record)
        out.rows.append(ex.row)
        out.num_tokens += min(sum(full), max_length * len(full)) if full else prompt_len
    if not out.records:
        raise DatasetError(f"no row fits max_length={max_length}; raise Training(max_length=...)")
    return out
