"""Streamed training data: ``tk.Data(source, streaming=True)``, read as training consumes it, never all at once.

For data larger than memory. The first :data:`SAMPLE_ROWS` rows are read and checked before the run starts (the
format and layout are detected from them, their errors raise then, as for any data); the rest are read, renamed,
normalised and tokenised (or, for trl's trainers, prepared as their records) a chunk at a time while the model
trains, and handed to the trainer as a ``datasets.IterableDataset``, so memory stays bounded whatever the file's
size. A bad row further on stops the run with the same :class:`DatasetError` naming its row (or, with
``Training(on_bad_rows="skip")``, is skipped and logged).

Sources: a .jsonl, .csv or .parquet file (read line by line, or a row group at a time), a dataset directory or a
dataset name (``datasets``' own streaming). A .json file is one JSON document and cannot be streamed.

Every objective streams: SFT and CausalLM (tunekit tokenises the rows), DPO, KTO, reward modelling, GRPO and RLOO
(trl's trainers take a ``datasets.IterableDataset`` and tokenise its records as they read them); not ORPO nor DPO's
SimPO loss, whose trl trainers (ORPO, CPO) map their dataset with ``num_proc``, which an iterable dataset does not
take. Eval data is evaluated whole at every evaluation, so it is not streamed.

The rows train in the file's order, or with ``tk.Data(..., shuffle_buffer=N)`` through ``datasets``' buffered
shuffle (rows drawn at random from a buffer of ``N``, by ``Training(seed=...)``). A stream has no length to count
epochs by, so ``Training(max_steps=...)`` is required; when the stream ends before it, it starts again from the top
(the trainer sees one endless epoch). Resuming: a checkpoint of an unshuffled SFT / CausalLM stream records where
the stream stood (:data:`STATE_FILE`: the last trained row's byte offset in a .jsonl file, its row number
elsewhere), and the resumed run starts reading there: a .jsonl file is sought to it (once its size and a digest of
what was read match; a changed file is read again from the top, with a warning), other sources pass over the rows
before it without normalising or tokenising them. A shuffled stream, a stream packed to a token budget and trl's
objectives resume as the trainer does: it reads the stream again up to the checkpoint's step (the same order, so
the run is exact, at the cost of reading that far).

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> import tunekit as tk
    >>> from tunekit.data.streaming import stream_rows
    >>> path = Path(tempfile.mkdtemp()) / "big.jsonl"
    >>> _ = path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\\n" for i in range(3)))
    >>> rows = stream_rows(tk.Data(str(path), streaming=True))
    >>> next(rows), next(rows)
    ((1, {'text': 'row 0'}), (2, {'text': 'row 1'}))
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.data.encoding import Encoded
from tunekit.data.formats import Example, NormalisedData, normalise_row
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import Layout
from tunekit.data.loading import clean, iter_csv, not_utf8, parse_jsonl_line
from tunekit.data.mapping import Data, rename_row
from tunekit.data.rows import TrainerRows
from tunekit.data.sources import load_directory, load_named, looks_like_name
from tunekit.errors import DatasetError

__all__ = [
    "CHUNK_ROWS", "POSITION", "SAMPLE_ROWS", "STATE_FILE", "StreamPosition", "StreamedData", "StreamedEncoded",
    "StreamedRows", "first_rows", "stream_rows",
]  # fmt: skip

logger = logging.getLogger("tunekit")

SAMPLE_ROWS = 64  # rows read and checked before the run starts
CHUNK_ROWS = 256  # rows normalised and tokenised together while training
POSITION = "tunekit_pos"  # the column of a streamed sequence's StreamPosition (as a list of ints)
STATE_FILE = "stream.json"  # in a checkpoint: where the stream stood at its step
_BOM = b"\xef\xbb\xbf"
_DIGEST_SPAN = 2**20  # bytes of a .jsonl file hashed at each end of what a checkpoint read (validation)


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream stood at a sequence: the row it came from (``offset``: the byte offset of its line in a .jsonl
    file, else -1; ``line``: that line's number, 0 for other sources), its 1-based ``row`` number, ``seq``: which of
    that row's sequences it is (0: the first), and the sequences and tokens streamed up to and including it."""

    offset: int
    line: int
    row: int
    seq: int
    rows: int
    tokens: int

    def as_list(self) -> list[int]:
        return [self.offset, self.line, self.row, self.seq, self.rows, self.tokens]


