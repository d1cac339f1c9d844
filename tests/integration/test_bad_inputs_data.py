"""The bad-input catalogue, data part: columns that mean something, duplicates, mixed formats, tool calls.

A column is used or refused, never dropped; a key or column given twice is refused rather than the last
one winning; a row in another format, a tool-call conversation or an empty eval set each get an error that
says so. Cases whose right answer is a behaviour (OpenAI ``weight: 0`` turns left out of the loss, JSON
messages in CSV cells parsed, a ``system`` column used) are the ``test_correct_*`` tests below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.cli.validate_data import validate_data
from tunekit.data.encoding import IGNORE

from .bad_input_kit import GOOD, Row, check, rows_with
from .helpers import cpu

DATA = Path(__file__).parent.parent / "data"


def msg(role: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages)}


def labelled(good: Any, bad: Any) -> list[dict[str, Any]]:
    return [{**row, "label": good if i % 2 else bad} for i, row in enumerate(GOOD)]


def frame(columns: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame([["reverse: 1 2", "2 1", "1 2"]] * 4, columns=columns)


TWICE_IN_A_MESSAGE = (
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "content": "c"}]}\n'
)
# tunekit's ChatML before tool support: it writes role and content only, so tool calls and schemas would vanish.
PLAIN_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SHAREGPT_TOOLS = {
    "conversations": [
        {"from": "human", "value": "What is 2 + 2?"},
        {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 2, "b": 2}}'},
        {"from": "observation", "value": "4"},
        {"from": "gpt", "value": "2 + 2 = 4."},
    ]
}

# id, action, error class, words of the problem, words of the fix
CATALOGUE: list[Row] = [
    # --- a column that means something: used or refused, never dropped ---
    ("label-01-not-taken-for-kto", lambda c: c.fit(labelled(1, 0)), tk.DatasetError,
     r"'label' column of numbers .* KTO's layout .* may as well be class ids",
     r"pass objective=tk\.KTO\(\) .* or drop the 'label' column"),
    ("label-with-explicit-sft", lambda c: c.tuner(objective=tk.SFT()).fit(labelled(True, False)), tk.IncompatibleError,
     r"'label' column beside 'prompt' and 'completion' .* which SFT cannot use",
     r"drop the 'label' column .* or pass objective=tk\.KTO\(\)"),
    # a label beside a conversation is KTO data (it used to be refused, and before that trained as SFT)
    ("label-beside-messages-explicit-sft", lambda c: c.tuner(objective=tk.SFT()).fit(
        [{**chat(msg("user", "hi"), msg("assistant", "hello")), "label": True}] * 4),
     tk.IncompatibleError, r"'label' column beside 'messages' \(KTO's layout.* which SFT cannot use",
     r"drop the 'label' column to train SFT on the conversations, or pass objective=tk\.KTO\(\)"),
    ("label-01-beside-messages", lambda c: c.fit([{**chat(msg("user", "hi"), msg("assistant", "hello")), "label": 1}]
                                                 * 4),
     tk.DatasetError, r"'label' column of numbers \(row 1: 1\) beside 'messages': that is KTO's layout",
     r"pass objective=tk\.KTO\(\)"),
    ("label-beside-unanswered-conversation", lambda c: c.fit(
        [{**chat(msg("user", "hi"), msg("assistant", "hello"), msg("user", "and?")), "label": True}] * 4),
     tk.DatasetError, r"row 1, field 'messages': a 'label' marks the last assistant turn .* ends with a 'user' turn",
     "end it with the answer the label judges, or remove the 'label' column"),
    ("label-beside-text", lambda c: c.fit([{"text": "a b c", "label": True}] * 4),
     tk.DatasetError, r"row 1, column 'label': 'label' is read by KTO .* the 'text' format cannot use it",
     "remove the column"),
    ("history-beside-messages", lambda c: c.fit([{**chat(msg("user", "hi"), msg("assistant", "hello")),
                                                  "history": [["a", "b"]]}] * 4),
     tk.DatasetError, r"row 1, column 'history': 'history' .* is read by Alpaca rows", "remove the column"),
    ("tools-beside-text", lambda c: c.fit([{"text": "a b c", "tools": [{"type": "function"}]}] * 4),
     tk.DatasetError, r"row 1, column 'tools': .* 'text' rows cannot carry tools", "give the rows as a conversation"),
    ("functions-column", lambda c: c.fit([{**chat(msg("user", "hi"), msg("assistant", "hello")),
                                           "functions": [{"name": "f"}]}] * 4),
     tk.DatasetError, r"row 1, column 'functions': 'functions' is OpenAI's older name", "rename the column to 'tools'"),
    ("reasoning-column", lambda c: c.fit([{"prompt": "2+2?", "completion": "4", "reasoning_content": "2+2 is 4"}] * 4),
     tk.DatasetError, r"row 1, column 'reasoning_content': a reasoning trace belongs on the assistant message",
     "move it into the conversation, or remove the column"),
    # --- layouts of other tools: what cannot be rewritten says why ---
    ("implicit-prompt-strings", lambda c: c.fit([{"chosen": "good", "rejected": "bad"}] * 4),
     tk.DatasetError, r"row 1: 'chosen' and 'rejected' with no 'prompt' column, given as text",
     "add a 'prompt' column"),
    ("implicit-prompt-nothing-shared", lambda c: c.fit(
        [{"chosen": [msg("user", "a"), msg("assistant", "b")], "rejected": [msg("user", "c"), msg("assistant", "d")]}]
        * 4),
     tk.DatasetError, r"row 1: no 'prompt' column, and 'chosen' and 'rejected' share no leading message",
     "start both with the same prompt turns, or add a 'prompt' column"),
    ("implicit-prompt-shared-assistant", lambda c: c.fit(
        [{"chosen": [msg("user", "a"), msg("assistant", "b"), msg("assistant", "c")],
          "rejected": [msg("user", "a"), msg("assistant", "b"), msg("assistant", "d")]}] * 4),
     tk.DatasetError, r"row 1: no 'prompt' column, and the messages .* share end with a 'assistant' turn",
     "add a 'prompt' column that says where the answers start"),
    # --- tk.Data: a mapping of the file's names ---
    ("mapping-names-an-absent-column", lambda c: c.fit(tk.Data(GOOD, columns={"prompt": "question"})),
     tk.DatasetError, r"row 1: no column 'question', which Data\(columns=\{'prompt': 'question'\}\) names",
     "fix the name in the mapping"),
    ("mapping-unknown-column-key", lambda c: c.fit(tk.Data(GOOD, columns={"promt": "question"})),
     tk.ConfigError, r"Data\(columns=\{'promt': 'question'\}\): unknown column 'promt'; did you mean 'prompt'\?",
     "the keys are tunekit's names, the values the file's"),
    ("mapping-unknown-role-key", lambda c: c.fit(tk.Data(GOOD, roles={"asistant": "agent"})),
     tk.ConfigError, r"unknown role 'asistant'; did you mean 'assistant'\?", "the keys are tunekit's names"),
    ("misspelled-system-column", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": "2 1",
                                                              "sytem": "Be brief."})),
     tk.DatasetError, r"row 3: unknown column 'sytem' \(did you mean 'system'\?\)",
     "never drops a column silently: rename the column, or remove it"),
    ("misspelled-answer-column", lambda c: c.fit([{"prompt": r["prompt"], "reponse": r["completion"]} for r in GOOD]),
     tk.DatasetError, r"has a 'prompt' but no 'completion' .* column 'reponse' \(did you mean 'response'\?",
     "tunekit reads that from 'completion': rename the column to it"),
    ("misspelled-extra-column", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": "2 1",
                                                             "reponse": "2 1"})),
     tk.DatasetError, r"row 3: unknown column 'reponse'", "rename the column to it"),
    ("column-of-another-format", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": "2 1",
                                                              "text": "reverse: 1 2 -> 2 1"})),
     tk.DatasetError, r"row 3: column 'text' belongs to the 'text' format; the data is in the 'prompt_completion'",
     "remove it if it holds nothing to train on"),
    ("images-column", lambda c: c.fit(rows_with({"prompt": "what is this?", "completion": "a cat",
                                                  "images": ["cat.png"]})),
     tk.DatasetError, r"row 3, field 'images': 1 image listed but 0 places for images in the conversation",
     "add or remove the markers, or fix the list"),
    ("image-content-part", lambda c: c.fit([chat(msg("user", [{"type": "text", "text": "what is this?"},
                                                               {"type": "image_url", "image_url": {"url": "x"}}]),
                                                  msg("assistant", "a cat"))] * 4),
     tk.DatasetError, r"row 1, field 'messages', message 1, image 1: image 'x': file not found",
     "a relative path starts from the current directory"),
    ("unknown-message-key", lambda c: c.fit([chat(msg("user", "hi", contnet="hi"), msg("assistant", "hello"))] * 4),
     tk.DatasetError, r"message 1: unknown key 'contnet' \(did you mean 'content'\?\)", "remove it"),
    ("system-column-and-message", lambda c: c.fit([{"system": "Be brief.", **chat(msg("system", "Be kind."),
                                                    msg("user", "hi"), msg("assistant", "hello"))}] * 4),
     tk.DatasetError, "row 1: both a 'system' column and a system message", "keep one of them"),
    ("system-not-a-string", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": "2 1", "system": 7})),
     tk.DatasetError, r"row 3, field 'system': expected a string, got int",
     "write the system prompt as text"),
    # --- OpenAI's per-turn weight ---
    ("weight-on-user-turn", lambda c: c.fit([chat(msg("user", "hi", weight=0), msg("assistant", "hello"))] * 4),
     tk.DatasetError, r"message 1: 'weight' is only read on assistant messages .* not on a user message", "remove it"),
    ("weight-out-of-range", lambda c: c.fit([chat(msg("user", "hi"), msg("assistant", "hello", weight=0.5))] * 4),
     tk.DatasetError, r"message 2: 'weight' must be 0 \(do not train on this turn\) or 1", r"got 0\.5"),
    ("every-turn-weight-0", lambda c: c.fit([chat(msg("user", "hi"), msg("assistant", "hello", weight=0))] * 4),
     tk.DatasetError, r"row 1, field 'messages': every assistant message says not to train on it",
     "let at least one train, or leave the row out"),
    ("every-turn-train-false", lambda c: c.fit([chat(msg("user", "hi"), msg("assistant", "hello", train=False))] * 4),
     tk.DatasetError, r"row 1, field 'messages': every assistant message says not to train on it",
     "let at least one train"),
    ("last-turn-train-false-last-only", lambda c: c.tuner(objective=tk.SFT(train_on="last_assistant")).fit(
        [chat(msg("user", "hi"), msg("assistant", "hello"), msg("user", "again"), msg("assistant", "no", train=False))]
        * 4),
     tk.DatasetError, r"row 1: nothing in it is trained on .*SFT\(train_on='last_assistant'\)",
     "let a turn train, or leave the row out"),
    ("weight-0-in-an-answer", lambda c: c.fit([{"prompt": "hi", "completion": [msg("assistant", "hello", weight=0)]}]
                                              * 4),
     tk.DatasetError, r"row 1, field 'completion', message 1: a per-turn training flag .* is read in a whole",
     "give the row as a conversation"),
    # --- given twice: refused, not the last one winning ---
    ("duplicate-jsonl-key", lambda c: c.fit(c.file("d.jsonl", '{"prompt": "a", "completion": "b"}\n'
                                                   '{"prompt": "a", "prompt": "b", "completion": "c"}\n')),
     tk.DatasetError, r"d\.jsonl, line 2: the key 'prompt' appears twice in one object", "remove or rename one"),
    ("duplicate-key-in-a-message", lambda c: c.fit(c.file("d.jsonl", TWICE_IN_A_MESSAGE)),
     tk.DatasetError, r"line 1: the key 'content' appears twice", "remove or rename one"),
    ("duplicate-json-key", lambda c: c.fit(c.file("d.json", '[{"text": "a b c"},\n {"text": "a", "text": "b"}]')),
     tk.DatasetError, r"d\.json, row 2: the key 'text' appears twice in one object", "remove or rename one"),
    ("duplicate-csv-column", lambda c: c.fit(c.file("d.csv", "prompt,completion,completion\nreverse: 1 2,2 1,1 2\n")),
     tk.DatasetError, r"the header names a column twice: 'completion' \(columns \[2, 3\]\)", "rename or remove one"),
    ("csv-row-with-extra-cells", lambda c: c.fit(c.file("d.csv", "prompt,completion\nreverse: 1, 2,2 1\n")),
     tk.DatasetError, r"row 1 \(line 2\) has 3 cells but the header names 2 columns", "quote cells that hold commas"),
    ("duplicate-dataframe-column", lambda c: c.fit(frame(["prompt", "completion", "completion"])), tk.DatasetError,
     "the DataFrame has the column 'completion' twice", "rename or drop one"),
    # --- errors that say what is wrong ---
    ("mixed-formats", lambda c: c.fit([*GOOD[:4], chat(msg("user", "reverse: 1 2"), msg("assistant", "2 1")),
                                       *GOOD[4:]]),
     tk.DatasetError, r"row 5 is in the 'messages' format .* but the data is in the 'prompt_completion' format "
     r"\(that of row 1\)", "convert row 5 to the 'prompt_completion' columns, or train the two formats from separate"),
    ("tool-call-of-an-unlisted-function", lambda c: c.fit([{**SHAREGPT_TOOLS, "tools": '[{"name": "sub"}]'}] * 4),
     tk.DatasetError, r"row 1, field 'conversations', message 2: calls 'add', which is not among the row's tools",
     "fix the call or add its schema to 'tools'"),
    ("tool-call-arguments-not-json", lambda c: c.fit([chat(
        msg("user", "weather?"),
        msg("assistant", None, tool_calls=[{"type": "function", "function": {"name": "w", "arguments": "{city: P"}}]),
        msg("tool", "sunny"), msg("assistant", "Sunny."))] * 4),
     tk.DatasetError, r"message 2: the arguments of 'w' is not valid JSON", "write it as a JSON object"),
    ("tool-call-without-a-name", lambda c: c.fit([chat(msg("user", "weather?"),
                                             msg("assistant", None, tool_calls=[{"id": "1", "type": "function"}]),
                                             msg("tool", "sunny", tool_call_id="1"), msg("assistant", "Sunny."))] * 4),
     tk.DatasetError, r"row 1, field 'messages', message 2: a tool call needs a function 'name'", r"'arguments'"),
    ("tool-result-without-a-call", lambda c: c.fit([chat(msg("user", "hi"), msg("tool", "sunny"),
                                                         msg("assistant", "Sunny."))] * 4),
     tk.DatasetError, r"roles out of order at message 2 \(got 'tool', expected 'assistant'\)",
     "a tool result answers an assistant turn that calls tools"),
    ("tools-with-a-template-that-ignores-them", lambda c: c.tuner(template=PLAIN_CHATML).fit(
        DATA / "openai_tool_calls.jsonl"),
     tk.IncompatibleError, r"row 1: the chat template passed as template=\.\.\. does not write the row's tools",
     "use a template that renders tools"),
    ("empty-eval-data", lambda c: c.tuner().fit(GOOD, eval_data=[]), tk.DatasetError,
     "eval_data is empty: it has no rows to evaluate on", "leave eval_data out"),
    ("empty-eval-file", lambda c: c.tuner().fit(GOOD, eval_data=c.file("val.jsonl", "")), tk.DatasetError,
     r"eval_data is empty: .*val\.jsonl: the file has no rows", "add at least one example"),
    ("bad-eval-row", lambda c: c.tuner().fit(GOOD, eval_data=rows_with({"prompt": "reverse: 1 2"}, at=2)),
     tk.DatasetError, r"^eval_data: row 2: missing field 'completion'", "add it to every row"),
    ("csv-messages-not-json", lambda c: c.fit(c.file("d.csv", 'messages\n"[{""role"": ""user"", ""content"": ""hi""}, '
                                                  '{""role"": ""assistant"" ""content"": ""yo""}]"\n')),
     tk.DatasetError, r"row 1, field 'messages': the cell holds text that is not valid JSON \(Expecting ',' delimiter",
     "must be a JSON list of messages"),
]  # fmt: skip


@pytest.mark.parametrize("row", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_data(tiny_llama, earlier_run, tmp_path, monkeypatch, row):
    check(tiny_llama, earlier_run, tmp_path, monkeypatch, row)


# --- behaviours ------------------------------------------------------------------------------------


def _tuner(model: Path, **kw: Any) -> tk.Tuner:
    return tk.Tuner(model, training=cpu(max_steps=1, batch_size=2, cache=False), progress=False, **kw)


def _unweighted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chat(*({k: v for k, v in m.items() if k != "weight"} for m in r["messages"])) for r in rows]


def test_correct_openai_weight_0_turn_is_left_out_of_the_loss(tiny_llama):
    """OpenAI fine-tuning JSONL: the assistant turn with ``"weight": 0`` is in the input but not in the labels."""
    path = DATA / "openai_weighted.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    tuner = _tuner(tiny_llama)
    weighted, plain = tuner.prepare(path), tuner.prepare(_unweighted(rows))
    assert weighted.input_ids == plain.input_ids  # the wrong answer stays in the context
    tok = tuner.tokenizer
    ids, labels, all_labels = weighted.input_ids[0], weighted.labels[0], plain.labels[0]
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert "3 2 1 0" not in trained and "3 2 1" in trained  # only the corrected answer (and its end of turn)
    left_out = [i for i, (a, b) in enumerate(zip(labels, all_labels)) if a != b]
    assert left_out and all(labels[i] == IGNORE for i in left_out)
    assert tok.decode([ids[i] for i in left_out]).strip().startswith("3 2 1 0")
    assert weighted.labels[1] == plain.labels[1]  # a row without weights trains every assistant turn
    # fit counts both rows: the one with a weight-0 turn is trained on (its other turn), not skipped
    result = _tuner(tiny_llama).fit(path)
    assert result.num_examples == 2 and result.skipped_rows == []


def test_correct_csv_messages_cells_are_parsed_like_jsonl(tiny_llama):
    """A spreadsheet export holding each conversation as JSON text trains exactly what the JSONL does."""
    tuner = _tuner(tiny_llama)
    from_csv, from_jsonl = tuner.prepare(DATA / "chat_export.csv"), tuner.prepare(DATA / "chat_export.jsonl")
    assert from_csv.input_ids == from_jsonl.input_ids and from_csv.labels == from_jsonl.labels
    assert "Réponds brièvement." in tuner.tokenizer.decode(from_csv.input_ids[1])


def test_correct_system_column_beside_a_conversation_is_used(tiny_llama):
    """ShareGPT with a ``system`` column (LLaMA-Factory's layout): the system prompt leads the conversation."""
    tuner = _tuner(tiny_llama)
    enc = tuner.prepare(DATA / "sharegpt_system.jsonl")
    rows = [json.loads(line) for line in (DATA / "sharegpt_system.jsonl").read_text(encoding="utf-8").splitlines()]
    same = [
        chat(msg("system", r["system"]), *(msg({"human": "user", "gpt": "assistant"}[m["from"]], m["value"])
                                            for m in r["conversations"]))
        for r in rows
    ]  # fmt: skip
    assert enc.input_ids == tuner.prepare(same).input_ids
    alpaca = tuner.prepare([{"system": "Be brief.", "instruction": "reverse: 1 2", "output": "2 1"}] * 2)
    assert "Be brief." in tuner.tokenizer.decode(alpaca.input_ids[0])


def test_correct_metadata_columns_are_ignored_on_purpose(tiny_llama):
    tuner = _tuner(tiny_llama)
    tagged = [{**r, "id": i, "source": "toy", "metadata": {"split": "train"}} for i, r in enumerate(GOOD)]
    assert tuner.prepare(tagged).input_ids == tuner.prepare(GOOD).input_ids


def test_correct_01_labels_train_kto_when_asked(tiny_llama):
    """0/1 labels are refused only as a guess: with objective=tk.KTO() they are KTO's True / False."""
    rows = labelled(1, 0)
    prepared = _tuner(tiny_llama, objective=tk.KTO()).prepare(rows)
    assert [r["label"] for r in prepared.records] == [bool(r["label"]) for r in rows]
    inferred = _tuner(tiny_llama).prepare(labelled(True, False))  # True / False still infers KTO, as documented
    assert [r["label"] for r in inferred.records] == [r["label"] for r in labelled(True, False)]


def test_correct_validate_data_names_unknown_and_tool_rows(tmp_path):
    """``tunekit validate-data`` runs the same checks: a misspelled column and a missing image are bad rows."""
    rows = [
        {"prompt": "reverse: 1 2", "completion": "2 1"},
        {"prompt": "reverse: 3 4", "completion": "4 3", "sytem": "Be brief."},
        {"prompt": "<image>reverse: 5 6", "completion": "6 5", "images": ["x.png"]},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = validate_data(path)
    assert report["valid_rows"] == 1
    reasons = [b["reason"] for b in report["bad_rows"]]
    assert "row 2: unknown column 'sytem' (did you mean 'system'?)" in reasons[0]
    assert "row 3, field 'images', image 1: image 'x.png': file not found" in reasons[1]
    tools = validate_data(DATA / "openai_tool_calls.jsonl")  # tool calls are read now: every row is valid
    assert tools["bad_rows"] == [] and tools["valid_rows"] == 1


def test_correct_kto_label_beside_messages_trains_kto(tiny_llama):
    """A 'label' beside a conversation is KTO data (it was dropped, or trained as SFT): prepared as KTO rows."""
    prepared = _tuner(tiny_llama).prepare(DATA / "kto_messages.jsonl")
    assert [r["label"] for r in prepared.records] == [True, False, True]


def test_correct_unused_columns_train_like_without_them(tiny_llama, caplog):
    """A column no format reads and no known name is near (category, lang) is listed once, and trains nothing."""
    tuner = _tuner(tiny_llama)
    tagged = [{**r, "category": "toy", "lang": "en"} for r in GOOD]
    with caplog.at_level("WARNING", logger="tunekit"):
        assert tuner.prepare(tagged).input_ids == tuner.prepare(GOOD).input_ids
    assert sum("not used for training: 'category', 'lang'" in r.getMessage() for r in caplog.records) == 1
