"""GGUF exports of the newer families (Qwen3, Mistral, Gemma 2, Gemma 3, Phi-3) and the k-quants, run in llama.cpp.

Slow (llama-cpp-python builds from source): ``nox -s gguf`` runs these with TUNEKIT_REQUIRE_LLAMA_CPP=1, so a
missing llama-cpp-python fails them rather than skipping. The tiny models are 256 wide with 512-wide FFNs, so every
matrix has rows of a multiple of 256 values and takes llama.cpp's real k-quant path (narrower rows fall back to
simpler types per tensor). Each test prints its agreement figures (run with -s to see them).
"""

from __future__ import annotations

import os

import pytest

import tunekit as tk
from tunekit.testing import reverse_task, tiny_model

from .helpers import cpu

pytestmark = pytest.mark.slow

PROMPTS = ["reverse: 1 2 3", "reverse: 4 5 6 7", "reverse: 8 0 9", "reverse: 2 7 1 8 2", "reverse: 3 1 4 1"]
MAX_NEW = 8
# A floor for k-quants: share of answer tokens (position by position) where llama.cpp on the k-quant gives the
# trained model's greedy token. Random tiny models sit on near-ties far more than trained ones, so this is loose;
# the figures themselves are printed.
K_QUANT_TOKEN_FLOOR = {"q4_k_m": 0.4, "q5_k_m": 0.5, "q6_k": 0.5}


@pytest.fixture(scope="module", autouse=True)
def _llama_cpp():
    if os.environ.get("TUNEKIT_REQUIRE_LLAMA_CPP") != "1":
        pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")


def _tuner(family: str, tmp_path_factory, task_texts, *, init: float, steps: int) -> tk.Tuner:
    path = tiny_model(
        tmp_path_factory.mktemp(f"tiny-{family}"),
        arch=family,  # type: ignore[arg-type]
        texts=task_texts,
        hidden_size=256,
        intermediate_size=512,
        initializer_range=init,
    )
    training = cpu(max_steps=steps, learning_rate=1e-2, batch_size=8)
    t = tk.Tuner(path, method=tk.LoRA(r=4), training=training, progress=False)
    t.fit(reverse_task(32, seed=5))
    return t


def _figures(v) -> str:
    return (
        f"llama.cpp prompts exact {v.llama_cpp_agreement:.2f}, tokens {v.llama_cpp_token_agreement:.3f}; "
        f"transformers (reloaded file) prompts exact {v.trained_agreement:.2f}"
    )


@pytest.fixture(scope="module", params=["qwen3", "mistral", "gemma2", "gemma3_text", "phi3"])
def family_tuner(request, tmp_path_factory, task_texts):
    family = request.param
    # A random tied Gemma (embeddings scaled by sqrt(hidden)) answers with its last input token whatever the prompt;
    # 40 steps give it varied answers, so the comparison proves something.
    gemma = family.startswith("gemma")
    steps, init = (40, 0.1) if gemma else (6, 0.2)
    return family, _tuner(family, tmp_path_factory, task_texts, init=init, steps=steps)


def test_each_family_in_llama_cpp_gives_the_trained_greedy_tokens(family_tuner, tmp_path):
    family, tuner = family_tuner
    exported = tuner.export(
        tmp_path / "f32", format="gguf", dtype="f32", golden_prompts=PROMPTS, max_new_tokens=MAX_NEW
    )
    v = exported.verification
    assert v is not None and {c.runtime for c in v.checks} == {"transformers", "llama.cpp"}
    assert v.passed and v.strict, v  # f32: llama.cpp enforced, exact
    assert v.llama_cpp_agreement == 1.0 and v.llama_cpp_token_agreement == 1.0
    assert any("tokenises 5/5" in n for n in v.notes), v.notes
    assert len({tuple(c.got_ids) for c in v.checks}) > 1, v.checks  # varied answers: the comparison proves something
    print(f"\n[gguf] {family} f32: {_figures(v)}")

    f16 = tuner.export(tmp_path / "f16", format="gguf", dtype="f16", golden_prompts=PROMPTS, max_new_tokens=MAX_NEW)
    v16 = f16.verification
    assert v16 is not None and v16.passed  # transformers on the file: exact against the f16-rounded weights
    print(f"[gguf] {family} f16: {_figures(v16)}")
    assert v16.llama_cpp_token_agreement is not None and v16.llama_cpp_token_agreement >= 0.8


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def quant_tuner(request, tmp_path_factory, task_texts):
    # Trained for 60 steps: a model whose answers come from what it learned, not from the near-ties of random
    # weights (where any rounding flips tokens), is what the agreement figures are about.
    return request.param, _tuner(request.param, tmp_path_factory, task_texts, init=0.1, steps=60)


@pytest.mark.parametrize("dtype", ["q4_k_m", "q5_k_m", "q6_k"])
def test_k_quants_made_by_llama_cpp_and_their_agreement(quant_tuner, dtype, tmp_path):
    import gguf

    family, tuner = quant_tuner
    exported = tuner.export(
        tmp_path / dtype, format="gguf", dtype=dtype, golden_prompts=PROMPTS, max_new_tokens=MAX_NEW
    )
    v = exported.verification
    assert exported.gguf_file is not None and exported.gguf_file.name.endswith(f"-{dtype}.gguf")
    # The file holds real k-quant blocks (rows of 256 values), chosen by llama.cpp's quantizer.
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(exported.gguf_file)).tensors}
    k_types = {"q4_k_m": {"Q4_K", "Q5_K", "Q6_K"}, "q5_k_m": {"Q5_K", "Q6_K"}, "q6_k": {"Q6_K"}}[dtype]
    assert types["blk.0.attn_q.weight"] in k_types and types["blk.0.ffn_down.weight"] in k_types, types
    assert types["blk.0.attn_norm.weight"] == "F32"
    # transformers on the file reproduces exactly the weights read back from it; llama.cpp's figures are reported.
    assert v is not None and v.passed and not v.strict, v
    assert all(c.match for c in v.checks if c.runtime == "transformers")
    assert v.llama_cpp_agreement is not None and v.llama_cpp_token_agreement is not None
    assert any(f"llama.cpp ({dtype}) against the trained model" in n for n in v.notes), v.notes
    print(f"\n[gguf] {family} {dtype}: {_figures(v)}")
    assert v.llama_cpp_token_agreement >= K_QUANT_TOKEN_FLOOR[dtype], _figures(v)
    assert "against the trained model" in (exported.path / "README.md").read_text(encoding="utf-8")
    # Re-checked on disk: the reference is read back from the k-quant file again.
    again = tk.verify_export(exported.path, tuner, golden_prompts=PROMPTS, max_new_tokens=MAX_NEW)
    assert again.passed and again.llama_cpp_agreement == v.llama_cpp_agreement
