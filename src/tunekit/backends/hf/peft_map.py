"""One dispatch table: a tunekit Method to a peft config (or to plain full training)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.errors import ConfigError
from tunekit.methods import Full, LoRA, Method

__all__ = ["TRANSLATIONS", "apply_method", "count_parameters"]


def _embedding_names(model: Any) -> tuple[str | None, str | None]:
    """Names of the input and output embedding modules (None when absent)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    return names.get(id(inp)), names.get(id(out)) if out is not None else None


def _trainable_tokens(model: Any, new_token_ids: list[int]) -> dict[str, list[int]] | None:
    """Rows of the embeddings to train for tokens tunekit added (template markers)."""
    if not new_token_ids:
        return None
    inp, out = _embedding_names(model)
    result = {}
    if inp:
        result[inp.split(".")[-1]] = list(new_token_ids)
    tied = getattr(model.config, "tie_word_embeddings", False)
    if out and not tied:
        result[out.split(".")[-1]] = list(new_token_ids)
    return result or None


def _check_targets(model: Any, targets: list[str]) -> None:
    import torch

    linear_names = sorted(
        {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "." in n}
    )
    missing = [t for t in targets if not any(n.split(".")[-1] == t for n, _ in model.named_modules())]
    if missing:
        raise ConfigError(
            f"LoRA(target_modules={targets!r}): no module named {missing} in this model; "
            f"its linear modules are {linear_names}"
        )


def _lora(method: LoRA, model: Any, new_token_ids: list[int]) -> Any:
    from peft import LoraConfig, TaskType

    targets: str | list[str] = method.target_modules
    if isinstance(targets, list):
        _check_targets(model, targets)
    init: Any = True if method.init == "default" else method.init  # peft: True, "gaussian" or "pissa"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method.r,
        lora_alpha=method.alpha or 2 * method.r,
        lora_dropout=method.dropout,
        target_modules=targets,
        use_dora=method.dora,
        use_rslora=method.rslora,
        init_lora_weights=init,
        trainable_token_indices=_trainable_tokens(model, new_token_ids),
    )


def _full(method: Full, model: Any, new_token_ids: list[int]) -> None:
    return None


# Method class -> builder of its peft config (None: train the model's own weights).
TRANSLATIONS: dict[type[Method], Callable[[Any, Any, list[int]], Any]] = {
    LoRA: _lora,
    Full: _full,
}


def apply_method(model: Any, method: Method, new_token_ids: list[int]) -> Any:
    """Wrap ``model`` for ``method``: a peft model, or the model itself with every weight trainable."""
    try:
        build = TRANSLATIONS[type(method)]
    except KeyError:
        raise ConfigError(f"method {method.name} has no translation in the hf backend") from None
    peft_config = build(method, model, new_token_ids)
    if peft_config is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, counting shared tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
