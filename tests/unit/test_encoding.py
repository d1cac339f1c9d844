"""Encoding: input_ids and position-masked labels, truncation, and the rows it cannot keep."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import Example, encode_examples, ensure_template, normalise
from tunekit.data.encoding import IGNORE

SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def chat(*messages: dict[str, str], row: int = 1) -> Example:
    return Example(row=row, messages=tuple(messages))


def ids_of(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def supervised_spans(tok: Any, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of supervised tokens, in order."""
    spans: list[list[int]] = []
    previous = IGNORE
    for i, lab in zip(ids, labels):
        if lab != IGNORE:
            assert lab == i
            if previous == IGNORE:
                spans.append([])
            spans[-1].append(i)
        previous = lab
    return [tok.decode(s) for s in spans]


@pytest.fixture(params=["chat", "base"])
def tok(request: pytest.FixtureRequest, chat_tokenizer: Any, base_tokenizer: Any) -> Any:
    """Both a tokenizer that ships ChatML and one that got tunekit's built-in template."""
    return chat_tokenizer if request.param == "chat" else base_tokenizer


def test_prompt_masked_completion_supervised_exactly(tok: Any) -> None:
    enc = encode_examples(tok, [chat(user("Translate to French: cheese"), assistant("fromage"))], max_length=512)
    prompt = ids_of(tok, "<|im_start|>user\nTranslate to French: cheese<|im_end|>\n<|im_start|>assistant\n")
    answer = ids_of(tok, "fromage<|im_end|>")
    tail = ids_of(tok, "\n")  # what the template writes after the end of turn: context, never generated
    assert enc.input_ids == [prompt + answer + tail]
    assert enc.labels == [[IGNORE] * len(prompt) + answer + [IGNORE] * len(tail)]
    assert enc.rows == [1]
    assert (enc.skipped, enc.truncated) == ([], 0)


def test_end_of_turn_is_supervised_and_only_in_assistant_turns(tok: Any) -> None:
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    enc = encode_examples(tok, [chat(SYSTEM, user("hi"), assistant("yo"))], max_length=512)
    ids, labels = enc.input_ids[0], enc.labels[0]
    positions = [i for i, t in enumerate(ids) if t == im_end]
    assert len(positions) == 3  # system, user, assistant turns
    assert [labels[p] for p in positions] == [IGNORE, IGNORE, im_end]


def test_multi_turn_supervises_every_assistant_turn(tok: Any) -> None:
    ex = chat(
        SYSTEM,
        user("u1"),
        assistant("first answer"),
        user("今天"),
        assistant("天气很好"),
        user("u3"),
        assistant("third"),
    )
    enc = encode_examples(tok, [ex], max_length=512)
    ids, labels = enc.input_ids[0], enc.labels[0]
    assert supervised_spans(tok, ids, labels) == [
        "first answer<|im_end|>",
        "天气很好<|im_end|>",
        "third<|im_end|>",
    ]
    masked = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE])
    assert masked == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n"
        "\n<|im_start|>user\n今天<|im_end|>\n<|im_start|>assistant\n"
        "\n<|im_start|>user\nu3<|im_end|>\n<|im_start|>assistant\n\n"
    )
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for lab in labels if lab == im_end) == 3


def test_input_ids_are_the_rendered_conversation(tok: Any) -> None:
    msgs = [SYSTEM, user("请把这句话翻译成英文。"), assistant("Please translate this sentence into English.")]
    enc = encode_examples(tok, [chat(*msgs)], max_length=512)
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(enc.input_ids[0]) == rendered


def test_train_on_prompt_supervises_everything(tok: Any) -> None:
    ex = chat(SYSTEM, user("hi"), assistant("yo"))
    enc = encode_examples(tok, [ex], max_length=512, train_on_prompt=True)
    masked = encode_examples(tok, [ex], max_length=512)
    assert enc.labels == enc.input_ids
    assert enc.input_ids == masked.input_ids


def test_every_chat_format_encodes_the_same(tok: Any) -> None:
    rows = {
        "prompt_completion": {"prompt": "Say hi.", "completion": "Hi!"},
        "alpaca": {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        "messages": {"messages": [user("Say hi."), assistant("Hi!")]},
        "sharegpt": {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]},
    }
    encoded = {}
    for fmt, row in rows.items():
        data = normalise([row])
        assert data.format == fmt
        enc = encode_examples(tok, data.examples, max_length=512)
        encoded[fmt] = (enc.input_ids, enc.labels)
    assert len(set(map(repr, encoded.values()))) == 1
    ids, labels = encoded["messages"]
    assert supervised_spans(tok, ids[0], labels[0]) == ["Hi!<|im_end|>"]


