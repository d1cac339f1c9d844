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
from typing import Any

from tunekit.backends.base import RunSpec, VisionRows
from tunekit.data import encode_examples, load_rows, normalise
from tunekit.data.cache import cached_encode
from tunekit.data.columns import numeric_labels, renamed_answer_column, unused_columns
from tunekit.data.control_tokens import check_no_control_tokens
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import detect_layout
from tunekit.data.loading import base_dir_of
from tunekit.data.rows import TrainerRows, prepare_rows
from tunekit.data.templated import find_template_markers, template_warning
from tunekit.data.templates import render
from tunekit.errors import DatasetError, IncompatibleError
from tunekit.methods import Method
from tunekit.objectives import DPO, Objective, infer_objective
from tunekit.training import Training

__all__ = ["check_compatible", "check_image_template", "encode_for", "has_images", "normalise_for", "trains_on_images"]

logger = logging.getLogger("tunekit")


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
    rows = load_rows(data, what=what)
    try:
        norm = normalise(rows, on_bad_rows=training.on_bad_rows, images=ImageOptions.of(training, base_dir_of(data)))
    except DatasetError as e:
        if what == "training":
            raise
        raise DatasetError(f"{what}_data: {e}", row=e.row, field=e.field) from None
    layout = detect_layout(rows)
    beside = " and ".join(repr(c) for c in layout.columns if c != "label") if layout else "'prompt' and 'completion'"
    _check_meaning(norm, rows, objective, what, beside)
    unused = unused_columns(norm.format, rows, layout.reads if layout is not None else frozenset())
    if unused:
        logger.warning(
            "the %s data has columns that are not used for training: %s (the %r format reads none of them); if one "
            "was meant to be read, rename it, or map it with tk.Data(..., columns={...})",
            what,
            ", ".join(repr(c) for c in unused),
            norm.format,
        )
    if norm.format == "text":  # the learner's trap: an instruction template rendered by hand into raw text
        found = find_template_markers([ex.text for ex in norm.examples], rows=[ex.row for ex in norm.examples])
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


def _check_meaning(
    norm: NormalisedData, rows: list[dict[str, Any]], objective: Objective | None, what: str, beside: str
) -> None:
    """Refuse data whose objective would be guessed from a column that may mean something else (``beside``: the
    columns a 'label' stands beside)."""
    if objective is None and norm.format == "unpaired_preference":
        numeric = numeric_labels(rows)
        if numeric:
            raise DatasetError(
                f"the {what} data has a 'label' column of numbers (row {numeric[0]}: "
                f"{rows[numeric[0] - 1]['label']!r}) beside {beside}: that is KTO's layout (1 marks a "
                "desirable answer, 0 an undesirable one), but 0/1 may as well be class ids, and tunekit does not "
                "switch objective on a guess: pass objective=tk.KTO() to train on the labels, or drop the 'label' "
                "column to train SFT on the rest",
                row=numeric[0],
                field="label",
            )
    if norm.format == "prompt_only" and (objective is None or "prompt_only" not in objective.data_formats):
        hint = renamed_answer_column(rows[0])
        if hint is not None:
            raise DatasetError(
                f"row 1 of the {what} data has a 'prompt' but no 'completion' (nor 'chosen' / 'rejected'): {hint}; "
                "as they are, the rows are prompts only, which train with online RL (objective=tk.GRPO(reward=...)) "
                "and pass their other columns to the reward function",
                row=1,
                field=hint.split("'")[1],
            )


def has_images(norm: NormalisedData) -> bool:
    """Whether any row of ``norm`` holds an image (a vision row)."""
    return any(getattr(ex, "images", ()) for ex in norm.examples)


