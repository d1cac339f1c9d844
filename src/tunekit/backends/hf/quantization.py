"""QLoRA: a frozen base loaded in 4-bit NF4 or 8-bit by bitsandbytes, with LoRA adapters in full precision.

Everything that can fail does so in :func:`check_before_load`, before a single weight is read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunekit._torch import is_quantized
from tunekit.errors import ConfigError, IncompatibleError, MissingDependencyError
from tunekit.methods import Method
from tunekit.training import Training

__all__ = ["check_before_load", "load_quantized", "prepare_for_kbit_training"]


def check_before_load(method: Method, model_ref: Any, device: Any) -> None:
    """Raise now, before any weight loads, if ``method`` cannot run here (QLoRA without CUDA or bitsandbytes)."""
    q = method.quantization
    if q is None:
        return
    call = f"{method.name}(quantize={q!r})"
    if device.type != "cuda":
        raise IncompatibleError(
            f"{call} needs a CUDA GPU: bitsandbytes' {'4-bit NF4' if q == 'nf4' else '8-bit'} weights train on CUDA "
            f"only, and this run's device is {str(device)!r}. On this machine use {method.name}() without quantize "
            "(a full-precision base), or run on a GPU machine with Training(device='auto')"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError(f"{call} needs bitsandbytes, which is not installed: pip install bitsandbytes")
    if not isinstance(model_ref, (str, Path)) and not is_quantized(model_ref):
        raise IncompatibleError(
            f"{call} was given a model object that is not quantized; pass the model's hub id or directory so "
            "tunekit can load it quantized, or load it yourself with a BitsAndBytesConfig"
        )


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
    """Load the base model quantized onto ``device`` (a CUDA device), safetensors only, with ``auto_class``
    (default AutoModelForCausalLM; a reward model's AutoModelForSequenceClassification with ``num_labels=1``)."""
    from transformers import AutoModelForCausalLM

    q = method.quantization
    if q is None:
        raise ConfigError(f"{method.name} does not quantize its base model")
    cls = auto_class or AutoModelForCausalLM
    # A score head is new and trains whole (peft's modules_to_save): it must not be quantized.
    skip = ["score", "classifier"] if cls is not AutoModelForCausalLM else None
    index = device.index if device.index is not None else 0
    try:
        return cls.from_pretrained(
            ref,
            quantization_config=bnb_config(q, compute_dtype, skip),
            dtype=compute_dtype,
            device_map={"": index},
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **model_kwargs,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load model {ref!r} quantized ({q}): {e}") from e


def prepare_for_kbit_training(model: Any, training: Training | None) -> None:
    """peft's preparation of a quantized base: frozen, norms in fp32, inputs that carry gradients."""
    from peft import prepare_model_for_kbit_training

    checkpointing = bool(training and training.gradient_checkpointing is True)
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
