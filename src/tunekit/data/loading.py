"""Read any supported input into a list of plain dict rows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from tunekit.errors import DatasetError

__all__ = ["DataInput", "load_rows"]

DataInput = Any  # str | Path | datasets.Dataset | list[dict] | pandas.DataFrame

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _clean(value: Any) -> Any:
    # pandas and parquet use NaN / None for missing cells; treat both as "absent".
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _clean(value.tolist())  # numpy arrays from parquet list columns
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


# "utf-8-sig" is UTF-8 that also drops a leading byte-order mark, which Notepad and Excel write when
# saving "UTF-8"; without it the first key of a .csv would be "\ufefftext" and a .jsonl line 1 invalid.
UTF8 = "utf-8-sig"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding=UTF8) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(
                    f"{path}: invalid JSON on line {lineno} ({e.msg} at column {e.colno}); "
                    "each line of a .jsonl file must be one JSON object",
                    row=lineno,
                ) from None
    return rows


def _where_not_utf8(path: Path) -> str:
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
            try:
                data = json.loads(path.read_text(encoding=UTF8))
            except json.JSONDecodeError as e:
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
            with path.open(encoding=UTF8, newline="") as f:
                return [dict(r) for r in csv.DictReader(f)]
        if suffix == ".parquet":
            import pandas as pd

            return list(pd.read_parquet(path).to_dict("records"))
    except UnicodeDecodeError:
        raise DatasetError(
            f"{path}: not valid UTF-8 ({_where_not_utf8(path)}); save the file as UTF-8 "
            "(tunekit never guesses the code page)",
            row=None,
        ) from None
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def load_rows(data: DataInput) -> list[dict[str, Any]]:
    """Return the rows of ``data`` as a list of dicts (missing cells as ``None``)."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise DatasetError(
                f"data file not found: {path}; check the path (a relative path starts from {Path.cwd()})"
            )
        if path.is_dir():
            raise DatasetError(f"{path} is a directory; pass a file ({', '.join(SUFFIXES)})")
        rows: list[Any] = _read_file(path)
    elif isinstance(data, list):
        rows = data
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        rows = list(data.to_dict("records"))
    elif hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset
        rows = data.to_list()
    elif hasattr(data, "keys") and hasattr(data, "column_names"):  # datasets.DatasetDict
        raise DatasetError(f"got a DatasetDict with splits {sorted(data.keys())}; pass one split, e.g. data['train']")
    else:
        raise DatasetError(
            f"unsupported data of type {type(data).__name__}; pass a path (.jsonl, .json, .csv, .parquet), "
            "a list of dicts, a datasets.Dataset or a pandas DataFrame"
        )
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DatasetError(f"row {i}: expected an object with named fields, got {type(row).__name__}", row=i)
        out.append(_clean(row))
    if not out:
        where = f"{data}: the file has no rows" if isinstance(data, (str, Path)) else "it has no rows"
        raise DatasetError(f"the dataset is empty: {where} to train on; add at least one example")
    return out
