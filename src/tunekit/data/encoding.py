"""Tokenise normalised examples into ``input_ids`` and position-masked ``labels``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunekit.data.control_tokens import control_tokens, encode_plain, find_control_token, plain_spans
from tunekit.data.formats import Example
from tunekit.data.templates import render, render_many
from tunekit.data.turns import Reasoning, TrainOn, render_turns, supervised_turns
from tunekit.errors import DatasetError, IncompatibleError
from tunekit.plan import SourceFigures

__all__ = ["Encoded", "TableColumn", "encode_batch", "encode_example", "encode_examples", "token_ids"]

IGNORE = -100


class TableColumn(Sequence[Any]):
    """One column of a memory-mapped table, read as a list is (compares equal to a list of the same values)."""

    def __init__(self, column: Any) -> None:
        self.column = column  # a datasets Column: lazy, decoded a value at a time

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self.column[j] for j in range(*k.indices(len(self)))]
        return self.column[k]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.column)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, TableColumn)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __add__(self, other: Sequence[Any]) -> list[Any]:
        return [*self, *other]

    def __radd__(self, other: Sequence[Any]) -> list[Any]:
        return [*other, *self]

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Encoded:
    """Token ids and labels per training sequence, the row each came from, the rows skipped and the sequences
    truncated. ``table``: the memory-mapped Arrow table the lists are read from (the Arrow driver's result,
    :mod:`tunekit.data.arrow`), whose columns ``input_ids`` / ``labels`` / ``rows`` are then read lazily."""

    input_ids: Sequence[list[int]]
    labels: Sequence[list[int]]
    rows: Sequence[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0
    table: Any = None
    sources: list[SourceFigures] = field(default_factory=list)  # per source of a tk.Mix

    @classmethod
    def of_table(cls, table: Any, skipped: list[tuple[int, str]], truncated: int) -> Encoded:
        cols = {name: TableColumn(table[name]) for name in ("input_ids", "labels", "rows")}
        return cls(cols["input_ids"], cols["labels"], cols["rows"], list(skipped), truncated, table)

    @property
    def num_tokens(self) -> int:
        if self.table is not None:
            import pyarrow.compute as pc

            return int(pc.sum(pc.list_value_length(self.table.data.column("input_ids"))).as_py() or 0)
        return sum(len(x) for x in self.input_ids)

    def to_dataset(self) -> Any:
        if self.table is not None:
            return self.table.select_columns(["input_ids", "labels"])
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "labels": self.labels})


@dataclass
class _Pieces:
    """One training sequence before tokenising: its texts (prompt, turn, ..., turn, what follows; odd pieces are
    supervised), and their ids already when control-token spans forced a piece-by-piece encoding (else None)."""

    texts: list[str]
    ids: list[list[int]] | None = None


def _chat_pieces(
    tokenizer: Any,
    ex: Example,
    tokens: tuple[str, ...],
    train_on: TrainOn,
    reasoning: Reasoning,
    markers: Sequence[str] | None = None,
    whole: str | None = None,
) -> list[_Pieces]:
    """The example's training sequences (usually one; see :mod:`tunekit.data.turns`) as text pieces (``markers``:
    the tokenizer's control tokens, when the caller has them; ``whole``: the conversation's rendering, when the
    caller rendered it)."""
    messages = ex.messages or ()
    turns = supervised_turns(messages, ex.trained, train_on, row=ex.row)
    out = []
    rendered = render_turns(
        tokenizer, messages, turns, tools=ex.tools, reasoning=reasoning, row=ex.row, markers=markers, whole=whole
    )
    for seq in rendered:
        bounds = [0]
        for start, end in seq.spans:
            bounds += [start, end]
        bounds.append(len(seq.text))
        texts = [seq.text[a:b] for a, b in itertools.pairwise(bounds)]
        # Control tokens typed in a message stay text; the template's own are control tokens.
        spans = plain_spans(
            lambda ms: render(tokenizer, ms, add_generation_prompt=False, tools=ex.tools),
            list(seq.messages),
            tokens,
            row=ex.row,
        )
        ids = [encode_plain(tokenizer, text, spans, offset=a) for text, a in zip(texts, bounds)] if spans else None
        out.append(_Pieces(texts, ids))
    return out


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's ids, in one call (the tokenizer's per-call overhead dominates short texts); "" has none."""
    if not any(texts):
        return [[] for _ in texts]
    unique = dict.fromkeys(texts)  # a batch repeats pieces (what follows a turn, a system)
    unique.pop("", None)
    ids = dict(zip(unique, token_ids(tokenizer, list(unique), add_special_tokens=False)))
    ids[""] = []
    return [ids[t] for t in texts]  # shared by equal pieces: read, never changed (_assemble copies them)


