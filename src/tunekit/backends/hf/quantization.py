"""QLoRA: a frozen base loaded in 4-bit NF4 or 8-bit by bitsandbytes, with LoRA adapters in full precision.

Everything that can fail does so in :func:`check_before_load`, before a single weight is read. A plan builds the
quantized model's skeleton on the meta device (:func:`quantize_skeleton`, transformers' own layer replacement, nothing
quantized) and counts the bytes bitsandbytes would store for each weight (:func:`parameter_bytes`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunekit._torch import is_quantized
from tunekit.errors import ConfigError, IncompatibleError, MissingDependencyError
from tunekit.methods import Method
from tunekit.training import Training

__all__ = [
    "check_before_load",
    "load_quantized",
    "parameter_bytes",
    "prepare_for_kbit_training",
    "quantize_skeleton",
]

# bitsandbytes' storage of a quantized weight, as its meta ("fake") kernels give the shapes (bitsandbytes/_ops.py:
# quantize_4bit, quantize_blockwise, int8_vectorwise_quant) and functional.quantize_4bit assembles the state.
_NF4_CODE = 16  # the 4-bit code book: 16 fp32 values, one tensor a weight (functional.get_4bit_type)
_NESTED_BLOCK = 256  # double quantization: the absmax values are quantized to 8 bits in blocks of 256
_DYNAMIC_CODE = 256  # ... with the 8-bit dynamic code book (256 fp32 values), copied into each weight's state


def check_before_load(method: Method, model_ref: Any, device: Any, *, planning: bool = False) -> None:
    """Raise now, before any weight loads, if ``method`` cannot run here (QLoRA without CUDA or bitsandbytes).
    ``planning``: the check of ``tuner.plan()``, which can plan for a CUDA device this machine does not have."""
    q = method.quantization
    if q is None:
        return
    call = f"{method.name}(quantize={q!r})"
    if device.type != "cuda":
        plan = (
            "; to plan the run for a GPU from this machine, pass Training(device='cuda') (tuner.plan(data, "
            "device_memory_gib=24) compares it with a 24 GiB card)"
            if planning
            else ""
        )
        raise IncompatibleError(
            f"{call} needs a CUDA GPU: bitsandbytes' {'4-bit NF4' if q == 'nf4' else '8-bit'} weights train on CUDA "
            f"only, and this run's device is {str(device)!r}. On this machine use {method.name}() without quantize "
            f"(a full-precision base), or run on a GPU machine with Training(device='auto'){plan}"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError(f"{call} needs bitsandbytes, which is not installed: pip install bitsandbytes")
    if not isinstance(model_ref, (str, Path)) and not is_quantized(model_ref):
        raise IncompatibleError(
            f"{call} was given a model object that is not quantized; pass the model's hub id or directory so "
            "tunekit can load it quantized, or load it yourself with a BitsAndBytesConfig"
        )


def _skip_modules(auto_class: Any) -> list[str] | None:
    """Modules a quantized load keeps in the compute dtype besides transformers' own choice (the LM head)."""
    from transformers import AutoModelForCausalLM

    # A score head is new and trains whole (peft's modules_to_save): it must not be quantized.
    return ["score", "classifier"] if auto_class not in (None, AutoModelForCausalLM) else None


def bnb_config(quantize: str, compute_dtype: Any, skip: list[str] | None = None) -> Any:
    """The BitsAndBytesConfig of QLoRA's paper: NF4 with double quantization, or LLM.int8(). ``skip``: modules
    kept in the compute dtype (a reward model's new score head, which must train)."""
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_quantized(
    ref: str,
    method: Method,
    *,
    compute_dtype: Any,
    device: Any,
    trust_remote_code: bool,
    auto_class: Any = None,
    **model_kwargs: Any,
) -> Any:
    """Load the base model quantized onto ``device`` (a CUDA device; the CPU in tests), safetensors only, with
    ``auto_class`` (default AutoModelForCausalLM; a reward model's AutoModelForSequenceClassification with
    ``num_labels=1``)."""
    from transformers import AutoModelForCausalLM

    q = method.quantization
    if q is None:
        raise ConfigError(f"{method.name} does not quantize its base model")
    cls = auto_class or AutoModelForCausalLM
    # On CUDA (the only device QLoRA trains on: check_before_load) the device's index; bitsandbytes also quantizes on
    # the CPU, where the tests compare a plan's byte count with a real quantized model.
    where = (device.index if device.index is not None else 0) if device.type == "cuda" else device.type
    try:
        return cls.from_pretrained(
            ref,
            quantization_config=bnb_config(q, compute_dtype, _skip_modules(cls)),
            dtype=compute_dtype,
            device_map={"": where},
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **model_kwargs,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load model {ref!r} quantized ({q}): {e}") from e


def prepare_for_kbit_training(model: Any, training: Training | None) -> None:
    """peft's preparation of a quantized base: frozen, every weight it did not quantize (embeddings, LM head, norms,
    biases) upcast to fp32, inputs that carry gradients."""
    from peft import prepare_model_for_kbit_training

    checkpointing = bool(training and training.gradient_checkpointing is True)
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)


