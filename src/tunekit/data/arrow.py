"""The data path at scale: rows in Arrow tables, normalised and encoded by ``datasets.map`` in worker processes.

Rows are never one Python list of the whole data. A ``.jsonl`` file is read in chunks as its raw lines (with their
line numbers) into an Arrow file; a ``.csv`` or ``.parquet`` file a chunk of rows at a time
(:func:`tunekit.data.loading.iter_file_rows`), stored pickled, so every value comes back exactly as
:func:`tunekit.data.loading.load_rows` reads it. Other inputs (a ``.json`` file, which is one JSON document, a
:class:`tunekit.Data` mapping, a DataFrame, a ``datasets.Dataset``, a list of dicts) are read whole by
:func:`tunekit.data.loading.load_rows` and stored the same way. ``Dataset.map(batched=True, num_proc=workers)`` then
calls the per-row functions (:func:`tunekit.data.loading.parse_jsonl_line`,
:func:`tunekit.data.formats.normalise_row`) on each row and the batch encoder
(:func:`tunekit.data.encoding.encode_batch`: each row rendered, the batch's texts tokenised in one call) on each
batch, and the encoded result is written to the tokenisation cache as an Arrow file and memory-mapped from there
(:mod:`tunekit.data.cache`).

Errors name the user's rows as before: with one worker the first bad row raises where it is met; with several each
row's error is kept beside it and the first one by row number is raised, the same error one process raises.
``on_bad_rows="skip"`` lists the skipped rows the same way. The dataset-level checks (the unused-column warning,
numeric KTO labels) read per-row facts the map computed, never the rows again.

We use ``datasets`` (the library trl trains from) rather than our own process pool: its map shards, runs and writes
Arrow files, and hands the trainers a memory-mapped table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import pickle
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from tunekit.data.cache import cache_dir, example_digest, examples_digest, read_entry, write_entry
from tunekit.data.columns import Format, numeric_labels, unused_columns
from tunekit.data.control_tokens import control_tokens
from tunekit.data.encoding import Encoded, encode_batch
from tunekit.data.formats import Example, NormalisedData, detect_format, normalise_row
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import Layout, detect_layout
from tunekit.data.loading import UTF8, DataInput, empty_data_error, iter_file_rows, load_rows, parse_jsonl_line
from tunekit.data.rows import TrainerRows, prepare_row
from tunekit.errors import DatasetError, IncompatibleError, TunekitError

__all__ = [
    "ArrowNormalised", "ExampleColumn", "default_workers", "encode_table", "normalise_table", "read_table",
    "rows_table", "table_digest",
]  # fmt: skip

logger = logging.getLogger("tunekit")

CHUNK = 10_000  # rows a read chunk and a map batch hold
WORKER_ROWS = 20_000  # below this many rows per worker, starting a worker costs more than it saves
MAX_WORKERS = 8


def default_workers(rows: int | None = None, configured: int | None = None) -> int:
    """``Training(data_workers=...)``, or by default half the cores this process may use (at most 8), and only as
    many as the data keeps busy (one per 20,000 rows): small data is prepared in this process."""
    if configured is not None:
        return max(1, configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, min(MAX_WORKERS, cores // 2))
    return share if rows is None else max(1, min(share, rows // WORKER_ROWS))


def _disable_progress() -> None:
    import datasets

    datasets.disable_progress_bars()  # tunekit reports through its hooks and logger only


# --- errors kept as data (several workers) -------------------------------------------------------------------------


def _as_data(e: TunekitError) -> str:
    return json.dumps({"kind": type(e).__name__, "message": str(e), "row": getattr(e, "row", None),
                       "field": getattr(e, "field", None)})  # fmt: skip


def named(e: DatasetError, what: str) -> DatasetError:
    """``e`` naming the data it is in when that is not the training data ("eval_data: row 3: ...")."""
    return e if what == "training" else DatasetError(f"{what}_data: {e}", row=e.row, field=e.field)


def _raise_first(errors: Sequence[str | None]) -> None:
    """Raise the first error kept as data (the rows are in order), as the error it was."""
    first = next((e for e in errors if e is not None), None)
    if first is None:
        return
    got = json.loads(first)
    if got["kind"] == "IncompatibleError":
        raise IncompatibleError(got["message"])
    raise DatasetError(got["message"], row=got["row"], field=got["field"])


@dataclass
class _Stops:
    """Bad rows that workers met, as empty files named by their index in the table (``path``; None: one worker,
    which raises at once). A worker skips a batch that starts after one of them: the run raises that row's error or
    an earlier one's, and the rows between cannot change which, so the other workers stop early instead of finishing
    the data first."""

    path: str | None = None

    def mark(self, index: int) -> None:
        if self.path is not None:
            Path(self.path, f"{index:012d}").touch()

    def before(self, index: int) -> bool:
        """Whether a bad row was met before table row ``index``."""
        if self.path is None:
            return False
        names = os.listdir(self.path)
        return bool(names) and int(min(names)) < index


def _stops(work: Path, name: str, workers: int) -> _Stops:
    if workers == 1:
        return _Stops()
    return _Stops(tempfile.mkdtemp(prefix=f"stops-{name}-", dir=work))  # a fresh one per map


# --- reading -------------------------------------------------------------------------------------------------------


class _Workdir:
    """A temporary directory under tunekit's cache for a run's intermediate tables, removed with its owner."""

    def __init__(self, configured: str | None) -> None:
        base = cache_dir(configured) / "work"
        base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="tables-", dir=base))

    def own(self, owner: object) -> None:
        weakref.finalize(owner, shutil.rmtree, str(self.path), True)


def _write_batches(path: Path, batches: Iterator[Any], schema: Any) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _row_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("line", pa.int64()), ("raw", pa.large_string()), ("pickled", pa.large_binary())])


def _jsonl_batches(path: Path) -> Iterator[Any]:
    """The non-blank lines of a .jsonl file, CHUNK at a time, with their line numbers (parsed later, in the map)."""
    import pyarrow as pa

    schema = _row_schema()
    lines: list[int] = []
    raws: list[str] = []
    try:
        with path.open(encoding=UTF8) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                lines.append(lineno)
                raws.append(line)
                if len(lines) == CHUNK:
                    yield pa.record_batch([pa.array(lines, pa.int64()), pa.array(raws, pa.large_string()),
                                           pa.nulls(len(lines), pa.large_binary())], schema=schema)  # fmt: skip
                    lines, raws = [], []
    except UnicodeDecodeError:
        load_rows(path)  # raises tunekit's message for a file that is not UTF-8
        raise
    if lines:
        yield pa.record_batch([pa.array(lines, pa.int64()), pa.array(raws, pa.large_string()),
                               pa.nulls(len(lines), pa.large_binary())], schema=schema)  # fmt: skip


def _pickled_batches(rows: Iterable[Any]) -> Iterator[Any]:
    import pyarrow as pa

    schema = _row_schema()
    it = iter(rows)
    while chunk := list(itertools.islice(it, CHUNK)):
        pickled = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in chunk]
        yield pa.record_batch([pa.nulls(len(chunk), pa.int64()), pa.nulls(len(chunk), pa.large_string()),
                               pa.array(pickled, pa.large_binary())], schema=schema)  # fmt: skip


def read_table(data: DataInput, directory: Path, *, what: str = "training") -> tuple[Any, str]:
    """``data``'s rows as a memory-mapped ``datasets.Dataset`` (columns ``line``, ``raw``, ``pickled``) in
    ``directory``, and where they came from (for messages). A ``.jsonl`` file (not mapped by :class:`tunekit.Data`)
    is read line by line; anything else through :func:`tunekit.data.loading.load_rows`."""
    from datasets import Dataset

    out = directory / "rows.arrow"
    path = Path(data) if isinstance(data, (str, Path)) and Path(data).is_file() else None
    streamed = iter_file_rows(path) if path is not None else None
    source = ""
    if path is not None and path.suffix.lower() == ".jsonl":
        _write_batches(out, _jsonl_batches(path), _row_schema())
        source = str(data)
    elif path is not None and streamed is not None:  # .csv, .parquet: a chunk of rows at a time
        try:
            _write_batches(out, _pickled_batches(streamed), _row_schema())
        except UnicodeDecodeError:
            load_rows(path)  # raises tunekit's message for a file that is not UTF-8
            raise
    else:
        _write_batches(out, _pickled_batches(load_rows(data, what=what)), _row_schema())
    table = Dataset.from_file(str(out))
    if len(table) == 0:
        raise empty_data_error(data, what)
    return table, source


def _row_of(batch: dict[str, list[Any]], k: int, source: str) -> Any:
    if batch["raw"][k] is not None:
        return parse_jsonl_line(batch["raw"][k], batch["line"][k], source)
    return pickle.loads(batch["pickled"][k])


# --- normalising ---------------------------------------------------------------------------------------------------


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
    stops: _Stops = field(default_factory=_Stops)

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
        for k, index in enumerate(indices):
            i = index + 1
            example = digest = skip = error = None
            unused: list[str] = []
            numeric = tools = False
            images = 0
            try:
                row = _row_of(batch, k, self.source)  # reading errors (invalid JSON, a key twice) are never skipped
                if not isinstance(row, dict):
                    raise DatasetError(
                        f"row {i}: expected an object with named fields, got {type(row).__name__}; write each row as "
                        "an object",
                        row=i,
                    )
            except DatasetError as e:
                if self.raise_errors:
                    raise
                error = _as_data(e)
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
                        error = _as_data(named(e, self.what))
                        self.stops.mark(index)
            for key, value in (("row", i), ("example", example), ("digest", digest), ("skip", skip), ("error", error),
                               ("unused", unused), ("numeric", numeric), ("tools", tools),
                               ("images", images)):  # fmt: skip
                out[key].append(value)
        return out


class ExampleColumn(Sequence[Any]):
    """The normalised examples of an Arrow table (or another pickled ``column``: trl's records), decoded when read (a
    list's reading, without the list)."""

    def __init__(self, table: Any, positions: Sequence[int] | None = None, column: str = "example") -> None:
        self.table = table
        self.positions = positions  # the table's rows that hold an example (None: all)
        self.column = column

    def __len__(self) -> int:
        return len(self.positions) if self.positions is not None else len(self.table)

    def _at(self, k: int) -> int:
        return int(self.positions[k]) if self.positions is not None else k

    @overload
    def __getitem__(self, k: int) -> Any: ...
    @overload
    def __getitem__(self, k: slice) -> list[Any]: ...
    def __getitem__(self, k: int | slice) -> Any:
        if isinstance(k, slice):
            picks = [self._at(j) for j in range(*k.indices(len(self)))]
            blobs = self.table.select_columns([self.column]).select(picks)[self.column] if picks else []
            return [pickle.loads(b) for b in blobs]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return pickle.loads(self.table[self._at(k)][self.column])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ExampleColumn)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[Any]:
        for batch in self.table.select_columns([self.column]).iter(CHUNK):
            for blob in batch[self.column]:
                if blob is not None:
                    yield pickle.loads(blob)


