"""The model families tunekit writes as GGUF, and each one's rules, as llama.cpp's ``convert_hf_to_gguf.py`` has them.

One entry a family: the GGUF architecture llama.cpp runs it as, how the weights change on the way (Llama's rotary
permutation of q/k; Gemma's norms stored with their +1 offset, since ``Gemma*RMSNorm`` computes ``x * (1 + w)`` and
llama.cpp computes ``x * w``), and the metadata llama.cpp reads for it (sliding window, logit softcapping, the second
RoPE base of Gemma 3's local layers, Phi-3's original context and partial rotary dimensions). Settings llama.cpp
cannot express for a family are refused with IncompatibleError rather than written into a file that would answer
differently from the trained model.

Sources (llama.cpp, ``conversion/``): ``llama.py`` (Llama, Mistral: ``MistralForCausalLM`` is converted as
``llama``), ``qwen.py`` (Qwen2, Qwen3: q/k norms map to ``attn_q_norm`` / ``attn_k_norm``), ``gemma.py`` (Gemma 2,
Gemma 3), ``phi.py`` (Phi-3, and Phi-4, which is the Phi-3 architecture); and ``src/models/<arch>.cpp`` for what
the runtime reads.
"""

from __future__ import annotations

from typing import Any

from tunekit.errors import IncompatibleError

__all__ = [
    "FAMILIES",
    "GEMMA_27B_LAYERS",
    "attention_scale_ok",
    "family_metadata",
    "gguf_arch",
    "layer_is_swa",
    "permute",
    "rope_params",
    "transform",
    "unpermute",
]

# transformers model_type -> the gguf package's MODEL_ARCH member llama.cpp runs it as
FAMILIES = {
    "llama": "LLAMA",
    "mistral": "LLAMA",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "gemma2": "GEMMA2",
    "gemma3_text": "GEMMA3",
    "phi3": "PHI3",
}
_NAMES = "Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text-only Gemma3ForCausalLM) and Phi-3 / Phi-4"
_CONVERTER = 'export format="hf" and convert it with llama.cpp\'s convert_hf_to_gguf.py'
# llama.cpp's default sliding-window layer patterns (load_swa_pattern(ml, n) in src/models/gemma2.cpp, gemma3.cpp)
_SWA_PATTERN = {"gemma2": 2, "gemma3_text": 6}
# by GGUF architecture: the layer count llama.cpp takes for the 27B Gemma, whose queries it scales by
# (hidden / heads) ** -0.5; every other size by head_dim ** -0.5 (src/models/gemma2.cpp, gemma3.cpp)
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _refuse(what: str) -> IncompatibleError:
    return IncompatibleError(f'format="gguf": {what}; {_CONVERTER}')


def gguf_arch(config: Any) -> str:
    """The family (transformers ``model_type``) of a config tunekit can write as GGUF; IncompatibleError otherwise,
    or when the config uses something llama.cpp would compute differently for that family."""
    model_type = getattr(config, "model_type", None)
    if model_type == "gemma3":
        raise _refuse(
            "this is a multimodal Gemma 3 (Gemma3ForConditionalGeneration); tunekit writes the text-only "
            "Gemma3ForCausalLM (model_type gemma3_text) as GGUF"
        )
    if model_type not in FAMILIES:
        raise _refuse(f"tunekit writes GGUF for {_NAMES} architectures, and this model is {model_type!r}")
    family = str(model_type)
    get = getattr
    if family == "qwen3" and get(config, "use_sliding_window", False):
        raise _refuse("this Qwen3 uses sliding-window attention, which llama.cpp's qwen3 graph does not have")
    if family == "gemma2":
        if not get(config, "tie_word_embeddings", True):
            raise _refuse(
                "this Gemma 2 has an output matrix of its own; llama.cpp's gemma2 always reuses the embedding"
            )
        if get(config, "attn_logit_softcapping", None) is None or get(config, "final_logit_softcapping", None) is None:
            raise _refuse("this Gemma 2 turns logit softcapping off; llama.cpp's gemma2 always applies it")
    if family == "gemma3_text" and get(config, "attn_logit_softcapping", None) is not None:
        raise _refuse("this Gemma 3 sets attn_logit_softcapping, which llama.cpp's gemma3 does not apply")
    if family in _SWA_PATTERN and not attention_scale_ok(config, family):
        raise _refuse(
            f"query_pre_attn_scalar={get(config, 'query_pre_attn_scalar', None)} is not the scale llama.cpp's "
            f"{family} uses for {config.num_hidden_layers} layers"
        )
    if family == "phi3":
        params = dict(get(config, "rope_parameters", None) or get(config, "rope_scaling", None) or {})
        if params.get("long_factor") or (params.get("rope_type") or "default") not in ("default",):
            raise _refuse("this Phi-3 uses long-context RoPE scaling (longrope / su / yarn), not written by tunekit")
    return family


