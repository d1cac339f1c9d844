"""Tokenise normalised examples into ``input_ids`` and position-masked ``labels``."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from tunekit.data.control_tokens import control_tokens, encode_plain, find_control_token, plain_spans
from tunekit.data.formats import Example
from tunekit.data.templates import render
from tunekit.data.turns import Reasoning, TrainOn, render_turns, supervised_turns
from tunekit.errors import DatasetError, IncompatibleError
from tunekit.plan import SourceFigures

__all__ = ["Encoded", "encode_examples"]

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    rows: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0
    sources: list[SourceFigures] = field(default_factory=list)  # per source of a tk.Mix

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def to_dataset(self) -> Any:
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "labels": self.labels})


def _encode_chat(
    tokenizer: Any,
    ex: Example,
    train_on_prompt: bool,
    tokens: tuple[str, ...],
    train_on: TrainOn,
    reasoning: Reasoning,
) -> list[tuple[list[int], list[int]]]:
    """The example's training sequences (usually one; see :mod:`tunekit.data.turns`): ids and labels."""
    messages = ex.messages or ()
    turns = supervised_turns(messages, ex.trained, train_on, row=ex.row)
    out = []
    for seq in render_turns(tokenizer, messages, turns, tools=ex.tools, reasoning=reasoning, row=ex.row):
        bounds = [0]
        for start, end in seq.spans:
            bounds += [start, end]
        bounds.append(len(seq.text))
        pieces_text = [seq.text[a:b] for a, b in itertools.pairwise(bounds)]  # prompt, turn, ..., turn, what follows
        # Control tokens typed in a message stay text; the template's own are control tokens.
        spans = plain_spans(
            lambda ms: render(tokenizer, ms, add_generation_prompt=False, tools=ex.tools),
            list(seq.messages),
            tokens,
            row=ex.row,
        )
        if spans:
            pieces = [encode_plain(tokenizer, text, spans, offset=a) for text, a in zip(pieces_text, bounds)]
        else:  # one batched call for the sequence's pieces: the tokenizer's per-call overhead dominates short texts
            pieces = tokenizer([t or " " for t in pieces_text], add_special_tokens=False)["input_ids"]
            pieces = [p if t else [] for p, t in zip(pieces, pieces_text)]
        ids: list[int] = []
        labels: list[int] = []
        for k, piece in enumerate(pieces):
            ids += piece
            labels += piece if (k % 2 == 1 or train_on_prompt) else [IGNORE] * len(piece)
        out.append((ids, labels))
    return out


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
    train_on: TrainOn = "all_assistant",
    reasoning: Reasoning = "inference",
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
                sequences = _encode_chat(tokenizer, ex, train_on_prompt, tokens, train_on, reasoning)
            except DatasetError as e:  # a template problem, not a bad row: never skipped, but say where
                message = str(e) if str(e).startswith(f"row {ex.row}:") else f"row {ex.row}: {e}"
                raise DatasetError(message, row=ex.row) from None
            except IncompatibleError as e:  # the template refused this conversation (its raise_exception)
                message = str(e) if str(e).startswith(f"row {ex.row}:") else f"row {ex.row}: {e}"
                raise IncompatibleError(message) from None
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
            sequences = [_encode_text(tokenizer, ex, add_eos)]
        for ids, labels in sequences:
            _add(out, ex.row, ids, labels, max_length=max_length, on_bad_rows=on_bad_rows)
    if not out.input_ids:
        if out.skipped and "control token" in out.skipped[0][1]:
            raise DatasetError(f"no row left to train on: every row was skipped, the first as {out.skipped[0][1]}")
        raise DatasetError(
            f"no example has a supervised token after truncation to max_length={max_length}; "
            "raise Training(max_length=...)"
        )
    return out


def _add(out: Encoded, row: int, ids: list[int], labels: list[int], *, max_length: int, on_bad_rows: str) -> None:
    """Truncate one sequence and keep it, or skip or refuse it when nothing in it is supervised."""
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
        out.truncated += 1
    # A causal LM never predicts the first token, so a label there alone supervises nothing.
    if all(lab == IGNORE for lab in labels[1:]):
        if truncated:
            reason = (
                f"row {row}: no supervised token left after truncation to max_length={max_length} "
                f"(the prompt alone is {len(ids)}+ tokens); raise Training(max_length=...) or shorten the prompt"
            )
        else:  # e.g. a one-token text without EOS: there is no next token to predict
            reason = (
                f"row {row}: nothing to learn: the example is {len(ids)} token(s) long and none after the "
                "first is supervised; use longer text (or keep CausalLM(add_eos=True))"
            )
        if on_bad_rows == "skip":
            out.skipped.append((row, reason))
            return
        raise DatasetError(reason, row=row)
    out.input_ids.append(ids)
    out.labels.append(labels)
    out.rows.append(row)