def _jsonl_rows(path: Path, offset: int = 0, line: int = 0) -> Iterator[tuple[int, int, Any]]:
    """``(byte offset, line number, value)`` of each object of a .jsonl file, from byte ``offset`` (the start of
    line ``line + 1``) on. Read in binary, not through :func:`~tunekit.data.loading.iter_jsonl`'s text file, whose
    position is not a byte offset one can seek back to."""
    with path.open("rb") as f:
        f.seek(offset)
        if offset == 0 and f.read(len(_BOM)) != _BOM:  # a byte-order mark, as "utf-8-sig" reads it
            f.seek(0)
        start = f.tell()
        for raw in iter(f.readline, b""):
            line += 1
            here, start = start, start + len(raw)
            text = raw.decode("utf-8")
            if text.strip():
                yield here, line, parse_jsonl_line(text, line, path)


def _raw_rows(data: Data, at: StreamPosition | None = None) -> Iterator[tuple[int, int, Any]]:
    """``(byte offset, line number, row)`` of each row of ``data`` (-1 and 0 where the source has no lines); from
    ``at``'s row on (a .jsonl file seeks to it; other sources pass over the rows before it unread)."""
    source = data.source
    if not isinstance(source, str):
        raise DatasetError(
            f"tk.Data(..., streaming=True) streams a file or a dataset; got {type(source).__name__}, which is in "
            "memory already: leave streaming out"
        )
    path = Path(source)
    named = {"split": data.split, "subset": data.subset}
    rows: Iterator[Any]
    if path.is_file():
        given = {k: v for k, v in {**named, "revision": data.revision}.items() if v is not None}
        if given:
            raise DatasetError(f"{path}: {given} applies to a dataset name or directory, not to a file; leave it out")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            if at is not None and at.offset >= 0:
                return _jsonl_rows(path, at.offset, at.line - 1)
            return _jsonl_rows(path)
        if suffix == ".csv":
            rows = iter_csv(path)
        elif suffix == ".parquet":
            rows = _parquet_rows(path)
        else:
            raise DatasetError(
                f"{path}: a {suffix or 'file without extension'} file cannot be streamed (a .json file is one JSON "
                "document); stream a .jsonl, .csv or .parquet file, or leave streaming out"
            )
    elif path.is_dir():
        rows = iter(load_directory(path, split=data.split, subset=data.subset, streaming=True))
    elif looks_like_name(source):
        rows = iter(load_named(source, split=data.split, subset=data.subset, revision=data.revision, streaming=True))
    else:
        raise DatasetError(f"data file not found: {path}; check the path (a relative path starts from {Path.cwd()})")
    if at is not None:
        rows = itertools.islice(rows, at.row - 1, None)  # read past, neither cleaned nor normalised nor tokenised
    return ((-1, 0, row) for row in rows)


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):  # one batch in memory at a time
        yield from batch.to_pylist()


def _positioned_rows(data: Data, at: StreamPosition | None = None) -> Iterator[tuple[int, dict[str, Any], int, int]]:
    """``(row number, row, byte offset, line number)``: :func:`stream_rows` with where each row is, from ``at``."""
    source = Path(str(data.source))
    try:
        for i, (offset, line, row) in enumerate(_raw_rows(data, at), at.row if at is not None else 1):
            if not isinstance(row, dict):
                raise DatasetError(
                    f"row {i}: expected an object with named fields, got {type(row).__name__}; write each row as "
                    "an object",
                    row=i,
                )
            yield i, rename_row(clean(row), i, data), offset, line
    except UnicodeDecodeError:
        raise DatasetError(
            f"{source}: not valid UTF-8 ({not_utf8(source)}); save the file as UTF-8 (tunekit never guesses the "
            "code page)"
        ) from None


def stream_rows(data: Data) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number, row)`` of ``data`` one at a time (1-based, as the user counts), cleaned and renamed as
    :func:`tunekit.data.loading.load_rows` does."""
    return ((i, row) for i, row, _, _ in _positioned_rows(data))


def first_rows(data: Data, n: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The first ``n`` rows of the stream (what is checked before the run starts)."""
    rows = [row for _, row in itertools.islice(stream_rows(data), n)]
    if not rows:
        raise DatasetError(f"the dataset is empty: {data.source} has no rows to train on; add at least one example")
    return rows