def quantize_skeleton(model: Any, method: Method, *, compute_dtype: Any, auto_class: Any = None) -> None:
    """Make ``model`` (built on the meta device) the skeleton of the model :func:`load_quantized` loads: its linear
    layers replaced by bitsandbytes' 4-bit or 8-bit layers, as ``from_pretrained(quantization_config=...)`` replaces
    them, and marked quantized, with nothing quantized. What ``plan`` counts; see :func:`parameter_bytes`.

    The replacement is transformers' own (its bitsandbytes quantizer's ``preprocess_model``, what ``from_pretrained``
    runs on its meta-device skeleton before the weights load), so the layers that stay unquantized (the LM head, a
    reward model's score head, the embeddings and norms, which are not linear layers) are those a real load keeps.
    """
    from transformers.quantizers import AutoHfQuantizer

    q = method.quantization
    if q is None:
        raise ConfigError(f"{method.name} does not quantize its base model")
    quantizer = AutoHfQuantizer.from_config(
        bnb_config(q, compute_dtype, _skip_modules(auto_class)), pre_quantized=False
    )
    quantizer.preprocess_model(model, device_map=None)
    quantizer.postprocess_model(model)  # marks it loaded in 4 / 8 bits, as peft and is_quantized() read it


def parameter_bytes(p: Any) -> int:
    """The bytes ``p`` takes on its device, a bitsandbytes-quantized weight as bitsandbytes stores it.

    A 4-bit weight of n values: n / 2 bytes (two values a byte, in its ``quant_storage`` dtype), an fp32 scale
    (absmax) per block of ``blocksize`` (64) values and the 16-value fp32 code book; under double quantization
    (tunekit's NF4) the scales are themselves quantized to one byte each, in blocks of 256 with one fp32 scale a
    block, plus their mean (fp32) and the 256-value fp32 code book. An 8-bit weight: one byte a value and an fp32
    scale a row (LLM.int8()'s vectorwise quantization). On the meta device (a plan) these come from the weight's
    shape and its layer's settings; once quantized, from the tensors bitsandbytes made. Any other parameter:
    its values times their size.
    """
    kind = type(p).__name__
    if kind == "Params4bit":
        state = getattr(p, "quant_state", None)
        if state is not None:  # quantized: the packed values and the state's tensors
            tensors = [state.absmax, state.code]
            if getattr(state, "nested", False):
                tensors += [state.offset, state.state2.absmax, state.state2.code]
            return p.numel() * p.element_size() + sum(t.numel() * t.element_size() for t in tensors)
        n, size = p.numel(), p.quant_storage.itemsize
        blocks = -(n // -int(p.blocksize))
        packed = (n + 1) // (2 * size) * size
        if not p.compress_statistics:
            return packed + 4 * blocks + 4 * _NF4_CODE
        return packed + blocks + 4 * -(blocks // -_NESTED_BLOCK) + 4 + 4 * _DYNAMIC_CODE + 4 * _NF4_CODE
    if kind == "Int8Params":
        scb = getattr(p, "SCB", None)
        if scb is not None:  # quantized: the int8 values (CB is the same tensor) and the row scales
            return p.numel() * p.element_size() + scb.numel() * scb.element_size()
        return p.numel() + 4 * (p.numel() // p.shape[-1] if p.dim() else 1)
    return int(p.numel() * p.element_size())
