"""The learner's traps (issue 22): raw ``text`` rows holding a hand-rendered instruction template are warned about
(fit and validate-data), and an Alpaca ``system`` column becomes the conversation's system message, rendered in
the training text and never trained on."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.cli.validate_data import validate_data
from tunekit.data.encoding import IGNORE
from tunekit.data.templated import MAX_CHECKED, find_template_markers, template_warning
from tunekit.testing import write_jsonl
from tunekit.training_data import normalise_for

# The learner's own rows: one text field per example, the template typed by hand.
ENGLISH = [f"Instruction: Translate to French.\nInput: word {i}\nAnswer: mot {i}" for i in range(10)]
ALPACA_PROMPT = [
    f"Below is an instruction.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n{i} {i}\n\n### Response:\n{2 * i}"
    for i in range(10)
]
CHINESE_FULL_WIDTH = [f"指令：把下面的话翻译成英文。\n输入：你好{i}\n回答：hello {i}" for i in range(10)]
CHINESE_ASCII_COLON = [f"指令: 翻译\n输入: 谢谢{i}\n回答: thanks {i}" for i in range(10)]
PROSE = [
    "Input devices are keyboards and mice.\nAnswer the phone when it rings.",
    "The instruction manual says: response times vary.",
    "Question: what is 2 + 2?\nThe answer is 4.",
    "回答问题之前先读题。输入法可以切换。",
] * 5


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "hand-rendered instruction template" in r.getMessage()]


# ---- detection -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "markers"),
    [
        (ENGLISH, ("Instruction:", "Input:", "Answer:")),
        (ALPACA_PROMPT, ("### Instruction:", "### Input:", "### Response:")),
        (CHINESE_FULL_WIDTH, ("指令：", "输入：", "回答：")),
        (CHINESE_ASCII_COLON, ("指令:", "输入:", "回答:")),
        (["### Instruction\nAdd.\n### Response\n4"], ("### Instruction", "### Response")),  # headings need no colon
        (["**Instruction:** add\n**Response:** 4"], ("**Instruction:", "**Response:")),
        (["instruction: add\nresponse: 4"], ("instruction:", "response:")),
    ],
)
def test_hand_rendered_templates_are_found_in_english_and_chinese(texts: list[str], markers: tuple[str, ...]) -> None:
    found = find_template_markers(texts)
    assert found is not None
    assert found.rows == found.checked == len(texts) and found.first_row == 1 and found.markers == markers


def test_prose_and_a_prompt_marker_alone_are_not_a_template() -> None:
    assert find_template_markers(PROSE) is None
    assert find_template_markers(["Instruction: be kind.\nInput: none"]) is None  # no answer marker
    assert find_template_markers(["Answer: 4\nResponse: 5"]) is None  # no prompt marker
    assert find_template_markers(["Some text. Instruction: add Input: 2 Answer: 4"]) is None  # not at a line start
    assert find_template_markers([]) is None


def test_a_meaningful_share_is_needed_and_row_numbers_are_the_users() -> None:
    few = ["plain text"] * 95 + ENGLISH[:5]  # 5%: a corpus that quotes a template now and then
    assert find_template_markers(few) is None
    some = ["plain text"] * 85 + (ENGLISH * 2)[:15]
    found = find_template_markers(some, rows=[i + 3 for i in range(100)])
    assert found is not None and (found.rows, found.checked, found.first_row) == (15, 100, 88)
    assert f"{found.share:.0%}" == "15%"
    big = (["plain text"] * 3 + ENGLISH[:1]) * 1500  # 6000 rows: a sample is checked, spread over the data
    found = find_template_markers(big)
    assert found is not None and found.checked == MAX_CHECKED and found.share == 0.25
    assert "500 of 2000 rows checked (spread over all 6,000) (25%)" in template_warning(found)


# ---- fit and validate-data warn --------------------------------------------------------------------------------------


def test_fit_warns_once_about_a_template_in_text_rows_and_shows_the_columns(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"text": t} for t in ENGLISH]
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        norm, objective = normalise_for(rows, training=tk.Training(), method=tk.LoRA(), objective=None)
    assert norm.format == "text" and objective.name == "CausalLM"  # still trains as asked: a warning, not an error
    (warning,) = _warnings(caplog)
    assert "10 of 10 rows (100%)" in warning and "row 1: 'Instruction:', 'Input:', 'Answer:'" in warning
    assert "echo" in warning and "'prompt' + 'completion'" in warning
    assert "'instruction' + 'input' + 'output'" in warning
    assert "tk.Data(path, columns=" in warning

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        normalise_for([{"text": t} for t in CHINESE_FULL_WIDTH], training=tk.Training(), method=tk.LoRA(),
                      objective=None, what="eval")  # fmt: skip
    (warning,) = _warnings(caplog)
    assert warning.startswith("the eval data is raw text") and "'指令：', '输入：', '回答：'" in warning


def test_tuner_fit_warns_on_the_tunekit_logger(caplog: pytest.LogCaptureFixture) -> None:
    """Through Tuner.fit itself (a FakeBackend: no model), with the learner's own rows and an explicit CausalLM."""
    tuner = tk.Tuner("any-name", objective=tk.CausalLM(), backend=tk.testing.FakeBackend(), progress=False)
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        tuner.fit([{"text": t} for t in ENGLISH + CHINESE_FULL_WIDTH])
    (warning,) = _warnings(caplog)
    assert "20 of 20 rows (100%)" in warning


