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
from collections.abc import Callable, Sequence
from typing import Any

from tunekit.backends.base import RunSpec, VisionRows
from tunekit.data import encode_examples, normalise
from tunekit.data.arrow import ArrowNormalised, encode_table, normalise_table, rows_table, table_digest
from tunekit.data.cache import cache_key, cached_encode, entry_path
from tunekit.data.columns import numeric_labels, renamed_answer_column, unused_columns
from tunekit.data.control_tokens import check_no_control_tokens
from tunekit.data.encoding import Encoded
from tunekit.data.formats import Example, NormalisedData
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import Layout, detect_layout
from tunekit.data.loading import base_dir_of
from tunekit.data.mapping import Data
from tunekit.data.mixed_tables import draw_table, interleave_encoded, unpair_table
from tunekit.data.mixture import Interleaved, Mix, MixedData, MixPart, interleave, mix_parts
from tunekit.data.rows import TrainerRows, prepare_row, prepare_rows
from tunekit.data.streaming import SAMPLE_ROWS, StreamedData, StreamedEncoded, StreamedRows, first_rows
from tunekit.data.tables import CHUNK
from tunekit.data.templated import find_template_markers, template_warning
from tunekit.data.templates import image_renders
from tunekit.errors import ConfigError, DatasetError, IncompatibleError
from tunekit.methods import Method
from tunekit.objectives import DPO, ORPO, Objective, infer_objective
from tunekit.plan import SourceFigures
from tunekit.training import Training

__all__ = [
    "check_compatible", "check_image_template", "encode_for", "has_images", "named_error", "normalise_for",
    "streams", "trains_on_images",
]  # fmt: skip

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
        found = find_template_markers(_Texts(norm.examples), rows=_Rows(norm.examples))
        if found is not None:
            logger.warning("%s", template_warning(found, what))


