"""Model and tokenizer loading, device and precision choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunekit.errors import ConfigError, IncompatibleError

__all__ = ["load_model", "load_tokenizer", "resolve_device", "resolve_precision"]


def resolve_device(pref: str) -> Any:
    import torch

    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IncompatibleError(f"Training(device={pref!r}): no CUDA device is available; use device='auto' or 'cpu'")
    return dev


def resolve_precision(pref: str, device: Any) -> str:
    import torch

    if pref != "auto":
        if pref == "fp16" and device.type != "cuda":
            raise IncompatibleError("Training(precision='fp16') needs a CUDA device; use 'fp32' on CPU")
        return pref
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _check_ref(ref: str, markers: tuple[str, ...] = ("config.json",), what: str = "model") -> None:
    p = Path(ref)
    looks_local = p.is_absolute() or ref.startswith((".", "~")) or p.exists() or ref.count("/") > 1
    if looks_local and not p.exists():
        raise ConfigError(f"model path does not exist: {ref!r}; pass a local model directory or a hub id")
    if p.exists() and not any((p / m).exists() for m in markers):
        raise ConfigError(f"{ref!r} is not a {what} directory (none of {list(markers)} in it)")


def load_tokenizer(ref: str, *, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    _check_ref(ref, ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"), "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load the tokenizer of {ref!r}: {e}") from e


def load_model(
    ref: str,
    *,
    dtype: Any,
    trust_remote_code: bool,
    auto_class: Any = None,
    allow_pickle: bool = False,
    **model_kwargs: Any,
) -> Any:
    """Load ``ref`` with ``auto_class`` (default AutoModelForCausalLM); ``model_kwargs`` go to from_pretrained
    (e.g. ``num_labels=1`` for a reward model's score head). Safetensors only, unless ``allow_pickle``."""
    from transformers import AutoModelForCausalLM

    from tunekit.backends.hf.safe_loading import check_weights

    _check_ref(ref)
    check_weights(ref, allow_pickle=allow_pickle)
    cls = auto_class or AutoModelForCausalLM
    try:
        return cls.from_pretrained(
            ref,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **model_kwargs,
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise IncompatibleError(
                f"{ref!r} needs its own Python code to load; if you trust it, pass Training(trust_remote_code=True)"
            ) from e
        raise ConfigError(f"could not load model {ref!r}: {e}") from e
    except OSError as e:
        raise ConfigError(
            f"could not load model {ref!r}: {e}. tunekit loads safetensors weights only; "
            "convert .bin checkpoints with transformers' save_pretrained(safe_serialization=True)"
        ) from e


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def head_kwargs(objective: Any) -> dict[str, Any]:
    """``load_model`` options for the objective's model head (a score head for reward models)."""
    if getattr(objective, "model_head", "causal_lm") != "sequence_classification":
        return {}
    from transformers import AutoModelForSequenceClassification

    # One label: the scalar reward. A causal LM checkpoint gets a new, randomly initialised score head.
    return {"auto_class": AutoModelForSequenceClassification, "num_labels": 1}


def check_head(model: Any, objective: Any) -> None:
    """A model object given to a Tuner must have the head its objective trains."""
    wants_score = getattr(objective, "model_head", "causal_lm") == "sequence_classification"
    has_score = type(model).__name__.endswith("ForSequenceClassification")
    if wants_score and (not has_score or getattr(model.config, "num_labels", None) != 1):
        raise IncompatibleError(
            f"{objective.name} needs a sequence-classification model with one label (a scalar score), got "
            f"{type(model).__name__} with num_labels={getattr(model.config, 'num_labels', None)}; pass a path, or "
            "AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)"
        )
    if has_score and not wants_score:
        raise IncompatibleError(
            f"{type(model).__name__} is a sequence classifier (a reward model); it trains with "
            f"tk.RewardModeling(), not {objective.name}"
        )
