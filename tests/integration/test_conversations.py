"""Conversations as people bring them in 2026 (issue #16): tool calls through every objective, reasoning traces,
per-turn loss, and what validate-data reports for them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf.rewards import wrap_reward
from tunekit.cli.validate_data import validate_data
from tunekit.data import normalise
from tunekit.data.rows import PROMPT_MESSAGES, PROMPT_TEXT
from tunekit.data.templates import render

from .helpers import cpu
from .toy_tasks import one_thread

DATA = Path(__file__).resolve().parents[1] / "data"
IGNORE = -100

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Dakar", "Hanoi", "Seoul", "Bern", "Kyiv"]


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


def supervised(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def tool_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    """DPO pairs: the weather question prefers the weather tool, the time question the time tool."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        city, weather = rng.choice(CITIES), rng.random() < 0.5
        ask = f"What is the {'weather' if weather else 'time'} in {city}?"
        right, wrong = ("get_weather", "get_time") if weather else ("get_time", "get_weather")
        rows.append(
            {
                "prompt": [{"role": "user", "content": ask}],
                "chosen": [call(right, city=city)],
                "rejected": [call(wrong, city=city)],
                "tools": TOOLS,
            }
        )
    return rows


def logprob(tuner: tk.Tuner, prompt: list[dict[str, Any]], answer: list[dict[str, Any]], tools: Any) -> float:
    tok, model = tuner.tokenizer, tuner.model
    head = tok(render(tok, prompt, add_generation_prompt=True, tools=tools), add_special_tokens=False)["input_ids"]
    ids = tok(render(tok, [*prompt, *answer], add_generation_prompt=False, tools=tools), add_special_tokens=False)[
        "input_ids"
    ]
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logps = model(input_ids=x).logits[0, :-1].float().log_softmax(-1)
    return float(logps.gather(-1, x[0, 1:, None])[:, 0][len(head) - 1 :].sum())


def prefers_right_tool(tuner: tk.Tuner, pairs: list[dict[str, Any]]) -> float:
    tuner.model.eval()
    wins = sum(
        logprob(tuner, p["prompt"], p["chosen"], TOOLS) > logprob(tuner, p["prompt"], p["rejected"], TOOLS)
        for p in pairs
    )
    return wins / len(pairs)


# --- tool calls ---------------------------------------------------------------------------------------------------


def test_sft_trains_the_calls_and_answers_never_the_tool_output_or_schemas(tiny_llama: Path) -> None:
    tuner = tk.Tuner(tiny_llama, training=cpu(cache=False))
    enc = tuner.prepare(DATA / "openai_tool_calls.jsonl")
    spans = supervised(tuner.tokenizer, enc.input_ids[0], enc.labels[0])
    assert spans == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "It is 18 C and sunny in Paris.<|im_end|>",
    ]
    whole = tuner.tokenizer.decode(enc.input_ids[0])
    assert '"parameters"' in whole and "18 C, sunny" in whole  # the schema and the tool's output: context only


def test_dpo_on_tool_calls_learns_to_prefer_the_right_tool(tiny_llama_init02: Path) -> None:
    """Preference pairs whose answers are tool calls, with a tools column: trl renders the schemas with the prompt
    (the JSON-stored messages keep each call's arguments exact), and the policy learns which tool a question wants."""
    train, held = tool_pairs(96, seed=1), tool_pairs(32, seed=2)
    tuner = tk.Tuner(
        tiny_llama_init02, objective=tk.DPO(), training=cpu(max_steps=24, learning_rate=3e-3, batch_size=8)
    )
    with one_thread():
        before = prefers_right_tool(tuner, held)
        result = tuner.fit(train)
        after = prefers_right_tool(tuner, held)
    assert before <= 0.75, before  # not already learned
    assert after >= 0.85, (before, after)
    assert result.history[-1]["rewards/accuracies"] > 0.5


def test_kto_rows_keep_each_calls_arguments_exact(tiny_llama: Path) -> None:
    """Arrow would merge the argument keys of every row into one struct (a null 'city' in a call that has none);
    tunekit stores the messages as JSON, so each row reaches trl as written."""
    rows = [
        {"prompt": [{"role": "user", "content": "Weather in Oslo?"}], "completion": [call("get_weather", city="Oslo")],
         "label": True, "tools": TOOLS},
        {"prompt": [{"role": "user", "content": "Add 2 and 3"}], "completion": [call("add", a=2, b=3)], "label": False,
         "tools": [{"name": "add", "parameters": {"type": "object"}}]},
    ]  # fmt: skip
    prepared = tk.Tuner(tiny_llama, objective=tk.KTO(), training=cpu(cache=False)).prepare(rows)
    ds = prepared.to_dataset()
    assert ds[0]["completion"][0]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert ds[1]["completion"][0]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 3}
    assert json.loads(ds[1]["tools"])[0]["function"]["name"] == "add"


