"""Tool calls end to end: a model trained on tool-call conversations learns to call the right function (held out),
``generate(tools=...)`` returns the calls parsed in OpenAI's shape, and ``validate-data`` reads both tool layouts."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.testing import tiny_model

DATA = Path(__file__).resolve().parents[1] / "data"


def _schema(name: str, arg: str) -> dict[str, Any]:
    properties = {arg: {"type": "string"}}
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": properties}}}


TOOLS = [_schema("get_weather", "unit"), _schema("convert_currency", "to")]
WEATHER = ["weather in {x}", "is it cold in {x}", "{x} forecast", "will it rain in {x}"]
MONEY = ["convert {x} dollars", "how much is {x} euros", "{x} yen in pounds", "change {x} francs"]
PLACES = ["Paris", "Oslo", "Lima", "Rome", "Cairo", "Seoul", "Quito", "Delhi"]


def rows(n: int, seed: int, places: list[str]) -> list[dict[str, Any]]:
    """Requests in varied wordings; the call's function and its one argument follow from the wording."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        weather = rng.random() < 0.5
        text = rng.choice(WEATHER if weather else MONEY).format(x=rng.choice(places) if weather else rng.randint(1, 99))
        call = (
            {"name": "get_weather", "arguments": {"unit": "celsius"}}
            if weather
            else {"name": "convert_currency", "arguments": {"to": "EUR"}}
        )
        out.append({"tools": TOOLS, "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
        ]})  # fmt: skip
    return out


def call_accuracy(tuner: tk.Tuner, held_out: list[dict[str, Any]]) -> float:
    replies = tuner.generate([r["messages"][:1] for r in held_out], tools=TOOLS, max_new_tokens=32)
    want = [r["messages"][1]["tool_calls"][0]["function"] for r in held_out]
    return sum(bool(r.tool_calls) and r.tool_calls[0]["function"] == w for r, w in zip(replies, want)) / len(want)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[tk.Tuner, float, float, list[dict[str, Any]]]:
    train, held_out = rows(160, seed=1, places=PLACES[:5]), rows(24, seed=2, places=PLACES[5:])  # unseen places
    texts = [json.dumps(r) for r in train + held_out]
    model = tiny_model(tmp_path_factory.mktemp("tools"), texts=texts, vocab_size=1024, initializer_range=0.2)
    tuner = tk.Tuner(
        model,
        method=tk.Full(),
        training=tk.Training(max_steps=100, learning_rate=3e-3, batch_size=8, device="cpu"),
        progress=False,
    )
    before = call_accuracy(tuner, held_out)
    tuner.fit(train)
    return tuner, before, call_accuracy(tuner, held_out), held_out


def test_training_on_tool_calls_raises_held_out_call_accuracy(trained) -> None:
    _, before, after, _ = trained
    assert before <= 0.1 and after >= 0.8, (before, after)


def test_a_reply_carries_openai_shaped_calls_and_no_markup(trained) -> None:
    tuner, _, _, held_out = trained
    reply = tuner.generate(held_out[0]["messages"][:1], tools=TOOLS, max_new_tokens=32)
    assert isinstance(reply, tk.Reply) and isinstance(reply, str)
    assert isinstance(reply.tool_calls, list) and reply.tool_calls, reply.raw
    for call in reply.tool_calls:
        assert call["type"] == "function" and set(call["function"]) == {"name", "arguments"}
        assert call["function"]["name"] in {"get_weather", "convert_currency"}
        assert isinstance(call["function"]["arguments"], dict)
    assert "<tool_call>" in reply.raw and "<tool_call>" not in str(reply) and "</tool_call>" not in str(reply)
    assert reply.message()["tool_calls"] == reply.tool_calls  # ready to append to the conversation


@pytest.mark.parametrize(
    ("name", "fmt", "count"), [("openai_tool_calls.jsonl", "messages", 1), ("sharegpt_tools.json", "sharegpt", 3)]
)
def test_validate_data_reads_both_tool_call_layouts(name: str, fmt: str, count: int, capsys) -> None:
    assert main(["validate-data", str(DATA / name)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"format\s+{fmt}\b", out) and re.search(rf"rows\s+{count} \({count} valid, 0 bad\)", out), out
