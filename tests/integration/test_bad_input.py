"""Bad input through Tuner.fit raises the specific error, naming the row and field."""

from __future__ import annotations

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

from .helpers import cpu

BAD_ROWS = [
    ({"prompt": "reverse: 1 2"}, "completion", "missing field 'completion'; add it to every row"),
    ({"prompt": "reverse: 1 2", "completion": 12}, "completion", "expected a string"),
    ({"prompt": "reverse: 1 2", "completion": "  "}, "completion", "empty string"),
]


@pytest.mark.parametrize(("bad", "field", "message"), BAD_ROWS)
def test_bad_row_names_row_and_field(tiny_llama, bad, field, message):
    rows = reverse_task(5)
    rows.insert(3, bad)
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=1))
    with pytest.raises(tk.DatasetError, match=message) as info:
        tuner.fit(rows)
    assert info.value.row == 4 and info.value.field == field
    assert "row 4" in str(info.value)


def test_unknown_role_names_row(tiny_llama):
    rows = reverse_task(3, fmt="messages")
    rows[1]["messages"][0]["role"] = "robot"
    with pytest.raises(tk.DatasetError, match=r"row 2.*unknown role 'robot'"):
        tk.Tuner(tiny_llama, training=cpu(max_steps=1)).fit(rows)


def test_invalid_json_line(tiny_llama, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(tk.DatasetError, match="line 2"):
        tk.Tuner(tiny_llama).fit(path)


def test_no_supervised_token_after_truncation(tiny_llama):
    rows = [{"prompt": "reverse: " + " ".join(["1"] * 200), "completion": "1"}]
    with pytest.raises(tk.DatasetError, match="no supervised token"):
        tk.Tuner(tiny_llama, training=cpu(max_steps=1, max_length=32)).fit(rows)


def test_skip_bad_rows_reports_them(tiny_llama):
    rows = reverse_task(8)
    rows[2] = {"prompt": "x", "completion": ""}
    rows[5] = {"prompt": "y"}
    result = tk.Tuner(tiny_llama, training=cpu(max_steps=2, on_bad_rows="skip", batch_size=4)).fit(rows)
    assert result.skipped_rows == [3, 6] and result.num_examples == 6


def test_text_rows_with_sft_is_incompatible(tiny_llama):
    with pytest.raises(tk.IncompatibleError, match="CausalLM"):
        tk.Tuner(tiny_llama, objective=tk.SFT()).fit(reverse_task(4, fmt="text"))


def test_missing_model_path():
    with pytest.raises(tk.ConfigError, match="does not exist"):
        tk.Tuner("./no/such/model", training=cpu()).model  # noqa: B018


def test_empty_data(tiny_llama):
    with pytest.raises(tk.DatasetError, match="empty"):
        tk.Tuner(tiny_llama).fit([])


def test_output_dir_is_a_file(tmp_path, tiny_llama):
    f = tmp_path / "file"
    f.write_text("x", encoding="utf-8")
    with pytest.raises(tk.ConfigError, match="is a file"):
        tk.Tuner(tiny_llama, output_dir=f)


def test_failed_fit_does_not_fix_the_inferred_objective(tiny_llama):
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=1, max_length=32))
    with pytest.raises(tk.DatasetError):
        tuner.fit([{"text": "1 " * 100}, {"text": ""}])  # raw text: CausalLM inferred, then a bad row
    assert tuner.fit(reverse_task(4)).steps == 1  # prompt/completion now: SFT, not the CausalLM of before
    assert tuner.objective_used.name == "SFT"
