"""Model facts both the engine and export need: dtypes, parameter counts, what sits under a peft wrapper.

torch and peft are imported inside the functions, so ``import tunekit`` stays light.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "DTYPE_NAMES",
    "GGUF_NAMES",
    "count_parameters",
    "dtype_name",
    "is_quantized",
    "parameter_count",
    "torch_dtype",
    "unique_parameters",
    "unwrap_peft",
]

# tunekit's names of float precisions (``Training.precision``, export dtypes), and GGUF's names of the same.
DTYPE_NAMES = ("fp32", "bf16", "fp16")
GGUF_NAMES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_ALIASES = {gguf: name for name, gguf in GGUF_NAMES.items()}


def torch_dtype(name: str) -> Any:
    """The torch dtype of ``"fp32"``, ``"bf16"`` or ``"fp16"`` (GGUF's ``"f32"`` and ``"f16"`` as well)."""
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    key = _ALIASES.get(name, name)
    if key not in table:
        raise ValueError(f"unknown precision {name!r}; expected one of {list(DTYPE_NAMES)}")
    return table[key]


def dtype_name(dtype: Any) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for a torch dtype (``"fp32"`` for any other, e.g. a quantized storage)."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def unique_parameters(model: Any) -> list[Any]:
    """The model's parameters, each tensor once (tied embeddings share one)."""
    seen: dict[int, Any] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def parameter_count(p: Any) -> int:
    """The values ``p`` holds: a bitsandbytes 4-bit weight's own count, not that of the bytes it is packed into."""
    state = getattr(p, "quant_state", None) if type(p).__name__ == "Params4bit" else None
    if state is not None:  # quantized: two values a byte, the weight's shape kept in its quantization state
        return int(math.prod(state.shape))
    return int(p.numel())


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, counting shared tensors (tied embeddings) once and a 4-bit weight's values
    (not its packed bytes)."""
    params = unique_parameters(model)
    return sum(parameter_count(p) for p in params if p.requires_grad), sum(parameter_count(p) for p in params)


def unwrap_peft(model: Any) -> Any:
    """The transformers model under a peft wrapper (``model`` itself when it is not wrapped)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def is_quantized(model: Any) -> bool:
    """Whether ``model`` (or the base under a peft model) holds bitsandbytes-quantized weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
