"""Rows to the data a run feeds its trainer: normalise, infer and check the objective, encode (the encoding in
:mod:`tunekit.training_encoding`, its :func:`encode_for` re-exported here).

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
from collections.abc import Callable, Sequence
from typing import Any

from tunekit.data import normalise
from tunekit.data.arrow import ArrowNormalised, normalise_table
from tunekit.data.columns import numeric_labels, renamed_answer_column, unused_columns
from tunekit.data.formats import Example, NormalisedData
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import Layout, detect_layout
from tunekit.data.loading import base_dir_of
from tunekit.data.mapping import Data
from tunekit.data.mixed_tables import draw_table
from tunekit.data.mixture import Mix, MixedData, MixPart, mix_parts
from tunekit.data.streaming import StreamedData, first_rows
from tunekit.data.templated import find_template_markers, template_warning
from tunekit.errors import ConfigError, DatasetError, IncompatibleError
from tunekit.methods import Method
from tunekit.objectives import DPO, ORPO, Objective, infer_objective
from tunekit.training import Training
from tunekit.training_encoding import (
    check_image_template,
    encode_for,
    has_images,
    named_error,
    trains_on_images,
)

__all__ = [
    "check_compatible", "check_image_template", "encode_for", "has_images", "named_error", "normalise_for",
    "streams", "trains_on_images",
]  # fmt: skip

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
    ``what`` names the data in errors (``"training"``, ``"eval"``). A :class:`tunekit.Mix` is read source by
    source, each in its own layout (errors name the source), and drawn by ``Training(seed=...)``.
    """
    if isinstance(data, Mix):
        norm: NormalisedData = _normalise_mix(data, training=training, objective=objective, what=what)
        beside, pairs = "'prompt' and 'completion'", "the prompt/completion pairs"
    elif isinstance(data, Data) and data.streaming:
        norm = _normalise_stream(data, training=training, objective=objective, what=what)
        beside, pairs = "'prompt' and 'completion'", "the prompt/completion pairs"
    else:  # one source: read, normalised and checked by the Arrow driver (tunekit.data.arrow)
        norm, layout = _normalise_table(data, training=training, objective=objective, what=what)
        beside = _beside(layout)
        pairs = "the conversations" if layout is not None else "the prompt/completion pairs"
    chosen = objective or infer_objective(norm.format)
    if isinstance(norm, MixedData) and {p.data.format for p in norm.parts} == {"preference", "unpaired_preference"}:
        if norm.format not in chosen.data_formats:
            raise IncompatibleError(
                f"the {what} sources mix preference pairs with labelled answers (prompt/completion/label), which "
                f"train KTO together (each pair as two labelled answers), not {chosen.name}; pass objective=tk.KTO(), "
                f"or mix pairs with pairs to train {chosen.name}"
            )
    if norm.format == "unpaired_preference" and norm.format not in chosen.data_formats:
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
    if isinstance(norm, StreamedData) and not streams(chosen):
        trainer = "CPO trainer (DPO's SimPO loss)" if isinstance(chosen, DPO) else f"{chosen.name} trainer"
        raise IncompatibleError(
            f"tk.Data(..., streaming=True) cannot train {chosen.name}"
            + (" with loss='simpo'" if isinstance(chosen, DPO) else "")
            + f": trl's {trainer} prepares its whole dataset at once (a map with num_proc, which a streamed "
            "dataset does not take); leave streaming out, or train another objective (SFT, CausalLM, DPO with "
            "another loss, KTO, reward modelling, GRPO and RLOO stream)"
        )
    if objective is None:
        check_compatible(method, chosen)
    for _row, reason in norm.skipped:
        logger.warning("skipped %s", reason)
    return norm, chosen


def _normalise_source(
    rows: list[dict[str, Any]], data: Any, *, training: Training, objective: Objective | None, what: str
) -> tuple[NormalisedData, Layout | None]:
    """One source's rows (read from ``data``: relative image paths start from its folder) validated and normalised
    in its own layout, with the warnings ``fit`` gives about them."""
    try:
        norm = normalise(rows, on_bad_rows=training.on_bad_rows, images=ImageOptions.of(training, base_dir_of(data)))
    except DatasetError as e:
        if what == "training":
            raise
        raise DatasetError(f"{what}_data: {e}", row=e.row, field=e.field) from None
    layout = detect_layout(rows)
    beside = _beside(layout)
    _check_meaning(norm, rows[0], lambda: numeric_labels(rows), lambda i: rows[i - 1], objective, what, beside)
    _warn_columns(norm, unused_columns(norm.format, rows, layout.reads if layout is not None else frozenset()), what)
    return norm, layout


def _normalise_table(
    data: Any, *, training: Training, objective: Objective | None, what: str, read_as: str | None = None
) -> tuple[ArrowNormalised, Layout | None]:
    """One source read into Arrow and normalised in the data workers (:func:`tunekit.data.arrow.normalise_table`),
    with the warnings ``fit`` gives about it, from the per-row facts the map computed. ``read_as``: what reading
    calls the data, when not ``what`` (a tk.Mix's sources, whose errors the mixture names)."""
    norm = normalise_table(
        data,
        on_bad_rows=training.on_bad_rows,
        workers=training.data_workers,
        directory=training.cache_dir,
        what=what,
        images=ImageOptions.of(training, base_dir_of(data)),
        read_as=read_as,
    )
    first = norm.source_row(1)
    layout = detect_layout([first])
    _check_meaning(norm, first, norm.numeric_label_rows, norm.source_row, objective, what, _beside(layout))
    _warn_columns(norm, norm.unused(), what)
    return norm, layout


