"""One render per row (tunekit.data.turns.prompt_in): where the generation prompt is read from the whole rendering
instead of rendered again, the encoding equals the two-render one on every family's real template, and where a
template writes the prompt differently (Mistral's system prompt, DeepSeek-R1's <think>) the row still takes the
two-render path and fails or trains exactly as before."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import tunekit.data.turns as turns
from tests.template_fixtures import FAMILIES, family_tokenizer, fixed_clock, load_family
from tunekit.data import CHATML_TEMPLATE, ensure_template, load_rows, normalise
from tunekit.data.encoding import encode_examples
from tunekit.errors import TunekitError

DATA = Path(__file__).resolve().parents[1] / "data"
BUILTIN = "tunekit_chatml"
PROMPTS = [
    {"prompt": "reverse: 1 2 3", "completion": "3 2 1"},
    {"prompt": "Is 7 prime?", "completion": "Yes.", "system": "Answer in one word."},
    {"prompt": "tag it", "completion": "<b>bold</b>"},  # markup: the two-render path
    {"prompt": "pad", "completion": " spaced "},
]
CHATS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]},
]  # fmt: skip


def _tokenizer(name: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = tmp_path_factory.getbasetemp() / "one-render"
    if name == BUILTIN:
        tok = copy.deepcopy(family_tokenizer("qwen2_5", cache))
        ensure_template(tok, CHATML_TEMPLATE, None)
    else:
        tok = copy.deepcopy(family_tokenizer(name, cache))
        ensure_template(tok, None, load_family(name)["template_kwargs"])
    return tok


def _encode(tok: Any, examples: Any) -> Any:
    try:
        with fixed_clock():
            enc = encode_examples(tok, examples, max_length=512, on_bad_rows="skip")
        return (enc.input_ids, enc.labels, enc.rows, enc.skipped)
    except TunekitError as e:
        return (type(e).__name__, str(e))


@pytest.mark.parametrize("name", [*FAMILIES, BUILTIN])
def test_one_render_equals_two_on_every_family(
    name: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = _tokenizer(name, tmp_path_factory)
    examples = [
        *normalise(PROMPTS).examples,
        *normalise(CHATS + load_rows(str(DATA / "canonical_chats.jsonl"))).examples,
    ]
    calls = {"read": 0}
    real = turns.prompt_in

    def counted(*args: Any) -> Any:
        got = real(*args)
        calls["read"] += got is not None
        return got

    monkeypatch.setattr(turns, "prompt_in", counted)
    one = _encode(tok, examples)
    monkeypatch.setattr(turns, "prompt_in", lambda *args: None)
    two = _encode(tok, examples)
    assert one == two
    if name in ("qwen2_5", BUILTIN, "llama3_2", "phi4"):
        assert calls["read"] >= 3  # the plain rows took one render


def test_the_fast_path_leaves_rows_with_markup_or_space_alone(tmp_path_factory: pytest.TempPathFactory) -> None:
    tok = _tokenizer(BUILTIN, tmp_path_factory)
    for messages in (
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<b>x</b>"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": " x "}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x", "reasoning_content": "r"}],
    ):
        full = tok.apply_chat_template(messages, tokenize=False)
        assert turns.prompt_in(tok, messages, full) is None
    plain = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}]
    full = tok.apply_chat_template(plain, tokenize=False)
    assert turns.prompt_in(tok, plain, full) == tok.apply_chat_template(
        plain[:1], tokenize=False, add_generation_prompt=True
    )