def test_orpo_refuses_rows_with_tools(tiny_llama: Path) -> None:
    with pytest.raises(tk.IncompatibleError, match=r"row 1 lists tools, which ORPO training cannot show the model"):
        tk.Tuner(tiny_llama, objective=tk.ORPO(), training=cpu(cache=False)).prepare(tool_pairs(4, seed=0))


def test_rl_prompts_with_tools_are_rendered_with_them_and_rewards_see_the_messages(tiny_llama: Path) -> None:
    rows = [
        {"prompt": [{"role": "user", "content": f"Weather in {c}?"}], "tools": TOOLS, "city": c} for c in CITIES[:4]
    ]
    prepared = tk.Tuner(
        tiny_llama,
        objective=tk.GRPO(reward=lambda prompts, completions, **kw: [0.0] * len(completions)),
        training=cpu(cache=False),
    ).prepare(rows)
    record = prepared.records[0]
    assert isinstance(record["prompt"], str) and '"name": "get_time"' in record["prompt"]
    assert record["prompt"].endswith("<|im_start|>assistant\n") and record["city"] == "Paris"
    seen: dict[str, Any] = {}

    def reward(prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
        seen.update(prompts=prompts, columns=columns)
        return [1.0] * len(completions)

    wrap_reward(reward)(
        [record["prompt"]],
        ["x"],
        **{PROMPT_TEXT: [None], PROMPT_MESSAGES: [record[PROMPT_MESSAGES]], "city": ["Paris"]},
    )
    assert seen["prompts"] == [[{"role": "user", "content": "Weather in Paris?"}]] and seen["columns"] == {
        "city": ["Paris"]
    }


def test_generate_with_tools_renders_them_and_returns_a_reply(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunekit.backends.hf.generation as hf_generation

    prompts: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> str:
        prompts.append(render(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(hf_generation, "render", spy)
    tuner = tk.Tuner(tiny_llama, training=cpu())
    reply = tuner.generate([{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS, max_new_tokens=4)
    assert isinstance(reply, tk.Reply) and isinstance(reply, str) and isinstance(reply.tool_calls, list)
    assert reply.message()["role"] == "assistant"
    assert prompts and '"name": "get_time"' in prompts[0]  # the schemas went into the prompt the model saw
    assert prompts[0].endswith("Weather in Oslo?<|im_end|>\n<|im_start|>assistant\n")

    def get_weather(city: str) -> str:
        """Current weather.

        Args:
            city: The city.
        """
        return "sunny"

    assert isinstance(tuner.generate("hi", tools=[get_weather], max_new_tokens=2), tk.Reply)  # a Python function
    with pytest.raises(tk.ConfigError, match=r"generate\(tools=\.\.\.\), tool 1: expected a function schema"):
        tuner.generate("hi", tools=[{"description": "no name"}])


# --- reasoning ----------------------------------------------------------------------------------------------------


def test_every_way_to_give_reasoning_reads_the_same() -> None:
    examples = normalise(_rows(DATA / "reasoning_chats.jsonl")).examples
    answers = [[m for m in ex.messages or () if m["role"] == "assistant"] for ex in examples]
    assert answers[0] == [{"role": "assistant", "content": "51", "reasoning_content": "17 * 3 = 51."}]
    assert answers[1] == [{"role": "assistant", "content": "Tokyo", "reasoning_content": "Japan's capital is Tokyo."}]
    assert answers[2][0]["reasoning_content"] == "7 has no divisors but 1 and 7."
    assert [a["reasoning_content"] for a in answers[3]] == ["Two and two make four.", "Three and three make six."]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("reasoning", "expected"),
    [
        ("inference", [["<think>\nTwo and two make four.\n</think>\n\n4<|im_end|>"],
                       ["<think>\nThree and three make six.\n</think>\n\n6<|im_end|>"]]),
        ("drop", [["4<|im_end|>", "6<|im_end|>"]]),
    ],
)  # fmt: skip
def test_reasoning_trains_as_chosen(tiny_llama: Path, reasoning: str, expected: list[list[str]]) -> None:
    """The two-turn row with reasoning on both turns: by default each user turn's answer trains with its reasoning,
    in the history a server shows (one sequence each); reasoning="drop" trains the answers alone."""
    tuner = tk.Tuner(tiny_llama, objective=tk.SFT(reasoning=reasoning), training=cpu(cache=False))
    enc = tuner.prepare([_rows(DATA / "reasoning_chats.jsonl")[3]])
    got = [supervised(tuner.tokenizer, ids, labels) for ids, labels in zip(enc.input_ids, enc.labels)]
    assert got == expected and enc.rows == [1] * len(expected)


def test_a_reply_splits_reasoning_from_the_answer() -> None:
    from tunekit.data.replies import parse_reply

    reply = parse_reply("<think>\nadd them\n</think>\n\n4<|im_end|>", ["<|im_end|>", "<think>", "</think>"])
    assert (str(reply), reply.reasoning, reply.tool_calls) == ("4", "add them", [])
    opened = parse_reply("add them\n</think>\n\n4", ["</think>"])  # the generation prompt opened the block
    assert (str(opened), opened.reasoning) == ("4", "add them")


# --- which turns train --------------------------------------------------------------------------------------------


def test_per_turn_flags_and_train_on(tiny_llama: Path) -> None:
    tuner = tk.Tuner(tiny_llama, training=cpu(cache=False))
    enc = tuner.prepare(DATA / "per_turn_flags.jsonl")
    got = [supervised(tuner.tokenizer, ids, labels) for ids, labels in zip(enc.input_ids, enc.labels)]
    assert got == [["3 2 1<|im_end|>"], ["5 4<|im_end|>", "9 8<|im_end|>"]]
    last = tk.Tuner(tiny_llama, objective=tk.SFT(train_on="last_assistant"), training=cpu(cache=False))
    enc = last.prepare(DATA / "per_turn_flags.jsonl")
    got = [supervised(last.tokenizer, ids, labels) for ids, labels in zip(enc.input_ids, enc.labels)]
    assert got == [["3 2 1<|im_end|>"], ["5 4<|im_end|>", "9 8<|im_end|>"]]  # 'loss_weight': 1 keeps "5 4" in


def test_last_assistant_only_trains_the_last_turn(tiny_llama: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}]  # fmt: skip
    tuner = tk.Tuner(tiny_llama, objective=tk.SFT(train_on="last_assistant"), training=cpu(cache=False))
    enc = tuner.prepare(rows)
    assert supervised(tuner.tokenizer, enc.input_ids[0], enc.labels[0]) == ["d<|im_end|>"]


# --- validate-data ------------------------------------------------------------------------------------------------


def test_validate_data_reports_turns_tools_reasoning_and_a_marked_row(tiny_llama: Path) -> None:
    report = validate_data(DATA / "reasoning_chats.jsonl", model=str(tiny_llama))
    chats = report["conversations"]
    assert chats["reasoning_share"] == 1.0 and chats["tool_calls"] == 0 and chats["turns"]["max"] == 5
    assert report["supervised_tokens"]["min"] > 0
    tools = validate_data(DATA / "openai_tool_calls.jsonl", model=str(tiny_llama))
    assert (tools["conversations"]["tool_calls"], tools["conversations"]["rows_with_tools"]) == (1, 1)
    assert (
        '[[<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>]]'
        in (tools["rendered_row"])
    )
    assert "[[18 C" not in tools["rendered_row"]


def test_template_options_reach_training_generation_saves_and_exports(tiny_llama: Path, tmp_path: Path) -> None:
    """Tuner(template_options={"enable_thinking": False}): the generation prompt ends with the empty think block in
    training, after tk.load, and in an export read by plain transformers (the option is written into its template)."""
    from transformers import AutoTokenizer

    tuner = tk.Tuner(
        tiny_llama, template_options={"enable_thinking": False}, training=cpu(max_steps=2, cache=False),
        output_dir=tmp_path / "run",
    )  # fmt: skip
    rows = [{"prompt": "reverse: 1 2", "completion": "2 1"}] * 8
    enc = tuner.prepare(rows)
    assert tuner.tokenizer.decode(enc.input_ids[0]).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n2 1<|im_end|>\n"
    )
    assert supervised(tuner.tokenizer, enc.input_ids[0], enc.labels[0]) == ["2 1<|im_end|>"]
    tuner.fit(rows)
    again = tk.load(tuner.save(tmp_path / "saved"))
    assert again.template_options == {"enable_thinking": False}
    exported = tuner.export(tmp_path / "hf", format="hf")
    plain = AutoTokenizer.from_pretrained(exported.path)
    shown = plain.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert shown.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_template_chatml_by_name_renders_tools_where_the_models_own_does_not(tiny_llama: Path, tmp_path: Path) -> None:
    """A model whose template writes role and content only is refused on tool data (the catalogue checks the words);
    template="chatml" switches to tunekit's built-in template, which renders them."""
    plain = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(tk.IncompatibleError, match="pass template='chatml'"):
        tk.Tuner(tiny_llama, template=plain, training=cpu(cache=False)).prepare(DATA / "openai_tool_calls.jsonl")
    tuner = tk.Tuner(tiny_llama, template="chatml", training=cpu(cache=False))
    enc = tuner.prepare(DATA / "openai_tool_calls.jsonl")
    assert supervised(tuner.tokenizer, enc.input_ids[0], enc.labels[0])[0].startswith(
        '<tool_call>{"name": "get_weather"'
    )
