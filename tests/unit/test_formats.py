"""Formats: detection from the columns, normalisation into examples, and every bad-row case."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import Example, detect_format, load_rows, normalise


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


# ---- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"text": "a"}, "text"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"instruction": "a", "input": "b", "output": "c"}, "alpaca"),
        ({"instruction": "a", "output": "c"}, "alpaca"),
        ({"messages": []}, "messages"),
        ({"conversations": []}, "sharegpt"),
        # more specific formats win when a row has several sets of columns
        ({"messages": [], "text": "a"}, "messages"),
        ({"prompt": "a", "completion": "b", "text": "c", "id": 3}, "prompt_completion"),
        ({"instruction": "a", "output": "c", "prompt": "a", "completion": "b"}, "alpaca"),
        # tables give every row every column: a text row with empty prompt/completion cells is text
        ({"prompt": None, "completion": None, "text": "a"}, "text"),
        # ... but a half-filled pair is still recognised, so the error can name the missing field
        ({"prompt": "a", "completion": None}, "prompt_completion"),
    ],
)
def test_detect_format(row: dict[str, Any], fmt: str) -> None:
    assert detect_format([row, {"unrelated": 1}]) == fmt


def test_detect_format_reads_only_the_first_row() -> None:
    assert detect_format([{"text": "a"}, {"prompt": "a", "completion": "b"}]) == "text"


@pytest.mark.parametrize("row", [{"question": "only a prompt"}, {"input": "x", "output": "y"}, {}])
def test_unknown_format_names_the_fields_and_the_options(row: dict[str, Any]) -> None:
    with pytest.raises(tk.DatasetError) as info:
        detect_format([row])
    assert info.value.row == 1
    assert str(info.value) == (
        f"row 1: cannot tell the data format from its fields {sorted(row)}; expected one of: "
        "'text' | 'prompt' + 'completion' | 'instruction' + 'output' (+ 'input') | 'messages' | 'conversations' "
        "| 'prompt' + 'chosen' + 'rejected' | 'prompt' + 'completion' + 'label' | 'prompt' alone (RL prompts)"
    )


def test_detect_format_on_no_rows() -> None:
    with pytest.raises(tk.DatasetError, match="the dataset is empty"):
        detect_format([])
    with pytest.raises(tk.DatasetError, match="the dataset is empty"):
        normalise([])


# ---- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fmt", "expected"),
    [
        ({"text": "raw text 今天"}, "text", Example(row=1, text="raw text 今天")),
        (
            {"prompt": "Translate: cheese", "completion": "fromage"},
            "prompt_completion",
            Example(row=1, messages=(user("Translate: cheese"), assistant("fromage"))),
        ),
        (
            {"prompt": "p", "completion": "c", "system": "Be brief."},
            "prompt_completion",
            Example(row=1, messages=(system("Be brief."), user("p"), assistant("c"))),
        ),
        (  # an empty system cell (CSV) adds no system message
            {"prompt": "p", "completion": "c", "system": ""},
            "prompt_completion",
            Example(row=1, messages=(user("p"), assistant("c"))),
        ),
        (
            {"instruction": "Summarise.", "input": "A long text.", "output": "Short."},
            "alpaca",
            Example(row=1, messages=(user("Summarise.\n\nA long text."), assistant("Short."))),
        ),
        (
            {"instruction": "Say hi.", "output": "Hi!"},
            "alpaca",
            Example(row=1, messages=(user("Say hi."), assistant("Hi!"))),
        ),
        (  # empty input (CSV cell) and None input (parquet) both mean "no input"
            {"instruction": "Say hi.", "input": "", "output": "Hi!"},
            "alpaca",
            Example(row=1, messages=(user("Say hi."), assistant("Hi!"))),
        ),
        (
            {"instruction": "Say hi.", "input": None, "output": "Hi!"},
            "alpaca",
            Example(row=1, messages=(user("Say hi."), assistant("Hi!"))),
        ),
        (
            {"messages": [system("S"), user("u1"), assistant("a1"), user("u2"), assistant("a2")]},
            "messages",
            Example(row=1, messages=(system("S"), user("u1"), assistant("a1"), user("u2"), assistant("a2"))),
        ),
        (  # a speaker's name on a message is ignored (other keys are refused; tool calls are not supported yet)
            {"messages": [{"role": "user", "content": "u", "name": "bob"}, assistant("a")]},
            "messages",
            Example(row=1, messages=(user("u"), assistant("a"))),
        ),
        (
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "u1"},
                    {"from": "gpt", "value": "a1"},
                    {"from": "user", "value": "u2"},
                    {"from": "assistant", "value": "a2"},
                ]
            },
            "sharegpt",
            Example(row=1, messages=(system("S"), user("u1"), assistant("a1"), user("u2"), assistant("a2"))),
        ),
        (  # many "conversations" datasets use OpenAI role/content keys
            {"conversations": [user("u"), assistant("a")]},
            "sharegpt",
            Example(row=1, messages=(user("u"), assistant("a"))),
        ),
    ],
)
def test_normalise_every_format(row: dict[str, Any], fmt: str, expected: Example) -> None:
    data = normalise([row])
    assert data.format == fmt
    assert data.examples == [expected]
    assert data.skipped == []


def test_rows_are_numbered_from_one() -> None:
    data = normalise([{"text": "a"}, {"text": "b"}, {"text": "c"}])
    assert [ex.row for ex in data.examples] == [1, 2, 3]
    assert [ex.text for ex in data.examples] == ["a", "b", "c"]


def test_explicit_format_overrides_detection() -> None:
    # a table's empty 'label' column detects KTO data; told the format, the rows are prompt/completion
    data = normalise([{"prompt": "p", "completion": "c", "label": None}], "prompt_completion")
    assert data.examples == [Example(row=1, messages=(user("p"), assistant("c")))]
    # a row holding a second format's columns is refused, not trimmed to the one asked for
    with pytest.raises(tk.DatasetError, match="column 'prompt' belongs to the 'prompt_completion' format"):
        normalise([{"text": "t", "prompt": "p", "completion": "c"}], "text")


def test_examples_are_immutable() -> None:
    ex = normalise([{"text": "a"}]).examples[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.text = "b"  # type: ignore[misc]


def test_whitespace_is_kept_verbatim() -> None:
    data = normalise([{"prompt": "  indented\n", "completion": " lead and trail \n"}])
    assert data.examples[0].messages == (user("  indented\n"), assistant(" lead and trail \n"))


# ---- bad rows ---------------------------------------------------------------------------------

GOOD = {
    "text": {"text": "fine"},
    "prompt_completion": {"prompt": "p", "completion": "c"},
    "alpaca": {"instruction": "i", "output": "o"},
    "messages": {"messages": [user("u"), assistant("a")]},
    "sharegpt": {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]},
}

IGNORED = (
    "(and ignores ['id', 'uuid', 'idx', 'source', 'metadata', 'me"
    "ta']), and tunekit never drops a column silently: rename the column, or remove it if it holds nothing to train on"
)

BAD_ROWS = [
    # (format, bad row, field, message after "row 2")
    # an unknown column is refused, never dropped (it used to be ignored, and the row then lacked 'text')
    (
        "text",
        {"txt": "typo"},
        "txt",
        ": unknown column 'txt' (did you mean 'text'?); the data is in the 'text' format, which reads ['text'] "
        f"{IGNORED}",
    ),
    ("text", {"text": None}, "text", ": missing field 'text'; add it to every row"),
    ("text", {"text": 3}, "text", ", field 'text': expected a string, got int (3)"),
    ("text", {"text": "  "}, "text", ", field 'text': empty string; every example needs text here"),
    ("prompt_completion", {"prompt": "p"}, "completion", ": missing field 'completion'; add it to every row"),
    ("prompt_completion", {"completion": "c"}, "prompt", ": missing field 'prompt'; add it to every row"),
    (
        "prompt_completion",
        {"prompt": "p", "completion": ""},
        "completion",
        ", field 'completion': empty string; every example needs text here",
    ),
    (
        "prompt_completion",
        {"prompt": "p", "completion": ["c"]},
        "completion",
        # a list is read as chat messages (trl's conversational format), so the element is what is wrong
        ", field 'completion', message 1: expected an object with 'role' and 'content'",
    ),
    ("alpaca", {"instruction": "i"}, "output", ": missing field 'output'; add it to every row"),
    ("alpaca", {"instruction": "i", "output": "o", "input": 5}, "input", ", field 'input': expected a string, got int"),
    (
        "alpaca",
        {"instruction": "", "output": "o"},
        "instruction",
        ", field 'instruction': empty string; every example needs text here",
    ),
    ("messages", {"messages": []}, "messages", ", field 'messages': expected a non-empty list of messages"),
    ("messages", {"messages": "hi"}, "messages", ", field 'messages': expected a non-empty list of messages"),
    (
        "messages",
        {"sytem": "Be brief."},  # a misspelling stays an error (an unknown column with no near miss is unused)
        "sytem",
        ": unknown column 'sytem' (did you mean 'system'?); the data is in the 'messages' format, which reads "
        f"['image', 'images', 'messages', 'system', 'tools'] {IGNORED}",
    ),
    (
        "messages",
        {"messages": [user("u"), {"role": "bot", "content": "a"}]},
        "messages",
        ", field 'messages', message 2: unknown role 'bot'; expected one of ['system', 'user', 'assistant', 'tool']",
    ),
    (
        "messages",
        {"messages": [{"role": ["user"], "content": "u"}, assistant("a")]},
        "messages",
        ", field 'messages', message 1: unknown role ['user']; expected one of ['system', 'user', 'assistant', 'tool']",
    ),
    (
        "messages",
        {"messages": [["user", "u"], assistant("a")]},
        "messages",
        ", field 'messages', message 1: expected an object with 'role' and 'content'",
    ),
    (
        "messages",
        {"messages": [{"role": "user"}, assistant("a")]},
        "messages",
        ", field 'messages', message 1: expected an object with 'role' and 'content'",
    ),
    (
        "messages",
        {"messages": [{"role": "user", "content": None}, assistant("a")]},
        "messages",
        ", field 'messages', message 1: 'content' must be a string, got NoneType",
    ),
    (
        "messages",
        {"messages": [user("u"), assistant(" ")]},
        "messages",
        ", field 'messages', message 2: empty assistant message; nothing to learn from",
    ),
    (
        "messages",
        {"messages": [assistant("a"), user("u")]},
        "messages",
        ", field 'messages': roles out of order at message 1 (got 'assistant', expected 'user'); "
        "turns must alternate user, assistant, ...",
    ),
    (
        "messages",
        {"messages": [system("s"), user("u"), user("u again"), assistant("a")]},
        "messages",
        ", field 'messages': roles out of order at message 3 (got 'user', expected 'assistant'); "
        "turns must alternate user, assistant, ...",
    ),
    (
        "messages",
        {"messages": [user("u"), assistant("a"), system("s"), user("u"), assistant("a")]},
        "messages",
        ", field 'messages': a system message may only come first",
    ),
    (
        "messages",
        {"messages": [user("u"), assistant("a"), user("and then?")]},
        "messages",
        ", field 'messages': the conversation must end with an assistant message (the text to learn); add the answer",
    ),
    (
        "messages",
        {"messages": [system("s")]},
        "messages",
        ", field 'messages': the conversation must end with an assistant message (the text to learn); add the answer",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "u"}, {"from": "bot", "value": "a"}]},
        "conversations",
        ", field 'conversations', message 2: unknown role 'bot'; "
        "expected one of ['system', 'human', 'gpt', 'function_call', 'observation']",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": ["human"], "value": "u"}, {"from": "gpt", "value": "a"}]},
        "conversations",
        ", field 'conversations', message 1: unknown role ['human']; "
        "expected one of ['system', 'human', 'gpt', 'function_call', 'observation']",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "text": "u"}, {"from": "gpt", "value": "a"}]},
        "conversations",
        ", field 'conversations', message 1: expected an object with 'from' and 'value'",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "u"}]},
        "conversations",
        ", field 'conversations':"
        " the conversation must end with an assistant message (the text to learn); add the answer",
    ),
]


BAD_ROWS += [
    (
        "messages",
        {"system": "be brief", "messages": [system("be long"), user("u"), assistant("a")]},
        "system",
        ": both a 'system' column and a system message in 'messages'; keep one of them",
    ),
    (
        "prompt_completion",
        {"system": "be brief", "prompt": [system("be long"), user("u")], "completion": "c"},
        "system",
        ": both a 'system' column and a system message in 'prompt'; keep one of them",
    ),
    (
        "alpaca",
        {"instruction": "i", "output": "o", "system": 5},
        "system",
        ", field 'system': expected a string, got int (5); write the system prompt as text",
    ),
]


@pytest.mark.parametrize(("fmt", "bad", "field", "tail"), BAD_ROWS)
def test_bad_row_names_row_and_field(fmt: str, bad: dict[str, Any], field: str, tail: str) -> None:
    rows = [GOOD[fmt], bad, GOOD[fmt]]
    with pytest.raises(tk.DatasetError) as info:
        normalise(rows)
    assert str(info.value) == "row 2" + tail
    assert (info.value.row, info.value.field) == (2, field)


@pytest.mark.parametrize(("fmt", "bad", "field", "tail"), BAD_ROWS)
def test_skip_drops_bad_rows_and_reports_them(fmt: str, bad: dict[str, Any], field: str, tail: str) -> None:
    rows = [GOOD[fmt], bad, GOOD[fmt], bad]
    data = normalise(rows, on_bad_rows="skip")
    assert data.format == fmt
    assert [ex.row for ex in data.examples] == [1, 3]
    assert data.skipped == [(2, "row 2" + tail), (4, "row 4" + tail)]


def test_row_that_is_not_an_object_is_a_bad_row() -> None:
    with pytest.raises(tk.DatasetError) as info:
        normalise([{"text": "a"}, "b"])  # type: ignore[list-item]
    assert str(info.value) == "row 2: expected an object with named fields, got str; write each row as an object"
    assert info.value.row == 2
    data = normalise([{"text": "a"}, "b"], on_bad_rows="skip")  # type: ignore[list-item]
    assert data.skipped == [(2, "row 2: expected an object with named fields, got str; write each row as an object")]


def test_all_rows_bad_is_an_error_even_when_skipping() -> None:
    with pytest.raises(tk.DatasetError) as info:
        normalise([{"text": 1}, {"text": ""}], on_bad_rows="skip")
    assert str(info.value) == (
        "no valid rows: all 2 rows were malformed (first: row 1, field 'text': expected a string, got int (1))"
    )
    assert info.value.row is None


def test_the_first_bad_row_is_reported() -> None:
    with pytest.raises(tk.DatasetError) as info:
        normalise([{"text": "a"}, {"text": "b"}, {"text": ""}, {"text": 5}])
    assert info.value.row == 3


def test_rows_from_a_file_keep_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    rows[3]["completion"] = ""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(tk.DatasetError) as info:
        normalise(load_rows(path))
    assert (info.value.row, info.value.field) == (4, "completion")
    data = normalise(load_rows(path), on_bad_rows="skip")
    assert [ex.row for ex in data.examples] == [1, 2, 3, 5]
    assert [r for r, _ in data.skipped] == [4]


def test_csv_alpaca_with_empty_input_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("instruction,input,output\nSay hi.,,Hi!\n翻译,今天,today\n", encoding="utf-8")
    data = normalise(load_rows(path))
    assert data.format == "alpaca"
    assert [ex.messages for ex in data.examples] == [
        (user("Say hi."), assistant("Hi!")),
        (user("翻译\n\n今天"), assistant("today")),
    ]


def test_parquet_messages_normalise(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame([{"messages": [system("s"), user("u"), assistant("a")]}]).to_parquet(path)
    assert normalise(load_rows(path)).examples == [Example(row=1, messages=(system("s"), user("u"), assistant("a")))]


def test_dataframe_with_mixed_rows_reports_the_missing_cell() -> None:
    import pandas as pd

    df = pd.DataFrame([{"prompt": "p", "completion": "c"}, {"prompt": "p2"}])
    with pytest.raises(tk.DatasetError) as info:
        normalise(load_rows(df))
    assert str(info.value) == "row 2: missing field 'completion'; add it to every row"


def test_prompt_completion_accepts_chat_message_prompt() -> None:
    rows = [
        {
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "completion": "yo",
        }
    ]
    ex = normalise(rows).examples[0]
    assert ex.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    )


def test_a_system_column_leads_a_conversation_that_has_no_system_message() -> None:
    ex = normalise([{"system": "be brief", "messages": [user("u"), assistant("a")]}]).examples[0]
    assert ex.messages == (system("be brief"), user("u"), assistant("a"))
    ex = normalise([{"system": "be brief", "prompt": [user("u")], "completion": "a"}]).examples[0]
    assert ex.messages == (system("be brief"), user("u"), assistant("a"))


ADD = {"type": "function", "function": {"name": "add", "description": "adds", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "p", "completion": "c"},
        {"instruction": "i", "output": "o"},
        {"messages": [user("u"), assistant("a")]},
    ],
    ids=["prompt_completion", "alpaca", "messages"],
)
def test_a_rows_tool_schemas_reach_its_example(row: dict[str, Any]) -> None:
    ex = normalise([{**row, "tools": [ADD]}]).examples[0]
    assert ex.tools == (ADD,)
    assert normalise([row]).examples[0].tools is None
