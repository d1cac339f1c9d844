"""GGUF for llama.cpp and Ollama: Llama, Mistral, Qwen2, Qwen3, Gemma 2 / 3 and Phi-3 / Phi-4 models, tokenizer and
chat template embedded; k-quants through llama.cpp's own quantizer (gguf_quant.py).

Why tunekit writes GGUF itself: llama.cpp's ``convert_hf_to_gguf.py`` is the well-kept converter,
but it is a script in the llama.cpp repository, not an installable module (the llama-cpp-python
sdist vendors it, its wheel does not, and the ``gguf`` package on PyPI ships only the file format
and its tools). So this module writes the file with that package (``GGUFWriter``, its tensor-name
map and quantizers), following the converter's rules for the families it supports here (each family's
own rules are in gguf_families.py): norms and 1-D tensors in f32, the tokenizer as a ``gpt2``
byte-level BPE vocabulary with its merges, token types and special ids, and the chat template. Any
other architecture or tokenizer raises IncompatibleError naming the converter to use on an ``hf``
export instead.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunekit.errors import IncompatibleError, MissingDependencyError
from tunekit.export.gguf_families import FAMILIES, family_metadata, gguf_arch, rope_params, transform
from tunekit.export.gguf_quant import K_QUANTS, load_written_weights, quantize, require_quantizer

__all__ = ["GGUF_TYPES", "K_QUANTS", "gguf_arch", "require_gguf", "round_like_gguf", "write_gguf"]

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", *K_QUANTS)

# Pre-tokenizer regexes llama.cpp implements, by the name it knows them by (``tokenizer.ggml.pre``).
_LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            'format="gguf" needs the gguf package, which is not installed: pip install "tunekit[gguf]" (or pip install '
            "gguf); add llama-cpp-python to also check the file in llama.cpp"
        )


def _gguf_type(name: str, n_dims: int, ftype: str) -> Any:
    """The stored type of one tensor: norms and 1-D tensors f32 (as llama.cpp's converter does), the rest ``ftype``."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if n_dims <= 1 or name.endswith("_norm.weight") or ftype == "f32":
        return Q.F32
    return {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[ftype]


def _store(data: Any, qtype: Any) -> tuple[Any, Any]:
    """``(array to write, type)``; a tensor that cannot take Q8_0 (rows not a multiple of 32) falls back to F16."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return data.astype(np.float32), qtype
    if qtype == Q.F16:
        return data.astype(np.float16), qtype
    try:
        return gguf.quants.quantize(data.astype(np.float32), qtype), qtype
    except gguf.QuantError:
        return data.astype(np.float16), Q.F16


def _tensors(model: Any, arch: str) -> Iterator[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for every weight, renamed and changed as llama.cpp's converter does."""
    import gguf

    config = model.config
    n_layers = int(config.num_hidden_layers)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, FAMILIES[arch]), n_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise IncompatibleError(f'format="gguf": no GGUF name for the tensor {name!r} of this {arch} model')
        yield new, transform(arch, name, tensor.detach().float().cpu(), config).numpy()


def round_like_gguf(model: Any, ftype: str, written: Path | None = None) -> None:
    """Round ``model``'s weights in place exactly as :func:`write_gguf` stores them (kept in fp32).

    The verification's reference for a lower-precision GGUF: the reloaded file must match it exactly. A k-quant
    is chosen per tensor by llama.cpp's quantizer, so its reference is read back from the ``written`` file.
    """
    import gguf
    import torch

    if ftype == "f32":
        return
    arch = gguf_arch(model.config)
    if ftype in K_QUANTS:
        if written is None:
            raise ValueError(f"round_like_gguf({ftype!r}) needs the written file")
        load_written_weights(model, written)
        return
    # Row permutation (Llama's q/k) does not change rounding: Q8_0 blocks run along rows, the rest is elementwise.
    # Gemma's +1 on norms needs no rounding either: norms are stored in f32.
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, FAMILIES[arch]), int(model.config.num_hidden_layers))
    with torch.no_grad():
        for name, p in model.named_parameters():
            new = names.get_name(name, try_suffixes=(".weight", ".bias")) or name
            qtype = _gguf_type(new, p.dim(), ftype)
            if qtype == gguf.GGMLQuantizationType.F32:
                continue
            arr = p.detach().float().cpu().numpy()
            data, used = _store(arr, qtype)
            back = gguf.quants.dequantize(data, used) if used != gguf.GGMLQuantizationType.F16 else data
            p.copy_(torch.from_numpy(back.astype("float32").reshape(arr.shape)).to(p.device))


def _pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``), from tokenizer.json."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise IncompatibleError(
            'format="gguf": tunekit embeds byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2 style); this one is '
            f"{model.get('type')!r}{' with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}"
            '; export format="hf" and convert it with llama.cpp\'s convert_hf_to_gguf.py'
        )
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        splits = [p for p in parts if p.get("type") == "Split"]
        bytelevel = [p for p in parts if p.get("type") == "ByteLevel" and not p.get("use_regex", True)]
        if len(splits) == 1 and bytelevel and len(parts) == 2:
            regex = (splits[0].get("pattern") or {}).get("Regex")
            known = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}
            if regex in known:
                return known[regex]
    raise IncompatibleError(
        f'format="gguf": the tokenizer\'s pre-tokenizer {json.dumps(pre)[:200]} is not one tunekit can name for '
        'llama.cpp (GPT-2, Llama 3 and Qwen2 byte-level BPE are); export format="hf" and convert it with '
        "llama.cpp's convert_hf_to_gguf.py"
    )