@dataclass
class ArrowNormalised(NormalisedData):
    """:class:`tunekit.data.formats.NormalisedData` whose examples live in an Arrow table (``table``), with what the
    dataset-level checks read: each row's ``unused`` columns, ``numeric`` labels and ``tools``."""

    table: Any = None
    source_rows: Any = None  # the rows as read (for messages that quote a row)
    workdir: Any = None

    @property
    def has_tools(self) -> bool:
        import pyarrow.compute as pc

        return bool(pc.any(self.table.data.column("tools")).as_py())

    @property
    def has_images(self) -> bool:
        import pyarrow.compute as pc

        return bool(pc.max(self.table.data.column("images")).as_py() or 0)

    def unused(self) -> list[str]:
        seen: dict[str, None] = {}
        for batch in self.table.select_columns(["unused"]).iter(CHUNK):
            for names in batch["unused"]:
                seen.update(dict.fromkeys(names))
        return list(seen)

    def numeric_label_rows(self) -> list[int]:
        import pyarrow.compute as pc

        t = self.table.data
        return [int(r) for r in pc.filter(t.column("row"), t.column("numeric")).to_pylist()[:1]]

    def source_row(self, i: int) -> Any:
        """Row ``i`` (1-based) as read."""
        return _row_of(self.source_rows[i - 1 : i], 0, "")


