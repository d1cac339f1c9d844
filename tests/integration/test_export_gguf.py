"""GGUF exports of tiny Llama and Qwen2 models: weights, tokenizer and template round-trip (checked with
transformers' GGUF loader in the default suite; llama.cpp in test_export_llamacpp.py, marked slow)."""

from __future__ import annotations

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

from .helpers import cpu

pytest.importorskip("gguf")

PROMPTS = ["reverse: 1 2 3", "reverse: 4 5 6 7"]


@pytest.fixture(scope="module", params=["tiny_llama_init02", "tiny_qwen_init02"])
def tuner(request):
    t = tk.Tuner(
        request.getfixturevalue(request.param),
        method=tk.LoRA(r=4),
        training=cpu(max_steps=4, learning_rate=1e-2, batch_size=8),
        progress=False,
    )
    t.fit(reverse_task(32, seed=5))
    return t


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_gguf_export_round_trips_with_same_greedy_tokens(tuner, dtype, tmp_path):
    from tunekit.export.gguf_check import gguf_metadata

    result = tuner.export(tmp_path / "gguf", format="gguf", dtype=dtype, golden_prompts=PROMPTS, max_new_tokens=8)
    v = result.verification
    assert v.passed, v
    assert all(c.match for c in v.checks if c.runtime == "transformers")  # exact, whatever the dtype
    assert {c.runtime for c in v.checks} >= {"transformers"}
    if dtype == "f32":
        assert v.reference == "trained" and v.trained_agreement == 1.0
    assert result.gguf_file is not None and result.gguf_file.name.endswith(f"-{dtype}.gguf")
    meta = gguf_metadata(result.gguf_file)
    template = tuner.loaded.template
    assert meta["tokenizer.chat_template"] == template.chat_template
    assert meta["tokenizer.ggml.eot_token_id"] == template.end_of_turn_id
    assert meta["tokenizer.ggml.eos_token_id"] == tuner.tokenizer.eos_token_id
    # transformers 5 loads a qwen2 model's tokenizer with Qwen2's own pre-tokenizer regex; llama.cpp knows both.
    assert meta["tokenizer.ggml.pre"] == {"llama": "gpt-2", "qwen2": "qwen2"}[tuner.model.config.model_type]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["general.architecture"] == tuner.model.config.model_type
    modelfile = (result.path / "Modelfile").read_text(encoding="utf-8")
    assert f"FROM ./{result.gguf_file.name}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert result.merged_size_bytes == result.gguf_file.stat().st_size
    assert len({tuple(c.got_ids) for c in v.checks}) > 1  # varied answers: the comparison proves something


def test_gguf_refuses_other_architectures(tmp_path):
    from tunekit.export.gguf import _pre_tokenizer, gguf_arch

    class Cfg:
        model_type = "gpt2"

    with pytest.raises(tk.IncompatibleError, match=r"Llama, Mistral, Qwen2.*convert_hf_to_gguf"):
        gguf_arch(Cfg())
    with pytest.raises(tk.IncompatibleError, match="byte fallback"):
        _pre_tokenizer({"model": {"type": "BPE", "byte_fallback": True}})