def _normalise_stream(data: Data, *, training: Training, objective: Objective | None, what: str) -> StreamedData:
    """Streamed data with its first rows checked (format, layout, the warnings ``fit`` gives); the rest is read as
    training consumes it (:mod:`tunekit.data.streaming`)."""
    if what != "training":
        raise ConfigError(
            f"{what}_data: tk.Data(..., streaming=True) is for training data; eval data is evaluated whole, so it "
            "must fit in memory: leave streaming out (or pass a slice of it, e.g. split='test[:1000]')"
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


def named_error(e: DatasetError | IncompatibleError, name: str, what: str) -> DatasetError | IncompatibleError:
    """``e`` about the mixture's source ``name`` (unless it names it already), for the ``what`` data."""
    message = str(e) if not name or name in str(e) else f"{name}: {e}"
    if what != "training":
        message = f"{what}_data: {message}"
    if isinstance(e, DatasetError):
        return DatasetError(message, row=e.row, field=e.field)
    return IncompatibleError(message)


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


def has_images(norm: NormalisedData) -> bool:
    """Whether any row of ``norm`` holds an image (a vision row)."""
    return norm.has_images  # the Arrow driver's data answers from a per-row count its normalising map kept


def check_image_template(tokenizer: Any, row: int) -> None:
    """Rows with images for a trainer that renders them itself (trl's DPO): the model's chat template must place an
    image (a text-only model's writes nothing for an image part, or fails on one): else an IncompatibleError naming
    the row and the fix."""
    try:
        with_image, without = image_renders(tokenizer)
    except Exception:  # a template that cannot render content parts is a text-only model's
        with_image = without = ""
    if with_image == without:
        raise IncompatibleError(
            f"the training data's row {row} holds an image, but this model is a text-only model: its chat template "
            "has no place for an image, and it has no vision tower to read one; use a vision-language model (one "
            "that transformers loads with AutoModelForImageTextToText, e.g. Qwen2.5-VL, Gemma 3, SmolVLM), or drop "
            "the images"
        )


def streams(objective: Objective) -> bool:
    """Whether ``objective`` trains on a stream (``tk.Data(..., streaming=True)``): those tunekit tokenises, and the
    trl trainers that take a ``datasets.IterableDataset`` (DPO, KTO, reward modelling, GRPO, RLOO); not ORPO nor
    DPO's SimPO loss, whose trl trainers map their whole dataset with ``num_proc``."""
    if isinstance(objective, ORPO):
        return False
    return not (isinstance(objective, DPO) and objective.loss == "simpo")


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
    images, :class:`~tunekit.backends.base.VisionRows` that the backend encodes with the model's processor. A mixture
    (:class:`tunekit.data.mixture.MixedData`) is encoded source by source (errors name the source) and interleaved;
    the result's ``sources`` gives each source's rows and tokens."""
    if isinstance(norm, MixedData):
        return _encode_mix(spec, norm, tokenizer)
    if isinstance(norm, StreamedData):
        return _encode_stream(spec, norm, tokenizer)
    obj = spec.objective
    if has_images(norm):
        _check_images(obj, norm, tokenizer)
        if obj.tokenised_by_tunekit:
            return VisionRows(list(norm.examples), _settings(spec), list(norm.skipped))
    enc, skipped = _encode(spec, norm, tokenizer, images=True)
    enc.skipped = norm.skipped + skipped
    _warn(enc, skipped, spec.training.max_length)
    return enc


def _first_image_row(norm: NormalisedData) -> int:
    return next(ex.row for ex in norm.examples if getattr(ex, "images", ()))


def _check_images(obj: Objective, norm: NormalisedData, tokenizer: Any) -> None:
    """Refuse rows with images that ``obj`` cannot train on, or a chat template that cannot show them (trl's DPO)."""
    row = _first_image_row(norm)
    if not trains_on_images(obj):
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
    if not obj.tokenised_by_tunekit:
        check_image_template(tokenizer, row)


def _warn(enc: Encoded | TrainerRows, skipped: list[tuple[int, str]], max_length: int) -> None:
    for _row, reason in skipped:  # rows that tokenised to nothing to learn, or did not fit (normalise logged its own)
        logger.warning("skipped %s", reason)
    if not enc.truncated:
        return
    if isinstance(enc, TrainerRows):
        logger.warning(
            "%d of %d rows are longer than max_length=%d; their answers will be truncated",
            enc.truncated,
            len(enc.records),
            max_length,
        )
    else:
        logger.warning(
            "%d of %d examples were longer than max_length=%d and were truncated",
            enc.truncated,
            len(enc.input_ids),
            max_length,
        )


def _encode(
    spec: RunSpec, norm: NormalisedData, tokenizer: Any, *, images: bool = False
) -> tuple[Encoded | TrainerRows, list[tuple[int, str]]]:
    """``norm`` encoded, and the rows encoding skipped (without ``norm``'s own skipped rows); logs nothing.
    ``images``: rows with images may be among them (data held in memory, checked by :func:`_check_images`)."""
    obj, training = spec.objective, spec.training
    if has_images(norm) and not images:  # a source of a tk.Mix or a stream: encoded with the tokenizer, no images
        raise IncompatibleError(
            f"row {_first_image_row(norm)} holds an image: rows with images train from one source held in memory, "
            "not yet from a tk.Mix or a stream; pass the rows with images as the data itself"
        )
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
        rows: TrainerRows
        if isinstance(norm, ArrowNormalised) and not has_images(norm):  # in the data workers, kept in an Arrow file
            rows = rows_table(
                tokenizer,
                norm,
                max_length=training.max_length,
                whole_pairs=whole_pairs,
                on_bad_rows=training.on_bad_rows,
                workers=training.data_workers,
            )
        else:  # examples in memory (a source of a tk.Mix; rows with images, which trl's DPO reads with their images)
            rows = prepare_rows(
                tokenizer,
                norm,
                max_length=training.max_length,
                whole_pairs=whole_pairs,
                on_bad_rows=training.on_bad_rows,
            )
        return rows, list(rows.skipped)
    settings = _settings(spec)
    keyed = {"objective": obj.name, **settings}
    enc: Encoded
    if isinstance(norm, ArrowNormalised):
        # A second run on the same data, tokenizer and settings skips tokenising (the key: data.cache).
        path = (
            entry_path(cache_key(tokenizer, table_digest(norm), keyed), training.cache_dir) if training.cache else None
        )
        enc = encode_table(tokenizer, norm, settings, path=path, workers=training.data_workers)
    else:  # examples held in memory (a source of a tk.Mix, a stream's first rows, callers of data.normalise)
        enc = cached_encode(
            lambda: encode_examples(tokenizer, list(norm.examples), **settings),
            tokenizer,
            list(norm.examples),
            keyed,
            enabled=training.cache,
            directory=training.cache_dir,
        )
    return enc, list(enc.skipped)


def _settings(spec: RunSpec) -> dict[str, Any]:
    """The options :func:`tunekit.data.encode_examples` encodes ``spec``'s objective with."""
    obj, training = spec.objective, spec.training
    return {
        "max_length": training.max_length,
        "train_on_prompt": getattr(obj, "train_on_prompt", False),
        "train_on": getattr(obj, "train_on", "all_assistant"),
        "reasoning": getattr(obj, "reasoning", "inference"),
        "add_eos": getattr(obj, "add_eos", True),
        "on_bad_rows": training.on_bad_rows,
        "allow_control_tokens": training.allow_control_tokens,
    }


def _encode_stream(spec: RunSpec, norm: StreamedData, tokenizer: Any) -> StreamedEncoded | StreamedRows:
    """Streamed data: its first rows encoded now (the estimates; their errors raise before training), the rest
    chunk by chunk as the trainer reads it (:class:`tunekit.data.streaming.StreamedEncoded`, or for trl's trainers
    :class:`~tunekit.data.streaming.StreamedRows`)."""
    sample, _ = _encode(spec, norm, tokenizer)  # its skipped rows are logged as the stream reaches them
    settings = _settings(spec)
    training = spec.training
    source = norm.source
    assert source is not None
    buffer, seed = source.shuffle_buffer, training.seed

    def refuse_images(examples: list[Example]) -> None:
        pictured = next((ex for ex in examples if getattr(ex, "images", ())), None)
        if pictured is not None:  # past the rows checked before the run
            raise IncompatibleError(
                f"row {pictured.row} holds an image: rows with images train from data held in memory, not yet from a "
                "stream; drop streaming=True for them"
            )

    if isinstance(sample, TrainerRows):  # trl's objectives: records prepared as theirs are (prepare_rows)
        obj = spec.objective
        whole_pairs = obj.model_head == "sequence_classification"
        with_tools = _has_tools(norm)  # as prepare_rows decided for the first rows: every record has their columns
        prompt_as_text = norm.format == "prompt_only" and with_tools

        def prepare(examples: list[Example]) -> TrainerRows:
            refuse_images(examples)
            if not training.allow_control_tokens:
                check_no_control_tokens(examples, tokenizer, objective=obj.name)
            out = TrainerRows(norm.format, [], [])
            for ex in examples:
                if ex.tools and not with_tools:  # the records' columns were fixed by the rows read before the run
                    raise IncompatibleError(
                        f"row {ex.row} lists tools, but the stream's first {SAMPLE_ROWS} rows list none, so its "
                        f"{obj.name} records were laid out without them: put a row with tools among the first "
                        f"{SAMPLE_ROWS}, or leave streaming out"
                        if obj.reads_tools
                        else f"row {ex.row} lists tools, which {obj.name} training cannot show the model (trl's "
                        f"{obj.name} renders prompts without them): remove the 'tools' column"
                    )
                record, reason, truncated, tokens = prepare_row(
                    tokenizer, ex, norm.format, max_length=training.max_length, whole_pairs=whole_pairs,
                    on_bad_rows=training.on_bad_rows, prompt_as_text=prompt_as_text, with_tools=with_tools,
                )  # fmt: skip
                if record is None:
                    out.skipped.append((ex.row, str(reason)))
                    continue
                out.records.append(record)  # type: ignore[attr-defined]
                out.rows.append(ex.row)  # type: ignore[attr-defined]
                out.truncated += truncated
                out.num_tokens += tokens
            return out

        return StreamedRows(
            sample.format, sample.records, sample.rows, truncated=sample.truncated, num_tokens=sample.num_tokens,
            data=norm, prepare=prepare, features=sample.to_dataset().features, shuffle_buffer=buffer,
            seed=seed,
        )  # fmt: skip

    def encode(examples: list[Example]) -> Encoded:
        refuse_images(examples)
        return encode_examples(tokenizer, examples, **settings)

    return StreamedEncoded(
        sample.input_ids,
        sample.labels,
        sample.rows,
        truncated=sample.truncated,
        data=norm,
        encode=encode,
        shuffle_buffer=buffer,
        seed=seed,
    )


def _encode_mix(spec: RunSpec, norm: MixedData, tokenizer: Any) -> Encoded | TrainerRows:
    """Each source of the mixture encoded on its own (errors and skipped rows named by it; its own cache entry),
    then interleaved as the mixture's examples are; ``sources`` lists each one's figures."""
    parts, skipped = [], []
    for part in norm.parts:
        data = part.data
        if norm.format == "unpaired_preference" and data.format == "preference":  # pairs beside labelled answers
            data = unpair_table(data)  # a chunk at a time, into a table, for data in one
        try:
            enc, new = _encode(spec, data, tokenizer)
        except (DatasetError, IncompatibleError) as e:
            raise named_error(e, part.name, "training") from None
        parts.append(enc)
        skipped += [(row, f"{part.name}: {reason}") for row, reason in new]
    seed = norm.seed if norm.interleaved else None
    sources = [
        SourceFigures(p.name, p.available, len(p.data.examples), e.num_tokens) for p, e in zip(norm.parts, parts)
    ]
    workdir = next((p.data.workdir for p in norm.parts if isinstance(p.data, ArrowNormalised)), None)
    out: Encoded | TrainerRows
    if all(isinstance(e, TrainerRows) for e in parts):  # read from the parts' tables when trl's table is built
        rows = [e for e in parts if isinstance(e, TrainerRows)]
        out = TrainerRows(
            norm.format,
            Interleaved([e.records for e in rows], seed),
            Interleaved([e.rows for e in rows], seed),
            truncated=sum(e.truncated for e in parts),
            num_tokens=sum(e.num_tokens for e in parts),
            chunk=CHUNK if workdir is not None else None,
            directory=str(workdir.path) if workdir is not None else None,
            owner=norm,  # its parts' tables, and the work directory, stay while these rows are in use
        )
    else:
        encoded = [e for e in parts if isinstance(e, Encoded)]
        truncated = sum(e.truncated for e in parts)
        mixed = None
        if workdir is not None:  # the parts' memory-mapped sequences, interleaved into one file
            mixed = interleave_encoded(encoded, seed, workdir.path, skipped=[], truncated=truncated)
        if mixed is not None and workdir is not None:
            out = mixed
            workdir.own(out)  # removed when the encoded data is
        else:
            triples = interleave([list(zip(e.input_ids, e.labels, e.rows)) for e in encoded], seed)
            out = Encoded(
                [ids for ids, _, _ in triples],
                [labels for _, labels, _ in triples],
                [row for _, _, row in triples],
                truncated=truncated,
            )
    out.skipped = norm.skipped + skipped
    out.sources = sources
    _warn(out, skipped, spec.training.max_length)
    return out
