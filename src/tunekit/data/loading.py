"""Read any supported input into plain dict rows: all at once (:func:`load_rows`, the reference), or one at a time
(:func:`iter_rows`, what the Arrow data driver reads a chunk at a time from)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson
from ijson.common import ObjectBuilder

from tunekit.data.columns import no_duplicate_keys
from tunekit.data.mapping import Data, rename
from tunekit.data.mixture import Mix
from tunekit.data.sources import load_directory, load_named, looks_like_name, pick_split
from tunekit.errors import DatasetError

__all__ = [
    "UTF8", "DataInput", "NotStreamed", "base_dir_of", "clean", "empty_data_error", "iter_csv", "iter_file_rows",
    "iter_json_rows", "iter_jsonl", "iter_parquet_rows", "iter_rows", "load_rows", "not_utf8", "parse_jsonl_line",
]  # fmt: skip

DataInput = Any  # str | Path | datasets.Dataset | list[dict] | pandas.DataFrame | tk.Data (a name: org/name)

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def clean(value: Any) -> Any:
    """A cell as tunekit reads it: NaN as None, numpy arrays as lists (recursively)."""
    if isinstance(value, str):  # most cells: nothing to clean (and no attribute lookup that fails)
        return value
    # pandas and parquet use NaN / None for missing cells; treat both as "absent".
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return clean(value.tolist())  # numpy arrays from parquet list columns
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    return value


# "utf-8-sig" is UTF-8 that also drops a leading byte-order mark, which Notepad and Excel write when
# saving "UTF-8"; without it the first key of a .csv would be "\ufefftext" and a .jsonl line 1 invalid.
UTF8 = "utf-8-sig"


# One decoder for every line (json.loads with an object_pairs_hook builds a new one per call).
_DECODER = json.JSONDecoder(object_pairs_hook=no_duplicate_keys)


def _parse_line(line: str, lineno: int, path: Path | str) -> Any:
    try:
        if line.startswith("\ufeff"):  # json.loads's own message for a byte-order mark
            return json.loads(line, object_pairs_hook=no_duplicate_keys)
        return _DECODER.decode(line)
    except ValueError as e:
        if not isinstance(e, json.JSONDecodeError):  # a key twice in one object
            raise DatasetError(
                f"{path}, line {lineno}: {_twice(e)}; JSON would keep only the last value, so tunekit "
                "refuses to guess: remove or rename one of them",
                row=lineno,
            ) from None
        raise DatasetError(
            f"{path}: invalid JSON on line {lineno} ({e.msg} at column {e.colno}); "
            "each line of a .jsonl file must be one JSON object",
            row=lineno,
        ) from None


def parse_jsonl_line(line: str, lineno: int, path: Path | str) -> Any:
    """One line of a .jsonl file as its value (NaN cleaned as :func:`load_rows` cleans it); raises DatasetError
    naming the line for invalid JSON or a key twice in one object."""
    return clean(_parse_line(line, lineno, path))


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """The objects of a .jsonl file one at a time, with their line numbers (blank lines skipped)."""
    with path.open(encoding=UTF8) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield lineno, _parse_line(line, lineno, path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in iter_jsonl(path)]


def _twice(e: ValueError) -> str:
    return f"the key {e.args[0]!r} appears twice in one object"


class _Marked(dict):  # type: ignore[type-arg]
    """An object that held a key twice (the second parse of a .json file, to find the row)."""

    twice = ""


def _mark_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = _Marked()
    for key, value in pairs:
        if key in out:
            out.twice = key  # type: ignore[attr-defined]
        out[key] = value
    return out


def _holds_duplicate(value: Any) -> str:
    if isinstance(value, _Marked) and value.twice:
        return value.twice
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((key for key in map(_holds_duplicate, children) if key), "")


def _duplicate_in_json(path: Path, text: str, e: ValueError) -> DatasetError:
    """The error for a .json file with a key twice in one object, naming the row that holds it."""
    data = json.loads(text, object_pairs_hook=_mark_duplicates)
    rows = data if isinstance(data, list) else next(iter(data.values()), []) if isinstance(data, dict) else []
    at = next((i for i, row in enumerate(rows if isinstance(rows, list) else [], 1) if _holds_duplicate(row)), None)
    where = f"row {at}" if at is not None else "an object"
    return DatasetError(
        f"{path}, {where}: {_twice(e)}; JSON would keep only the last value, so tunekit refuses to guess: "
        "remove or rename one of them",
        row=at,
    )


def iter_csv(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a .csv file one at a time; refuses a header that names a column twice, and rows with more cells
    than it names."""
    with path.open(encoding=UTF8, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            where = ", ".join(
                f"{name!r} (columns {[k + 1 for k, n in enumerate(header) if n == name]})" for name in twice
            )
            raise DatasetError(
                f"{path}: the header names a column twice: {where}; a row would keep only the last cell, so "
                "tunekit refuses to guess: rename or remove one of them",
                field=twice[0],
            )
        for i, row in enumerate(reader, 1):
            if None in row:  # DictReader puts the cells beyond the header under the key None
                raise DatasetError(
                    f"{path}: row {i} (line {reader.line_num}) has {len(header) + len(row[None])} cells but the "
                    f"header names {len(header)} columns; quote cells that hold commas, or name every column",
                    row=i,
                )
            yield dict(row)


def iter_parquet_rows(path: Path, batch_rows: int = 10_000) -> Iterator[dict[str, Any]]:
    """A .parquet file's rows, ``batch_rows`` at a time, as :func:`load_rows` reads them: through pandas (so every
    value is the one ``pd.read_parquet`` gives), with an integer column that holds a null anywhere in the file read
    as floats in every batch, as pandas reads the whole column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    schema = f.schema_arrow
    nullable_ints = []
    for k, name in enumerate(schema.names):
        if not pa.types.is_integer(schema.field(k).type):
            continue
        stats = [f.metadata.row_group(g).column(k).statistics for g in range(f.metadata.num_row_groups)]
        if any(st is None or not st.has_null_count for st in stats):
            nulls = pq.read_table(path, columns=[name]).column(name).null_count  # one column, when unrecorded
        else:
            nulls = sum(st.null_count for st in stats)
        if nulls:
            nullable_ints.append(name)
    for batch in f.iter_batches(batch_size=batch_rows):
        for name in nullable_ints:
            k = batch.schema.get_field_index(name)
            batch = batch.set_column(k, name, batch.column(k).cast(pa.float64()))
        for row in _frame_rows(pa.Table.from_batches([batch]).to_pandas(), str(path)):
            yield clean(row)


def iter_file_rows(path: Path) -> Iterator[dict[str, Any]] | None:
    """A .csv or .parquet file's rows one at a time, each as :func:`load_rows` gives it; None for other files (read
    whole by :func:`load_rows`: a .json file is one JSON document)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return (clean(row) for row in iter_csv(path))
    if suffix == ".parquet":
        return iter_parquet_rows(path)
    return None