@dataclass
class StreamedData(NormalisedData):
    """Streamed data after its first rows were checked: ``examples`` holds those (for the run's summary and the
    plan's estimate); :meth:`stream` normalises every row, from the first, as training reads them."""

    source: Data | None = None
    layout: Layout | None = None
    on_bad_rows: str = "error"
    images: ImageOptions | None = None  # how images in the rows are read (the pixel budget, their folder)

    def stream(
        self, skipped: list[tuple[int, str]], at: StreamPosition | None = None
    ) -> Iterator[tuple[Example, int, int]]:
        """Every row normalised (from ``at``'s row), one at a time, with its byte offset and line number; a bad row
        raises, or (``on_bad_rows="skip"``) is logged and added to ``skipped``."""
        assert self.source is not None
        for i, row, offset, line in _positioned_rows(self.source, at):
            try:
                yield normalise_row(self.format, row, i, layout=self.layout, images=self.images), offset, line
            except DatasetError as e:
                if self.on_bad_rows != "skip":
                    raise
                logger.warning("skipped %s", e)
                skipped.append((i, str(e)))


@dataclass
class _Counts:
    rows: int = 0
    tokens: int = 0


def _shuffled(dataset: Any, buffer: int | None, seed: int) -> Any:
    """``dataset`` through ``datasets``' buffered shuffle (a buffer of ``buffer`` rows, drawn by ``seed``)."""
    return dataset.shuffle(seed=seed, buffer_size=buffer) if buffer else dataset