def _vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[Any]]:
    """Token strings and types for ids 0..vocab_size-1, as llama.cpp's converter lists a GPT-2 style vocabulary."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tok = reverse[i]
            special = added[i].special or (tok.startswith("<|") and tok.endswith("|>"))
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _rope(writer: Any, config: Any, arch: str, head_dim: int) -> Iterator[tuple[str, Any]]:
    """RoPE metadata, and for Llama 3's scaled RoPE the ``rope_freqs`` tensor llama.cpp reads."""
    import numpy as np

    params, _ = rope_params(config)  # Gemma 3's sliding layers: gguf_families.family_metadata
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    kind = (params.get("rope_type") or params.get("type") or "default").lower()
    if kind == "default":
        return
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
        return
    if kind == "llama3" and arch == "llama":
        # Llama 3.1+: per-frequency factors, computed as llama.cpp's converter does.
        factor = params.get("factor", 8.0)
        low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
        old_ctx = params.get("original_max_position_embeddings", 8192)
        factors = []
        for k in range(0, head_dim, 2):
            wavelen = 2 * math.pi / (1.0 / (theta ** (k / head_dim)))
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        yield "rope_freqs.weight", np.asarray(factors, dtype=np.float32)
        return
    raise IncompatibleError(
        f'format="gguf": RoPE scaling {kind!r} is not written by tunekit; export format="hf" and convert it with '
        "llama.cpp's convert_hf_to_gguf.py"
    )


def _model_name(config: Any) -> str:
    """``general.name``: the model directory's name, kept clear of names the runtimes act on. llama.cpp's vocabulary
    loader changes special-token attributes when the name contains "phi-3" / "phi3" (it expects Phi-3's own
    SentencePiece tokens, and fails without ``</s>``; tunekit embeds byte-level BPE tokenizers only), and
    transformers' GGUF loader takes a ``llama`` file named exactly "mistral" for a Mistral it cannot map."""
    name = str(getattr(config, "_name_or_path", "") or "tunekit export").replace("\\", "/").split("/")[-1] or "tunekit"
    name = re.sub(r"(?i)(phi)-?3", r"\1 3", name)
    return name + " (tunekit)" if name.lower() == "mistral" else name


def write_gguf(model: Any, tokenizer: Any, tokenizer_dir: Path, out: Path, *, ftype: str, end_of_turn_id: int) -> None:
    """Write ``model`` (a plain transformers model of a family in gguf_families.FAMILIES) with its tokenizer and
    template to ``out``.

    ``tokenizer_dir`` holds the saved tokenizer (tokenizer.json, tokenizer_config.json, chat template). A k-quant
    ``ftype`` is written as f32 beside ``out`` first, then quantized by llama.cpp.
    """
    require_gguf()
    if ftype not in K_QUANTS:
        _write(model, tokenizer, tokenizer_dir, out, ftype=ftype, end_of_turn_id=end_of_turn_id)
        return
    require_quantizer(ftype)
    with tempfile.TemporaryDirectory(prefix=".tunekit-f32-", dir=out.parent) as tmp:
        source = Path(tmp) / "model-f32.gguf"
        _write(model, tokenizer, tokenizer_dir, source, ftype="f32", end_of_turn_id=end_of_turn_id)
        quantize(source, out, ftype)


def _write(model: Any, tokenizer: Any, tokenizer_dir: Path, out: Path, *, ftype: str, end_of_turn_id: int) -> None:
    import gguf

    config = model.config
    arch = gguf_arch(config)
    tokenizer_json = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    pre = _pre_tokenizer(tokenizer_json)
    n_head = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    vocab_size = int(model.get_input_embeddings().num_embeddings)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[ftype]

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, FAMILIES[arch])])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(_model_name(config))
        writer.add_block_count(int(config.num_hidden_layers))
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(int(config.num_key_value_heads or n_head))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        if arch in ("llama", "qwen2", "phi3") and head_dim != config.hidden_size // n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        if arch in ("llama", "mistral"):  # the converter's LlamaModel, which Mistral is converted as
            writer.add_vocab_size(vocab_size)
            writer.add_rope_dimension_count(head_dim)
        family_metadata(writer, config, arch, head_dim)
        extra = list(_rope(writer, config, arch, head_dim))
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types = _vocab(tokenizer, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
        if not special.merges:
            raise IncompatibleError('format="gguf": the tokenizer has no BPE merges to embed')
        # Whether llama.cpp adds BOS must match what the tokenizer does, or every prompt shifts by a token.
        probe = tokenizer("a")["input_ids"]
        special.add_special_token["bos"] = bool(
            tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
        )
        special.add_special_token.setdefault("eos", False)
        if special.chat_template is None:
            special.chat_template = tokenizer.chat_template
        special.add_to_gguf(writer, quiet=True)
        writer.add_eot_token_id(int(end_of_turn_id))  # the template's end of turn: llama.cpp stops there

        for name, arr in [*_tensors(model, arch), *extra]:
            data, qtype = _store(arr, _gguf_type(name, arr.ndim, ftype))
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
