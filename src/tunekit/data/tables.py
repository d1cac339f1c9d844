"""The tables the Arrow data driver (:mod:`tunekit.data.arrow`) works on: rows read into a memory-mapped Arrow file,
the ``datasets.map`` call its maps run through, and errors kept as data while several workers run.

A ``.jsonl`` file is read in chunks as its raw lines (with their line numbers) into an Arrow file; every other input
(a ``.json``, ``.csv`` or ``.parquet`` file, a :class:`tunekit.Data` mapping, a dataset name or directory, a
``datasets.Dataset``, a DataFrame, a list of dicts) a chunk of rows at a time (:func:`tunekit.data.loading.iter_rows`),
stored pickled, so every value comes back exactly as :func:`tunekit.data.loading.load_rows` reads it. A ``.json`` file
is streamed with ijson; one that ijson does not read exactly as ``json.loads`` does (``NaN``, an integer beyond 64 bits,
or a file tunekit refuses: invalid JSON, a key twice, not a list of rows) is read whole, for the same rows or message.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import pickle
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from tunekit.data.cache import cache_dir
from tunekit.data.int_column import IntColumn
from tunekit.data.loading import UTF8, DataInput, NotStreamed, empty_data_error, iter_rows, load_rows, parse_jsonl_line
from tunekit.data.mapping import Data, rename_rows
from tunekit.errors import DatasetError, IncompatibleError, TunekitError

__all__ = [
    "CHUNK",
    "ExampleColumn",
    "Outcome",
    "Stops",
    "Workdir",
    "default_workers",
    "disable_progress",
    "error_as_data",
    "map_table",
    "named",
    "outcome",
    "pickled_rows",
    "raise_first",
    "read_table",
    "row_of",
    "skipped_of",
    "stops_for",
    "stored_batches",
    "stored_files",
    "table_batches",
    "write_batches",
]  # fmt: skip

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


def disable_progress() -> None:
    import datasets

    datasets.disable_progress_bars()  # tunekit reports through its hooks and logger only


# --- errors kept as data (several workers) -------------------------------------------------------------------------


def error_as_data(e: TunekitError) -> str:
    return json.dumps({"kind": type(e).__name__, "message": str(e), "row": getattr(e, "row", None),
                       "field": getattr(e, "field", None)})  # fmt: skip


def named(e: DatasetError, what: str) -> DatasetError:
    """``e`` naming the data it is in when that is not the training data ("eval_data: row 3: ...")."""
    return e if what == "training" else DatasetError(f"{what}_data: {e}", row=e.row, field=e.field)


def raise_first(errors: Any) -> None:
    """Raise the first error kept as data (an Arrow column in row order; nulls where there was none), as the error it
    was (read without a Python list of the whole column)."""
    import pyarrow.compute as pc

    found = pc.drop_null(errors)
    if len(found) == 0:
        return
    got = json.loads(found[0].as_py())
    if got["kind"] == "IncompatibleError":
        raise IncompatibleError(got["message"])
    raise DatasetError(got["message"], row=got["row"], field=got["field"])


@dataclass
class Stops:
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


def stops_for(work: Path, name: str, workers: int) -> Stops:
    if workers == 1:
        return Stops()
    return Stops(tempfile.mkdtemp(prefix=f"stops-{name}-", dir=work))  # a fresh one per map


# --- reading -------------------------------------------------------------------------------------------------------


class Workdir:
    """A temporary directory under tunekit's cache for a run's intermediate tables, removed with its owner."""

    def __init__(self, configured: str | None) -> None:
        base = cache_dir(configured) / "work"
        base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="tables-", dir=base))

    def own(self, owner: object) -> None:
        weakref.finalize(owner, shutil.rmtree, str(self.path), True)


def write_batches(path: Path, batches: Iterator[Any], schema: Any) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def row_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("line", pa.int64()), ("raw", pa.large_string()), ("pickled", pa.large_binary())])


def jsonl_batches(path: Path) -> Iterator[Any]:
    """The non-blank lines of a .jsonl file, CHUNK at a time, with their line numbers (parsed later, in the map)."""
    import pyarrow as pa

    schema = row_schema()
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


def pickled_batches(rows: Iterable[Any]) -> Iterator[Any]:
    import pyarrow as pa

    schema = row_schema()
    it = iter(rows)
    while chunk := list(itertools.islice(it, CHUNK)):
        pickled = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in chunk]
        yield pa.record_batch([pa.nulls(len(chunk), pa.int64()), pa.nulls(len(chunk), pa.large_string()),
                               pa.array(pickled, pa.large_binary())], schema=schema)  # fmt: skip


def read_table(data: DataInput, directory: Path, *, what: str = "training") -> tuple[Any, str]:
    """``data``'s rows as a memory-mapped ``datasets.Dataset`` (columns ``line``, ``raw``, ``pickled``) in
    ``directory``, and where they came from (for messages). A ``.jsonl`` file (not mapped by :class:`tunekit.Data`)
    is read line by line; anything else a chunk of rows at a time (:func:`tunekit.data.loading.iter_rows`), and a
    :class:`tunekit.Data`'s rows renamed once all are read, a chunk at a time. Only a ``.json`` file that ijson
    cannot read as ``json.loads`` does (:class:`tunekit.data.loading.NotStreamed`) is read whole."""
    from datasets import Dataset

    out = directory / "rows.arrow"
    path = Path(data) if isinstance(data, (str, Path)) and Path(data).is_file() else None
    source = ""
    if path is not None and path.suffix.lower() == ".jsonl":
        write_batches(out, jsonl_batches(path), row_schema())
        source = str(data)
    else:
        try:
            write_batches(out, pickled_batches(iter_rows(data, what=what, chunk=CHUNK)), row_schema())
        except NotStreamed:  # read whole: its rows, or tunekit's message for it
            write_batches(out, pickled_batches(load_rows(data, what=what)), row_schema())
        else:
            if isinstance(data, Data) and (data.columns or data.roles):
                read = Dataset.from_file(str(out))
                out = directory / "renamed.arrow"
                write_batches(out, pickled_batches(rename_rows(pickled_rows(read), data)), row_schema())
    table = Dataset.from_file(str(out))
    if len(table) == 0:
        raise empty_data_error(data.source if isinstance(data, Data) else data, what)
    return table, source


def pickled_rows(table: Any) -> Iterator[Any]:
    """The rows of a table of pickled rows, a chunk at a time."""
    for batch in table.select_columns(["pickled"]).iter(CHUNK):
        yield from (pickle.loads(blob) for blob in batch["pickled"])


def row_of(batch: dict[str, list[Any]], k: int, source: str) -> Any:
    if batch["raw"][k] is not None:
        return parse_jsonl_line(batch["raw"][k], batch["line"][k], source)
    return pickle.loads(batch["pickled"][k])


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Within: the objects alive on entry (the imported libraries: torch, transformers, a million and more) are out of
    the garbage collector's sight (``gc.freeze``), so its full collections, which a map's allocations set off, scan
    only what the map made (the cycles it makes, e.g. a bad row's error and its traceback, are collected as before);
    on exit they are back. After a fork the workers inherit the frozen heap. Measured on 20,000 chat rows: the two
    full collections a map set off took 0.8 s of 5.6 s of CPU. Left alone when the caller froze objects already
    (``gc.freeze`` has no nesting: unfreezing would undo theirs)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def map_table(
    table: Any, fn: Any, workers: int, path: Path, *, with_indices: bool, remove: list[str], features: Any = None
) -> Any:
    """``table.map(fn)`` in batches, in ``workers`` processes, into ``path``; ``features``: the output's types (else
    inferred per batch). In this process (one worker) the table's files are read a batch at a time
    (:func:`_map_in_process`), not through their memory map."""
    disable_progress()
    with frozen_heap():
        if workers == 1 and with_indices and features is not None and set(remove) == set(table.column_names):
            files = stored_files(table)
            if files is not None:
                return _map_in_process(files, fn, path, features)
        return _map(table, fn, workers, path, with_indices=with_indices, remove=remove, features=features)


def stored_files(table: Any) -> list[str] | None:
    """The Arrow files that hold ``table``'s rows, in order, or None when its rows are not just theirs (a table in
    memory, or a selection of a file's rows)."""
    files = [str(f["filename"]) for f in table.cache_files]
    if not files or getattr(table, "_indices", None) is not None:  # datasets keeps a selection's rows there
        return None
    return files


