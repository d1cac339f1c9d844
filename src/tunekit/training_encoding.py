"""Normalised data to what a run's trainer reads: token ids with masked labels (cached), the rows trl's trainers
render, rows with images for the model's processor, a stream encoded chunk by chunk, a mixture encoded source by
source and interleaved. :func:`encode_for` is the one path for ``Tuner.fit``, ``prepare`` and ``plan``;
:mod:`tunekit.training_data` normalises the data it takes (and re-exports :func:`encode_for`)."""

from __future__ import annotations

import logging
from typing import Any

from tunekit.backends.base import RunSpec, VisionRows
from tunekit.data import encode_examples
from tunekit.data.arrow import ArrowNormalised, encode_table, rows_table, table_digest
from tunekit.data.cache import cache_key, cached_encode, entry_path
from tunekit.data.control_tokens import check_no_control_tokens
from tunekit.data.encoding import Encoded
from tunekit.data.formats import Example, NormalisedData
from tunekit.data.mixed_tables import interleave_encoded, unpair_table
from tunekit.data.mixture import Interleaved, MixedData, interleave
from tunekit.data.rows import TrainerRows, prepare_row, prepare_rows
from tunekit.data.streaming import SAMPLE_ROWS, StreamedData, StreamedEncoded, StreamedRows
from tunekit.data.tables import CHUNK
from tunekit.data.templates import image_renders
from tunekit.errors import DatasetError, IncompatibleError
from tunekit.objectives import DPO, Objective
from tunekit.plan import SourceFigures

__all__ = ["check_image_template", "encode_for", "has_images", "named_error", "trains_on_images"]

logger = logging.getLogger("tunekit")


def _has_tools(norm: NormalisedData) -> bool:
    if isinstance(norm, ArrowNormalised):
        return norm.has_tools
    return any(ex.tools for ex in norm.examples)


def named_error(e: DatasetError | IncompatibleError, name: str, what: str) -> DatasetError | IncompatibleError:
    """``e`` about the mixture's source ``name`` (unless it names it already), for the ``what`` data."""
    message = str(e) if not name or name in str(e) else f"{name}: {e}"
    if what != "training":
        message = f"{what}_data: {message}"
    if isinstance(e, DatasetError):
        return DatasetError(message, row=e.row, field=e.field)
    return IncompatibleError(message)


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
