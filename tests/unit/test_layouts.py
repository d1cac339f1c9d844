"""Other tools' layouts (tunekit.data.layouts), tk.Data's column / role mapping, and the column policy (unused
columns warned about once; columns with a meaning refused). Sample files in tests/data are laid out as LLaMA-Factory,
OpenAI and TRL publish them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.cli.validate_data import validate_data
from tunekit.data import Example, detect_format, load_rows, normalise
from tunekit.data.layouts import detect_layout
from tunekit.training_data import normalise_for

DATA = Path(__file__).resolve().parents[1] / "data"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def examples(data: Any) -> list[Example]:
    return normalise(load_rows(data)).examples


def objective_for(data: Any, objective: Any = None) -> str:
    _norm, chosen = normalise_for(data, training=tk.Training(), method=tk.LoRA(), objective=objective)
    return chosen.name


# ---- each layout, rewritten into the canonical format ---------------------------------------------------------


def test_sharegpt_preference_llamafactory() -> None:
    assert detect_format(load_rows(DATA / "sharegpt_preference.jsonl")) == "preference"
    first, second = examples(DATA / "sharegpt_preference.jsonl")
    assert first.prompt == (system("You are a poet."), user("Write a haiku about autumn."))
    assert first.chosen == (
        assistant("Crimson leaves drifting,\nwhispers of the cooling wind,\nthe year exhales slow."),
    )
    assert first.rejected == (assistant("Autumn is a season that comes after summer."),)
    assert second.prompt == (user("What is 12 * 12?"), assistant("144."), user("And 13 * 13?"))
    assert (second.chosen, second.rejected) == ((assistant("169."),), (assistant("13 * 13 is 196."),))
    assert objective_for(DATA / "sharegpt_preference.jsonl") == "DPO"


def test_openai_preference_layout() -> None:
    first, second = examples(DATA / "openai_preference.jsonl")
    assert first.prompt == (user("Hello, can you tell me how cold San Francisco is today?"),)
    assert first.rejected == (assistant("It is not particularly cold in San Francisco today."),)
    assert second.prompt == (system("Answer in one sentence."), user("Why is the sky blue?"))
    assert second.chosen == (assistant("Air molecules scatter blue sunlight more than red, so the sky looks blue."),)


def test_openai_preference_passes_tools_on_and_refuses_unknown_input_keys() -> None:
    row = json.loads((DATA / "openai_preference.jsonl").read_text(encoding="utf-8").splitlines()[1])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    layout = detect_layout([row])
    assert (
        layout is not None and layout.rewrite({**row, "input": {**row["input"], "tools": tools}}, 1)["tools"] == tools
    )
    with pytest.raises(tk.DatasetError, match=r"row 1, field 'input': unknown key 'temperature'"):
        normalise([{**row, "input": {**row["input"], "temperature": 0.2}}])


@pytest.mark.parametrize("name", ["kto_messages.jsonl", "kto_sharegpt.json", "kto_alpaca.json"])
def test_a_label_beside_a_conversation_is_kto_data(name: str) -> None:
    """The silent-wrong-training bug: a label beside a conversation was dropped or trained as SFT."""
    assert detect_format(load_rows(DATA / name)) == "unpaired_preference"
    assert objective_for(DATA / name) == "KTO"
    with pytest.raises(tk.IncompatibleError, match=r"'label' column beside .* which SFT cannot use"):
        objective_for(DATA / name, tk.SFT())


def test_kto_split_is_everything_before_the_last_assistant_turn() -> None:
    one, two, three = examples(DATA / "kto_messages.jsonl")
    assert one.prompt == (user("What is the capital of France?"),) and one.completion == (assistant("Paris."),)
    assert one.label is True
    assert two.prompt == (system("Be brief."), user("What is the capital of France?")) and two.label is False
    assert three.prompt == (user("2 + 2?"), assistant("4"), user("And times 3?"))
    assert three.completion == (assistant("12"),)
    sharegpt = examples(DATA / "kto_sharegpt.json")
    assert sharegpt[1].prompt == (user("Translate 'good night' into Spanish."),)
    assert sharegpt[1].completion == (assistant("Buenas tardes."),) and sharegpt[1].label is False
    alpaca = examples(DATA / "kto_alpaca.json")
    assert alpaca[0].prompt == (user("Classify the sentiment.\n\nI loved this film."),) and alpaca[0].label is True
    assert alpaca[0].prompt_text == "Classify the sentiment.\n\nI loved this film."


def test_a_label_beside_a_conversation_ending_with_the_user_is_a_bad_row() -> None:
    rows = [
        {"messages": [user("hi"), assistant("hello")], "label": True},
        {"messages": [user("hi"), assistant("hello"), user("and?")], "label": False},
    ]
    with pytest.raises(tk.DatasetError, match=r"row 2, field 'messages': .* ends with a 'user' turn") as info:
        normalise(rows)
    assert (info.value.row, info.value.field) == (2, "messages")
    skipped = normalise(rows, on_bad_rows="skip")
    assert [e.row for e in skipped.examples] == [1] and skipped.skipped[0][0] == 2  # row numbers kept 1:1


def test_trl_implicit_prompt() -> None:
    first, second = examples(DATA / "trl_implicit_prompt.jsonl")
    assert first.prompt == (user("What color is the sky?"),)
    assert (first.chosen, first.rejected) == ((assistant("It is blue."),), (assistant("It is green."),))
    assert second.prompt == (system("Answer briefly."), user("Where is the Eiffel Tower?"))
    assert objective_for(DATA / "trl_implicit_prompt.jsonl") == "DPO"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"chosen": "blue", "rejected": "green"}, r"row 1: 'chosen' and 'rejected' with no 'prompt' column, given as"),
        (
            {"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]},
            r"row 1: no 'prompt' column, and 'chosen' and 'rejected' share no leading message",
        ),
        (
            {"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("b")]},
            r"row 1, field 'chosen': every message of it is shared with the other answer",
        ),
        (
            {"chosen": [system("s"), user("a"), assistant("b")], "rejected": [system("s"), user("c"), assistant("b")]},
            r"the messages 'chosen' and 'rejected' share end with a 'system' turn",
        ),
    ],
)
def test_implicit_prompt_that_cannot_be_split(row: dict[str, Any], message: str) -> None:
    with pytest.raises(tk.DatasetError, match=message) as info:
        normalise([row])
    assert info.value.row == 1


def test_alpaca_history_is_earlier_turns_that_do_not_train() -> None:
    first, second = examples(DATA / "alpaca_history.json")
    assert first.messages == (
        system("You are a geography tutor."),
        user("What is the capital of France?"),
        assistant("The capital of France is Paris."),
        user("And what is its population?"),
        assistant("About 2.1 million people live in Paris proper."),
    )
    assert first.trained == (False, None)  # the history says it does not train; the current answer trains
    assert second.messages == (user("Name a river in Germany."), assistant("The Rhine.")) and second.trained is None
    with pytest.raises(tk.DatasetError, match=r"row 1, field 'history', turn 1: expected an \[instruction, response\]"):
        normalise([{"instruction": "i", "output": "o", "history": [["only the question"]]}])


# ---- tk.Data: the file's names mapped to tunekit's -------------------------------------------------------------


def test_a_mapped_file_normalises_like_the_canonical_one() -> None:
    mapped = tk.Data(
        DATA / "mapped_chats.jsonl",
        columns={"messages": "dialog", "system": "sys_prompt"},
        roles={"role": "speaker", "content": "text", "user": "customer", "assistant": "agent"},
    )
    assert examples(mapped) == examples(DATA / "canonical_chats.jsonl")
    tags = tk.Data(  # LLaMA-Factory's dataset_info "tags" names
        DATA / "mapped_chats.jsonl",
        columns={"messages": "dialog", "system": "sys_prompt"},
        roles={"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent"},
    )
    assert examples(tags) == examples(DATA / "canonical_chats.jsonl")
    assert objective_for(mapped) == "SFT"


def test_mapping_errors() -> None:
    with pytest.raises(tk.DatasetError, match=r"row 1: no column 'dialogue', which Data\(columns=\{'messages'"):
        load_rows(tk.Data(DATA / "mapped_chats.jsonl", columns={"messages": "dialogue"}))
    with pytest.raises(tk.ConfigError, match=r"unknown column 'mesages'; did you mean 'messages'\?"):
        tk.Data(DATA / "mapped_chats.jsonl", columns={"mesages": "dialog"})
    with pytest.raises(tk.ConfigError, match=r"unknown role 'asistant'; did you mean 'assistant'\?"):
        tk.Data(DATA / "mapped_chats.jsonl", roles={"asistant": "agent"})
    with pytest.raises(tk.ConfigError, match="unknown option 'colums'"):
        tk.Data(DATA / "mapped_chats.jsonl", colums={})
    with pytest.raises(tk.ConfigError, match=r"Data\(columns=...\): the data \(source\) is missing"):
        tk.Data(columns={"messages": "dialog"})


def test_mapping_in_a_yaml_config(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chats.jsonl").write_text(
        (DATA / "mapped_chats.jsonl").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (tmp_path / "run.yaml").write_text(
        "model: tiny\n"
        "data:\n"
        "  path: data/chats.jsonl\n"
        "  columns: {messages: dialog, system: sys_prompt}\n"
        "  roles: {role_tag: speaker, content_tag: text, user_tag: customer, assistant_tag: agent}\n"
        "eval_data: {path: data/chats.jsonl, columns: {messages: dialog, system: sys_prompt}, "
        "roles: {role: speaker, content: text, user: customer, assistant: agent}}\n",
        encoding="utf-8",
    )
    cfg = tk.RunConfig.from_yaml(tmp_path / "run.yaml")
    assert isinstance(cfg.data, tk.Data) and Path(cfg.data.source) == tmp_path / "data" / "chats.jsonl"
    assert examples(cfg.data) == examples(cfg.eval_data) == examples(DATA / "canonical_chats.jsonl")
    again = tk.RunConfig.from_yaml(_write(tmp_path / "again.yaml", cfg.to_yaml()))
    assert again.data == cfg.data
    with pytest.raises(tk.ConfigError, match=r"data: Data\(columns=\{'mesages'"):
        tk.RunConfig(model="tiny", data={"path": "x.jsonl", "columns": {"mesages": "dialog"}})


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- the column policy ------------------------------------------------------------------------------------------


def test_unused_columns_are_warned_about_once_and_not_trained(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "category": "math", "difficulty": i} for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        norm, _ = normalise_for(rows, training=tk.Training(), method=tk.LoRA(), objective=None)
    plain = normalise([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]).examples
    assert norm.examples == plain
    warned = [r.getMessage() for r in caplog.records if "not used for training" in r.getMessage()]
    assert len(warned) == 1 and "'category', 'difficulty'" in warned[0]


def test_a_misspelled_column_stays_an_error() -> None:
    with pytest.raises(tk.DatasetError, match=r"row 1: unknown column 'complation' \(did you mean 'completion'\?\)"):
        normalise([{"prompt": "q", "completion": "a", "complation": "b"}])


def test_the_tools_column_is_read_by_chat_formats() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    chat = {"messages": [user("hi"), assistant("hello")], "tools": tools}
    assert normalise([chat]).format == "messages"  # no longer refused (rendering the tools is the message model's)
    with pytest.raises(tk.DatasetError, match=r"row 1, column 'tools': .* 'text' rows cannot carry tools"):
        normalise([{"text": "a b c", "tools": tools}])


def test_validate_data_reports_layout_and_unused_columns(tmp_path: Path) -> None:
    mapped = tk.Data(
        DATA / "mapped_chats.jsonl",
        columns={"messages": "dialog", "system": "sys_prompt"},
        roles={"role": "speaker", "content": "text", "user": "customer", "assistant": "agent"},
    )
    report = validate_data(mapped)
    assert report["format"] == "messages" and report["bad_rows"] == []
    assert report["unused_columns"] == ["category", "lang"]
    kto = validate_data(DATA / "kto_messages.jsonl")
    assert (kto["format"], kto["layout"], kto["valid_rows"]) == ("unpaired_preference", "kto_messages", 3)


def test_validate_data_command_takes_columns_and_roles(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([
        "validate-data", str(DATA / "mapped_chats.jsonl"), "--json",
        "--columns", "messages=dialog,system=sys_prompt",
        "--roles", "role=speaker,content=text,user=customer,assistant=agent",
    ])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["valid_rows"] == 2 and report["unused_columns"] == ["category", "lang"]
    assert main(["validate-data", str(DATA / "mapped_chats.jsonl"), "--columns", "messages"]) == 2  # a usage error
    assert "'messages' is not NAME=FILE_NAME" in capsys.readouterr().err