def stored_batches(files: Sequence[str], columns: Sequence[str] | None = None) -> Iterator[Any]:
    """The record batches of Arrow stream files (``columns`` of them: all when None, none when empty), read into
    memory a batch at a time rather than through a memory map: a map's pages, once read, stay in the process's
    resident memory until the table is gone, so reading a table through would raise the peak RSS by its size."""
    import pyarrow as pa

    for name in files:
        with pa.OSFile(name) as source, pa.ipc.open_stream(source) as reader:
            for batch in reader:
                yield batch if columns is None else batch.select(list(columns))


def table_batches(table: Any, columns: Sequence[str] | None = None) -> Iterator[Any]:
    """``table``'s record batches (``columns`` of them), read with :func:`stored_batches` when it is its files' rows,
    else from the table."""
    files = stored_files(table)
    if files is not None:
        yield from stored_batches(files, columns)
        return
    data = table.with_format("arrow")
    for k in range(0, len(table), CHUNK):
        part = data[k : k + CHUNK]
        yield from (part if columns is None else part.select(list(columns))).to_batches()


def _map_in_process(files: list[str], fn: Any, path: Path, features: Any) -> Any:
    """What ``Dataset.map(fn, batched=True, with_indices=True, remove_columns=<all>, features=features)`` writes with
    one worker, the input read with :func:`stored_batches`: ``datasets.map`` reads its input through the table's
    memory map, whose pages (the whole input, once read through) count in the process's peak RSS. The output is
    written CHUNK rows a record batch (``datasets.map`` writes one per call of ``fn``): opening the file reads each
    batch's header, and the pages around a small batch's header are most of the batch."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    schema = features.arrow_schema
    at, held = 0, 0
    pending: list[Any] = []  # fn's outputs as Arrow tables (compact), until they make a record batch
    try:
        with ArrowWriter(features=features, path=str(path), writer_batch_size=max(1, CHUNK)) as writer:
            for batch in stored_batches(files):
                size = CHUNK // 10 or max(1, len(batch))  # 0: as datasets takes it, all at once
                for start in range(0, len(batch), size):
                    part = batch.slice(start, size)
                    out = pa.Table.from_pydict(fn(part.to_pydict(), list(range(at, at + len(part)))), schema=schema)
                    at += len(part)
                    pending.append(out)
                    held += len(out)
                    if held >= CHUNK:
                        writer.write_table(pa.concat_tables(pending))
                        pending, held = [], 0
            if held:
                writer.write_table(pa.concat_tables(pending))
            writer.finalize()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Dataset.from_file(str(path))


def _map(table: Any, fn: Any, workers: int, path: Path, *, with_indices: bool, remove: list[str], features: Any) -> Any:
    return table.map(
        fn,
        features=features,
        batched=True,
        batch_size=CHUNK // 10,
        with_indices=with_indices,
        num_proc=workers if workers > 1 else None,
        remove_columns=remove,
        cache_file_name=str(path),
        load_from_cache_file=False,
        new_fingerprint=hashlib.sha256(str(path).encode()).hexdigest()[:16],  # never hash the tokenizer
    )


def skipped_of(cols: Any, rows: str) -> list[tuple[int, str]]:
    """The ``(row, reason)`` pairs of a mapped table's ``skip`` column, the row numbers read from column ``rows``."""
    import pyarrow.compute as pc

    skip = cols.column("skip")
    valid = pc.is_valid(skip)
    return list(zip(pc.filter(cols.column(rows), valid).to_pylist(), pc.filter(skip, valid).to_pylist()))


