"""k-quant GGUF types (``q4_k_m``, ``q5_k_m``, ``q6_k``) made by llama.cpp's own quantizer, and reading a written
file's weights back to the trained model's layout (the exact reference a k-quant export is checked against).

Why llama.cpp's quantizer and not the ``gguf`` package's: the package quantizes only the simple block types
(Q8_0, Q4_0, ...); the k-quant *mixes* (``_M``: some tensors, such as the output matrix and part of the value and
FFN-down projections, one or two steps more precise) are chosen by ``llama_model_quantize`` in llama.cpp itself,
which llama-cpp-python binds. tunekit writes an f32 GGUF and hands it to that function.

llama.cpp quantizes a tensor to a k-quant only when its rows are a multiple of 256 values (the k-quant super-block);
any other tensor falls back to a compatible simpler type (Q5_0 / Q5_1 / Q8_0 and so on, per tensor), and 1-D tensors
(norms, biases) stay f32. Every model of a real size has such rows; tiny test models need a hidden size of 256 (and
FFN widths that are multiples of 256) to take the k-quant path.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

from tunekit.errors import ExportError, MissingDependencyError
from tunekit.export.gguf_families import FAMILIES, unpermute

__all__ = ["K_QUANTS", "has_quantizer", "load_written_weights", "quantize", "require_quantizer"]

# tunekit's dtype name -> llama.cpp's llama_ftype constant (as llama-cpp-python names it)
K_QUANTS = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}


def has_quantizer() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def require_quantizer(dtype: str) -> None:
    if not has_quantizer():
        raise MissingDependencyError(
            f'export(format="gguf", dtype={dtype!r}): k-quants are made by llama.cpp\'s quantizer, which needs '
            'llama-cpp-python: pip install "tunekit[gguf-quant]" (it builds from source: several minutes; on CPU-only '
            'machines set CMAKE_ARGS="-DGGML_NATIVE=OFF" for a portable build), or export dtype="q8_0" or "f16"'
        )


def quantize(source: Path, out: Path, dtype: str) -> None:
    """Quantize the f32/f16 GGUF ``source`` to ``dtype`` (a key of K_QUANTS) at ``out`` with llama.cpp."""
    require_quantizer(dtype)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[dtype])
    params.nthread = max(1, min(8, os.cpu_count() or 1))
    # llama.cpp logs every tensor through llama-cpp-python's callback, which prints to sys.stderr: tunekit never
    # prints, so the log is kept and shown only when quantizing fails.
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise ExportError(
            f"llama.cpp could not quantize the GGUF to {dtype} (llama_model_quantize returned {rc}): "
            f"{log.getvalue()[-800:]}; export dtype='f16' and quantize it with llama.cpp's llama-quantize"
        )


def load_written_weights(model: Any, file: Path) -> None:
    """Copy the 2-D weights stored in the GGUF ``file`` (dequantized to f32) into ``model`` in place, undoing the
    converter's changes (Llama's q/k permutation). Norms and other 1-D tensors are stored in f32 and left as they
    are. The result computes what the file holds, in fp32: what the file must reproduce when reloaded."""
    import gguf
    import torch

    config = model.config
    family = str(config.model_type)
    reader = gguf.GGUFReader(str(file))
    stored = {t.name: t for t in reader.tensors}
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, FAMILIES[family]), int(config.num_hidden_layers))
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None and name == "lm_head.weight" and tied:
                new = "token_embd.weight"
            tensor = stored.get(new or "")
            if tensor is None:
                raise ExportError(f"{file.name}: no tensor {new!r} for the weight {name!r}; export again")
            arr = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(p.shape)
            if family in ("llama", "mistral") and name.endswith("q_proj.weight"):
                arr = unpermute(arr, n_head)
            elif family in ("llama", "mistral") and name.endswith("k_proj.weight"):
                arr = unpermute(arr, n_kv)
            p.copy_(torch.from_numpy(arr.astype("float32")).to(p.device))
