"""GGUF exports load in llama.cpp (llama-cpp-python) and give transformers' greedy tokens.

Slow (llama-cpp-python builds from source, several minutes): ``nox -s gguf`` installs it and runs
these; ``pytest -m slow tests/integration/test_export_llamacpp.py`` runs them where it is installed.
"""

from __future__ import annotations

import os

import pytest
import torch

import tunekit as tk
from tunekit.testing import reverse_task

from .helpers import cpu

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _llama_cpp():
    # Skipped where llama-cpp-python is not installed, except in `nox -s gguf`, which sets the variable: there a
    # missing build fails. (A fixture, not a module-level skip: the default suite deselects these tests silently.)
    if os.environ.get("TUNEKIT_REQUIRE_LLAMA_CPP") != "1":
        pytest.importorskip("llama_cpp")


PROMPTS = ["reverse: 1 2 3", "reverse: 4 5 6 7", "reverse: 8 0 9"]
MAX_NEW = 8


@pytest.fixture(scope="module", params=["tiny_llama_init02", "tiny_qwen_init02"])
def tuner(request):
    t = tk.Tuner(
        request.getfixturevalue(request.param),
        method=tk.LoRA(r=4),
        training=cpu(max_steps=6, learning_rate=1e-2, batch_size=8),
        progress=False,
    )
    t.fit(reverse_task(32, seed=5))
    return t


def _llama_cpp_greedy(llm, ids, eos):
    out = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if tok in eos or len(out) >= MAX_NEW:
            break
    return out


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_in_llama_cpp_gives_transformers_greedy_tokens(tuner, dtype, tmp_path):
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = tuner.export(
        tmp_path / "gguf", format="gguf", dtype=dtype, golden_prompts=PROMPTS, max_new_tokens=MAX_NEW
    )
    v = exported.verification
    assert {c.runtime for c in v.checks} == {"transformers", "llama.cpp"} and v.passed, v
    assert any("tokenises 3/3" in n for n in v.notes), v.notes

    # Independently of tunekit's verification: the merged hf export in plain transformers against llama.cpp.
    hf = tuner.export(tmp_path / "hf", format="hf", dtype="fp32", verify=False)
    tok = AutoTokenizer.from_pretrained(hf.path)
    model = AutoModelForCausalLM.from_pretrained(hf.path)
    eos = set(model.generation_config.eos_token_id)
    llm = Llama(model_path=str(exported.gguf_file), n_ctx=128, n_threads=1, verbose=False)
    for prompt in PROMPTS:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids  # same tokeniser
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False)
        expected = gen[0, len(ids) :].tolist()
        assert _llama_cpp_greedy(llm, ids, eos) == expected, prompt
    assert len({tuple(c.got_ids) for c in v.checks}) > 1  # the prompts gave different answers: a real check