# ---- CausalLM text ----------------------------------------------------------------------------


def test_text_appends_eos_and_supervises_every_token(tok: Any) -> None:
    enc = encode_examples(tok, [Example(row=1, text="Hello world! 今天天气很好")], max_length=512)
    expected = [*ids_of(tok, "Hello world! 今天天气很好"), tok.eos_token_id]
    assert enc.input_ids == [expected]
    assert enc.labels == [expected]
    assert tok.decode(enc.input_ids[0]) == "Hello world! 今天天气很好<|endoftext|>"


def test_text_without_eos(tok: Any) -> None:
    enc = encode_examples(tok, [Example(row=1, text="Hello world!")], max_length=512, add_eos=False)
    assert enc.input_ids == [ids_of(tok, "Hello world!")]
    assert enc.labels == enc.input_ids


def test_text_already_ending_in_eos_gets_no_second_one(tok: Any) -> None:
    # The text's own EOS is meant (pre-rendered text): the caller says so, else the row is refused.
    with pytest.raises(tk.DatasetError, match=r"holds the control token '<\|endoftext\|>'"):
        encode_examples(tok, [Example(row=1, text="Hello<|endoftext|>")], max_length=512)
    enc = encode_examples(tok, [Example(row=1, text="Hello<|endoftext|>")], max_length=512, allow_control_tokens=True)
    assert enc.input_ids[0].count(tok.eos_token_id) == 1
    assert enc.input_ids[0][-1] == tok.eos_token_id


@pytest.mark.parametrize(
    "text",
    [
        "今天天气很好，我们去公园散步吧。",
        "混合 mixed 文本 with ASCII",
        "emoji 🙂 and accents: café, naïve",
        "  \n\t edge ",
    ],
)
def test_text_round_trips(chat_tokenizer: Any, text: str) -> None:
    enc = encode_examples(chat_tokenizer, [Example(row=1, text=text)], max_length=512, add_eos=False)
    assert chat_tokenizer.decode(enc.input_ids[0]) == text


def test_chinese_conversation_round_trips(tok: Any) -> None:
    data = normalise([{"prompt": "请把这句话翻译成英文。", "completion": "今天天气很好"}])
    enc = encode_examples(tok, data.examples, max_length=512)
    ids, labels = enc.input_ids[0], enc.labels[0]
    assert supervised_spans(tok, ids, labels) == ["今天天气很好<|im_end|>"]
    assert "请把这句话翻译成英文。" in tok.decode(ids)


# ---- truncation -------------------------------------------------------------------------------


def test_long_example_is_truncated_at_the_end(chat_tokenizer: Any) -> None:
    ex = chat(user("hi"), assistant("a very long answer " * 20))
    full = encode_examples(chat_tokenizer, [ex], max_length=4096)
    enc = encode_examples(chat_tokenizer, [ex], max_length=32)
    assert len(full.input_ids[0]) > 32
    assert enc.input_ids == [full.input_ids[0][:32]]
    assert enc.labels == [full.labels[0][:32]]
    assert enc.truncated == 1


def test_text_truncation_drops_the_eos(chat_tokenizer: Any) -> None:
    enc = encode_examples(chat_tokenizer, [Example(row=1, text="word " * 100)], max_length=40)
    assert len(enc.input_ids[0]) == 40
    assert chat_tokenizer.eos_token_id not in enc.input_ids[0]
    assert enc.truncated == 1


def long_prompt(row: int) -> Example:
    return chat(user("a long prompt that fills the whole window " * 5), assistant("answer"), row=row)


def test_truncation_that_leaves_no_supervised_token_names_the_row(chat_tokenizer: Any) -> None:
    examples = [chat(user("hi"), assistant("yo"), row=1), long_prompt(2), chat(user("a"), assistant("b"), row=3)]
    with pytest.raises(tk.DatasetError) as info:
        encode_examples(chat_tokenizer, examples, max_length=40)
    assert info.value.row == 2
    assert str(info.value) == (
        "row 2: no supervised token left after truncation to max_length=40 (the prompt alone is 40+ tokens); "
        "raise Training(max_length=...) or shorten the prompt"
    )


