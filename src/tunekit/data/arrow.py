"""The data path at scale: rows in Arrow tables, normalised and encoded by ``datasets.map`` in worker processes.

Rows are never one Python list of the whole data: they are read into a memory-mapped table
(:func:`tunekit.data.tables.read_table`), then ``Dataset.map(batched=True, num_proc=workers)`` calls the per-row
functions (:func:`tunekit.data.loading.parse_jsonl_line`, :func:`tunekit.data.formats.normalise_row`) on each row and
the batch encoder (:func:`tunekit.data.encoding.encode_batch`: each row rendered, the batch's texts tokenised in one
call) on each batch, and the encoded result is written to the tokenisation cache as an Arrow file and memory-mapped
from there (:mod:`tunekit.data.cache`).

Errors name the user's rows as before: with one worker the first bad row raises where it is met; with several each
row's error is kept beside it and the first one by row number is raised, the same error one process raises.
``on_bad_rows="skip"`` lists the skipped rows the same way. The dataset-level checks (the unused-column warning,
numeric KTO labels) read per-row facts the map computed, never the rows again.

We use ``datasets`` (the library trl trains from) rather than our own process pool: its map shards, runs and writes
Arrow files, and hands the trainers a memory-mapped table.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.data.cache import example_digest, examples_digest, read_entry, write_entry
from tunekit.data.columns import Format, numeric_labels, unused_columns
from tunekit.data.control_tokens import control_tokens
from tunekit.data.encoding import Encoded, encode_batch
from tunekit.data.formats import Example, NormalisedData, detect_format, normalise_row
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import Layout, detect_layout
from tunekit.data.loading import DataInput
from tunekit.data.rows import TrainerRows, prepare_row
from tunekit.data.tables import (
    CHUNK,
    ExampleColumn,
    Stops,
    Workdir,
    default_workers,
    error_as_data,
    map_table,
    named,
    outcome,
    raise_first,
    read_table,
    row_of,
    stops_for,
    table_batches,
)  # fmt: skip
from tunekit.errors import DatasetError

__all__ = [
    "ArrowNormalised", "ExampleColumn", "default_workers", "encode_table", "normalise_table", "normalised_features",
    "rows_table", "table_digest",
]  # fmt: skip

logger = logging.getLogger("tunekit")


@dataclass
class _Normalise:
    """The normalising map: one output row per input row (an example, or why it was skipped or failed)."""

    fmt: Format
    layout: Layout | None
    source: str
    on_bad_rows: str
    raise_errors: bool  # one worker: the first bad row raises where it is met
    what: str = "training"  # errors in other data name it ("eval_data: row 3: ...")
    images: ImageOptions | None = None  # how images are read (the pixel budget, where relative paths start)
    stops: Stops = field(default_factory=Stops)

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in ("row", "example", "digest", "skip", "error", "unused", "numeric",
                                                     "tools", "images")}  # fmt: skip
        if indices and self.stops.before(indices[0]):  # placeholders: the run raises an earlier row's error
            n = len(indices)
            none: list[Any] = [None] * n
            out.update(row=[i + 1 for i in indices], example=none, digest=none, skip=none, error=none)
            out.update(unused=[[] for _ in indices], numeric=[False] * n, tools=[False] * n, images=[0] * n)
            return out
        reads = self.layout.reads if self.layout is not None else frozenset()
        batch = {key: batch[key] for key in ("line", "raw", "pickled")}  # each read once, not per row
        columns = [out[key] for key in ("row", "example", "digest", "skip", "error", "unused", "numeric", "tools",
                                        "images")]  # fmt: skip
        for k, index in enumerate(indices):
            i = index + 1
            example = digest = skip = error = None
            unused: list[str] = []
            numeric = tools = False
            images = 0
            try:
                row = row_of(batch, k, self.source)  # reading errors (invalid JSON, a key twice) are never skipped
                if not isinstance(row, dict):
                    raise DatasetError(
                        f"row {i}: expected an object with named fields, got {type(row).__name__}; write each row as "
                        "an object",
                        row=i,
                    )
            except DatasetError as e:
                if self.raise_errors:
                    raise
                error = error_as_data(e)
                self.stops.mark(index)
            else:
                unused = unused_columns(self.fmt, [row], reads)
                numeric = bool(numeric_labels([row]))
                try:
                    ex = normalise_row(self.fmt, row, i, layout=self.layout, images=self.images)
                    example = pickle.dumps(ex, protocol=pickle.HIGHEST_PROTOCOL)  # images: their decoded pixels
                    digest = example_digest(ex)
                    tools = bool(ex.tools)
                    images = len(ex.images)
                except DatasetError as e:
                    if self.on_bad_rows == "skip":
                        skip = str(e)
                    elif self.raise_errors:
                        raise named(e, self.what) from None
                    else:
                        error = error_as_data(named(e, self.what))
                        self.stops.mark(index)
            for column, value in zip(columns, (i, example, digest, skip, error, unused, numeric, tools, images)):
                column.append(value)
        return out


def normalised_features() -> Any:
    """The columns of a table of normalised examples, as the normalising map writes them (their types given, not
    inferred per batch: a map in this process writes them as it reads, :func:`tunekit.data.tables.map_table`)."""
    from datasets import Features, List, Value

    return Features({"row": Value("int64"), "example": Value("binary"), "digest": Value("binary"),
                     "skip": Value("string"), "error": Value("string"), "unused": List(Value("string")),
                     "numeric": Value("bool"), "tools": Value("bool"), "images": Value("int64")})  # fmt: skip


@dataclass
class ArrowNormalised(NormalisedData):
    """:class:`tunekit.data.formats.NormalisedData` whose examples live in an Arrow table (``table``), with what the
    dataset-level checks read: each row's ``unused`` columns, ``numeric`` labels and ``tools``."""

    table: Any = None
    source_rows: Any = None  # the rows as read (for messages that quote a row)
    workdir: Any = None
    parent: Any = None  # the data this was drawn from (a tk.Mix's source), kept alive with its tables

    @property
    def has_tools(self) -> bool:
        import pyarrow.compute as pc

        return bool(pc.any(self.table.data.column("tools")).as_py())

    @property
    def has_images(self) -> bool:
        import pyarrow.compute as pc

        return bool(pc.max(self.table.data.column("images")).as_py() or 0)

    def unused(self) -> list[str]:
        """The rows' unused columns, each once, in the order first met (counted by Arrow, not row by row)."""
        import pyarrow.compute as pc

        names = pc.list_flatten(self.table.data.column("unused"))
        return [str(name) for name in pc.unique(names).to_pylist() if name is not None]

    def numeric_label_rows(self) -> list[int]:
        import pyarrow.compute as pc

        t = self.table.data
        return [int(r) for r in pc.filter(t.column("row"), t.column("numeric")).to_pylist()[:1]]

    def source_row(self, i: int) -> Any:
        """Row ``i`` (1-based) as read."""
        return row_of(self.source_rows[i - 1 : i], 0, "")


