"""GGUF for the newer families (Qwen3, Mistral, Gemma 2, Gemma 3, Phi-3): tensor names, the converter's weight changes
and metadata, read back with the ``gguf`` package's reader, and the weights reloaded by transformers equal to the
model's (exact logits). llama.cpp itself runs them in tests/integration/test_export_gguf_families.py (slow)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import tunekit as tk

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

FAMILIES = ["qwen3", "mistral", "gemma2", "gemma3_text", "phi3"]


@pytest.fixture(scope="module", params=FAMILIES)
def written(request, tmp_path_factory):
    """(family, model, GGUFReader, path) for an f32 GGUF of a tiny model of each family."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.export.gguf import write_gguf
    from tunekit.testing import tiny_model

    family = request.param
    path = tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), arch=family, initializer_range=0.2)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = tmp_path_factory.mktemp(f"gguf-{family}") / "model-f32.gguf"
    write_gguf(model, tok, path, out, ftype="f32", end_of_turn_id=tok.convert_tokens_to_ids("<|im_end|>"))
    return family, model, gguf.GGUFReader(str(out)), out


def _meta(reader, key):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _tensor(reader, name):
    t = next(t for t in reader.tensors if t.name == name)
    return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()


def test_architecture_names_and_metadata(written):
    family, model, reader, _ = written
    cfg = model.config
    arch = {"mistral": "llama", "gemma3_text": "gemma3"}.get(family, family)
    assert _meta(reader, "general.architecture") == arch
    names = {t.name for t in reader.tensors}
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if family == "qwen3":
        assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight", "output.weight"} <= names
        assert _meta(reader, "qwen3.attention.key_length") == head_dim
    if family == "mistral":  # converted as llama, like convert_hf_to_gguf.py's LlamaModel
        assert _meta(reader, "llama.rope.dimension_count") == head_dim
        assert _meta(reader, "llama.vocab_size") == cfg.vocab_size
    if family == "gemma2":
        assert {"blk.0.post_attention_norm.weight", "blk.0.ffn_norm.weight", "blk.0.post_ffw_norm.weight"} <= names
        assert "output.weight" not in names  # tied: llama.cpp's gemma2 reuses token_embd
        assert _meta(reader, "gemma2.attn_logit_softcapping") == pytest.approx(50.0)
        assert _meta(reader, "gemma2.final_logit_softcapping") == pytest.approx(30.0)
        assert _meta(reader, "gemma2.attention.sliding_window") == cfg.sliding_window
        assert _meta(reader, "gemma2.attention.key_length") == head_dim
    if family == "gemma3_text":
        assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight", "blk.0.post_ffw_norm.weight"} <= names
        assert _meta(reader, "gemma3.rope.freq_base") == pytest.approx(1_000_000.0)  # global layers
        assert _meta(reader, "gemma3.rope.freq_base_swa") == pytest.approx(10_000.0)  # local (sliding) layers
        assert _meta(reader, "gemma3.attention.sliding_window") == cfg.sliding_window
        assert _meta(reader, "gemma3.final_logit_softcapping") is None  # Gemma 3 has none
    if family == "phi3":
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names and "blk.0.ffn_gate.weight" not in names
        up = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
        assert list(up.shape) == [cfg.hidden_size, 2 * cfg.intermediate_size]  # gate and up, fused as in HF
        assert _meta(reader, "phi3.rope.dimension_count") == head_dim
        assert _meta(reader, "phi3.rope.scaling.original_context_length") == cfg.max_position_embeddings
        assert _meta(reader, "phi3.attention.sliding_window") == 0  # the converter's "none"


def test_weights_changed_as_the_converter_does(written):
    family, model, reader, _ = written
    sd = model.state_dict()
    norm = sd["model.layers.0.input_layernorm.weight"]
    got_norm = _tensor(reader, "blk.0.attn_norm.weight")
    if family.startswith("gemma"):  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by w
        assert torch.equal(got_norm, norm + 1)
    else:
        assert torch.equal(got_norm, norm)
    if family == "mistral":  # q rows interleaved for llama.cpp's rotary layout, as for Llama
        from tunekit.export.gguf_families import permute, unpermute

        q = sd["model.layers.0.self_attn.q_proj.weight"]
        got = _tensor(reader, "blk.0.attn_q.weight").reshape(q.shape)
        assert not torch.equal(got, q) and torch.equal(got, permute(q, model.config.num_attention_heads))
        assert torch.equal(unpermute(got, model.config.num_attention_heads), q)
    if family == "phi3":
        qkv = sd["model.layers.0.self_attn.qkv_proj.weight"]
        assert torch.equal(_tensor(reader, "blk.0.attn_qkv.weight").reshape(qkv.shape), qkv)


def test_transformers_reload_gives_the_same_logits(written):
    from tunekit.export.gguf_check import reload_gguf_transformers

    _, model, _, path = written
    again = reload_gguf_transformers(path, device="cpu")
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def _cfg(**kw):
    base = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16}
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (_cfg(model_type="gpt2"), r"Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3.*convert_hf_to_gguf"),
        (_cfg(model_type="gemma3"), r"multimodal Gemma 3.*gemma3_text"),
        (_cfg(model_type="qwen3", use_sliding_window=True), "sliding-window"),
        (_cfg(model_type="gemma2", tie_word_embeddings=False), "output matrix of its own"),
        (
            _cfg(
                model_type="gemma2", tie_word_embeddings=True, attn_logit_softcapping=None, final_logit_softcapping=30
            ),
            "softcapping",
        ),
        (_cfg(model_type="gemma3_text", query_pre_attn_scalar=256), "query_pre_attn_scalar=256"),
        (_cfg(model_type="phi3", rope_parameters={"rope_type": "longrope", "long_factor": [1.0]}), "longrope"),
    ],
)
def test_what_llama_cpp_would_compute_differently_is_refused(cfg, match):
    from tunekit.export.gguf import gguf_arch

    with pytest.raises(tk.IncompatibleError, match=match):
        gguf_arch(cfg)


def test_k_quants_without_llama_cpp_name_the_extra(monkeypatch):
    from tunekit.export import gguf_quant

    monkeypatch.setattr(gguf_quant, "has_quantizer", lambda: False)
    with pytest.raises(tk.MissingDependencyError, match=r"tunekit\[gguf-quant\]"):
        gguf_quant.require_quantizer("q4_k_m")


def test_token_agreement_counts_positions_over_the_longer_answer():
    from tunekit.export.checks import token_agreement

    assert token_agreement([[1, 2, 3]], [[1, 2, 3]]) == 1.0
    assert token_agreement([[1, 9, 3]], [[1, 2, 3]]) == pytest.approx(2 / 3)
    assert token_agreement([[1, 2]], [[1, 2, 3, 4]]) == pytest.approx(2 / 4)  # stopping early disagrees
    assert token_agreement([[1], [5, 6]], [[2], [5, 6]]) == pytest.approx(2 / 3)


def test_tiny_model_keeps_llama_and_qwen2_as_before(tmp_path: Path):
    """The newer families leave the older ones' configs alone (other tests depend on their exact files)."""
    import json

    from tunekit.testing import tiny_model

    cfg = json.loads((tiny_model(tmp_path / "q", arch="qwen2") / "config.json").read_text(encoding="utf-8"))
    assert cfg["model_type"] == "qwen2" and cfg["hidden_size"] == 64 and "query_pre_attn_scalar" not in cfg
    with pytest.raises(ValueError, match="choose one of"):
        tiny_model(tmp_path / "x", arch="bert")  # type: ignore[arg-type]