def test_truncation_skip_drops_and_reports_the_row(chat_tokenizer: Any) -> None:
    examples = [chat(user("hi"), assistant("yo"), row=1), long_prompt(2), chat(user("a"), assistant("b"), row=3)]
    enc = encode_examples(chat_tokenizer, examples, max_length=40, on_bad_rows="skip")
    assert enc.rows == [1, 3]
    assert [row for row, _ in enc.skipped] == [2]
    assert enc.skipped[0][1].startswith("row 2: no supervised token left after truncation to max_length=40")
    assert len(enc.input_ids) == len(enc.labels) == 2
    assert enc.truncated == 1


def test_all_rows_truncated_away_is_an_error_even_when_skipping(chat_tokenizer: Any) -> None:
    with pytest.raises(tk.DatasetError) as info:
        encode_examples(chat_tokenizer, [long_prompt(1), long_prompt(2)], max_length=40, on_bad_rows="skip")
    assert str(info.value) == (
        "no example has a supervised token after truncation to max_length=40; raise Training(max_length=...)"
    )


def test_one_supervised_token_at_the_first_position_is_not_enough(chat_tokenizer: Any) -> None:
    # A causal LM never predicts position 0, so a row whose only label is there trains nothing.
    assert len(ids_of(chat_tokenizer, "hi")) == 1
    with pytest.raises(tk.DatasetError) as info:
        encode_examples(chat_tokenizer, [Example(row=5, text="hi")], max_length=512, add_eos=False)
    assert info.value.row == 5
    assert str(info.value) == (
        "row 5: nothing to learn: the example is 1 token(s) long and none after the first is supervised; "
        "use longer text (or keep CausalLM(add_eos=True))"
    )
    enc = encode_examples(chat_tokenizer, [Example(row=5, text="hi")], max_length=512)  # with EOS: 2 tokens
    assert enc.input_ids == [[*ids_of(chat_tokenizer, "hi"), chat_tokenizer.eos_token_id]]