class NotStreamed(Exception):
    """A .json file that :func:`iter_json_rows` does not read exactly as ``json.loads`` does: not a list of rows (nor
    ``{"data": [...]}``), invalid JSON or not UTF-8, a key twice in one object, ``NaN`` or a number beyond 64 bits.
    Such a file is read whole by :func:`load_rows`, which returns its rows or raises tunekit's message for it."""


class _UniqueKeys(dict):  # type: ignore[type-arg]
    """An object of a streamed .json file: a key twice is left to the whole read (its message names the row)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self:
            raise NotStreamed(key)
        super().__setitem__(key, value)


_OPEN = frozenset({"start_map", "start_array"})
_CLOSE = frozenset({"end_map", "end_array"})


def iter_json_rows(path: Path) -> Iterator[Any]:
    """The rows of a .json file (one JSON document: a list of rows, or ``{"data": [...]}`` with one key) one at a
    time, with the values ``json.loads`` gives; raises :class:`NotStreamed` (possibly after some rows) for a file it
    does not read that way, for :func:`load_rows` to read whole."""
    # ijson (the usual incremental JSON parser, over yajl) rather than our own: json.loads needs the whole document.
    with path.open("rb") as f:
        if f.read(3) != b"\xef\xbb\xbf":  # a byte-order mark is skipped, as UTF8 reads it
            f.seek(0)
        try:
            events = ijson.basic_parse(f, use_float=True)
            event, _ = next(events, (None, None))
            keyed = event == "start_map"
            if keyed:  # {"data": [...]}: its one key's list
                event, _ = next(events)
                if event == "map_key":
                    event, _ = next(events)
            if event != "start_array":
                raise NotStreamed(event)
            depth = 0
            builder = ObjectBuilder(map_type=_UniqueKeys)
            for event, value in events:
                if depth == 0:
                    if event == "end_array":
                        break
                    builder = ObjectBuilder(map_type=_UniqueKeys)
                builder.event(event, value)
                depth += (event in _OPEN) - (event in _CLOSE)
                if depth == 0:
                    yield dict(builder.value) if isinstance(builder.value, dict) else builder.value
            if keyed and next(events, (None, None))[0] != "end_map":  # a second key: not one list of rows
                raise NotStreamed("keys")
            for _ in events:  # the document must end here (ijson raises for anything after it)
                raise NotStreamed("trailing")
        except (ijson.JSONError, UnicodeDecodeError) as e:
            raise NotStreamed(str(e)) from None


def _read_csv(path: Path) -> list[dict[str, Any]]:
    return list(iter_csv(path))


def not_utf8(path: Path) -> str:
    # The decoder's own offset is relative to the chunk it was decoding, so find the byte again.
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return f"line {line}, byte {e.start}: {raw[e.start : e.start + 4]!r}"
    return "unknown position"


def _read_file(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            text = path.read_text(encoding=UTF8)
            try:
                data = json.loads(text, object_pairs_hook=no_duplicate_keys)
            except ValueError as e:
                if not isinstance(e, json.JSONDecodeError):
                    raise _duplicate_in_json(path, text, e) from None
                raise DatasetError(
                    f"{path}: invalid JSON on line {e.lineno} ({e.msg}); a .json file must hold a list of objects",
                    row=None,
                ) from None
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))  # {"data": [...]} / {"train": [...]}
            if not isinstance(data, list):
                raise DatasetError(
                    f"{path}: expected a JSON list of objects, found {type(data).__name__}; put the rows in a list "
                    "([{...}, {...}]), or write a .jsonl file with one object a line"
                )
            return data
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".parquet":
            import pandas as pd

            return _frame_rows(pd.read_parquet(path), str(path))
    except UnicodeDecodeError:
        raise DatasetError(
            f"{path}: not valid UTF-8 ({not_utf8(path)}); save the file as UTF-8 (tunekit never guesses the code page)",
            row=None,
        ) from None
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _frame_rows(frame: Any, name: str) -> list[dict[str, Any]]:
    """A DataFrame's rows; refuses duplicate column names (``to_dict`` would keep the last one's cells)."""
    names = [str(c) for c in frame.columns]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise DatasetError(
            f"{name} has the column {twice[0]!r} twice{f' (and {twice[1:]})' if len(twice) > 1 else ''}; a row would "
            "keep only the last one's cells, so tunekit refuses to guess: rename or drop one (df.columns = [...])",
            field=twice[0],
        )
    return list(frame.to_dict("records"))


def base_dir_of(data: DataInput) -> Path | None:
    """The folder relative image paths in ``data`` start from: a data file's own folder (so a dataset moves with
    its images), else None (rows given in Python: the current directory)."""
    if isinstance(data, Data):
        return base_dir_of(data.source)
    if isinstance(data, (str, Path)) and Path(data).is_file():
        return Path(data).resolve().parent
    return None


def load_rows(data: DataInput, *, what: str = "training") -> list[dict[str, Any]]:
    """Return the rows of ``data`` as a list of dicts (missing cells as ``None``).

    ``what`` names the data in the message for empty data (``"training"``, ``"eval"``). A :class:`tunekit.Data`
    is loaded from its source (a dataset name or directory with its ``split``, ``subset`` and ``revision``), its
    columns, message keys and roles renamed to tunekit's. A string that is no file is a dataset directory or a
    dataset name (:mod:`tunekit.data.sources`).
    """
    if isinstance(data, Mix):
        raise DatasetError(
            f"a tk.Mix ({', '.join(data.names)}) is read source by source by fit, start, plan and prepare (and as "
            "their eval_data); here, pass one source at a time"
        )
    if isinstance(data, Data):
        options = {"split": data.split, "subset": data.subset, "revision": data.revision}
        return rename(_load(data.source, what, **options), data)
    return _load(data, what)


def _load(
    data: DataInput, what: str, split: str | None = None, subset: str | None = None, revision: str | None = None
) -> list[dict[str, Any]]:
    if isinstance(data, (str, Path)):
        path = Path(data)
        named = {k: v for k, v in (("split", split), ("subset", subset), ("revision", revision)) if v is not None}
        if path.is_file():
            if named:
                given = ", ".join(f"{k}={v!r}" for k, v in named.items())
                raise DatasetError(
                    f"{path}: {given} applies to a dataset name or directory, not to the file {path.name}; leave it "
                    "out (a file is read whole)"
                )
            rows: list[Any] = _read_file(path)
        elif path.is_dir():
            if revision is not None:
                raise DatasetError(f"{path}: revision={revision!r} applies to a hub dataset, not to a directory")
            rows = load_directory(path, split=split, subset=subset, what=what).to_list()
        elif isinstance(data, str) and looks_like_name(data):
            rows = load_named(data, split=split, subset=subset, revision=revision, what=what).to_list()
        else:
            raise DatasetError(
                f"data file not found: {path}; check the path (a relative path starts from {Path.cwd()})"
            )
    elif isinstance(data, list):
        rows = data
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        rows = _frame_rows(data, "the DataFrame")
    elif hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset
        rows = data.to_list()
    elif hasattr(data, "keys") and hasattr(data, "column_names"):  # datasets.DatasetDict
        if split is None:
            raise DatasetError(
                f"got a DatasetDict with splits {sorted(data.keys())}; pass one split, e.g. data['train'], or "
                "tk.Data(data, split='train')"
            )
        rows = pick_split(data, split, "the DatasetDict", what=what).to_list()
    else:
        raise DatasetError(
            f"unsupported data of type {type(data).__name__}; pass a path (.jsonl, .json, .csv, .parquet), a dataset "
            "name (org/name), a list of dicts, a datasets.Dataset or a pandas DataFrame"
        )
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DatasetError(
                f"row {i}: expected an object with named fields, got {type(row).__name__}; write each row as an object",
                row=i,
            )
        out.append(clean(row))
    if not out:
        raise empty_data_error(data, what)
    return out


def iter_rows(data: DataInput, *, what: str = "training", chunk: int = 10_000) -> Iterator[dict[str, Any]]:
    """The rows :func:`load_rows` returns, one at a time and read ``chunk`` at a time (never all in one list), with
    the same values and errors; a :class:`tunekit.Data`'s rows *before* its renaming (:func:`tunekit.data.mapping.
    rename_rows` renames them, once all are read, so that a reading error further down still comes first, as in
    :func:`load_rows`). A .json file is streamed (:func:`iter_json_rows`): one it cannot stream raises
    :class:`NotStreamed` for the caller to read it whole with :func:`load_rows`. Empty data is the caller's to
    refuse (:func:`empty_data_error`)."""
    if isinstance(data, Mix):
        load_rows(data)  # raises its message
    if isinstance(data, Data):
        rows = _iter_source(data.source, what, chunk, split=data.split, subset=data.subset, revision=data.revision)
    else:
        rows = _iter_source(data, what, chunk)
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DatasetError(
                f"row {i}: expected an object with named fields, got {type(row).__name__}; write each row as an object",
                row=i,
            )
        yield clean(row)


def _dataset_rows(dataset: Any, chunk: int) -> Iterator[Any]:
    """A ``datasets.Dataset``'s rows as ``to_list()`` gives them, ``chunk`` at a time (a contiguous ``select`` is a
    slice of its memory-mapped table)."""
    for k in range(0, len(dataset), chunk):
        yield from dataset.select(range(k, min(k + chunk, len(dataset)))).to_list()


def _iter_source(
    data: DataInput,
    what: str,
    chunk: int,
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
) -> Iterator[Any]:
    """:func:`_load`'s rows one at a time (checked and cleaned by :func:`iter_rows`)."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_file():
            named = {k: v for k, v in (("split", split), ("subset", subset), ("revision", revision)) if v is not None}
            if named or path.suffix.lower() not in SUFFIXES:
                _load(data, what, split, subset, revision)  # raises its message
            yield from _iter_file(path)
        elif path.is_dir() or (isinstance(data, str) and looks_like_name(data)):
            if path.is_dir() and revision is not None:
                _load(data, what, split, subset, revision)  # raises its message
            loaded = (
                load_directory(path, split=split, subset=subset, what=what)
                if path.is_dir()
                else load_named(str(data), split=split, subset=subset, revision=revision, what=what)
            )
            yield from _dataset_rows(loaded, chunk)
        else:
            _load(data, what)  # raises its message
    elif isinstance(data, list):
        yield from data
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame: no second list of all its rows
        _frame_rows(data.iloc[:0], "the DataFrame")  # refuses a column named twice
        for k in range(0, len(data), chunk):
            yield from _frame_rows(data.iloc[k : k + chunk], "the DataFrame")
    elif hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset: by its batches
        yield from _dataset_rows(data, chunk)
    elif hasattr(data, "keys") and hasattr(data, "column_names") and split is not None:  # datasets.DatasetDict
        yield from _dataset_rows(pick_split(data, split, "the DatasetDict", what=what), chunk)
    else:
        _load(data, what, split, subset, revision)  # raises its message


def _iter_file(path: Path) -> Iterator[Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from (row for _, row in iter_jsonl(path))
        elif suffix == ".json":
            yield from iter_json_rows(path)
        else:
            yield from iter_file_rows(path) or ()
    except UnicodeDecodeError:
        _read_file(path)  # raises tunekit's message for a file that is not UTF-8
        raise


def empty_data_error(data: DataInput, what: str) -> DatasetError:
    """The error for data with no rows (``what``: "training" or "eval")."""
    where = f"{data}: the file has no rows" if isinstance(data, (str, Path)) else "it has no rows"
    if what == "eval":
        return DatasetError(
            f"eval_data is empty: {where} to evaluate on; add at least one example, or leave eval_data out"
        )
    return DatasetError(f"the dataset is empty: {where} to train on; add at least one example")