def _map(table: Any, fn: Any, workers: int, path: Path, *, with_indices: bool, remove: list[str]) -> Any:
    _disable_progress()
    return table.map(
        fn,
        batched=True,
        batch_size=CHUNK // 10,
        with_indices=with_indices,
        num_proc=workers if workers > 1 else None,
        remove_columns=remove,
        cache_file_name=str(path),
        load_from_cache_file=False,
        new_fingerprint=hashlib.sha256(str(path).encode()).hexdigest()[:16],  # never hash the tokenizer
    )


def normalise_table(
    data: DataInput,
    *,
    on_bad_rows: str,
    workers: int | None,
    directory: str | None,
    what: str = "training",
    images: ImageOptions | None = None,
) -> ArrowNormalised:
    """Read and normalise ``data`` (see the module docstring); the first bad row raises, or with ``on_bad_rows=
    "skip"`` bad rows are listed in ``skipped``. ``images``: how rows' images are read (the pixel budget, the folder
    relative paths start from)."""
    work = _Workdir(directory)
    try:
        rows, source = read_table(data, work.path, what=what)
        first = _row_of(rows[:1], 0, source)
        try:
            fmt = detect_format([first])
        except DatasetError as e:
            raise named(e, what) from None
        layout = detect_layout([first])
        n = default_workers(len(rows), workers)
        stops = _stops(work.path, "normalise", n)
        fn = _Normalise(fmt, layout, source, on_bad_rows, raise_errors=n == 1, what=what, images=images, stops=stops)
        table = _map(rows, fn, n, work.path / "examples.arrow", with_indices=True, remove=rows.column_names)
        cols = table.data
        _raise_first(cols.column("error").to_pylist())
        skip = cols.column("skip")
        skipped: list[tuple[int, str]] = []
        positions: list[int] | None = None
        if skip.null_count < len(table):
            import pyarrow.compute as pc

            valid = pc.is_valid(skip)
            skipped = list(zip(pc.filter(cols.column("row"), valid).to_pylist(), pc.filter(skip, valid).to_pylist()))
            positions = [int(p) for p in pc.indices_nonzero(pc.invert(valid)).to_pylist()]
        if positions is not None and not positions:
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
    stops: _Stops = field(default_factory=_Stops)

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in ("rows", "input_ids", "labels", "skip", "error", "truncated")}
        if indices and self.stops.before(indices[0]):
            return out  # the run raises an earlier row's error

        def add(row: int, ids: list[int], labels: list[int], skip: str | None, error: str | None, cut: int) -> None:
            for key, value in (("rows", row), ("input_ids", ids), ("labels", labels), ("skip", skip),
                               ("error", error), ("truncated", cut)):  # fmt: skip
                out[key].append(value)

        # skipped (or failed) while normalising: None
        examples: list[Example] = [pickle.loads(blob) for blob in batch["example"] if blob is not None]
        encoded = encode_batch(
            self.tokenizer, examples, tokens=self.tokens, raise_errors=self.raise_errors, **self.settings
        )
        at = [i for i, blob in zip(indices, batch["example"]) if blob is not None]
        for ex, enc, index in zip(examples, encoded, at):
            if not isinstance(enc, Encoded):
                add(ex.row, [], [], None, _as_data(enc), 0)
                self.stops.mark(index)
                continue
            for _row, reason in enc.skipped:
                add(ex.row, [], [], reason, None, 0)
            for k, (ids, labels) in enumerate(zip(enc.input_ids, enc.labels)):
                add(ex.row, ids, labels, None, None, enc.truncated if k == 0 else 0)
        return out


