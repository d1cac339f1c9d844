"""Rows to the data a run feeds its trainer: normalise, infer and check the objective, encode.

One path for ``Tuner.fit`` / ``start`` / ``prepare`` and for ``plan`` (the backend's planning encodes
with the tokenizer it built), so that what a plan counts is what a run trains on.

Example:
    >>> import tunekit as tk
    >>> from tunekit.training_data import normalise_for
    >>> norm, objective = normalise_for(
    ...     [{"prompt": "2+2=", "completion": "4"}], training=tk.Training(), method=tk.LoRA(), objective=None
    ... )
    >>> norm.format, objective.name
    ('prompt_completion', 'SFT')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tunekit.backends.base import RunSpec
from tunekit.data import encode_examples
from tunekit.data.arrow import ArrowNormalised, encode_table, normalise_table, rows_table, table_digest
from tunekit.data.cache import cache_key, cached_encode, entry_path
from tunekit.data.columns import renamed_answer_column
from tunekit.data.control_tokens import check_no_control_tokens
from tunekit.data.encoding import Encoded
from tunekit.data.formats import Example, NormalisedData
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import detect_layout
from tunekit.data.loading import base_dir_of
from tunekit.data.rows import TrainerRows, prepare_rows
from tunekit.data.templated import find_template_markers, template_warning
from tunekit.errors import DatasetError, IncompatibleError
from tunekit.methods import Method
from tunekit.objectives import Objective, infer_objective
from tunekit.training import Training

__all__ = ["check_compatible", "encode_for", "normalise_for"]

logger = logging.getLogger("tunekit")


def _has_tools(norm: NormalisedData) -> bool:
    if isinstance(norm, ArrowNormalised):
        return norm.has_tools
    return any(ex.tools for ex in norm.examples)


def check_compatible(method: Method, objective: Objective) -> None:
    """Raise when ``objective`` cannot train (e.g. GRPO without a reward) or ``method`` does not support it."""
    objective.check_ready()
    if not method.supports(objective.name):
        raise IncompatibleError(
            f"{method.name} does not support the {objective.name} objective; "
            f"it supports {sorted(method.objectives or [])}"
        )


def normalise_for(
    data: Any,
    *,
    training: Training,
    method: Method,
    objective: Objective | None,
    what: str = "training",
) -> tuple[NormalisedData, Objective]:
    """Load and validate ``data``; returns it normalised, with the objective it trains.

    ``objective`` is the one the run must train (``None``: inferred from the data's format, text ->
    CausalLM, preference pairs -> DPO, labelled rows -> KTO, else SFT, and checked against ``method``).
    ``what`` names the data in errors (``"training"``, ``"eval"``).
    """
    norm = normalise_table(
        data,
        on_bad_rows=training.on_bad_rows,
        workers=training.data_workers,
        directory=training.cache_dir,
        what=what,
        images=ImageOptions.of(training, base_dir_of(data)),
    )
    first = norm.source_row(1)
    layout = detect_layout([first])
    beside = " and ".join(repr(c) for c in layout.columns if c != "label") if layout else "'prompt' and 'completion'"
    _check_meaning(norm, first, objective, what, beside)
    unused = norm.unused()
    if unused:
        logger.warning(
            "the %s data has columns that are not used for training: %s (the %r format reads none of them); if one "
            "was meant to be read, rename it, or map it with tk.Data(..., columns={...})",
            what,
            ", ".join(repr(c) for c in unused),
            norm.format,
        )
    if norm.format == "text":  # the learner's trap: an instruction template rendered by hand into raw text
        texts = _Texts(norm.examples)
        found = find_template_markers(texts, rows=_Rows(norm.examples))
        if found is not None:
            logger.warning("%s", template_warning(found, what))
    chosen = objective or infer_objective(norm.format)
    if norm.format == "unpaired_preference" and norm.format not in chosen.data_formats:
        pairs = "the conversations" if layout is not None else "the prompt/completion pairs"
        raise IncompatibleError(
            f"the {what} data has a 'label' column beside {beside} (KTO's layout: True marks a desirable answer, "
            f"False an undesirable one), which {chosen.name} cannot use; drop the 'label' column to train "
            f"{chosen.name} on {pairs}, or pass objective=tk.KTO() to train on the labels"
        )
    if norm.format not in chosen.data_formats:
        raise IncompatibleError(
            f"the {what} data is in the {norm.format!r} format, which {chosen.name} cannot train on; "
            f"{chosen.name} takes {sorted(chosen.data_formats)}"
            + (" (raw text trains with tk.CausalLM())" if norm.format == "text" else "")
        )
    if objective is None:
        check_compatible(method, chosen)
    for _row, reason in norm.skipped:
        logger.warning("skipped %s", reason)
    return norm, chosen


class _Texts(Sequence[str | None]):
    """The examples' texts, each read when asked for (the template-marker check reads a sample)."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, k: Any) -> Any:
        return self.examples[k].text


