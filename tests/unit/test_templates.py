"""Chat templates: the built-in ChatML for base models, a distinct pad token, the end-of-turn token."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import CHATML_TEMPLATE, Template, ensure_template
from tunekit.data.turns import render_turns
from tunekit.testing import CHATML

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]

# A template that ends each assistant turn with the tokenizer's EOS (Llama 2 / Mistral style).
EOS_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
# A template with no special token at all.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def test_tokenizer_with_template_keeps_it(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    size = len(tok)
    template, added = ensure_template(tok)
    assert added == []
    assert len(tok) == size
    assert template.chat_template == CHATML == tok.chat_template
    assert template.builtin is (CHATML == CHATML_TEMPLATE)  # tiny_model ships tunekit's exact ChatML
    assert template.end_of_turn == "<|im_end|>"
    assert template.end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|endoftext|>"


def test_own_template_different_from_chatml_is_not_builtin(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    tok.chat_template = EOS_TEMPLATE
    template, added = ensure_template(tok)
    assert (template.builtin, template.chat_template, added) == (False, EOS_TEMPLATE, [])
    assert tok.chat_template == EOS_TEMPLATE


def test_base_tokenizer_gets_builtin_chatml_as_special_tokens(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("base")
    assert not tok.chat_template and tok.pad_token is None
    vocab_before = len(tok)
    template, added = ensure_template(tok)
    assert template.builtin is True
    assert tok.chat_template == CHATML_TEMPLATE == template.chat_template
    assert added == ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>", "<|pad|>"]
    assert len(tok) == vocab_before + 7
    ids = {t: tok.convert_tokens_to_ids(t) for t in added}
    assert sorted(ids.values()) == list(range(vocab_before, vocab_before + 7))
    assert {"<|im_start|>", "<|im_end|>", "<|pad|>"} <= set(tok.all_special_tokens)
    # each marker is one token, never split into pieces by BPE
    text = "<|im_start|>user\nhi<|im_end|>"
    pieces = tok(text, add_special_tokens=False)["input_ids"]
    assert pieces[0] == ids["<|im_start|>"] and pieces[-1] == ids["<|im_end|>"]
    assert template.end_of_turn == "<|im_end|>" and template.end_of_turn_id == ids["<|im_end|>"]
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == ids["<|pad|>"]
    assert tok.eos_token == "<|endoftext|>"


@pytest.mark.parametrize("kind", ["chat", "base"])
def test_pad_is_distinct_from_eos_and_end_of_turn(kind: str, load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer(kind)
    template, _ = ensure_template(tok)
    assert tok.pad_token_id is not None
    assert len({tok.pad_token_id, tok.eos_token_id, template.end_of_turn_id}) == 3


@pytest.mark.parametrize("pad", ["<|endoftext|>", "<|im_end|>"])
def test_pad_equal_to_eos_or_end_of_turn_is_replaced(pad: str, load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    tok.pad_token = pad  # what many base models ship (pad = eos)
    template, added = ensure_template(tok)
    assert added == []  # "<|pad|>" is already in this vocabulary; it is only made the pad token
    assert tok.pad_token == "<|pad|>"
    assert len({tok.pad_token_id, tok.eos_token_id, template.end_of_turn_id}) == 3


def test_pad_equal_to_eos_on_a_base_tokenizer_adds_a_pad(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("base")
    tok.pad_token = tok.eos_token
    _, added = ensure_template(tok)
    assert added[-1] == "<|pad|>"
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize("kind", ["chat", "base"])
def test_idempotent(kind: str, load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer(kind)
    first, _ = ensure_template(tok)
    size = len(tok)
    second, added = ensure_template(tok)
    assert added == []
    assert second == first  # including builtin, as a saved and reloaded tokenizer must report
    assert len(tok) == size


def test_saved_and_reloaded_builtin_template_is_still_builtin(load_tokenizer: Callable[[str], Any], tmp_path) -> None:
    from transformers import AutoTokenizer

    tok = load_tokenizer("base")
    first, _ = ensure_template(tok)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    second, added = ensure_template(again)
    assert (second, added) == (first, [])
    assert again.pad_token == "<|pad|>"


def test_explicit_template_argument_wins(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    template, added = ensure_template(tok, EOS_TEMPLATE)
    assert tok.chat_template == EOS_TEMPLATE
    assert (template.builtin, added) == (False, [])
    assert template.end_of_turn == "<|endoftext|>"  # the template ends turns with eos_token
    assert template.end_of_turn_id == tok.eos_token_id
    assert tok.pad_token_id not in (tok.eos_token_id, template.end_of_turn_id)


def test_explicit_chatml_on_a_base_tokenizer_adds_the_markers(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("base")
    template, added = ensure_template(tok, CHATML)
    assert added == ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>", "<|pad|>"]
    assert template.end_of_turn == "<|im_end|>"


def test_template_without_special_end_falls_back_to_eos(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    template, _ = ensure_template(tok, PLAIN_TEMPLATE)
    assert (template.end_of_turn, template.end_of_turn_id) == ("<|endoftext|>", tok.eos_token_id)


def test_no_end_of_turn_and_no_eos_is_incompatible(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    tok.eos_token = None
    with pytest.raises(tk.IncompatibleError, match="no special token and the tokenizer has no EOS token"):
        ensure_template(tok, PLAIN_TEMPLATE)


def test_missing_eos_becomes_the_end_of_turn(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    tok.eos_token = None
    template, _ = ensure_template(tok)
    assert tok.eos_token == "<|im_end|>" == template.end_of_turn
    assert tok.pad_token == "<|pad|>"


def test_template_to_dict() -> None:
    t = Template(chat_template="T", end_of_turn="<|im_end|>", end_of_turn_id=3, builtin=True)
    assert t.to_dict() == {"chat_template": "T", "end_of_turn": "<|im_end|>", "builtin": True}


# ---- the supervised spans (tunekit.data.turns) -------------------------------------------------


def render_segments(tok: Any, msgs: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The one training sequence of ``msgs`` as (text, trains) pieces, every assistant turn training."""
    turns = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
    (seq,) = render_turns(tok, msgs, turns)
    bounds = [0] + [b for span in seq.spans for b in span] + [len(seq.text)]
    pieces = [(seq.text[a:b], k % 2 == 1) for k, (a, b) in enumerate(itertools.pairwise(bounds))]
    return [(text, trains) for text, trains in pieces if text]


def test_segments_single_turn(chat_tokenizer: Any) -> None:
    assert render_segments(chat_tokenizer, MSGS) == [
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False),
        ("yo<|im_end|>", True),
        ("\n", False),
    ]


def test_segments_multi_turn_with_system(chat_tokenizer: Any) -> None:
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "今天"},
        {"role": "assistant", "content": "天气很好"},
    ]
    segments = render_segments(chat_tokenizer, msgs)
    assert segments == [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n", False),
        ("a1<|im_end|>", True),
        ("\n<|im_start|>user\n今天<|im_end|>\n<|im_start|>assistant\n", False),
        ("天气很好<|im_end|>", True),
        ("\n", False),
    ]
    full = chat_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert "".join(text for text, _ in segments) == full


def test_segments_with_eos_template(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    ensure_template(tok, EOS_TEMPLATE)
    assert render_segments(tok, MSGS) == [("user: hi\nassistant: ", False), ("yo<|endoftext|>", True), ("\n", False)]


def test_template_that_is_not_prefix_stable_is_refused(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    with pytest.raises(tk.IncompatibleError, match="differs from the generation prompt"):
        render_segments(tok, MSGS)