def test_fit_does_not_warn_about_prose_or_about_columns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        normalise_for([{"text": t} for t in PROSE], training=tk.Training(), method=tk.LoRA(), objective=None)
        # The same words in a prompt are the user's content, not a template rendered into raw text.
        rows = [{"prompt": "Instruction: add\nInput: 2 2", "completion": "Answer: 4"}]
        normalise_for(rows, training=tk.Training(), method=tk.LoRA(), objective=None)
    assert _warnings(caplog) == []


def test_validate_data_reports_the_template_in_text_and_in_json(tmp_path: Path, capsys: Any) -> None:
    path = write_jsonl([{"text": t} for t in ALPACA_PROMPT] + [{"text": "plain"}], tmp_path / "d.jsonl")
    report = validate_data(path)
    found = report["template_markers"]
    assert (found["rows"], found["checked"], found["first_row"]) == (10, 11, 1)
    assert found["markers"] == ["### Instruction:", "### Input:", "### Response:"]
    assert "hand-rendered instruction template" in found["warning"]

    assert main(["validate-data", str(path)]) == 0  # a warning, not a bad row
    out = capsys.readouterr().out
    assert "warning    the training data is raw text" in out and "10 of 11 rows (91%)" in out
    assert main(["validate-data", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["template_markers"] == found

    clean = write_jsonl([{"text": t} for t in PROSE], tmp_path / "clean.jsonl")
    assert "template_markers" not in validate_data(clean)


# ---- the Alpaca system column ----------------------------------------------------------------------------------------

SYSTEM = "You are a terse calculator."


@pytest.mark.parametrize(
    "row",
    [
        {"instruction": "Add the numbers.", "input": "2 2", "output": "4", "system": SYSTEM},
        {"instruction": "Add the numbers.", "input": "2 2", "output": "4", "system": SYSTEM, "history": []},
        {
            "instruction": "Add the numbers.",
            "input": "2 2",
            "output": "4",
            "system": SYSTEM,
            "history": [["Add 1 1.", "2"]],
        },
    ],
    ids=["alpaca", "alpaca_empty_history", "alpaca_history"],
)
def test_alpaca_system_column_is_the_system_message_rendered_and_not_trained(
    tiny_dirs: dict[str, Path], row: dict[str, Any]
) -> None:
    tuner = tk.Tuner(tiny_dirs["chat"])
    enc = tuner.prepare([row])
    tok = tuner.tokenizer
    ids, labels = enc.input_ids[0], enc.labels[0]
    text = tok.decode(ids)
    # The system message first, then the prompt joined as documented: instruction, a blank line, input.
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert "<|im_start|>user\nAdd the numbers.\n\n2 2<|im_end|>" in text
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert trained == "4<|im_end|>"  # only the answer (and its end of turn) trains: never the system prompt
    without = tuner.prepare([{k: v for k, v in row.items() if k != "system"}])
    assert SYSTEM not in tok.decode(without.input_ids[0])  # the system text came from the column


def test_alpaca_system_column_reaches_kto_prompts() -> None:
    rows = [{"instruction": "Add.", "input": "2 2", "output": "4", "system": SYSTEM, "label": True}]
    norm, objective = normalise_for(rows, training=tk.Training(), method=tk.LoRA(), objective=tk.KTO())
    assert objective.name == "KTO"
    assert norm.examples[0].prompt == (
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Add.\n\n2 2"},
    )