def _beside(layout: Layout | None) -> str:
    """The columns a 'label' stands beside, for messages."""
    return " and ".join(repr(c) for c in layout.columns if c != "label") if layout else "'prompt' and 'completion'"


def _warn_columns(norm: NormalisedData, unused: list[str], what: str) -> None:
    """The warnings ``fit`` gives about the data's columns: ``unused`` ones, and raw text that holds a hand-rendered
    instruction template."""
    if unused:
        logger.warning(
            "the %s data has columns that are not used for training: %s (the %r format reads none of them); if one "
            "was meant to be read, rename it, or map it with tk.Data(..., columns={...})",
            what,
            ", ".join(repr(c) for c in unused),
            norm.format,
        )
    if norm.format == "text":  # the learner's trap: an instruction template rendered by hand into raw text
        found = find_template_markers(_Field(norm.examples, "text"), rows=_Field(norm.examples, "row"))
        if found is not None:
            logger.warning("%s", template_warning(found, what))


def _normalise_stream(data: Data, *, training: Training, objective: Objective | None, what: str) -> StreamedData:
    """Streamed data with its first rows checked (format, layout, the warnings ``fit`` gives); the rest is read as
    training consumes it (:mod:`tunekit.data.streaming`)."""
    if what != "training":
        raise ConfigError(
            f"{what}_data: tk.Data(..., streaming=True) is for training data; eval data is evaluated whole at each "
            "evaluation, so it is prepared once into a memory-mapped Arrow table (it need not fit in memory): leave "
            "streaming out (or pass a slice of it, e.g. split='test[:1000]')"
        )
    if training.max_steps is None:
        raise ConfigError(
            "tk.Data(..., streaming=True): a stream has no length to count epochs by; set Training(max_steps=...) "
            "(the stream starts again from the top if it ends first)"
        )
    sample, layout = _normalise_source(first_rows(data), data, training=training, objective=objective, what=what)
    # The first rows' skipped rows are logged and counted as the stream reaches them.
    images = ImageOptions.of(training, base_dir_of(data))
    return StreamedData(
        sample.format,
        sample.examples,
        source=data,
        layout=layout,
        on_bad_rows=training.on_bad_rows,
        images=images,
    )


def _normalise_mix(mix: Mix, *, training: Training, objective: Objective | None, what: str) -> MixedData:
    """Each source of ``mix`` read and normalised on its own by the Arrow driver (its errors and skipped rows named
    by the source), then drawn into tables of their own and interleaved by ``training.seed``
    (:mod:`tunekit.data.mixed_tables`)."""
    parts = []
    for name, source in zip(mix.names, mix.sources):
        if isinstance(source, Data) and source.streaming:
            raise ConfigError(
                f"tk.Mix: {name} is streamed (streaming=True), which a mixture cannot draw from (it draws rows by "
                "position); leave streaming out, or train the stream on its own"
            )
        try:
            norm, _ = _normalise_table(source, training=training, objective=objective, what="training", read_as=what)
        except (DatasetError, IncompatibleError) as e:
            raise named_error(e, name, what) from None
        norm.skipped = [(row, f"{name}: {reason}") for row, reason in norm.skipped]
        parts.append(MixPart(name, norm, len(norm.examples)))
    try:
        return mix_parts(mix, parts, training.seed, what, draw=draw_table)
    except DatasetError as e:
        raise named_error(e, "", what) from None


class _Field(Sequence[Any]):
    """One field of the examples (``text``, ``row``), each read when asked for (the template-marker check reads a
    sample)."""

    def __init__(self, examples: Sequence[Example], name: str) -> None:
        self.examples = examples
        self.name = name

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, k: Any) -> Any:
        return getattr(self.examples[k], self.name)


def _check_meaning(
    norm: NormalisedData,
    first: dict[str, Any],
    numeric_rows: Callable[[], list[int]],
    source_row: Callable[[int], dict[str, Any]],
    objective: Objective | None,
    what: str,
    beside: str,
) -> None:
    """Refuse data whose objective would be guessed from a column that may mean something else (``beside``: the
    columns a 'label' stands beside). ``first``: the first source row; ``numeric_rows``: the rows whose 'label' is a
    number (computed only when needed); ``source_row``: a source row by its number."""
    if objective is None and norm.format == "unpaired_preference":
        numeric = numeric_rows()
        if numeric:
            raise DatasetError(
                f"the {what} data has a 'label' column of numbers (row {numeric[0]}: "
                f"{source_row(numeric[0])['label']!r}) beside {beside}: that is KTO's layout (1 marks a "
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


def streams(objective: Objective) -> bool:
    """Whether ``objective`` trains on a stream (``tk.Data(..., streaming=True)``): those tunekit tokenises, and the
    trl trainers that take a ``datasets.IterableDataset`` (DPO, KTO, reward modelling, GRPO, RLOO); not ORPO nor
    DPO's SimPO loss, whose trl trainers map their whole dataset with ``num_proc``."""
    if isinstance(objective, ORPO):
        return False
    return not (isinstance(objective, DPO) and objective.loss == "simpo")
