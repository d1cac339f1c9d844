"""What an export needs to remember from ``fit``: the data's statistics (for the model card) and a few
prompts from the data (the golden prompts an export is verified on)."""

from __future__ import annotations

from typing import Any

from tunekit.errors import ConfigError

__all__ = ["DEFAULT_PROMPTS", "data_summary_of", "golden_prompts", "summarise_data"]

MAX_KEPT_PROMPTS = 8
# Used only when the tuner has seen no data (e.g. ``tk.load`` of a save made before tunekit kept prompts).
DEFAULT_PROMPTS = ["Hello! Who are you?", "Write one sentence about the sea.", "What is 2 + 3?", "Translate: cheese"]


def _prompt_of(example: Any, fmt: str) -> Any:
    """The prompt part of one normalised example: a string, or chat messages ending with a user turn."""
    if example.text is not None:  # raw text (continued pretraining): its first half is the prompt
        words = example.text.split(" ")
        return " ".join(words[: max(1, len(words) // 2)])
    if example.prompt_text is not None:
        return example.prompt_text
    if example.prompt is not None:
        return [dict(m) for m in example.prompt]
    if example.messages is not None:
        msgs = list(example.messages)
        first_answer = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
        head = [dict(m) for m in msgs[:first_answer]]
        return head or None
    return None


def _sample(norm: Any) -> list[Any]:
    examples = list(norm.examples)
    if not examples:
        return []
    step = max(1, len(examples) // MAX_KEPT_PROMPTS)  # spread over the data, deterministic
    out = []
    for ex in examples[::step]:
        p = _prompt_of(ex, norm.format)
        if p is not None and p not in out:
            out.append(p)
        if len(out) == MAX_KEPT_PROMPTS:
            break
    return out


def summarise_data(train: Any, evaluation: Any = None) -> dict[str, Any]:
    """Rows, format and skipped rows of the training (and eval) data, and a few prompts from them (eval first)."""

    def stats(norm: Any) -> dict[str, Any]:
        return {"rows": len(norm.examples), "format": norm.format, "skipped_rows": len(norm.skipped)}

    prompts = (_sample(evaluation) if evaluation is not None else []) or _sample(train)
    return {
        "train": stats(train),
        "eval": stats(evaluation) if evaluation is not None else None,
        "prompts": prompts,
        "prompts_from": "eval" if evaluation is not None and _sample(evaluation) else "train",
    }


def golden_prompts(tuner: Any, given: Any, n: int) -> tuple[list[Any], str]:
    """The prompts to verify on and where they came from: the user's, else up to ``n`` kept from the data."""
    if given is not None:
        if isinstance(given, str) or (isinstance(given, list) and given and isinstance(given[0], dict)):
            given = [given]  # one prompt (a string or one conversation)
        prompts = list(given)
        if not prompts:
            raise ConfigError("export(golden_prompts=[]): pass at least one prompt, or None to sample from the data")
        for p in prompts:
            if not isinstance(p, (str, list)) or (isinstance(p, str) and not p):
                raise ConfigError(
                    f"export(golden_prompts=...): {p!r} is not a prompt; pass non-empty strings or lists of chat "
                    'messages like [{"role": "user", "content": "..."}]'
                )
        return prompts, "given"
    summary = getattr(tuner, "data_summary", None) or {}
    kept = list(summary.get("prompts") or [])
    if kept:
        return kept[:n], f"sampled from the {summary.get('prompts_from', 'training')} data"
    return DEFAULT_PROMPTS[:n], "tunekit's default prompts (the tuner has seen no data)"


def data_summary_of(tuner: Any) -> dict[str, Any] | None:
    """The tuner's data summary with the token count of its last run (what saves and model cards record)."""
    summary = getattr(tuner, "data_summary", None)
    if not summary:
        return None
    out = {**summary, "train": dict(summary.get("train") or {})}
    result = getattr(tuner, "last_result", None)
    if result is not None and out["train"]:
        out["train"]["tokens"] = result.num_tokens
    return out
