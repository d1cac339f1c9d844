"""The Arrow data driver reads every input a chunk at a time (tunekit.data.tables.read_table): the same rows, values
and errors as the whole read (load_rows, the reference), without it (load_rows is not called for what streams)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import load_rows
from tunekit.data import tables as tables_module
from tunekit.data.tables import read_table, row_of
from tunekit.errors import DatasetError

NESTED = {"a": [1, 2.5, {"b": "x"}], "e": {}, "none": None}
ROWS: list[dict[str, Any]] = [
    {"prompt": f"p{i} 你好", "completion": f"c{i}", "score": i / 3, "n": i, "flag": i % 2 == 0, "nested": NESTED}
    for i in range(7)
]


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "CHUNK", 2)  # several chunks from a few rows


@pytest.fixture
def no_whole_read(monkeypatch: pytest.MonkeyPatch, chunked: None) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("load_rows was called: the data was read whole")

    monkeypatch.setattr(tables_module, "load_rows", refused)


def _read(data: Any, tmp_path: Path) -> list[Any]:
    directory = Path(tmp_path / "tables")
    directory.mkdir(exist_ok=True)
    table, source = read_table(data, directory)
    return [row_of(table[k : k + 1], 0, source) for k in range(len(table))]


def _error(call: Any) -> str:
    with pytest.raises(DatasetError) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize("layout", ["list", "keyed", "bom"])
def test_a_json_file_streams_with_the_values_json_loads_gives(tmp_path: Path, no_whole_read: None, layout: str) -> None:
    path = tmp_path / "rows.json"
    doc = json.dumps({"train": ROWS} if layout == "keyed" else ROWS, ensure_ascii=False, indent=1)
    path.write_bytes((b"\xef\xbb\xbf" if layout == "bom" else b"") + doc.encode())
    got = _read(str(path), tmp_path)
    assert got == ROWS
    assert [type(v) for r in got for v in r.values()] == [type(v) for r in ROWS for v in r.values()]


@pytest.mark.parametrize(
    "doc",
    [
        '[{"prompt": "a", "completion": "b", "x": NaN}, {"prompt": "c", "completion": "d", "x": 1}]',
        '[{"prompt": "a", "completion": "b", "n": 123456789012345678901234567890}]',
    ],
)
def test_a_json_file_ijson_reads_otherwise_is_read_whole(tmp_path: Path, chunked: None, doc: str) -> None:
    path = tmp_path / "rows.json"
    path.write_text(doc)
    assert _read(str(path), tmp_path) == load_rows(str(path))


@pytest.mark.parametrize(
    "doc",
    [
        '[{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "b"}, {"prompt": "a", "prompt": "b"}]',
        '[{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": {"k": 1, "k": 2}}]',
        '[{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "b"',
        '[{"prompt": "a", "completion": "b"}] [1]',
        '{"train": [{"prompt": "a", "completion": "b"}], "test": []}',
        '{"train": 3}',
        '{"prompt": "a", "completion": "b"}',
        "{}",
        "3",
        "",
        "[]",
        '{"data": []}',
        '[{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "b"}, 7]',
    ],
)
def test_a_bad_json_file_raises_the_whole_reads_message(tmp_path: Path, chunked: None, doc: str) -> None:
    path = tmp_path / "rows.json"
    path.write_text(doc)
    assert _error(lambda: _read(str(path), tmp_path)) == _error(lambda: load_rows(str(path)))


def test_a_json_file_that_is_not_utf8_raises_the_whole_reads_message(tmp_path: Path, chunked: None) -> None:
    path = tmp_path / "rows.json"
    path.write_bytes(b'[{"prompt": "a", "completion": "caf\xe9"}]')
    assert _error(lambda: _read(str(path), tmp_path)) == _error(lambda: load_rows(str(path)))


def _sources(tmp_path: Path) -> dict[str, Any]:
    import datasets
    import pandas as pd

    flat = [{k: v for k, v in r.items() if k != "nested"} for r in ROWS]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(flat).save_to_disk(str(saved))
    return {
        "list": ROWS,
        "dataframe": pd.DataFrame(flat),
        "dataset": datasets.Dataset.from_list([{**r, "nested": {"a": [r["n"], 2]}} for r in flat]),
        "dataset_dict": tk.Data(datasets.DatasetDict({"train": datasets.Dataset.from_list(flat)}), split="train"),
        "directory": str(saved),
        "mapped_jsonl": tk.Data(str(jsonl), columns={"prompt": "completion", "completion": "prompt"}),
        "mapped_list": tk.Data(
            [{"dialog": [{"speaker": "customer", "text": f"q{i}"}, {"speaker": "agent", "text": "a"}]} for i in "ab"],
            columns={"messages": "dialog"},
            roles={"role": "speaker", "content": "text", "user": "customer", "assistant": "agent"},
        ),
    }


@pytest.mark.parametrize(
    "kind", ["list", "dataframe", "dataset", "dataset_dict", "directory", "mapped_jsonl", "mapped_list"]
)
def test_every_input_is_read_a_chunk_at_a_time_with_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    data = _sources(tmp_path)[kind]
    want = load_rows(data)
    monkeypatch.setattr(tables_module, "CHUNK", 2)
    monkeypatch.setattr(tables_module, "load_rows", lambda *a, **k: pytest.fail("read whole"))
    assert _read(data, tmp_path) == want


def test_a_mappings_errors_come_in_the_whole_reads_order(tmp_path: Path, chunked: None) -> None:
    rows = [{"dialog": "a", "messages": "b"}, {"dialog": "c"}, 3]  # a clash in row 1, then a row that is no object
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    cases = [
        tk.Data(str(path), columns={"messages": "dialog"}),  # the reading error (row 3) first, as load_rows raises it
        tk.Data(rows[:2], columns={"messages": "dialog"}),  # the clash
        tk.Data([{"text": "a"}], columns={"messages": "dialog"}),  # no such column in row 1
        tk.Data([], columns={"messages": "dialog"}),  # empty
    ]
    for data in cases:
        assert _error(lambda: _read(data, tmp_path)) == _error(lambda: load_rows(data))  # noqa: B023


def test_other_errors_are_the_whole_reads(tmp_path: Path, chunked: None) -> None:
    import pandas as pd

    bad = tmp_path / "rows.txt"
    bad.write_text("x")
    cases: list[Any] = [
        pd.DataFrame([[1, 2]], columns=["a", "a"]),
        [{"text": "a"}, "b"],
        tk.Data(str(bad)),
        tk.Data(str(tmp_path / "rows.json"), split="train"),
        str(tmp_path / "missing.jsonl"),
        tk.Mix([[{"text": "a"}], [{"text": "b"}]]),
        pd.DataFrame({"text": []}),
    ]
    (tmp_path / "rows.json").write_text('[{"text": "a"}]')
    for data in cases:
        assert _error(lambda: _read(data, tmp_path)) == _error(lambda: load_rows(data))  # noqa: B023


def test_validate_data_reads_through_the_driver_and_lists_every_bad_row(tmp_path: Path, no_whole_read: None) -> None:
    from tunekit.cli.validate_data import validate_data
    from tunekit.data.formats import normalise_row

    rows = [{"prompt": "2+2=", "completion": "4", "note": "x"}, {"prompt": "", "completion": "5"}]
    rows += [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(3)] + [{"prompt": "a", "completion": None}]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    report = validate_data(path)
    reasons = []
    for i, row in enumerate(rows, 1):
        try:
            normalise_row("prompt_completion", row, i)
        except DatasetError as e:
            reasons.append({"row": i, "reason": str(e)})
    assert (report["format"], report["rows"], report["valid_rows"]) == ("prompt_completion", 6, 4)
    assert report["bad_rows"] == reasons and [b["row"] for b in reasons] == [2, 6]
    assert report["unused_columns"] == ["note"]
    kept = rows[:1] + rows[2:5]
    assert report["characters"]["total"] == sum(len(f"{r['prompt']}\n{r['completion']}") for r in kept)
    path.write_text(json.dumps([rows[1], rows[5]]))  # every row bad: the report lists them (fit refuses the data)
    report = validate_data(path)
    assert (report["valid_rows"], [b["row"] for b in report["bad_rows"]]) == (0, [1, 2])


def test_per_row_integers_are_an_array_read_as_a_list(tmp_path: Path, chunked: None) -> None:
    import statistics

    import numpy as np
    import pyarrow as pa

    from tunekit.cli.validate_data import _stats
    from tunekit.data.int_column import IntColumn
    from tunekit.data.tables import ExampleColumn

    values = [5, 3, 9, 3, 12, 7]
    for given in (
        values,
        np.array(values, dtype=np.uint64),
        pa.array(values),
        pa.chunked_array([values[:2], values[2:]]),
    ):
        column = IntColumn(given)
        assert column.array.dtype == np.int64 and column == values and list(column) == values
        assert (column[1], column[-1], column[1:4], column.take([4, 0, 4])) == (3, 7, [3, 9, 3], [12, 5, 12])
        assert all(type(v) is int for v in [*column, column[0], *column[:2]])
        tail, head = [1], [1]
        assert column + tail == [*values, 1] and head + column == [1, *values]  # as a list adds (rows + skipped)
    for n in (5, 6):  # odd and even: the median statistics.median gives
        ordered = sorted(values[:n])
        want = {"min": ordered[0], "mean": round(statistics.fmean(ordered), 1), "median": statistics.median(ordered),
                "p95": ordered[int(0.95 * n)], "max": ordered[-1], "total": sum(ordered)}  # fmt: skip
        assert _stats(values[:n]) == want and _stats(np.array(values[:n])) == want
    # The items at positions held as an array (numpy, as normalise_table and rows_table keep them)
    table, _ = read_table(ROWS, tmp_path)
    examples = ExampleColumn(table, np.array([6, 1, 3]), column="pickled")
    assert [ex["n"] for ex in examples.take([0, 1, 2])] == [6, 1, 3] and examples[2]["n"] == 3 and len(examples) == 3
