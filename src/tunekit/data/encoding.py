"""Tokenise normalised examples into ``input_ids`` and position-masked ``labels``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunekit.data.control_tokens import control_tokens, encode_plain, find_control_token, plain_spans
from tunekit.data.formats import Example
from tunekit.data.templates import render, render_segments
from tunekit.errors import DatasetError, IncompatibleError

__all__ = ["Encoded", "encode_examples"]

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    rows: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def to_dataset(self) -> Any:
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "labels": self.labels})


def _encode_chat(
    tokenizer: Any, ex: Example, train_on_prompt: bool, tokens: tuple[str, ...]
) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    messages = list(ex.messages or ())
    segments = render_segments(tokenizer, messages)
    if not segments:
        return ids, labels
    # The segments joined are the conversation up to its last answer; control tokens typed in it stay text.
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    spans = plain_spans(
        lambda ms: render(tokenizer, ms, add_generation_prompt=False), messages[: last + 1], tokens, row=ex.row
    )
    if spans:
        pieces, offset = [], 0
        for text, _ in segments:
            pieces.append(encode_plain(tokenizer, text, spans, offset=offset))
            offset += len(text)
    else:  # one batched call for the example's segments: the tokenizer's per-call overhead dominates short texts
        pieces = tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"]
    answers = sum(is_assistant for _, is_assistant in segments)
    if ex.trained is not None and answers != len(ex.trained):
        raise DatasetError(f"the chat template rendered {answers} assistant turns of {len(ex.trained)}")
    turn = 0
    for piece, (_text, is_assistant) in zip(pieces, segments):
        ids += piece
        if is_assistant:  # an assistant turn trains unless its row gave it OpenAI's "weight": 0
            trained = ex.trained is None or ex.trained[turn]
            turn += 1
        else:
            trained = train_on_prompt
        labels += piece if trained else [IGNORE] * len(piece)
    return ids, labels


def _encode_text(tokenizer: Any, ex: Example, add_eos: bool) -> tuple[list[int], list[int]]:
    ids = list(tokenizer(ex.text or "", add_special_tokens=True)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids, list(ids)


def encode_examples(
    tokenizer: Any,
    examples: list[Example],
    *,
    max_length: int,
    train_on_prompt: bool = False,
    add_eos: bool = True,
    on_bad_rows: str = "error",
    allow_control_tokens: bool = False,
) -> Encoded:
    """Encode, truncate to ``max_length`` and check every example keeps a supervised token.

    A control-token string inside a message (``<|im_end|>`` typed in it) is encoded as the plain text it is,
    unless ``allow_control_tokens`` (see :mod:`tunekit.data.control_tokens`). Raw text (``text`` rows) is the
    sequence as written, often pre-rendered chat whose markers must stay markers: one holding a control-token
    string is a bad row unless ``allow_control_tokens`` says to read them as such (encoding them as plain
    text without a word would silently unteach the markers; training on them untold would trust the data)."""
    out = Encoded([], [], [])
    tokens = () if allow_control_tokens else control_tokens(tokenizer)
    for ex in examples:
        if ex.messages is not None:
            try:
                ids, labels = _encode_chat(tokenizer, ex, train_on_prompt, tokens)
            except DatasetError as e:  # a template problem, not a bad row: never skipped, but say where
                message = str(e) if str(e).startswith(f"row {ex.row}:") else f"row {ex.row}: {e}"
                raise DatasetError(message, row=ex.row) from None
            except IncompatibleError as e:  # the template refused this conversation (its raise_exception)
                raise IncompatibleError(f"row {ex.row}: {e}") from None
        else:
            found = find_control_token([ex.text or ""], tokens)
            if found is not None:
                reason = (
                    f"row {ex.row}, field 'text': holds the control token {found!r}; pass "
                    "Training(allow_control_tokens=True) if the text is pre-rendered (its control tokens are meant), "
                    "or remove it"
                )
                if on_bad_rows == "skip":
                    out.skipped.append((ex.row, reason))
                    continue
                raise DatasetError(reason, row=ex.row, field="text")
            ids, labels = _encode_text(tokenizer, ex, add_eos)
        truncated = len(ids) > max_length
        if truncated:
            ids, labels = ids[:max_length], labels[:max_length]
            out.truncated += 1
        # A causal LM never predicts the first token, so a label there alone supervises nothing.
        if all(lab == IGNORE for lab in labels[1:]):
            if truncated:
                reason = (
                    f"row {ex.row}: no supervised token left after truncation to max_length={max_length} "
                    f"(the prompt alone is {len(ids)}+ tokens); raise Training(max_length=...) or shorten the prompt"
                )
            else:  # e.g. a one-token text without EOS: there is no next token to predict
                reason = (
                    f"row {ex.row}: nothing to learn: the example is {len(ids)} token(s) long and none after the "
                    "first is supervised; use longer text (or keep CausalLM(add_eos=True))"
                )
            if on_bad_rows == "skip":
                out.skipped.append((ex.row, reason))
                continue
            raise DatasetError(reason, row=ex.row)
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.rows.append(ex.row)
    if not out.input_ids:
        if out.skipped and "control token" in out.skipped[0][1]:
            raise DatasetError(f"no row left to train on: every row was skipped, the first as {out.skipped[0][1]}")
        raise DatasetError(
            f"no example has a supervised token after truncation to max_length={max_length}; "
            "raise Training(max_length=...)"
        )
    return out
