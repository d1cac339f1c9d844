"""Load a GGUF export back: with transformers (always; needs ``gguf``) and with llama.cpp (when
llama-cpp-python is installed), and decode the golden prompts greedily from the same token ids."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunekit._quiet import quiet
from tunekit.errors import ExportError
from tunekit.export.gguf_families import GEMMA_27B_LAYERS
from tunekit.export.verify import Golden

__all__ = ["gguf_metadata", "has_llama_cpp", "llama_cpp_greedy", "reload_gguf_transformers"]


def has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_metadata(file: Path) -> dict[str, Any]:
    """The tokenizer entries of a GGUF file tunekit checks: eos/eot/bos ids, add_bos and the chat template."""
    from gguf import GGUFReader

    reader = GGUFReader(str(file))
    out: dict[str, Any] = {}
    for key in (
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
        "tokenizer.ggml.pre",
        "general.architecture",
    ):
        field = reader.get_field(key)
        if field is not None:
            out[key] = field.contents()
    return out


def _field(file: Path, key: str) -> Any:
    from gguf import GGUFReader

    field = GGUFReader(str(file)).get_field(key)
    return field.contents() if field is not None else None


def reload_gguf_transformers(file: Path, *, device: Any) -> Any:
    """The GGUF file's weights loaded by transformers, dequantized to fp32."""
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM

    # transformers' GGUF loader draws a tqdm bar that ignores its own disable_progress_bar(); tunekit never prints.
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda it, *a, **k: it
    # transformers' GGUF loader ignores attention.key_length for some families (Qwen3), falling back to the family's
    # usual head size, and has no query_pre_attn_scalar for Gemma (none is stored: llama.cpp derives the query scale
    # from the head size); the reload is given what llama.cpp computes with.
    arch = str(gguf_metadata(file).get("general.architecture", ""))
    key_length = _field(file, f"{arch}.attention.key_length")
    overrides: dict[str, Any] = {"head_dim": int(key_length)} if key_length is not None else {}
    if arch in ("gemma2", "gemma3") and key_length is not None:
        n_layer = int(_field(file, f"{arch}.block_count"))
        per_head = int(_field(file, f"{arch}.embedding_length")) // int(_field(file, f"{arch}.attention.head_count"))
        overrides["query_pre_attn_scalar"] = per_head if n_layer == GEMMA_27B_LAYERS[arch] else key_length
    with quiet():
        try:
            model = AutoModelForCausalLM.from_pretrained(
                file.parent, gguf_file=file.name, dtype=torch.float32, **overrides
            )
        except (OSError, ValueError, KeyError) as e:
            raise ExportError(f"{file}: transformers cannot load the GGUF file: {e}") from e
        finally:
            gguf_utils.tqdm = bar
    model.to(device)
    model.eval()
    return model


def llama_cpp_greedy(
    file: Path, golden: list[Golden], *, eos_ids: list[int], max_new_tokens: int, texts: list[str] | None = None
) -> tuple[list[list[int]], list[bool]]:
    """Greedy tokens from llama.cpp for each prompt's token ids, and whether llama.cpp tokenises each
    prompt's text (``texts``) to the same ids as transformers."""
    from llama_cpp import Llama

    n_ctx = max(len(g.ids) for g in golden) + max_new_tokens + 8
    with quiet():
        llm = Llama(model_path=str(file), n_ctx=max(64, n_ctx), n_threads=1, n_batch=max(64, n_ctx), verbose=False)
    try:
        outs: list[list[int]] = []
        for g in golden:
            out: list[int] = []
            for tok in llm.generate(g.ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
                out.append(int(tok))
                if int(tok) in eos_ids or len(out) >= max_new_tokens:
                    break
            outs.append(out)
        same_tokens = [
            llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) == g.ids for t, g in zip(texts or [], golden)
        ]
    finally:
        llm.close() if hasattr(llm, "close") else None
    return outs, same_tokens
