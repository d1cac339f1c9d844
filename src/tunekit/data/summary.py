"""What a run keeps of its data after ``fit``: rows, format and skipped rows (and, for data with images, images
per row and their sizes; per source for a ``tk.Mix``), and a few prompts from it.

Saves and model cards record the summary; exports verify on its prompts (the golden prompts).

Example:
    >>> from tunekit.data import normalise
    >>> from tunekit.data.summary import summarise_data
    >>> summary = summarise_data(normalise([{"prompt": "2+2=", "completion": "4"}]))
    >>> summary["train"], summary["prompts"]
    ({'rows': 1, 'format': 'prompt_completion', 'skipped_rows': 0}, [[{'role': 'user', 'content': '2+2='}]])
"""

from __future__ import annotations

from typing import Any

from tunekit.data.formats import Example, NormalisedData
from tunekit.data.images import image_stats
from tunekit.data.mixture import MixedData
from tunekit.data.streaming import StreamedData
from tunekit.results import FitResult

__all__ = ["MAX_KEPT_PROMPTS", "data_summary_of", "summarise_data"]

MAX_KEPT_PROMPTS = 8


def _prompt_of(example: Example) -> Any:
    """The prompt part of one normalised example: a string, or chat messages ending with a user turn."""
    if example.text is not None:  # raw text (continued pretraining): its first half is the prompt
        words = example.text.split(" ")
        return " ".join(words[: max(1, len(words) // 2)])
    if example.prompt_text is not None and not example.images:  # with images: the messages, which show their places
        return example.prompt_text
    if example.prompt is not None:
        return [dict(m) for m in example.prompt]
    if example.messages is not None:
        msgs = list(example.messages)
        first_answer = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
        head = [dict(m) for m in msgs[:first_answer]]
        return head or None
    return None


def _sample(norm: NormalisedData) -> list[Any]:
    examples = norm.examples  # a list, or read from an Arrow table: only the sampled ones are read
    if not examples:
        return []
    step = max(1, len(examples) // MAX_KEPT_PROMPTS)  # spread over the data, deterministic
    out = []
    for k in range(0, len(examples), step):
        p = _prompt_of(examples[k])
        if p is not None and p not in out:
            out.append(p)
        if len(out) == MAX_KEPT_PROMPTS:
            break
    return out


def summarise_data(train: NormalisedData, evaluation: NormalisedData | None = None) -> dict[str, Any]:
    """Rows, format and skipped rows of the training (and eval) data (with images: their counts and sizes,
    :func:`tunekit.data.images.image_stats`), and a few prompts from them (eval first)."""

    def stats(norm: NormalisedData) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": len(norm.examples), "format": norm.format, "skipped_rows": len(norm.skipped)}
        if isinstance(norm, StreamedData):  # rows: those checked before the run, until the run counts them
            out["streaming"] = True
        if isinstance(norm, MixedData):  # a tk.Mix: each source's valid rows, the rows drawn from it and its format
            out["sources"] = [
                {"name": p.name, "rows": p.available, "drawn": len(p.data.examples), "format": p.data.format}
                for p in norm.parts
            ]
        images = image_stats([ex.images for ex in norm.examples])  # None for text-only data: the keys stay
        return {**out, "images": images} if images is not None else out

    from_eval = _sample(evaluation) if evaluation is not None else []
    return {
        "train": stats(train),
        "eval": stats(evaluation) if evaluation is not None else None,
        "prompts": from_eval or _sample(train),
        "prompts_from": "eval" if from_eval else "train",
    }


def data_summary_of(summary: dict[str, Any] | None, result: FitResult | None) -> dict[str, Any] | None:
    """``summary`` with the token count of the run's ``result`` (what saves and model cards record)."""
    if not summary:
        return None
    out = {**summary, "train": dict(summary.get("train") or {})}
    if result is not None and out["train"]:
        out["train"]["tokens"] = result.num_tokens
        if out["train"].get("streaming"):  # the rows the run read from the stream
            out["train"]["rows"] = result.num_examples
    return out