def check_image_template(tokenizer: Any, row: int) -> None:
    """Rows with images for a trainer that renders them itself (trl's DPO): the model's chat template must place an
    image (a text-only model's writes nothing for an image part, or fails on one): else an IncompatibleError naming
    the row and the fix."""
    mark = "\ue000"
    try:
        with_image = render(
            tokenizer,
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": mark}]}],
            add_generation_prompt=False,
        )
        without = render(
            tokenizer, [{"role": "user", "content": [{"type": "text", "text": mark}]}], add_generation_prompt=False
        )
    except Exception:  # a template that cannot render content parts is a text-only model's
        with_image = without = ""
    if with_image == without:
        raise IncompatibleError(
            f"the training data's row {row} holds an image, but this model is a text-only model: its chat template "
            "has no place for an image, and it has no vision tower to read one; use a vision-language model (one "
            "that transformers loads with AutoModelForImageTextToText, e.g. Qwen2.5-VL, Gemma 3, SmolVLM), or drop "
            "the images"
        )


def trains_on_images(objective: Objective) -> bool:
    """Whether ``objective`` trains on rows with images: SFT and CausalLM (tunekit encodes them with the model's
    processor) and DPO (trl's DPO trainer hands the images to the processor; not its SimPO loss, which trl's CPO
    trainer runs). KTO, ORPO, reward modelling, GRPO and RLOO read text only in trl."""
    if objective.tokenised_by_tunekit:
        return True
    return isinstance(objective, DPO) and objective.loss != "simpo"


def encode_for(spec: RunSpec, norm: NormalisedData, tokenizer: Any) -> Encoded | TrainerRows | VisionRows:
    """``norm`` as ``spec.objective`` trains on it: token ids with masked labels (SFT, CausalLM; cached), the
    conversational rows trl renders with the same template (preference, reward and RL objectives), or, for data with
    images, :class:`~tunekit.backends.base.VisionRows` that the backend encodes with the model's processor."""
    obj, training = spec.objective, spec.training
    if has_images(norm) and not trains_on_images(obj):
        row = next(ex.row for ex in norm.examples if getattr(ex, "images", ()))
        why = (
            "its SimPO loss runs in trl's CPO trainer, which reads text only; use another DPO loss (e.g. the default "
            "'sigmoid')"
            if isinstance(obj, DPO)
            else f"trl's {obj.name} trainer reads text only"
        )
        raise IncompatibleError(
            f"row {row} holds an image, and {obj.name} cannot train on images: {why}. Vision-language models train "
            "with tk.SFT() (or tk.CausalLM()) and tk.DPO() (preference pairs with the images in the prompt)"
        )
    if has_images(norm) and not obj.tokenised_by_tunekit:
        check_image_template(tokenizer, next(ex.row for ex in norm.examples if getattr(ex, "images", ())))
    if has_images(norm) and obj.tokenised_by_tunekit:
        vision_settings: dict[str, Any] = {
            "max_length": training.max_length,
            "train_on_prompt": getattr(obj, "train_on_prompt", False),
            "train_on": getattr(obj, "train_on", "all_assistant"),
            "reasoning": getattr(obj, "reasoning", "inference"),
            "add_eos": getattr(obj, "add_eos", True),
            "on_bad_rows": training.on_bad_rows,
            "allow_control_tokens": training.allow_control_tokens,
        }
        return VisionRows(list(norm.examples), vision_settings, list(norm.skipped))
    if not obj.reads_tools and any(ex.tools for ex in norm.examples):
        row = next(ex.row for ex in norm.examples if ex.tools)
        raise IncompatibleError(
            f"row {row} lists tools, which {obj.name} training cannot show the model (trl's {obj.name} renders "
            "prompts without them): train the tool-calling pairs with tk.DPO() (any of its losses) or tk.KTO(), or "
            "remove the 'tools' column"
        )
    if not obj.tokenised_by_tunekit:  # preference and RL rows: trl renders them with the same template
        if not training.allow_control_tokens:  # and would read a control token typed in them as a real one
            check_no_control_tokens(norm.examples, tokenizer, objective=obj.name)
        rows = prepare_rows(
            tokenizer,
            norm,
            max_length=training.max_length,
            whole_pairs=obj.model_head == "sequence_classification",
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
    enc = cached_encode(  # a second run on the same data, tokenizer and settings skips tokenising
        lambda: encode_examples(tokenizer, norm.examples, **settings),
        tokenizer,
        norm.examples,
        {"objective": obj.name, **settings},
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