def _file_digest(path: Path, offset: int) -> str:
    """A digest of a .jsonl file's first and last :data:`_DIGEST_SPAN` bytes before ``offset`` (what a resumed run
    checks before seeking there: a file edited since reads as changed)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(min(offset, _DIGEST_SPAN)))
        f.seek(max(offset - _DIGEST_SPAN, 0))
        h.update(f.read(offset - f.tell()))
    return h.hexdigest()


@dataclass
class StreamedEncoded(Encoded):
    """Streamed data as the trainer reads it: ``to_dataset()`` is a ``datasets.IterableDataset`` that normalises and
    tokenises the rows a chunk at a time. ``input_ids`` / ``labels`` / ``rows`` hold the first rows' encoding
    (memory estimates, the checkpoint's data fingerprint); ``streamed`` counts the sequences and tokens read so
    far; ``skipped`` grows as bad rows are skipped. Unshuffled, each sequence carries its
    :class:`StreamPosition` (column :data:`POSITION`): a checkpoint records the last one trained
    (:meth:`checkpoint_state`), from which a resumed run starts reading (:meth:`resume`)."""

    data: StreamedData | None = None
    encode: Callable[[list[Example]], Encoded] | None = None
    streamed: _Counts = field(default_factory=_Counts)
    shuffle_buffer: int | None = None
    seed: int = 0
    resume_at: StreamPosition | None = None

    def to_dataset(self) -> Any:
        from datasets import Features, IterableDataset, Sequence, Value

        data, encode, counts, skipped = self.data, self.encode, self.streamed, self.skipped
        assert data is not None and encode is not None
        positioned = not self.shuffle_buffer

        def generate() -> Iterator[dict[str, list[int]]]:
            # A plain function over its closure: datasets may copy the iterable, never this function's state.
            # Endless: at its end the stream starts again from the top, inside this one pass, so that the trainer
            # sees one epoch and a resumed run continues where it stood (a trainer's skip does not carry over an
            # epoch boundary).
            at = self.resume_at
            # Counted from the start (or the checkpoint's count) each time the trainer starts reading (trl's trainers
            # look at the first row before training).
            counts.rows, counts.tokens = (at.rows, at.tokens) if at is not None else (0, 0)
            while True:
                passed = 0
                examples = data.stream(skipped, at)
                while chunk := list(itertools.islice(examples, CHUNK_ROWS)):
                    where = {ex.row: (offset, line) for ex, offset, line in chunk}
                    enc = encode([ex for ex, _, _ in chunk])
                    for _row, reason in enc.skipped:
                        logger.warning("skipped %s", reason)
                    skipped.extend(enc.skipped)
                    previous, seq = -1, 0
                    for ids, labels, row in zip(enc.input_ids, enc.labels, enc.rows):
                        seq = seq + 1 if row == previous else 0
                        previous = row
                        if at is not None and row == at.row and seq <= at.seq:
                            continue  # trained before the checkpoint the run resumed from
                        counts.rows += 1
                        counts.tokens += len(ids)
                        passed += 1
                        item: dict[str, list[int]] = {"input_ids": ids, "labels": labels}
                        if positioned:
                            offset, line = where[row]
                            item[POSITION] = [offset, line, row, seq, counts.rows, counts.tokens]
                        yield item
                if not passed and at is None:
                    raise DatasetError(f"no valid rows: every row of {data.source and data.source.source} was skipped")
                at = None

        columns = {"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))}
        if positioned:
            columns[POSITION] = Sequence(Value("int64"))
        dataset = IterableDataset.from_generator(generate, features=Features(columns))
        return _shuffled(dataset, self.shuffle_buffer, self.seed)

    def checkpoint_state(self, position: Sequence[int]) -> dict[str, Any]:
        """What a checkpoint records of the stream (:data:`STATE_FILE`): the last trained sequence's ``position``,
        the rows skipped up to it (a resumed run that seeks past them reports them still) and, for a .jsonl file, its
        size and a digest of what was read (:meth:`resume` checks them)."""
        at = StreamPosition(*position)
        # the rows skipped up to the position: a resumed run that seeks there does not meet them again
        passed = sorted({(row, reason) for row, reason in self.skipped if row <= at.row})
        state: dict[str, Any] = {"position": at.as_list(), "skipped": [list(s) for s in passed]}
        assert self.data is not None and self.data.source is not None
        if at.offset >= 0:
            path = Path(str(self.data.source.source))
            state["file"] = {"size": path.stat().st_size, "digest": _file_digest(path, at.offset)}
        return state

    def resume(self, checkpoint: Path) -> bool:
        """Start reading where ``checkpoint``'s stream stood (its :data:`STATE_FILE`): True when the stream will
        (the trainer must then not skip the batches it trained itself), False when the trainer must read up to it
        again: a shuffled stream, a checkpoint without the state (a packed or older run), or a .jsonl file that
        changed since (logged)."""
        path = checkpoint / STATE_FILE
        if self.shuffle_buffer or not path.is_file():
            return False
        state = json.loads(path.read_text(encoding="utf-8"))
        at = StreamPosition(*state["position"])
        if at.offset >= 0:
            assert self.data is not None and self.data.source is not None
            source = Path(str(self.data.source.source))
            kept = state.get("file", {})
            size = source.stat().st_size if source.is_file() else -1
            if size != kept.get("size") or _file_digest(source, at.offset) != kept.get("digest"):
                logger.warning(
                    "%s changed since %s was written (its size or the bytes it had read differ): the resumed run "
                    "reads the stream again from the top up to the checkpoint's step instead of seeking to row %d",
                    source,
                    checkpoint.name,
                    at.row,
                )
                return False
        self.resume_at = at
        # FitResult.skipped_rows lists them too (a checkpoint of an older run has none recorded)
        self.skipped.extend((int(row), str(reason)) for row, reason in state.get("skipped", ()))
        return True


@dataclass
class StreamedRows(TrainerRows):
    """Streamed rows for a trl trainer (preference, KTO, reward and RL objectives): ``to_dataset()`` is a
    ``datasets.IterableDataset`` of records prepared a chunk at a time (``prepare``), in ``features``' columns.
    ``records`` / ``rows`` hold the first rows' (the estimates, the data fingerprint); ``streamed`` counts the
    records and tokens read so far. A resumed run reads the stream again up to the checkpoint's step (trl's
    trainers batch the records themselves, so no position reaches the checkpoint)."""

    data: StreamedData | None = None
    prepare: Callable[[list[Example]], TrainerRows] | None = None
    features: Any = None
    streamed: _Counts = field(default_factory=_Counts)
    shuffle_buffer: int | None = None
    seed: int = 0

    def to_dataset(self) -> Any:
        from datasets import IterableDataset

        data, prepare, counts, skipped = self.data, self.prepare, self.streamed, self.skipped
        assert data is not None and prepare is not None

        def generate() -> Iterator[dict[str, Any]]:
            counts.rows = counts.tokens = 0
            while True:  # endless, as StreamedEncoded's
                passed = 0
                examples = (ex for ex, _, _ in data.stream(skipped))
                while chunk := list(itertools.islice(examples, CHUNK_ROWS)):
                    rows = prepare(chunk)
                    for _row, reason in rows.skipped:
                        logger.warning("skipped %s", reason)
                    skipped.extend(rows.skipped)
                    counts.rows += len(rows.records)
                    counts.tokens += rows.num_tokens
                    passed += len(rows.records)
                    yield from rows.records
                if not passed:
                    raise DatasetError(f"no valid rows: every row of {data.source and data.source.source} was skipped")

        dataset = IterableDataset.from_generator(generate, features=self.features)
        return _shuffled(dataset, self.shuffle_buffer, self.seed)