def normalise_table(
    data: DataInput,
    *,
    on_bad_rows: str,
    workers: int | None,
    directory: str | None,
    what: str = "training",
    images: ImageOptions | None = None,
    none_valid: bool = False,
    read_as: str | None = None,
) -> ArrowNormalised:
    """Read and normalise ``data`` (see the module docstring); the first bad row raises, or with ``on_bad_rows=
    "skip"`` bad rows are listed in ``skipped``. ``images``: how rows' images are read (the pixel budget, the folder
    relative paths start from). ``none_valid``: data whose every row was skipped is returned (with no examples), not
    refused (``tunekit validate-data`` lists the bad rows). ``read_as``: what the reading calls the data (the
    split a dataset name defaults to, the message for empty data), when not ``what`` (a tk.Mix's sources)."""
    work = Workdir(directory)
    try:
        rows, source = read_table(data, work.path, what=read_as or what)
        first = row_of(rows[:1], 0, source)
        try:
            fmt = detect_format([first])
        except DatasetError as e:
            raise named(e, what) from None
        layout = detect_layout([first])
        n = default_workers(len(rows), workers)
        stops = stops_for(work.path, "normalise", n)
        fn = _Normalise(fmt, layout, source, on_bad_rows, raise_errors=n == 1, what=what, images=images, stops=stops)
        table = map_table(rows, fn, n, work.path / "examples.arrow", with_indices=True, remove=rows.column_names,
                          features=normalised_features())  # fmt: skip
        got = outcome(table, "row")
        raise_first(got.errors)
        skipped = got.skipped
        positions = got.kept if skipped else None  # the rows not skipped: 8 bytes each, not a Python list
        if positions is not None and not len(positions) and not none_valid:
            raise named(
                DatasetError(f"no valid rows: all {len(table)} rows were malformed (first: {skipped[0][1]})"), what
            )
    except BaseException:
        shutil.rmtree(work.path, ignore_errors=True)
        raise
    out = ArrowNormalised(fmt, ExampleColumn(table, positions), skipped, table=table, source_rows=rows)
    out.workdir = work
    work.own(out)
    return out


# --- encoding ------------------------------------------------------------------------------------------------------