def token_ids(tokenizer: Any, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=...)["input_ids"]``. For a fast tokenizer the first text goes through
    that call (which sets the Rust tokenizer's truncation, padding and special-token handling as every call does) and
    the rest straight to the Rust tokenizer with that state: the same ids, without building a dict of attention masks
    and offsets per text (a third of the time of a batch of short texts)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    first = [list(ids) for ids in tokenizer(texts[:1], add_special_tokens=add_special_tokens)["input_ids"]]
    if len(texts) == 1:
        return first
    if backend is None or backend.truncation is not None or backend.padding is not None:
        rest = tokenizer(texts[1:], add_special_tokens=add_special_tokens)["input_ids"]
        return first + [list(ids) for ids in rest]
    return first + [e.ids for e in backend.encode_batch(texts[1:], add_special_tokens=add_special_tokens)]


def _assemble(pieces: list[list[int]], train_on_prompt: bool) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for k, piece in enumerate(pieces):
        ids += piece
        labels += piece if (k % 2 == 1 or train_on_prompt) else [IGNORE] * len(piece)
    return ids, labels


def _text_ids(tokenizer: Any, ids: list[int], add_eos: bool) -> tuple[list[int], list[int]]:
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
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    rows: list[int] = []
    out = Encoded(input_ids, labels, rows)
    tokens = () if allow_control_tokens else control_tokens(tokenizer)
    for ex in examples:
        one = encode_example(
            tokenizer, ex, max_length=max_length, train_on_prompt=train_on_prompt, add_eos=add_eos,
            on_bad_rows=on_bad_rows, tokens=tokens, train_on=train_on, reasoning=reasoning,
        )  # fmt: skip
        input_ids += one.input_ids
        labels += one.labels
        rows += one.rows
        out.skipped += one.skipped
        out.truncated += one.truncated
    if not out.input_ids:
        if out.skipped and "control token" in out.skipped[0][1]:
            raise DatasetError(f"no row left to train on: every row was skipped, the first as {out.skipped[0][1]}")
        raise DatasetError(
            f"no example has a supervised token after truncation to max_length={max_length}; "
            "raise Training(max_length=...)"
        )
    return out


def encode_example(
    tokenizer: Any,
    ex: Example,
    *,
    max_length: int,
    tokens: tuple[str, ...],
    train_on_prompt: bool = False,
    add_eos: bool = True,
    on_bad_rows: str = "error",
    train_on: TrainOn = "all_assistant",
    reasoning: Reasoning = "inference",
) -> Encoded:
    """One example's sequences (usually one), with the reasons it was skipped and how many were truncated: what
    :func:`encode_examples` does per example (``tokens``: the control-token strings to keep as text, ``()`` when
    ``allow_control_tokens``); raises DatasetError for a bad row unless ``on_bad_rows="skip"``."""
    out = Encoded([], [], [])
    plan = _plan(tokenizer, ex, tokens, on_bad_rows, train_on, reasoning, out)
    _add_plan(
        out, ex.row, plan, tokenizer,
        text_ids=lambda text: list(tokenizer(text, add_special_tokens=True)["input_ids"]),
        piece_ids=lambda texts: _tokenize(tokenizer, texts),
        add_eos=add_eos, train_on_prompt=train_on_prompt, max_length=max_length, on_bad_rows=on_bad_rows,
    )  # fmt: skip
    return out


def _add_plan(
    out: Encoded,
    row: int,
    plan: list[_Pieces] | str | None,
    tokenizer: Any,
    *,
    text_ids: Callable[[str], list[int]],
    piece_ids: Callable[[list[str]], list[list[int]]],
    add_eos: bool,
    train_on_prompt: bool,
    max_length: int,
    on_bad_rows: str,
) -> None:
    """Tokenise what :func:`_plan` chose and keep each sequence in ``out``: ``text_ids`` gives a text row's ids (with
    the tokenizer's special tokens), ``piece_ids`` the ids of a sequence's text pieces (one list per piece)."""
    if plan is None:
        return  # skipped
    if isinstance(plan, str):
        sequences = [_text_ids(tokenizer, text_ids(plan), add_eos)]
    else:
        sequences = [
            _assemble(seq.ids if seq.ids is not None else piece_ids(seq.texts), train_on_prompt) for seq in plan
        ]
    for ids, labels in sequences:
        _add(out, row, ids, labels, max_length=max_length, on_bad_rows=on_bad_rows)


def _plan(
    tokenizer: Any,
    ex: Example,
    tokens: tuple[str, ...],
    on_bad_rows: str,
    train_on: TrainOn,
    reasoning: Reasoning,
    out: Encoded,
    markers: Sequence[str] | None = None,
    whole: str | None = None,
) -> list[_Pieces] | str | None:
    """What of ``ex`` to tokenise: a conversation's sequences as text pieces, a text row's text, or None when the row
    is skipped (its reason added to ``out``); raises for a bad row (or a template problem, which is never skipped)."""
    if ex.messages is not None:
        try:
            return _chat_pieces(tokenizer, ex, tokens, train_on, reasoning, markers, whole)
        except DatasetError as e:  # a template problem, not a bad row: never skipped, but say where
            message = str(e) if str(e).startswith(f"row {ex.row}:") else f"row {ex.row}: {e}"
            raise DatasetError(message, row=ex.row) from None
        except IncompatibleError as e:  # the template refused this conversation (its raise_exception)
            message = str(e) if str(e).startswith(f"row {ex.row}:") else f"row {ex.row}: {e}"
            raise IncompatibleError(message) from None
    found = find_control_token([ex.text or ""], tokens)
    if found is not None:
        reason = (
            f"row {ex.row}, field 'text': holds the control token {found!r}; pass "
            "Training(allow_control_tokens=True) if the text is pre-rendered (its control tokens are meant), "
            "or remove it"
        )
        if on_bad_rows == "skip":
            out.skipped.append((ex.row, reason))
            return None
        raise DatasetError(reason, row=ex.row, field="text")
    return ex.text or ""


def encode_batch(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int,
    tokens: tuple[str, ...],
    train_on_prompt: bool = False,
    add_eos: bool = True,
    on_bad_rows: str = "error",
    train_on: TrainOn = "all_assistant",
    reasoning: Reasoning = "inference",
    raise_errors: bool = True,
) -> list[Encoded | DatasetError | IncompatibleError]:
    """:func:`encode_example` for each of ``examples``, with the texts of all of them tokenised in two calls (chat
    pieces, and text rows with the tokenizer's special tokens): the same ids, without the tokenizer's per-call cost
    per row. Each example's result, or, unless ``raise_errors``, the error it raised (else the first bad example
    raises, as :func:`encode_example` on each in turn would)."""
    markers = control_tokens(tokenizer)
    # Plain conversations (text content, no tools or reasoning) rendered in one call of the template; on any failure
    # render_many gives None and each row renders alone (raising its own error).
    plain = [k for k, ex in enumerate(examples) if ex.messages is not None and not ex.tools and all(
        isinstance(m.get("content"), str) and not m.get("reasoning_content") for m in ex.messages
    )]  # fmt: skip
    rendered = render_many(tokenizer, [list(examples[k].messages or ()) for k in plain]) or []
    wholes: dict[int, str] = dict(zip(plain, rendered))
    outs: list[Encoded] = []
    plans: list[list[_Pieces] | str | DatasetError | IncompatibleError | None] = []
    for k, ex in enumerate(examples):
        out = Encoded([], [], [])
        try:
            plan: Any = _plan(tokenizer, ex, tokens, on_bad_rows, train_on, reasoning, out, markers, wholes.get(k))
        except (DatasetError, IncompatibleError) as e:
            plan = e  # raised in row order below, after any bad row before it
        outs.append(out)
        plans.append(plan)
    chat = [t for p in plans if isinstance(p, list) for seq in p if seq.ids is None for t in seq.texts]
    chat_ids = iter(_tokenize(tokenizer, chat))
    texts = [p for p in plans if isinstance(p, str)]
    text_ids = iter(token_ids(tokenizer, texts, add_special_tokens=True) if texts else [])

    def next_text(_text: str) -> list[int]:  # the next text row's ids, tokenised above
        return list(next(text_ids))

    def next_pieces(texts: list[str]) -> list[list[int]]:
        return [next(chat_ids) for _ in texts]

    results: list[Encoded | DatasetError | IncompatibleError] = []
    for ex, out, plan in zip(examples, outs, plans):
        try:
            if isinstance(plan, (DatasetError, IncompatibleError)):
                raise plan
            _add_plan(
                out, ex.row, plan, tokenizer,
                text_ids=next_text, piece_ids=next_pieces,
                add_eos=add_eos, train_on_prompt=train_on_prompt, max_length=max_length, on_bad_rows=on_bad_rows,
            )  # fmt: skip
        except (DatasetError, IncompatibleError) as e:
            if raise_errors:
                raise
            results.append(e)
            continue
        results.append(out)
    return results


def _add(out: Encoded, row: int, ids: list[int], labels: list[int], *, max_length: int, on_bad_rows: str) -> None:
    """Truncate one sequence and keep it, or skip or refuse it when nothing in it is supervised."""
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
        out.truncated += 1
    # A causal LM never predicts the first token, so a label there alone supervises nothing.
    if labels[1:].count(IGNORE) >= len(labels) - 1:  # every label after the first is IGNORE (counted in C)
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
    out.input_ids.append(ids)  # type: ignore[attr-defined]
    out.labels.append(labels)  # type: ignore[attr-defined]
    out.rows.append(row)  # type: ignore[attr-defined]
