"""Preference, unpaired-preference and prompt-only formats: detection, normalisation, bad rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import Example, detect_format, load_rows, normalise
from tunekit.data.rows import PROMPT_TEXT, prepare_rows


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
        ({"chosen": "a", "rejected": "b"}, "preference"),  # the prompt is then reported missing
        ({"prompt": "p", "completion": "a", "label": True}, "unpaired_preference"),
        ({"prompt": "p", "completion": "a", "label": None}, "unpaired_preference"),  # so the error names the label
        ({"prompt": "p"}, "prompt_only"),
        ({"prompt": "p", "answer": 42, "id": "x"}, "prompt_only"),
        ({"prompt": [user("u")]}, "prompt_only"),
        # the demonstration formats keep their meaning
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"prompt": "p", "completion": None}, "prompt_completion"),
        ({"prompt": None, "completion": None, "text": "t"}, "text"),
        ({"prompt": "p", "text": None}, "text"),  # a text column, even empty, is not an RL prompt set
        ({"messages": [], "prompt": "p"}, "messages"),
    ],
)
def test_detect_format(row: dict[str, Any], fmt: str) -> None:
    assert detect_format([row]) == fmt


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"prompt": "sort: 2 1", "chosen": "1 2", "rejected": "2 1"},
            Example(
                row=1,
                prompt=(user("sort: 2 1"),),
                chosen=(assistant("1 2"),),
                rejected=(assistant("2 1"),),
                prompt_text="sort: 2 1",
            ),
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "system": "Be brief."},
            Example(
                row=1,
                prompt=(system("Be brief."), user("p")),
                chosen=(assistant("a"),),
                rejected=(assistant("b"),),
                prompt_text="p",
            ),
        ),
        (  # chat messages: a multi-turn prompt, answers as assistant messages
            {
                "prompt": [system("s"), user("u1"), assistant("a1"), user("u2")],
                "chosen": [assistant("good")],
                "rejected": [assistant("bad")],
            },
            Example(
                row=1,
                prompt=(system("s"), user("u1"), assistant("a1"), user("u2")),
                chosen=(assistant("good"),),
                rejected=(assistant("bad"),),
            ),
        ),
    ],
)
def test_normalise_preference(row: dict[str, Any], expected: Example) -> None:
    data = normalise([row])
    assert data.format == "preference"
    assert data.examples == [expected]


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("False", False),
        ("yes", True),
        ("0", False),
    ],
)
def test_normalise_unpaired_labels(label: Any, expected: bool) -> None:
    data = normalise([{"prompt": "p", "completion": "c", "label": label}])
    assert data.format == "unpaired_preference"
    assert data.examples == [
        Example(row=1, prompt=(user("p"),), completion=(assistant("c"),), label=expected, prompt_text="p")
    ]


def test_normalise_prompt_only_keeps_the_other_columns() -> None:
    data = normalise([{"prompt": "2 + 2 =", "answer": "4", "difficulty": 1}, {"prompt": [user("hi")], "answer": "x"}])
    assert data.format == "prompt_only"
    assert data.examples[0] == Example(
        row=1, prompt=(user("2 + 2 ="),), prompt_text="2 + 2 =", columns={"answer": "4", "difficulty": 1}
    )
    assert data.examples[1].prompt == (user("hi"),) and data.examples[1].prompt_text is None


def test_csv_preferences_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\n翻译：猫,cat,true\n翻译：猫,dog,false\n", encoding="utf-8")
    data = normalise(load_rows(path))
    assert [ex.label for ex in data.examples] == [True, False]
    assert data.examples[0].prompt == (user("翻译：猫"),)


GOOD = {
    "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
    "unpaired_preference": {"prompt": "p", "completion": "a", "label": True},
    "prompt_only": {"prompt": "p", "answer": 1},
}

BAD_ROWS = [
    # (format, bad row, field, message after "row 2")
    (
        "preference",
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        "rejected",
        ", field 'rejected': identical to 'chosen' ('same'); a preference pair needs two different answers: "
        "fix or drop the row",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": [assistant("x")], "rejected": "x"},
        "rejected",
        ", field 'rejected': identical to 'chosen' ('x'); a preference pair needs two different answers: "
        "fix or drop the row",
    ),
    ("preference", {"chosen": "a", "rejected": "b"}, "prompt", ": missing field 'prompt'; add it to every row"),
    ("preference", {"prompt": "p", "chosen": "a"}, "rejected", ": missing field 'rejected'; add it to every row"),
    (
        "preference",
        {"prompt": "p", "chosen": "", "rejected": "b"},
        "chosen",
        ", field 'chosen': empty string; every example needs text here",
    ),
    (
        "preference",
        {"prompt": 7, "chosen": "a", "rejected": "b"},
        "prompt",
        ", field 'prompt': expected a string or a list of chat messages, got int (7)"
        "; write it as text, or as a list of {'role', 'content'} messages",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": {"text": "a"}, "rejected": "b"},
        "chosen",
        ", field 'chosen': expected a string or a list of chat messages, got dict ({'text': 'a'})"
        "; write it as text, or as a list of {'role', 'content'} messages",
    ),
    (
        "preference",
        {"prompt": [user("u"), assistant("a")], "chosen": "a", "rejected": "b"},
        "prompt",
        ", field 'prompt': the prompt must end with a user message (the turn to answer)",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": [user("u")], "rejected": "b"},
        "chosen",
        ", field 'chosen': roles out of order at message 1 (got 'user', expected 'assistant'); "
        "turns must alternate assistant, user, ...",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": [assistant("a"), system("s")], "rejected": "b"},
        "chosen",
        ", field 'chosen': a system message cannot be part of an answer",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": [assistant(" ")], "rejected": "b"},
        "chosen",
        ", field 'chosen', message 1: empty assistant message; nothing to learn from",
    ),
    (
        "unpaired_preference",
        {"prompt": "p", "completion": "a"},
        "label",
        ": missing field 'label'; add it to every row",
    ),
    (
        "unpaired_preference",
        {"prompt": "p", "completion": "a", "label": "maybe"},
        "label",
        ", field 'label': expected True (a desirable completion) or False (an undesirable one), got 'maybe'; "
        "a 'label' column beside 'prompt' and 'completion' makes KTO data (for SFT, drop or rename the column)",
    ),
    (
        "unpaired_preference",
        {"prompt": "p", "completion": "a", "label": 2},
        "label",
        ", field 'label': expected True (a desirable completion) or False (an undesirable one), got 2; "
        "a 'label' column beside 'prompt' and 'completion' makes KTO data (for SFT, drop or rename the column)",
    ),
    (
        "unpaired_preference",
        {"prompt": "p", "completion": None, "label": False},
        "completion",
        ": missing field 'completion'; add it to every row",
    ),
    ("prompt_only", {"prompt": "  "}, "prompt", ", field 'prompt': empty string; every example needs text here"),
    ("prompt_only", {"prompt": None}, "prompt", ": missing field 'prompt'; add it to every row"),
    (
        "prompt_only",
        {"prompt": "p", "completion_ids": [1, 2]},
        "completion_ids",
        ", field 'completion_ids': this column name is reserved (trl passes its own 'completion_ids' to reward "
        "functions); rename the column",
    ),
]


@pytest.mark.parametrize(("fmt", "bad", "field", "tail"), BAD_ROWS)
def test_bad_row_names_row_and_field(fmt: str, bad: dict[str, Any], field: str, tail: str) -> None:
    with pytest.raises(tk.DatasetError) as info:
        normalise([GOOD[fmt], bad, GOOD[fmt]])
    assert str(info.value) == "row 2" + tail
    assert (info.value.row, info.value.field) == (2, field)


@pytest.mark.parametrize(("fmt", "bad", "field", "tail"), BAD_ROWS)
def test_skip_drops_bad_rows_and_reports_them(fmt: str, bad: dict[str, Any], field: str, tail: str) -> None:
    data = normalise([GOOD[fmt], bad, GOOD[fmt]], on_bad_rows="skip")
    assert data.format == fmt
    assert [ex.row for ex in data.examples] == [1, 3]
    assert data.skipped == [(2, "row 2" + tail)]


# ---- rows for trl --------------------------------------------------------------------------------


def test_prepare_rows_in_trl_layout(chat_tokenizer: Any) -> None:
    pairs = normalise([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    rows = prepare_rows(chat_tokenizer, pairs, max_length=64)
    assert rows.records == [
        {"prompt": [user("p")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
    ]
    assert rows.rows == [1] and rows.num_tokens > 10 and rows.truncated == 0
    kto = normalise([{"prompt": "p", "completion": "a", "label": "false"}])
    assert prepare_rows(chat_tokenizer, kto, max_length=64).records == [
        {"prompt": [user("p")], "completion": [assistant("a")], "label": False}
    ]
    rl = normalise([{"prompt": "p", "answer": 4}])
    assert prepare_rows(chat_tokenizer, rl, max_length=64).records == [
        {"prompt": [user("p")], PROMPT_TEXT: "p", "answer": 4}
    ]
    assert prepare_rows(chat_tokenizer, rl, max_length=64).to_dataset().column_names == [
        "prompt",
        PROMPT_TEXT,
        "answer",
    ]


def test_prompt_that_fills_max_length_is_a_bad_row(chat_tokenizer: Any) -> None:
    data = normalise(
        [{"prompt": "ok", "chosen": "a", "rejected": "b"}, {"prompt": "x " * 60, "chosen": "a", "rejected": "b"}]
    )
    with pytest.raises(tk.DatasetError, match=r"row 2: the prompt alone is \d+ tokens, which fills max_length=32") as e:
        prepare_rows(chat_tokenizer, data, max_length=32)
    assert e.value.row == 2
    rows = prepare_rows(chat_tokenizer, data, max_length=32, on_bad_rows="skip")
    assert rows.rows == [1] and [r for r, _ in rows.skipped] == [2]


def test_long_answers_are_truncated_but_a_reward_model_needs_whole_pairs(chat_tokenizer: Any) -> None:
    data = normalise([{"prompt": "p", "chosen": "a " * 40, "rejected": "b"}])
    assert prepare_rows(chat_tokenizer, data, max_length=32).truncated == 1
    with pytest.raises(tk.DatasetError, match="a reward model cannot score a truncated answer"):
        prepare_rows(chat_tokenizer, data, max_length=32, whole_pairs=True)


def test_rows_that_cannot_form_a_table(chat_tokenizer: Any) -> None:
    data = normalise([{"prompt": "a", "answer": 4}, {"prompt": "b", "answer": [1, 2]}])
    with pytest.raises(tk.DatasetError, match="a column must hold the same kind of value in every row"):
        prepare_rows(chat_tokenizer, data, max_length=64).to_dataset()