@dataclass
class _Encode:
    """The encoding map: each example's sequences (usually one), or why it was skipped or failed."""

    tokenizer: Any
    settings: dict[str, Any]
    tokens: tuple[str, ...]
    raise_errors: bool
    stops: Stops = field(default_factory=Stops)

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in ("rows", "input_ids", "labels", "skip", "error", "truncated")}
        if indices and self.stops.before(indices[0]):
            return out  # the run raises an earlier row's error

        columns = [out[key] for key in ("rows", "input_ids", "labels", "skip", "error", "truncated")]

        def add(row: int, ids: list[int], labels: list[int], skip: str | None, error: str | None, cut: int) -> None:
            for column, value in zip(columns, (row, ids, labels, skip, error, cut)):
                column.append(value)

        # skipped (or failed) while normalising: None
        examples: list[Example] = [pickle.loads(blob) for blob in batch["example"] if blob is not None]
        encoded = encode_batch(
            self.tokenizer, examples, tokens=self.tokens, raise_errors=self.raise_errors, **self.settings
        )
        at = [i for i, blob in zip(indices, batch["example"]) if blob is not None]
        for ex, enc, index in zip(examples, encoded, at):
            if not isinstance(enc, Encoded):
                add(ex.row, [], [], None, error_as_data(enc), 0)
                self.stops.mark(index)
                continue
            for _row, reason in enc.skipped:
                add(ex.row, [], [], reason, None, 0)
            for k, (ids, labels) in enumerate(zip(enc.input_ids, enc.labels)):
                add(ex.row, ids, labels, None, None, enc.truncated if k == 0 else 0)
        return out


def _encoded_features() -> Any:
    """The encoding map's output types: token ids and labels as 32-bit integers (the cache entry's are 64-bit, cast a
    batch at a time), so the intermediate file, which is read through once, is half the size."""
    from datasets import Features, List, Value

    ids = List(Value("int32"))
    return Features({"rows": Value("int64"), "input_ids": ids, "labels": ids, "skip": Value("string"),
                     "error": Value("string"), "truncated": Value("int64")})  # fmt: skip


def _final_batches(table: Any) -> Iterator[Any]:
    """The kept sequences (no skip, no error) as ``input_ids`` / ``labels`` / ``rows`` record batches of about CHUNK
    rows (several workers' maps write a batch per 1,000 rows: opening the cache entry reads each batch's header, and
    the pages around a small batch's header are a good part of it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    held: list[Any] = []
    rows = 0
    for batch in table_batches(table):
        keep = pc.is_null(batch.column(batch.schema.get_field_index("skip")))
        kept = batch.filter(keep)
        held.append(
            pa.record_batch(
                [
                    kept.column(kept.schema.get_field_index("input_ids")).cast(pa.list_(pa.int64())),
                    kept.column(kept.schema.get_field_index("labels")).cast(pa.list_(pa.int64())),
                    kept.column(kept.schema.get_field_index("rows")).cast(pa.int64()),
                ],
                names=["input_ids", "labels", "rows"],
            )
        )
        rows += len(kept)
        if rows >= CHUNK:
            yield from pa.Table.from_batches(held).combine_chunks().to_batches()
            held, rows = [], 0
    if rows:
        yield from pa.Table.from_batches(held).combine_chunks().to_batches()


def encode_table(
    tokenizer: Any, norm: ArrowNormalised, settings: dict[str, Any], *, path: Path | None, workers: int | None
) -> Encoded:
    """Encode ``norm``'s examples with ``settings`` (those of :func:`tunekit.data.encoding.encode_examples`) into a
    memory-mapped Arrow file: the cache entry at ``path`` (read when it is there and sound), else a file beside
    ``norm``'s tables."""
    if path is not None:
        hit = read_entry(path)
        if hit is not None:
            return hit
    tokens = () if settings.get("allow_control_tokens") else control_tokens(tokenizer)
    args = {k: v for k, v in settings.items() if k != "allow_control_tokens"}
    n = default_workers(len(norm.table), workers)
    fn = _Encode(tokenizer, args, tokens, raise_errors=n == 1, stops=stops_for(norm.workdir.path, "encode", n))
    encoded = map_table(norm.table, fn, n, norm.workdir.path / "encoded.arrow", with_indices=True,
                        remove=norm.table.column_names, features=_encoded_features())  # fmt: skip
    got = outcome(encoded, "rows", sums=["truncated"])
    raise_first(got.errors)
    skipped, truncated = got.skipped, got.sums["truncated"]
    if len(encoded) - len(skipped) == 0:
        if skipped and "control token" in skipped[0][1]:
            raise DatasetError(f"no row left to train on: every row was skipped, the first as {skipped[0][1]}")
        raise DatasetError(
            f"no example has a supervised token after truncation to max_length={settings['max_length']}; "
            "raise Training(max_length=...)"
        )
    if path is not None:
        try:
            return write_entry(path, _final_batches(encoded), skipped=skipped, truncated=truncated)
        except OSError as e:  # a read-only or full disk must not fail the run
            logger.warning("could not write the tokenisation cache %s: %s", path, e)
    out = write_entry(norm.workdir.path / "final.arrow", _final_batches(encoded), skipped=skipped, truncated=truncated)
    norm.workdir.own(out)  # removed when the encoded data is
    return out


