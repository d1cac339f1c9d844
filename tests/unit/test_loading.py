"""load_rows: every input kind becomes a list of plain dict rows; bad files fail with the line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import load_rows

FLAT = [
    {"prompt": "Translate to French: cheese", "completion": "fromage"},
    {"prompt": "请把这句话翻译成英文。", "completion": "Please translate this sentence into English."},
    {"prompt": 'Quote "this", then a comma', "completion": "line one\nline two"},
]
NESTED = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "你好"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
]


def write(tmp_path: Path, rows: list[dict[str, Any]], kind: str) -> Any:
    """Rows as the given input kind: a file suffix, or 'list', 'dataset', 'dataframe'."""
    if kind == ".jsonl":
        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path
    if kind == ".json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        return path
    if kind == ".csv":
        path = tmp_path / "data.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path
    if kind == ".parquet":
        import pandas as pd

        path = tmp_path / "data.parquet"
        pd.DataFrame(rows).to_parquet(path)
        return path
    if kind == "list":
        return [dict(r) for r in rows]
    if kind == "dataset":
        import datasets

        return datasets.Dataset.from_list(rows)
    if kind == "dataframe":
        import pandas as pd

        return pd.DataFrame(rows)
    raise AssertionError(kind)


ALL_KINDS = [".jsonl", ".json", ".csv", ".parquet", "list", "dataset", "dataframe"]
NESTED_KINDS = [k for k in ALL_KINDS if k != ".csv"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_input_kind_gives_the_same_rows(tmp_path: Path, kind: str) -> None:
    assert load_rows(write(tmp_path, FLAT, kind)) == FLAT


@pytest.mark.parametrize("kind", NESTED_KINDS)
def test_nested_rows_come_back_as_plain_lists_and_dicts(tmp_path: Path, kind: str) -> None:
    rows = load_rows(write(tmp_path, NESTED, kind))
    # parquet and Arrow fill missing struct keys and use numpy arrays; rows must be plain Python
    assert [[dict(m) for m in r["messages"]] for r in rows] == [r["messages"] for r in NESTED]
    assert all(type(r["messages"]) is list for r in rows)


@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv"])
def test_str_path_and_upper_case_suffix(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, FLAT, kind)
    upper = path.rename(path.with_suffix(kind.upper()))
    assert load_rows(str(upper)) == FLAT


def test_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n', encoding="utf-8")
    assert load_rows(path) == [{"text": "a"}, {"text": "b"}]


@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv"])
def test_utf8_with_byte_order_mark_is_read(tmp_path: Path, kind: str) -> None:
    # Notepad and Excel write "UTF-8" with a BOM; the first key must not become "\ufefftext".
    path = write(tmp_path, [{"text": "今天天气很好"}], kind)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_rows(path) == [{"text": "今天天气很好"}]


def test_json_object_wrapping_one_list_is_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": FLAT}, ensure_ascii=False), encoding="utf-8")
    assert load_rows(path) == FLAT


def test_missing_cells_become_none(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{"prompt": "a", "completion": "x"}, {"prompt": "b", "completion": None}]
    assert load_rows(pd.DataFrame(rows)) == rows  # NaN -> None
    assert load_rows(write(tmp_path, rows, ".parquet")) == rows
    ds_rows = load_rows(write(tmp_path, [{"prompt": "a", "completion": "x"}, {"prompt": "b"}], "dataset"))
    assert ds_rows == rows


def test_csv_short_row_gives_none_and_empty_cell_gives_empty_string(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nhi,\nyo\n", encoding="utf-8")
    assert load_rows(path) == [{"prompt": "hi", "completion": ""}, {"prompt": "yo", "completion": None}]


def test_numpy_scalars_become_python_values() -> None:
    import pandas as pd

    rows = load_rows(pd.DataFrame({"text": ["a"], "n": [3]}))
    assert rows == [{"text": "a", "n": 3}]
    assert type(rows[0]["n"]) is int


def test_the_callers_list_is_not_changed() -> None:
    rows = [{"text": "a", "x": float("nan")}]
    assert load_rows(rows) == [{"text": "a", "x": None}]
    assert rows[0]["x"] != rows[0]["x"]  # still NaN


# ---- errors -----------------------------------------------------------------------------------


def error(data: Any) -> tk.DatasetError:
    with pytest.raises(tk.DatasetError) as info:
        load_rows(data)
    return info.value


def test_invalid_json_on_line_n_of_a_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n{"text": "d"}\n', encoding="utf-8")
    err = error(path)
    assert err.row == 3
    assert str(err).startswith(f"{path}: invalid JSON on line 3 (")
    assert "each line of a .jsonl file must be one JSON object" in str(err)


def test_invalid_json_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "a"},\n{"text": }\n]', encoding="utf-8")
    err = error(path)
    assert str(err).startswith(f"{path}: invalid JSON on line 3 (")
    assert "a .json file must hold a list of objects" in str(err)


def test_json_file_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"text": "a", "other": 1}', encoding="utf-8")
    assert str(error(path)).startswith(f"{path}: expected a JSON list of objects, found dict; put the rows in a list")


@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv"])
def test_non_utf8_file_names_the_line_and_the_fix(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, [{"text": "hello"}, {"text": "world"}], kind)
    good = path.read_bytes()
    path.write_bytes(good + '{"text": "今天"}\n'.encode("gbk"))  # what Windows saves on Chinese systems
    err = error(path)
    line = good.count(b"\n") + 1
    assert str(err).startswith(f"{path}: not valid UTF-8 (line {line}, byte {len(good) + 10}: ")
    assert str(err).endswith("save the file as UTF-8 (tunekit never guesses the code page)")


def test_non_utf8_far_into_a_big_file_gives_the_true_position(tmp_path: Path) -> None:
    # The decoder reports offsets within its 8 KiB chunk; the message must give the file's.
    path = tmp_path / "big.jsonl"
    good = "".join(f'{{"text": "line {i}"}}\n' for i in range(2000)).encode("utf-8")
    path.write_bytes(good + '{"text": "今天"}\n'.encode("gbk"))
    assert f"(line 2001, byte {len(good) + 10}: " in str(error(path))


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.jsonl", ""), ("e2.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "text\n")],
)
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = error(path)
    assert str(err) == f"the dataset is empty: {path}: the file has no rows to train on; add at least one example"
    assert err.row is None


def test_empty_in_memory_inputs() -> None:
    import datasets
    import pandas as pd

    for data in ([], pd.DataFrame(), datasets.Dataset.from_dict({})):
        assert str(error(data)) == "the dataset is empty: it has no rows to train on; add at least one example"


@pytest.mark.parametrize("bad", ["just a string", 3, ["a", "list"], None])
def test_row_that_is_not_an_object(tmp_path: Path, bad: Any) -> None:
    err = error([{"text": "fine"}, {"text": "fine"}, bad])
    assert err.row == 3
    assert str(err) == (
        f"row 3: expected an object with named fields, got {type(bad).__name__}; write each row as an object"
    )
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n' + json.dumps(bad) + "\n", encoding="utf-8")
    assert error(path).row == 2


def test_missing_file(tmp_path: Path) -> None:
    assert str(error(tmp_path / "nope.jsonl")).startswith(
        f"data file not found: {tmp_path / 'nope.jsonl'}; check the path"
    )


def test_directory(tmp_path: Path) -> None:
    """A directory is read as a dataset directory (tests/unit/test_data_sources.py); one with no data says so."""
    (tmp_path / "notes.md").write_text("not data", encoding="utf-8")
    assert str(error(tmp_path)) == (
        f"{tmp_path} is a directory with no data files in it; pass a data file (.jsonl, .json, .csv, .parquet), a "
        "folder of such files, or a directory written by Dataset.save_to_disk"
    )


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("hello", encoding="utf-8")
    assert str(error(path)) == f"{path}: unsupported file type '.txt'; use one of .jsonl, .json, .csv, .parquet"


@pytest.mark.parametrize("data", [("a",), {"text": ["a"]}, 42, iter([{"text": "a"}])])
def test_unsupported_input_type(data: Any) -> None:
    assert str(error(data)).startswith(f"unsupported data of type {type(data).__name__}; pass a path")


def test_dataset_dict_asks_for_one_split() -> None:
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}])})
    assert str(error(dd)) == (
        "got a DatasetDict with splits ['train']; pass one split, e.g. data['train'], or tk.Data(data, split='train')"
    )