def _final_batches(table: Any) -> Iterator[Any]:
    """The kept sequences (no skip, no error) as ``input_ids`` / ``labels`` / ``rows`` record batches."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for batch in table.data.to_batches(max_chunksize=CHUNK):
        keep = pc.is_null(batch.column(batch.schema.get_field_index("skip")))
        kept = batch.filter(keep)
        yield pa.record_batch(
            [
                kept.column(kept.schema.get_field_index("input_ids")).cast(pa.list_(pa.int64())),
                kept.column(kept.schema.get_field_index("labels")).cast(pa.list_(pa.int64())),
                kept.column(kept.schema.get_field_index("rows")).cast(pa.int64()),
            ],
            names=["input_ids", "labels", "rows"],
        )


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
    fn = _Encode(tokenizer, args, tokens, raise_errors=n == 1, stops=_stops(norm.workdir.path, "encode", n))
    encoded = _map(norm.table, fn, n, norm.workdir.path / "encoded.arrow", with_indices=True,
                   remove=norm.table.column_names)  # fmt: skip
    cols = encoded.data
    _raise_first(cols.column("error").to_pylist())
    import pyarrow.compute as pc

    skip = cols.column("skip")
    valid = pc.is_valid(skip)
    skipped = list(zip(pc.filter(cols.column("rows"), valid).to_pylist(), pc.filter(skip, valid).to_pylist()))
    truncated = int(pc.sum(cols.column("truncated")).as_py() or 0)
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
        for batch in norm.table.data.select(["digest"]).to_batches(max_chunksize=CHUNK * 10):
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
    stops: _Stops = field(default_factory=_Stops)

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
                error = _as_data(e)
                self.stops.mark(index)
            for key, value in (("rows", ex.row), ("record", record), ("skip", skip), ("error", error),
                               ("truncated", truncated), ("tokens", tokens)):  # fmt: skip
                out[key].append(value)
        return out


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
    fn = _Rows(tokenizer, norm.format, settings, raise_errors=n == 1, stops=_stops(norm.workdir.path, "rows", n))
    table = _map(norm.table, fn, n, norm.workdir.path / "records.arrow", with_indices=True,
                 remove=norm.table.column_names)  # fmt: skip
    cols = table.data
    _raise_first(cols.column("error").to_pylist())
    import pyarrow.compute as pc

    skip = cols.column("skip")
    valid = pc.is_valid(skip)
    skipped = list(zip(pc.filter(cols.column("rows"), valid).to_pylist(), pc.filter(skip, valid).to_pylist()))
    kept = pc.invert(valid)
    positions = [int(p) for p in pc.indices_nonzero(kept).to_pylist()]
    if not positions:
        raise DatasetError(f"no row fits max_length={max_length}; raise Training(max_length=...)")
    out = TrainerRows(
        norm.format,
        ExampleColumn(table, positions, column="record"),
        [int(r) for r in pc.filter(cols.column("rows"), kept).to_pylist()],
        skipped,
        truncated=int(pc.sum(pc.cast(cols.column("truncated"), "int64")).as_py() or 0),
        num_tokens=int(pc.sum(pc.filter(cols.column("tokens"), kept)).as_py() or 0),
        chunk=CHUNK,
    )
    return out