def table_digest(norm: ArrowNormalised) -> bytes:
    """The examples' part of the cache key (:func:`tunekit.data.cache.examples_digest`), from the digests the map
    computed per example."""

    def digests() -> Iterator[bytes]:
        for batch in table_batches(norm.table, ["digest"]):  # read a batch at a time, not through the memory map
            yield from (d for d in batch.column(0).to_pylist() if d is not None)

    return examples_digest(digests())


# --- trl's rows (preference, KTO, RL prompts) ---------------------------------------------------------------------


@dataclass
class _Rows:
    """The map that builds trl's rows: each example's record (pickled), or why it was skipped or failed."""

    tokenizer: Any
    fmt: str
    settings: dict[str, Any]
    raise_errors: bool
    stops: Stops = field(default_factory=Stops)

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in ("rows", "record", "skip", "error", "truncated", "tokens")}
        if indices and self.stops.before(indices[0]):
            return out  # the run raises an earlier row's error
        for blob, index in zip(batch["example"], indices):
            if blob is None:
                continue  # skipped (or failed) while normalising
            ex: Example = pickle.loads(blob)
            record = skip = error = None
            truncated, tokens = False, 0
            try:
                got, skip, truncated, tokens = prepare_row(self.tokenizer, ex, self.fmt, **self.settings)
                record = pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL) if got is not None else None
            except DatasetError as e:
                if self.raise_errors:
                    raise
                error = error_as_data(e)
                self.stops.mark(index)
            for key, value in (("rows", ex.row), ("record", record), ("skip", skip), ("error", error),
                               ("truncated", truncated), ("tokens", tokens)):  # fmt: skip
                out[key].append(value)
        return out


def _rows_features() -> Any:
    """The trl-rows map's output types."""
    from datasets import Features, Value

    return Features({"rows": Value("int64"), "record": Value("binary"), "skip": Value("string"),
                     "error": Value("string"), "truncated": Value("bool"), "tokens": Value("int64")})  # fmt: skip


def rows_table(
    tokenizer: Any,
    norm: ArrowNormalised,
    *,
    max_length: int,
    whole_pairs: bool,
    on_bad_rows: str,
    workers: int | None,
) -> TrainerRows:
    """:func:`tunekit.data.rows.prepare_rows` over ``norm``'s table in ``workers`` processes: the same records, rows,
    skipped rows, counts and errors, the records kept pickled in an Arrow file beside ``norm``'s tables and read when
    used (``to_dataset`` builds trl's table a chunk at a time)."""
    with_tools = norm.has_tools
    settings = {"max_length": max_length, "whole_pairs": whole_pairs, "on_bad_rows": on_bad_rows,
                "prompt_as_text": norm.format == "prompt_only" and with_tools, "with_tools": with_tools}  # fmt: skip
    n = default_workers(len(norm.table), workers)
    fn = _Rows(tokenizer, norm.format, settings, raise_errors=n == 1, stops=stops_for(norm.workdir.path, "rows", n))
    table = map_table(norm.table, fn, n, norm.workdir.path / "records.arrow", with_indices=True,
                      remove=norm.table.column_names, features=_rows_features())  # fmt: skip
    got = outcome(table, "rows", sums=["truncated"], kept_sums=["tokens"])
    raise_first(got.errors)
    if not len(got.kept):
        raise DatasetError(f"no row fits max_length={max_length}; raise Training(max_length=...)")
    out = TrainerRows(
        norm.format,
        ExampleColumn(table, got.kept, column="record"),  # positions and row numbers: 8 bytes a row, not lists
        got.kept_rows,
        got.skipped,
        truncated=got.sums["truncated"],
        num_tokens=got.sums["tokens"],
        chunk=CHUNK,
        directory=str(norm.workdir.path),  # trl's table is written there a chunk at a time (to_dataset)
        owner=norm,  # which keeps it on disk while these rows are in use
    )
    return out
