"""A ``tk.Mix`` on the Arrow data driver: each source read and normalised into its own table
(:func:`tunekit.data.arrow.normalise_table`), the rows drawn from it copied into a table of their own (repeats
included, in the order :func:`tunekit.data.mixture.draw_rows` gives), and the encoded sources interleaved into one
memory-mapped file. What is drawn, and in what order, is :func:`tunekit.data.mixture.mix_parts`'s: only where the rows
are kept changes (tables on disk, not lists in memory).
"""

from __future__ import annotations

import hashlib
import itertools
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

from tunekit.data.arrow import ArrowNormalised, normalised_features
from tunekit.data.cache import example_digest, write_entry
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.int_column import IntColumn
from tunekit.data.mixture import interleaved_order, unpair, unpaired
from tunekit.data.tables import CHUNK, ExampleColumn, disable_progress, write_batches

__all__ = ["draw_table", "interleave_encoded", "unpair_table"]


def draw_table(norm: NormalisedData, picked: list[int]) -> NormalisedData:
    """The examples of ``norm`` at ``picked`` (indices into its valid examples, repeats included) as data of their
    own: an Arrow table of them, for data normalised into one (else a list)."""
    if not isinstance(norm, ArrowNormalised) or not isinstance(norm.examples, ExampleColumn):
        return NormalisedData(norm.format, [norm.examples[i] for i in picked], norm.skipped)
    import numpy as np

    positions = norm.examples.positions
    rows = np.asarray(picked, dtype=np.int64)  # the table's rows: an array, not a list of the mixture's size
    if positions is not None:
        rows = positions.array[rows]
    path = norm.workdir.path / f"drawn-{len(list(norm.workdir.path.glob('drawn-*')))}.arrow"
    disable_progress()
    table = norm.table.select(rows).flatten_indices(
        cache_file_name=str(path), new_fingerprint=hashlib.sha256(str(path).encode()).hexdigest()[:16]
    )
    return ArrowNormalised(
        norm.format,
        ExampleColumn(table),
        norm.skipped,
        table=table,
        source_rows=norm.source_rows,
        workdir=norm.workdir,
        parent=norm,
    )


def unpair_table(norm: NormalisedData) -> NormalisedData:
    """:func:`tunekit.data.mixture.unpair` (preference pairs as KTO's labelled answers: the same examples, in the same
    order) of data in an Arrow table, a chunk of pairs at a time into a table of its own (else in a list)."""
    if not isinstance(norm, ArrowNormalised) or not isinstance(norm.examples, ExampleColumn):
        return unpair(norm)
    import pyarrow as pa
    from datasets import Dataset

    features = normalised_features()
    schema = features.arrow_schema

    def batches() -> Iterator[Any]:
        pairs = iter(norm.examples)
        while chunk := list(itertools.islice(pairs, CHUNK or 1)):
            answers = [answer for ex in chunk for answer in unpaired(ex)]
            n = len(answers)
            columns = {
                "row": [ex.row for ex in answers],
                "example": [pickle.dumps(ex, protocol=pickle.HIGHEST_PROTOCOL) for ex in answers],
                "digest": [example_digest(ex) for ex in answers],
                "skip": [None] * n,
                "error": [None] * n,
                "unused": [[] for _ in answers],
                "numeric": [False] * n,
                "tools": [bool(ex.tools) for ex in answers],
                "images": [len(ex.images) for ex in answers],
            }
            yield pa.RecordBatch.from_pydict(columns, schema=schema)

    path = norm.workdir.path / f"unpaired-{len(list(norm.workdir.path.glob('unpaired-*')))}.arrow"
    write_batches(path, batches(), schema)
    table = Dataset.from_file(str(path))
    return ArrowNormalised(
        "unpaired_preference",
        ExampleColumn(table),
        norm.skipped,
        table=table,
        source_rows=norm.source_rows,
        workdir=norm.workdir,
        parent=norm,
    )


def interleave_encoded(
    parts: Sequence[Encoded], seed: int | None, directory: Any, *, skipped: list[tuple[int, str]], truncated: int
) -> Encoded | None:
    """The sequences of ``parts`` (each memory-mapped) as :func:`tunekit.data.mixture.interleave` orders them,
    written to an Arrow file in ``directory`` a chunk at a time and memory-mapped; None when a part is held in
    memory (the caller interleaves the lists)."""
    import pyarrow as pa

    if any(e.table is None for e in parts):
        return None
    whole = pa.concat_tables([e.table.data.table.replace_schema_metadata(None) for e in parts])
    listed = interleaved_order(len(whole), seed)
    order = IntColumn(listed).array if listed is not None else None  # 8 bytes a sequence, the list let go
    del listed

    def batches() -> Iterator[Any]:
        if order is None:
            yield from whole.to_batches(max_chunksize=CHUNK)
            return
        for k in range(0, len(order), CHUNK):
            yield from whole.take(order[k : k + CHUNK]).combine_chunks().to_batches()

    return write_entry(directory / "mixed.arrow", batches(), skipped=skipped, truncated=truncated)