def test_non_prefix_stable_template_error_names_the_row(load_tokenizer: Callable[[str], Any]) -> None:
    tok = load_tokenizer("chat")
    ensure_template(
        tok, "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    with pytest.raises(tk.IncompatibleError, match=r"^row 7: cannot tell which tokens of assistant message 2") as info:
        encode_examples(tok, [chat(user("hi"), assistant("yo"), row=7)], max_length=64, on_bad_rows="skip")
    assert "differs from the generation prompt" in str(info.value)  # a template problem: never skipped


# ---- the Encoded result -----------------------------------------------------------------------


def test_encoded_counts_and_dataset(chat_tokenizer: Any) -> None:
    examples = [chat(user("hi"), assistant("yo")), Example(row=2, text="Hello world!")]
    enc = encode_examples(chat_tokenizer, examples, max_length=512)
    assert enc.rows == [1, 2]
    assert enc.num_tokens == len(enc.input_ids[0]) + len(enc.input_ids[1])
    ds = enc.to_dataset()
    assert ds.column_names == ["input_ids", "labels"]
    assert ds["input_ids"] == enc.input_ids and ds["labels"] == enc.labels
    assert all(len(i) == len(lab) for i, lab in zip(enc.input_ids, enc.labels))


def test_pipeline_from_a_file(tmp_path, chat_tokenizer: Any) -> None:
    from tunekit.data import load_rows
    from tunekit.testing import write_jsonl

    path = write_jsonl(tk.testing.reverse_task(4, fmt="messages"), tmp_path / "train.jsonl")
    data = normalise(load_rows(path))
    enc = encode_examples(chat_tokenizer, data.examples, max_length=128)
    assert enc.rows == [1, 2, 3, 4]
    for row, ids, labels in zip(tk.testing.reverse_task(4, fmt="messages"), enc.input_ids, enc.labels):
        answer = row["messages"][1]["content"]
        assert supervised_spans(chat_tokenizer, ids, labels) == [answer + "<|im_end|>"]


# ---- control tokens: typed in a message they stay text; in a text row they are a bad row ---------------------


def test_a_control_token_typed_in_a_message_is_encoded_as_the_text_it_is(tok: Any) -> None:
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    typed = chat(user("say <|im_end|> now"), assistant("I typed <|im_end|> here"))
    plain = chat(user("say  now"), assistant("I typed  here"))
    enc, ref = (encode_examples(tok, [ex], max_length=512) for ex in (typed, plain))
    ids, labels = enc.input_ids[0], enc.labels[0]
    assert ids.count(eot) == ref.input_ids[0].count(eot)  # only the template's own end-of-turn markers
    assert tok.decode(ids) == tok.decode(ref.input_ids[0]).replace("say  now", "say <|im_end|> now").replace(
        "I typed  here", "I typed <|im_end|> here"
    )
    assert supervised_spans(tok, ids, labels) == ["I typed <|im_end|> here<|im_end|>"]  # the answer, aligned
    # Told the tokens are meant (pre-rendered text), they are read as control tokens.
    meant = encode_examples(tok, [typed], max_length=512, allow_control_tokens=True)
    assert meant.input_ids[0].count(eot) == ids.count(eot) + 2


def test_a_text_row_holding_a_control_token_is_refused_or_skipped(chat_tokenizer: Any) -> None:
    tok = chat_tokenizer
    rows = [Example(row=1, text="fine"), Example(row=2, text="a<|im_end|>b")]
    reason = (
        "row 2, field 'text': holds the control token '<|im_end|>'; pass Training(allow_control_tokens=True) if the "
        "text is pre-rendered (its control tokens are meant), or remove it"
    )
    with pytest.raises(tk.DatasetError) as info:
        encode_examples(tok, rows, max_length=64)
    assert str(info.value) == reason and (info.value.row, info.value.field) == (2, "text")
    enc = encode_examples(tok, rows, max_length=64, on_bad_rows="skip")
    assert enc.rows == [1] and enc.skipped == [(2, reason)]
    with pytest.raises(tk.DatasetError) as info:  # every row skipped: the first one's reason, not "truncation"
        encode_examples(tok, [rows[1], Example(row=3, text="<|im_end|>")], max_length=64, on_bad_rows="skip")
    assert str(info.value) == f"no row left to train on: every row was skipped, the first as {reason}"
    meant = encode_examples(tok, rows, max_length=64, allow_control_tokens=True)
    assert meant.rows == [1, 2] and tok.convert_tokens_to_ids("<|im_end|>") in meant.input_ids[1]


def test_a_conversation_that_cannot_train_names_its_row_once(chat_tokenizer: Any) -> None:
    ex = Example(row=3, messages=(user("a"), assistant("b"), user("c"), assistant("d")), trained=(True,))
    with pytest.raises(tk.DatasetError) as info:  # a broken Example, not a bad row: never skipped
        encode_examples(chat_tokenizer, [ex], max_length=64, on_bad_rows="skip")
    assert str(info.value) == "row 3: 1 training flags for 2 assistant turns" and info.value.row == 3
    ex = Example(row=4, messages=(user("a"), assistant("b")), trained=(False,))
    with pytest.raises(tk.DatasetError) as info:
        encode_examples(chat_tokenizer, [ex], max_length=64)
    assert str(info.value).startswith("row 4: nothing in it is trained on (its last assistant turn says 'train': ")
    assert info.value.row == 4


def test_the_reasoning_option_reaches_the_rendering(chat_tokenizer: Any) -> None:
    tok = chat_tokenizer
    thought = {"role": "assistant", "content": "yo", "reasoning_content": "the user greets me"}
    ex = chat(user("hi"), thought)

    def text(**kw: Any) -> str:
        enc = encode_examples(tok, [ex], max_length=512, **kw)
        return tok.decode(enc.input_ids[0])

    assert "the user greets me" in text() and "the user greets me" in text(reasoning="keep")
    dropped = text(reasoning="drop")
    assert "the user greets me" not in dropped and "yo<|im_end|>" in dropped


def test_a_control_token_typed_in_a_row_with_tools_stays_text_where_it_was_typed(base_tokenizer: Any) -> None:
    # The typed text is found in the conversation as rendered with the row's tools (which shift every offset).
    tok = base_tokenizer
    add = {"type": "function", "function": {"name": "add", "description": "adds", "parameters": {"type": "object"}}}
    typed = Example(row=1, messages=(user("say <|im_end|> now"), assistant("ok <|im_end|> done")), tools=(add,))
    plain = Example(row=1, messages=(user("say  now"), assistant("ok  done")), tools=(add,))
    enc, ref = (encode_examples(tok, [ex], max_length=1024) for ex in (typed, plain))
    ids, labels = enc.input_ids[0], enc.labels[0]
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(eot) == ref.input_ids[0].count(eot)
    assert '"name": "add"' in tok.decode(ids)
    assert tok.decode(ids) == tok.decode(ref.input_ids[0]).replace("say  now", "say <|im_end|> now").replace(
        "ok  done", "ok <|im_end|> done"
    )
    assert supervised_spans(tok, ids, labels) == ["ok <|im_end|> done<|im_end|>"]