class _Rows(Sequence[int]):
    """The examples' row numbers, each read when asked for."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, k: Any) -> Any:
        return self.examples[k].row


def _check_meaning(
    norm: ArrowNormalised, first: dict[str, Any], objective: Objective | None, what: str, beside: str
) -> None:
    """Refuse data whose objective would be guessed from a column that may mean something else (``beside``: the
    columns a 'label' stands beside)."""
    if objective is None and norm.format == "unpaired_preference":
        numeric = norm.numeric_label_rows()
        if numeric:
            raise DatasetError(
                f"the {what} data has a 'label' column of numbers (row {numeric[0]}: "
                f"{norm.source_row(numeric[0])['label']!r}) beside {beside}: that is KTO's layout (1 marks a "
                "desirable answer, 0 an undesirable one), but 0/1 may as well be class ids, and tunekit does not "
                "switch objective on a guess: pass objective=tk.KTO() to train on the labels, or drop the 'label' "
                "column to train SFT on the rest",
                row=numeric[0],
                field="label",
            )
    if norm.format == "prompt_only" and (objective is None or "prompt_only" not in objective.data_formats):
        hint = renamed_answer_column(first)
        if hint is not None:
            raise DatasetError(
                f"row 1 of the {what} data has a 'prompt' but no 'completion' (nor 'chosen' / 'rejected'): {hint}; "
                "as they are, the rows are prompts only, which train with online RL (objective=tk.GRPO(reward=...)) "
                "and pass their other columns to the reward function",
                row=1,
                field=hint.split("'")[1],
            )


def encode_for(spec: RunSpec, norm: NormalisedData, tokenizer: Any) -> Encoded | TrainerRows:
    """``norm`` as ``spec.objective`` trains on it: token ids with masked labels (SFT, CausalLM; cached), or
    the conversational rows trl renders with the same template (preference, reward and RL objectives)."""
    obj, training = spec.objective, spec.training
    if not obj.reads_tools and _has_tools(norm):
        row = next(ex.row for ex in norm.examples if ex.tools)
        raise IncompatibleError(
            f"row {row} lists tools, which {obj.name} training cannot show the model (trl's {obj.name} renders "
            "prompts without them): train the tool-calling pairs with tk.DPO() (any of its losses) or tk.KTO(), or "
            "remove the 'tools' column"
        )
    if not obj.tokenised_by_tunekit:  # preference and RL rows: trl renders them with the same template
        if not training.allow_control_tokens:  # and would read a control token typed in them as a real one
            check_no_control_tokens(norm.examples, tokenizer, objective=obj.name)
        whole_pairs = obj.model_head == "sequence_classification"
        if isinstance(norm, ArrowNormalised):  # in the data workers, the records kept in an Arrow file
            rows = rows_table(
                tokenizer,
                norm,
                max_length=training.max_length,
                whole_pairs=whole_pairs,
                on_bad_rows=training.on_bad_rows,
                workers=training.data_workers,
            )
        else:
            rows = prepare_rows(
                tokenizer,
                norm,
                max_length=training.max_length,
                whole_pairs=whole_pairs,
                on_bad_rows=training.on_bad_rows,
            )
        rows.skipped = norm.skipped + rows.skipped
        for _row, reason in rows.skipped[len(norm.skipped) :]:
            logger.warning("skipped %s", reason)
        if rows.truncated:
            logger.warning(
                "%d of %d rows are longer than max_length=%d; their answers will be truncated",
                rows.truncated,
                len(rows.records),
                training.max_length,
            )
        return rows
    settings: dict[str, Any] = {
        "max_length": training.max_length,
        "train_on_prompt": getattr(obj, "train_on_prompt", False),
        "train_on": getattr(obj, "train_on", "all_assistant"),
        "reasoning": getattr(obj, "reasoning", "inference"),
        "add_eos": getattr(obj, "add_eos", True),
        "on_bad_rows": training.on_bad_rows,
        "allow_control_tokens": training.allow_control_tokens,
    }
    keyed = {"objective": obj.name, **settings}
    if isinstance(norm, ArrowNormalised):
        # A second run on the same data, tokenizer and settings skips tokenising (the key: data.cache).
        path = (
            entry_path(cache_key(tokenizer, table_digest(norm), keyed), training.cache_dir) if training.cache else None
        )
        enc = encode_table(tokenizer, norm, settings, path=path, workers=training.data_workers)
    else:  # examples given as a list (tests, callers of data.normalise)
        enc = cached_encode(
            lambda: encode_examples(tokenizer, list(norm.examples), **settings),
            tokenizer,
            list(norm.examples),
            keyed,
            enabled=training.cache,
            directory=training.cache_dir,
        )
    for _row, reason in enc.skipped:  # rows that tokenised to nothing to learn (normalise logged its own)
        logger.warning("skipped %s", reason)
    enc.skipped = norm.skipped + enc.skipped
    if enc.truncated:
        logger.warning(
            "%d of %d examples were longer than max_length=%d and were truncated",
            enc.truncated,
            len(enc.input_ids),
            training.max_length,
        )
    return enc
