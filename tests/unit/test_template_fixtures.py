"""The real chat-template fixtures (tests/data/chat_templates) hold what families.json says about them: each template
renders deterministically, writes every marker listed for it, each marker is one token on the fixture tokenizer, and
the recorded ``prefix_stable`` is what the template does."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.template_fixtures import (
    CONVERSATIONS,
    FAMILIES,
    TEMPLATES,
    WEATHER_TOOL,
    family_tokenizer,
    load_family,
    plain_conversation,
    render,
)

EXPECTED = {
    "deepseek_r1_distill",
    "gemma3",
    "glm4",
    "gpt_oss",
    "llama3_1",
    "llama3_2",
    "mistral_tekken",
    "phi4",
    "qwen2_5",
    "qwen3",
    "smollm3",
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("template-fixtures")


def _renders(tok: Any, name: str, kind: str) -> list[str]:
    """The conversation of ``kind`` rendered whole, and up to each assistant turn with a generation prompt."""
    messages = CONVERSATIONS[kind](name)
    tools = [WEATHER_TOOL] if kind == "tools" else None
    out = [render(tok, name, messages, tools=tools)]
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            out.append(render(tok, name, messages[:i], tools=tools, add_generation_prompt=True))
    return out


def test_every_family_has_a_template_and_an_entry():
    assert set(FAMILIES) == EXPECTED
    assert {p.stem for p in TEMPLATES.glob("*.jinja")} == EXPECTED
    for name in FAMILIES:
        entry = load_family(name)
        assert entry["template"] == f"{name}.jinja"
        assert {"repo", "path", "commit", "hf_model"} <= set(entry["source"])
        assert set(entry["conversations"]) <= set(CONVERSATIONS)
        assert "plain" in entry["conversations"]
        assert ("thinking" in entry["conversations"]) == bool(entry["thinking"] and entry["thinking"]["reasoning_key"])
        if entry["supports_tools"]:
            assert entry["renders_tool_list"] and entry["renders_tool_calls"] and "tools" in entry["conversations"]


@pytest.mark.parametrize("name", FAMILIES)
def test_plain_conversation_renders_deterministically(name: str, cache_dir: Path):
    tok = family_tokenizer(name, cache_dir)
    messages = plain_conversation(name)
    first = render(tok, name, messages)
    assert first == render(tok, name, messages)
    assert "Paris." in first and "Rome." in first
    if load_family(name)["supports_system"]:  # Mistral writes it only into a user turn that is the last message
        prompt = render(tok, name, messages[:-1], add_generation_prompt=True)
        assert "You are terse." in first or "You are terse." in prompt


@pytest.mark.parametrize("name", FAMILIES)
def test_every_listed_marker_is_written_and_is_one_token(name: str, cache_dir: Path):
    entry = load_family(name)
    tok = family_tokenizer(name, cache_dir)
    written = "".join(r for kind in entry["conversations"] for r in _renders(tok, name, kind))
    if entry["thinking"] and entry["thinking"]["kwarg"] == "enable_thinking":  # the generation prompt of each mode
        for on in (True, False):
            written += render(tok, name, plain_conversation(name)[:-1], add_generation_prompt=True, enable_thinking=on)
    missing = [t for t in entry["special_tokens"] if t not in written]
    assert not missing, f"{name}: listed but never written: {missing}"
    for t in [*entry["special_tokens"], *entry["other_special_tokens"]]:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    for key in ("bos_token", "eos_token"):
        assert getattr(tok, key) == entry[key]
    if entry["end_of_turn"] is not None:
        assert entry["end_of_turn"] in entry["special_tokens"]
        assert entry["end_of_turn"] in render(tok, name, plain_conversation(name))


def _prefix_stable(tok: Any, name: str) -> bool:
    messages = plain_conversation(name)
    renders = [render(tok, name, messages[:k]) for k in range(1, len(messages) + 1)]
    if any(not b.startswith(a) for a, b in itertools.pairwise(renders)):
        return False
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = render(tok, name, messages[:i], add_generation_prompt=True)
            if not render(tok, name, messages[: i + 1]).startswith(prompt):
                return False
    return True


@pytest.mark.parametrize("name", FAMILIES)
def test_prefix_stable_is_recorded_truthfully(name: str, cache_dir: Path):
    """render(messages[:k]) is a prefix of render(messages[:k + 1]) for every k, and each assistant turn's generation
    prompt a prefix of the render with that turn: what families.json records as prefix_stable."""
    tok = family_tokenizer(name, cache_dir)
    assert _prefix_stable(tok, name) is load_family(name)["prefix_stable"]


def test_qwen3_drops_earlier_reasoning(cache_dir: Path):
    tok = family_tokenizer("qwen3", cache_dir)
    text = render(tok, "qwen3", CONVERSATIONS["thinking"]("qwen3"))
    assert "Three plus three is six." in text
    assert "Two plus two is four." not in text


def test_gpt_oss_ends_only_the_last_turn_with_return(cache_dir: Path):
    tok = family_tokenizer("gpt_oss", cache_dir)
    text = render(tok, "gpt_oss", plain_conversation("gpt_oss"))
    assert text.count("<|return|>") == 1 and text.endswith("Rome.<|return|>")
    assert "Paris.<|end|>" in text
