"""Conformance of tunekit's loss masks over the real chat templates of current model families (issue #16, item 4).

For each family (tests/data/chat_templates, with what each template does in families.json) and each kind of
conversation its template renders (plain turns, tool calls, reasoning), the conversation goes through tunekit's own
path (normalise, then encode) and:

- every assistant turn trains exactly once, and only assistant turns: never a user turn, a tool's output or a schema;
- each trained span is the turn as the template writes it, ending with one of the family's control tokens (so the model
  learns to stop), and holds the turn's content, calls and reasoning;
- the text before each span is exactly the generation prompt for that turn (what is served is what was trained);
- the tokens trained are exactly the spans' text.

Where a template cannot be trained that way it is refused with an error naming the template, never trained wrong:
DeepSeek-R1's generation prompt opens ``<think>`` that no rendered turn contains; GLM-4 (9b-chat) ends a turn with no
end-of-turn token; Mistral's template writes the system prompt only into a conversation that ends with a user turn.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

import tunekit as tk
from tests.template_fixtures import (
    FAMILIES,
    WEATHER_TOOL,
    family_tokenizer,
    fixed_clock,
    load_family,
    plain_conversation,
    thinking_conversation,
    tool_conversation,
)
from tunekit.data import CHATML_TEMPLATE, encode_examples, ensure_template, normalise
from tunekit.data.encoding import IGNORE
from tunekit.data.templates import render
from tunekit.data.turns import render_turns, supervised_turns

BUILTIN = "tunekit_chatml"
# What each family's template refuses, and the words of the refusal.
REFUSED = {
    ("deepseek_r1_distill", "plain"): r"differs from the generation prompt \(the prompt reads .*<think>",
    ("glm4", "plain"): "does not end with a control token, so the model would never learn to stop",
    ("mistral_tekken", "plain"): r"differs from the generation prompt \(the prompt reads .*You are terse",
}


def _tokenizer(name: str, tmp_path_factory: pytest.TempPathFactory, options: dict[str, Any] | None = None) -> Any:
    cache = tmp_path_factory.getbasetemp() / "template-conformance"
    if name == BUILTIN:
        tok = copy.deepcopy(family_tokenizer("qwen2_5", cache))
        ensure_template(tok, CHATML_TEMPLATE, options)
    else:
        tok = copy.deepcopy(family_tokenizer(name, cache))
        ensure_template(tok, None, {**load_family(name)["template_kwargs"], **(options or {})})
    return tok


def _row(name: str, kind: str) -> dict[str, Any]:
    family = load_family("qwen3" if name == BUILTIN else name)
    if kind == "plain":
        return {"messages": plain_conversation("qwen2_5" if name == BUILTIN else name)}
    if kind == "tools":
        return {"messages": tool_conversation("qwen2_5" if name == BUILTIN else name), "tools": [WEATHER_TOOL]}
    key = family["thinking"]["reasoning_key"]  # tunekit reads reasoning_content, reasoning and thinking alike
    return {"messages": thinking_conversation("qwen3" if name == BUILTIN else name), "_key": key}


def _cases() -> list[Any]:
    out = []
    for name in (*FAMILIES, BUILTIN):
        family = load_family("qwen3" if name == BUILTIN else name)
        kinds = ["plain"]
        if name == BUILTIN or family["renders_tool_calls"]:
            kinds.append("tools")
        if name == BUILTIN or (family["thinking"] and family["thinking"]["reasoning_key"]):
            kinds.append("thinking")
        out += [pytest.param(name, kind, id=f"{name}-{kind}") for kind in kinds]
    return out


def _markers(name: str, tok: Any) -> set[str]:
    if name == BUILTIN:
        return {"<|im_end|>"}
    family = load_family(name)
    return {t for t in (*family["special_tokens"], family["eos_token"]) if t}


def _check(name: str, tok: Any, row: dict[str, Any], **sft: Any) -> list[str]:
    """Run the row through tunekit and check every property above; returns the trained spans' text."""
    with fixed_clock():
        (ex,) = normalise([row]).examples
        turns = supervised_turns(ex.messages or (), ex.trained, sft.get("train_on", "all_assistant"), row=1)
        sequences = render_turns(
            tok, ex.messages or (), turns, tools=ex.tools, reasoning=sft.get("reasoning", "inference")
        )
        enc = encode_examples(tok, [ex], max_length=1 << 20, **sft)
    messages = list(ex.messages or ())
    spans: list[str] = []
    trained_turns: list[int] = []
    for seq in sequences:
        shown = list(seq.messages)
        for start, end in seq.spans:
            with fixed_clock():
                prompts = {
                    t: render(tok, shown[:t], add_generation_prompt=True, tools=ex.tools)
                    for t, m in enumerate(shown)
                    if m["role"] == "assistant"
                }
            matches = [t for t, prompt in prompts.items() if prompt == seq.text[:start]]
            assert len(matches) == 1, (
                f"the text before a trained span is not one turn's generation prompt: {seq.text[:start]!r}"
            )
            t = matches[0]
            text = seq.text[start:end]
            assert any(text.endswith(m) for m in _markers(name, tok)), (
                f"turn {t} does not end with an end of turn: {text!r}"
            )
            message = messages[t]
            if message["content"]:
                assert message["content"].strip() in text
            for call in message.get("tool_calls", ()):
                assert call["function"]["name"] in text and "Paris" in text
            trained_turns.append(t)
            spans.append(text)
    # Every assistant turn trains once; no user, tool or system text is trained.
    assert sorted(trained_turns) == sorted(turns)
    others = [m["content"] for m in messages if m["role"] != "assistant" and m["content"]]
    for text in spans:
        assert not any(o in text for o in others), (text, others)
        assert "The current weather in a city." not in text  # the schema's description: never trained
    # The tokens trained are exactly the spans' text.
    trained = [
        tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
        for ids, labels in zip(enc.input_ids, enc.labels)
    ]
    assert "".join(trained) == "".join(spans) or sorted(trained) == sorted(
        "".join(seq.text[a:b] for a, b in seq.spans) for seq in sequences
    )
    return spans


