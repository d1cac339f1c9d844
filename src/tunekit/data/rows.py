"""Rows for trainers that tokenise themselves (preference and online RL objectives).

tunekit tokenises SFT data itself (labels masked by position); trl's preference and RL trainers
instead take conversational rows (``prompt`` / ``chosen`` / ``rejected`` / ``completion`` as chat
messages) and render them with the tokenizer's chat template, the one tunekit installed. This
module turns normalised examples into those rows and checks their lengths first, because trl
drops rows that do not fit silently, and bad data must never train silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunekit.data.formats import Example, Messages, NormalisedData
from tunekit.data.templates import render
from tunekit.errors import DatasetError

__all__ = ["PROMPT_TEXT", "TrainerRows", "prepare_rows"]

# Hidden column: a prompt the user gave as a plain string, handed back to reward functions as such.
PROMPT_TEXT = "_tunekit_prompt"


@dataclass
class TrainerRows:
    """Rows in trl's column layout, with their 1-based row numbers and token counts."""

    format: str
    records: list[dict[str, Any]]
    rows: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0
    num_tokens: int = 0

    def to_dataset(self) -> Any:
        from datasets import Dataset

        try:
            return Dataset.from_list(self.records)
        except (TypeError, ValueError) as e:  # pyarrow's errors subclass these
            extra = sorted({k for r in self.records for k in r} - {"prompt", "chosen", "rejected", "completion"})
            raise DatasetError(
                f"the rows cannot form one table ({e}); a column must hold the same kind of value in every row "
                f"(columns: {extra})"
            ) from None


def _count(tokenizer: Any, messages: Messages, *, generation_prompt: bool) -> int:
    text = render(tokenizer, list(messages), add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _record(ex: Example) -> dict[str, Any]:
    prompt = list(ex.prompt or ())
    if ex.chosen is not None:
        return {"prompt": prompt, "chosen": list(ex.chosen), "rejected": list(ex.rejected or ())}
    if ex.completion is not None:
        return {"prompt": prompt, "completion": list(ex.completion), "label": bool(ex.label)}
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
    for ex in norm.examples:
        if ex.prompt is None:
            raise DatasetError(
                f"row {ex.row}: expected a prompt (preference, unpaired preference or prompt-only data), "
                f"got {norm.format!r} data"
            )
        prompt_len = _count(tokenizer, ex.prompt, generation_prompt=True)
        answers = [a for a in (ex.chosen, ex.rejected, ex.completion) if a is not None]
        full = [_count(tokenizer, (*ex.prompt, *a), generation_prompt=False) for a in answers]
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
        out.records.append(_record(ex))
        out.rows.append(ex.row)
        out.num_tokens += min(sum(full), max_length * len(full)) if full else prompt_len
    if not out.records:
        raise DatasetError(f"no row fits max_length={max_length}; raise Training(max_length=...)")
    return out
