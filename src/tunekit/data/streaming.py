"""Streamed training data: ``tk.Data(source, streaming=True)``, read as training consumes it, never all at once.

For data larger than memory. The first :data:`SAMPLE_ROWS` rows are read and checked before the run starts (the
format and layout are detected from them, their errors raise then, as for any data); the rest are read, renamed,
normalised and tokenised a chunk at a time while the model trains, and handed to the trainer as a
``datasets.IterableDataset``, so memory stays bounded whatever the file's size. A bad row further on stops the run
with the same :class:`DatasetError` naming its row (or, with ``Training(on_bad_rows="skip")``, is skipped and
logged).

Sources: a .jsonl, .csv or .parquet file (read line by line, or a row group at a time), a dataset directory or a
dataset name (``datasets``' own streaming). A .json file is one JSON document and cannot be streamed.

The rows train in the file's order (no shuffle: a shuffled stream would need a buffer, and the order is what makes
a resumed run exact). A stream has no length to count epochs by, so ``Training(max_steps=...)`` is required; when
the stream ends before it, it starts again from the top (the trainer sees one endless epoch). A resumed run skips
the batches it had trained (the trainer reads through them again, so resuming late in a long stream takes the time
of reading that far) and continues at the same position. Streaming trains the objectives whose rows
tunekit tokenises (SFT, CausalLM); trl's preference and RL trainers read their whole dataset.

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

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.data.encoding import Encoded
from tunekit.data.formats import Example, NormalisedData, normalise_row
from tunekit.data.images import ImageOptions
from tunekit.data.layouts import Layout
from tunekit.data.loading import clean, iter_csv, iter_jsonl, not_utf8
from tunekit.data.mapping import Data, rename_row
from tunekit.data.sources import load_directory, load_named, looks_like_name
from tunekit.errors import DatasetError

__all__ = ["CHUNK_ROWS", "SAMPLE_ROWS", "StreamedData", "StreamedEncoded", "first_rows", "stream_rows"]

logger = logging.getLogger("tunekit")

SAMPLE_ROWS = 64  # rows read and checked before the run starts
CHUNK_ROWS = 256  # rows normalised and tokenised together while training


def _raw_rows(data: Data) -> Iterator[Any]:
    source = data.source
    if not isinstance(source, str):
        raise DatasetError(
            f"tk.Data(..., streaming=True) streams a file or a dataset; got {type(source).__name__}, which is in "
            "memory already: leave streaming out"
        )
    path = Path(source)
    named = {"split": data.split, "subset": data.subset}
    if path.is_file():
        given = {k: v for k, v in {**named, "revision": data.revision}.items() if v is not None}
        if given:
            raise DatasetError(f"{path}: {given} applies to a dataset name or directory, not to a file; leave it out")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return (row for _, row in iter_jsonl(path))
        if suffix == ".csv":
            return iter_csv(path)
        if suffix == ".parquet":
            return _parquet_rows(path)
        raise DatasetError(
            f"{path}: a {suffix or 'file without extension'} file cannot be streamed (a .json file is one JSON "
            "document); stream a .jsonl, .csv or .parquet file, or leave streaming out"
        )
    if path.is_dir():
        return iter(load_directory(path, split=data.split, subset=data.subset, streaming=True))
    if looks_like_name(source):
        return iter(load_named(source, split=data.split, subset=data.subset, revision=data.revision, streaming=True))
    raise DatasetError(f"data file not found: {path}; check the path (a relative path starts from {Path.cwd()})")


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):  # one batch in memory at a time
        yield from batch.to_pylist()


def stream_rows(data: Data) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number, row)`` of ``data`` one at a time (1-based, as the user counts), cleaned and renamed as
    :func:`tunekit.data.loading.load_rows` does."""
    rows = _raw_rows(data)
    source = Path(str(data.source))
    try:
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise DatasetError(
                    f"row {i}: expected an object with named fields, got {type(row).__name__}; write each row as "
                    "an object",
                    row=i,
                )
            yield i, rename_row(clean(row), i, data)
    except UnicodeDecodeError:
        raise DatasetError(
            f"{source}: not valid UTF-8 ({not_utf8(source)}); save the file as UTF-8 (tunekit never guesses the "
            "code page)"
        ) from None


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

    def stream(self, skipped: list[tuple[int, str]]) -> Iterator[Example]:
        """Every row normalised, one at a time; a bad row raises, or (``on_bad_rows="skip"``) is logged and added
        to ``skipped``."""
        assert self.source is not None
        for i, row in stream_rows(self.source):
            try:
                yield normalise_row(self.format, row, i, layout=self.layout, images=self.images)
            except DatasetError as e:
                if self.on_bad_rows != "skip":
                    raise
                logger.warning("skipped %s", e)
                skipped.append((i, str(e)))


@dataclass
class _Counts:
    rows: int = 0
    tokens: int = 0


@dataclass
class StreamedEncoded(Encoded):
    """Streamed data as the trainer reads it: ``to_dataset()`` is a ``datasets.IterableDataset`` that normalises and
    tokenises the rows a chunk at a time. ``input_ids`` / ``labels`` / ``rows`` hold the first rows' encoding
    (memory estimates, the checkpoint's data fingerprint); ``streamed`` counts the sequences and tokens read so
    far; ``skipped`` grows as bad rows are skipped."""

    data: StreamedData | None = None
    encode: Callable[[list[Example]], Encoded] | None = None
    streamed: _Counts = field(default_factory=_Counts)

    def to_dataset(self) -> Any:
        from datasets import Features, IterableDataset, Sequence, Value

        data, encode, counts, skipped = self.data, self.encode, self.streamed, self.skipped
        assert data is not None and encode is not None

        def generate() -> Iterator[dict[str, list[int]]]:
            # A plain function over its closure: datasets may copy the iterable, never this function's state.
            # Endless: at its end the stream starts again from the top, inside this one pass, so that the trainer
            # sees one epoch and a resumed run skips exactly the batches it had trained (a trainer's skip does not
            # carry over an epoch boundary).
            while True:
                passed = 0
                examples = data.stream(skipped)
                while chunk := list(itertools.islice(examples, CHUNK_ROWS)):
                    enc = encode(chunk)
                    for _row, reason in enc.skipped:
                        logger.warning("skipped %s", reason)
                    skipped.extend(enc.skipped)
                    for ids, labels in zip(enc.input_ids, enc.labels):
                        counts.rows += 1
                        counts.tokens += len(ids)
                        passed += 1
                        yield {"input_ids": ids, "labels": labels}
                if not passed:
                    raise DatasetError(f"no valid rows: every row of {data.source and data.source.source} was skipped")

        features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})
        return IterableDataset.from_generator(generate, features=features)