@pytest.mark.parametrize(("name", "kind"), _cases())
def test_template_trains_each_assistant_turn_exactly(
    name: str, kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tok = _tokenizer(name, tmp_path_factory)
    row = _row(name, kind)
    if kind == "thinking":  # given as tunekit reads it; the template gets it under its own key
        row = {
            "messages": [
                {("reasoning_content" if k == row["_key"] else k): v for k, v in m.items()} for m in row["messages"]
            ]
        }
    if (name, kind) in REFUSED:
        with pytest.raises(tk.IncompatibleError, match=REFUSED[(name, kind)]) as info:
            _check(name, tok, row)
        assert "chat template" in str(info.value)  # the error names the template
        return
    spans = _check(name, tok, row)
    if kind == "thinking":  # each turn trains with its reasoning (one sequence per user turn: as served)
        assert all("plus" in text for text in spans), spans


def test_mistral_trains_exactly_without_a_system_prompt(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mistral's template drops the system prompt from any conversation ending with an answer (refused above); the
    same conversation without one trains exactly."""
    tok = _tokenizer("mistral_tekken", tmp_path_factory)
    row = {"messages": [m for m in plain_conversation("mistral_tekken") if m["role"] != "system"]}
    assert _check("mistral_tekken", tok, row) == ["Paris.</s>", "Rome.</s>"]


def test_qwen3_thinking_off_trains_the_answers_after_the_empty_think_block(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Qwen3 with enable_thinking=False: the generation prompt ends with the empty think block, and the trained span is
    the answer alone (the block is prompt, as served)."""
    tok = _tokenizer("qwen3", tmp_path_factory, {"enable_thinking": False})
    spans = _check("qwen3", tok, {"messages": plain_conversation("qwen3")}, reasoning="drop")
    assert sorted(spans) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]


def test_builtin_template_drops_earlier_reasoning_and_trains_it_where_served(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tok = _tokenizer(BUILTIN, tmp_path_factory)
    row = {"messages": thinking_conversation("qwen3")}
    spans = _check(BUILTIN, tok, row)
    assert sorted(spans) == [
        "<think>\nThree plus three is six.\n</think>\n\n6.<|im_end|>",
        "<think>\nTwo plus two is four.\n</think>\n\n4.<|im_end|>",
    ]
    assert _check(BUILTIN, tok, row, reasoning="drop") == ["4.<|im_end|>", "6.<|im_end|>"]


def test_a_template_that_drops_what_a_turn_holds_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A template that writes role and content only (tunekit's ChatML before tool support) would train an empty
    turn in place of the call: refused, naming the call and the template."""
    tok = _tokenizer("qwen2_5", tmp_path_factory)
    ensure_template(
        tok,
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    row = {"messages": tool_conversation("qwen2_5")}
    with pytest.raises(tk.IncompatibleError, match=r"does not write its call of 'get_weather'.*template=") as info:
        _check("qwen2_5", tok, row)
    assert "the chat template passed as template=..." in str(info.value)