def attention_scale_ok(config: Any, family: str) -> bool:
    """Whether HF's query scale ``query_pre_attn_scalar ** -0.5`` is the one llama.cpp's Gemma graph uses."""
    head_dim = int(config.head_dim)
    scalar = getattr(config, "query_pre_attn_scalar", head_dim)
    if int(config.num_hidden_layers) == GEMMA_27B_LAYERS[FAMILIES[family].lower()]:
        return bool(scalar == config.hidden_size // config.num_attention_heads)
    return bool(scalar == head_dim)


def layer_is_swa(config: Any) -> list[bool]:
    """Per layer: does it use sliding-window attention (transformers' ``layer_types``)."""
    types = getattr(config, "layer_types", None) or []
    return [t == "sliding_attention" for t in types]


def transform(family: str, name: str, data: Any, config: Any) -> Any:
    """One weight (float32 torch tensor, HF name) as llama.cpp's converter stores it."""
    if family in ("llama", "mistral"):
        # HF keeps Llama's rotary halves split ("rotate_half"); llama.cpp wants them interleaved.
        n_head = int(config.num_attention_heads)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute(data, n_head)
        if name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute(data, int(config.num_key_value_heads or n_head))
    if family in ("gemma2", "gemma3_text") and name.endswith("norm.weight"):
        return data + 1  # Gemma*RMSNorm computes x * (1 + w); llama.cpp's norm computes x * w
    return data


def permute(w: Any, n_head: int) -> Any:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: Any, n_head: int) -> Any:
    """The inverse of :func:`permute` (for reading a written file back)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_params(config: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the RoPE parameters of the full-attention layers, those of the sliding layers or None)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "full_attention" in params:  # Gemma 3: one set a layer type
        return dict(params["full_attention"]), dict(params.get("sliding_attention") or {}) or None
    return params, None


def family_metadata(writer: Any, config: Any, family: str, head_dim: int) -> None:
    """Write the metadata llama.cpp reads for this family beyond the fields every family has."""
    get = getattr
    if family not in ("llama", "qwen2", "phi3"):  # as the converter does when config.json names head_dim
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if family == "gemma2":
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if family == "gemma3_text" and get(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if family in _SWA_PATTERN:
        swa = layer_is_swa(config)
        window = get(config, "sliding_window", None)
        if window and any(swa):
            writer.add_sliding_window(int(window))
            n = _SWA_PATTERN[family]
            default = [i % n < n - 1 for i in range(len(swa))]
            if swa != default:  # llama.cpp reads an explicit per-layer list before its default pattern
                writer.add_sliding_window_pattern(swa)
        elif family == "gemma2":
            raise _refuse("this Gemma 2 has no sliding-window layers; llama.cpp's gemma2 always has them")
        _, local = rope_params(config)
        if local is not None and local.get("rope_theta") is not None:
            writer.add_rope_freq_base_swa(float(local["rope_theta"]))
    if family == "phi3":
        params, _ = rope_params(config)
        n_embd, n_head = int(config.hidden_size), int(config.num_attention_heads)
        rot = float(params.get("partial_rotary_factor", get(config, "partial_rotary_factor", None) or 1.0))
        original = params.get("original_max_position_embeddings", get(config, "original_max_position_embeddings", None))
        writer.add_rope_scaling_orig_ctx_len(int(original or config.max_position_embeddings))
        writer.add_rope_dimension_count(int(rot * n_embd) // n_head)
        writer.add_sliding_window(int(get(config, "sliding_window", None) or 0))  # 0: how the converter marks none
