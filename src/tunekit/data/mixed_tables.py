"""A ``tk.Mix`` on the Arrow data driver: each source read and normalised into its own table
(:func:`tunekit.data.arrow.normalise_table`), the rows drawn from it copied into a table of their own (repeats
included, in the order :func:`tunekit.data.mixture.draw_rows` gives), and the encoded sources interleaved into one
memory-mapped file. What is drawn, and in what order, is :func:`tunekit.data.mixture.mix_parts`'s: only where the rows
are kept changes (tables on disk, not lists in memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from tunekit.data.arrow import ArrowNormalised
from tunekit.data.cache import write_entry
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.mixture import interleaved_order
from tunekit.data.tables import CHUNK, ExampleColumn, disable_progress

__all__ = ["draw_table", "interleave_encoded"]


def draw_table(norm: NormalisedData, picked: list[int]) -> NormalisedData:
    """The examples of ``norm`` at ``picked`` (indices into its valid examples, repeats included) as data of their
    own: an Arrow table of them, for data normalised into one (else a list)."""
    if not isinstance(norm, ArrowNormalised) or not isinstance(norm.examples, ExampleColumn):
        return NormalisedData(norm.format, [norm.examples[i] for i in picked], norm.skipped)
    positions = norm.examples.positions
    rows = [int(positions[i]) if positions is not None else i for i in picked]
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
    order = interleaved_order(len(whole), seed)

    def batches() -> Iterator[Any]:
        if order is None:
            yield from whole.to_batches(max_chunksize=CHUNK)
            return
        for k in range(0, len(order), CHUNK):
            yield from whole.take(order[k : k + CHUNK]).combine_chunks().to_batches()

    return write_entry(directory / "mixed.arrow", batches(), skipped=skipped, truncated=truncated)
