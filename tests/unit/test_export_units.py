"""Export pieces that need no model: prompt choice, pre-tokenizer names, the Ollama template, sizes."""

from __future__ import annotations

import pytest

import tunekit as tk
from tunekit.export.gguf import _LLAMA3_REGEX, _QWEN2_REGEX, _pre_tokenizer
from tunekit.export.ollama import CHATML_GO, go_template, modelfile
from tunekit.export.prompts import DEFAULT_PROMPTS, golden_prompts
from tunekit.export.result import human_size


def test_golden_prompts_given_kept_or_default():
    assert golden_prompts(None, "hello", 4) == (["hello"], "given")
    chat = [{"role": "user", "content": "hi"}]
    assert golden_prompts(None, chat, 4) == ([chat], "given")
    kept = {"prompts": ["a", "b", "c"], "prompts_from": "eval"}
    assert golden_prompts(kept, None, 2) == (["a", "b"], "sampled from the eval data")
    prompts, source = golden_prompts(None, None, 3)
    assert prompts == DEFAULT_PROMPTS[:3] and "default" in source
    with pytest.raises(tk.ConfigError, match="at least one prompt"):
        golden_prompts(None, [], 4)
    with pytest.raises(tk.ConfigError, match="is not a prompt"):
        golden_prompts(None, ["ok", 3], 4)


def _split(regex):
    return {
        "model": {"type": "BPE"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated"},
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
            ],
        },
    }


def test_pre_tokenizer_names_llama_cpp_knows():
    assert _pre_tokenizer({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}}) == "gpt-2"
    assert _pre_tokenizer(_split(_LLAMA3_REGEX)) == "llama-bpe"
    assert _pre_tokenizer(_split(_QWEN2_REGEX)) == "qwen2"
    with pytest.raises(tk.IncompatibleError, match="convert_hf_to_gguf"):
        _pre_tokenizer(_split(r"\s+"))
    with pytest.raises(tk.IncompatibleError, match="'Unigram'"):
        _pre_tokenizer({"model": {"type": "Unigram"}})


class _Tok:
    def __init__(self, template):
        self.template = template

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return self.template(messages)


def test_ollama_template_only_when_it_renders_the_same():
    def chatml(msgs):
        out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
        return out + "<|im_start|>assistant\n"

    def llama3(msgs):
        out = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in msgs)
        return out + "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def qwen(msgs):  # Qwen2 / 2.5: a default system message when the conversation has none
        if msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": "You are Qwen, created by Alibaba Cloud."}, *msgs]
        return chatml(msgs)

    def odd_default(msgs):  # a default system turn that is not ChatML-shaped
        return ("" if msgs[0]["role"] == "system" else "<<SYS>>hi<</SYS>>") + chatml(msgs)

    assert go_template(_Tok(chatml)) == (CHATML_GO, "")
    assert go_template(_Tok(qwen)) == (CHATML_GO, "You are Qwen, created by Alibaba Cloud.")
    assert go_template(_Tok(llama3)) is None
    assert go_template(_Tok(odd_default)) is None
    text = modelfile("m.gguf", _Tok(qwen), ["<|im_end|>"])
    assert 'SYSTEM """You are Qwen, created by Alibaba Cloud."""\n' in text and f'TEMPLATE """{CHATML_GO}"""' in text
    assert "SYSTEM" not in modelfile("m.gguf", _Tok(chatml), ["<|im_end|>"])
    assert "TEMPLATE" not in modelfile("m.gguf", _Tok(odd_default), ["<|im_end|>"]).replace("# No TEMPLATE", "")


def test_human_size():
    assert human_size(512) == "512 B"
    assert human_size(35 * 1024 + 400) == "35.4 KiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"
    assert human_size(None) == "n/a"


@pytest.mark.parametrize(
    ("model_eos", "expected"),
    [(None, [2, 7]), (5, [2, 5, 7]), ([5, 9], [2, 5, 7, 9]), ([2, 7], [2, 7])],
    ids=["none", "one", "several", "same"],
)
def test_generation_eos_adds_to_the_models_own(model_eos, expected):
    """The export's EOS ids are the model's own plus end-of-turn and the tokenizer's EOS, not a replacement."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from tunekit.export.merged import set_generation_eos

    model = SimpleNamespace(
        generation_config=GenerationConfig(eos_token_id=model_eos),
        config=SimpleNamespace(eos_token_id=model_eos, pad_token_id=None),
    )
    eos = set_generation_eos(model, SimpleNamespace(eos_token_id=2, pad_token_id=0), end_of_turn_id=7)
    assert eos == expected and model.generation_config.eos_token_id == expected
    assert model.config.eos_token_id == expected