@dataclass
class Outcome:
    """What the driver reads of a mapped table's per-row columns (:func:`outcome`): its errors (in row order), its
    skipped ``(row, reason)`` pairs, the positions and row numbers of the rows not skipped, and column sums."""

    errors: Any
    skipped: list[tuple[int, str]]
    kept: IntColumn
    kept_rows: IntColumn
    sums: dict[str, int]


def outcome(table: Any, rows: str, sums: Sequence[str] = (), kept_sums: Sequence[str] = ()) -> Outcome:
    """The ``error`` and ``skip`` columns of a mapped table, its row numbers (column ``rows``), the sums of columns
    ``sums`` (over every row) and ``kept_sums`` (over the rows not skipped), read in one pass a record batch at a
    time (:func:`table_batches`): through the table's memory map, each small column read would leave the pages
    around it resident (the kernel maps a 64 KiB window per fault), a few hundred bytes a row in all."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    errors: list[Any] = []
    skipped: list[tuple[int, str]] = []
    kept: list[Any] = []
    kept_rows: list[Any] = []
    totals = dict.fromkeys([*sums, *kept_sums], 0)
    at = 0
    for batch in table_batches(table, ["error", "skip", rows, *sums, *kept_sums]):
        cols = dict(zip(batch.schema.names, batch.columns))
        errors.append(pc.drop_null(cols["error"]))
        skip = cols["skip"]
        valid = pc.is_valid(skip)
        skipped += zip(pc.filter(cols[rows], valid).to_pylist(), pc.filter(skip, valid).to_pylist())
        keep = pc.invert(valid)
        kept.append(pc.indices_nonzero(keep).to_numpy().astype(np.int64) + at)
        kept_rows.append(pc.filter(cols[rows], keep).to_numpy(zero_copy_only=False).astype(np.int64))
        for name in sums:
            totals[name] += int(pc.sum(pc.cast(cols[name], pa.int64())).as_py() or 0)
        for name in kept_sums:
            totals[name] += int(pc.sum(pc.filter(pc.cast(cols[name], pa.int64()), keep)).as_py() or 0)
        at += len(batch)
    empty = np.zeros(0, dtype=np.int64)
    return Outcome(
        pa.chunked_array(errors, pa.string()),
        skipped,
        IntColumn(np.concatenate(kept) if kept else empty),
        IntColumn(np.concatenate(kept_rows) if kept_rows else empty),
        totals,
    )


class ExampleColumn(Sequence[Any]):
    """The normalised examples of an Arrow table (or another pickled ``column``: trl's records), decoded when read (a
    list's reading, without the list)."""

    def __init__(self, table: Any, positions: Any = None, column: str = "example") -> None:
        self.table = table
        # the table's rows that hold an example (None: all), as integers or an array of them (numpy or Arrow)
        self.positions = None if positions is None else IntColumn(positions)
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
            return self.take(range(*k.indices(len(self))))
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return pickle.loads(self.table[self._at(k)][self.column])

    def take(self, ks: Iterable[int]) -> list[Any]:
        """The items at ``ks`` (in that order, repeats included), read in one selection."""
        picks = self.positions.take(ks) if self.positions is not None else [int(j) for j in ks]
        blobs = self.table.select_columns([self.column]).select(picks)[self.column] if picks else []
        return [pickle.loads(b) for b in blobs]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ExampleColumn)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[Any]:
        for batch in table_batches(self.table, [self.column]):  # a batch at a time, not through the memory map
            for blob in batch.column(0).to_pylist():
                if blob is not None:
                    yield pickle.loads(blob)
