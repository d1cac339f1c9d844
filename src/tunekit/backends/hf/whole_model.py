"""The methods that train the model's own weights, with no peft config: ``Full`` (every weight) and ``Freeze`` (the
chosen blocks or modules; the rows of tokens tunekit added train too). :data:`tunekit.backends.hf.peft_map.TRANSLATIONS`
holds their builders beside the peft ones."""

from __future__ import annotations

import fnmatch
from typing import Any

from tunekit.backends.hf.build_context import BuildContext, task_type
from tunekit.backends.hf.vision import is_vision_model, part_of
from tunekit.errors import ConfigError
from tunekit.methods import Freeze, Full

__all__ = ["build_freeze", "build_full"]


def build_full(method: Full, ctx: BuildContext) -> None:
    """``Full``: every weight of the model trains (no peft config)."""
    for p in ctx.model.parameters():
        p.requires_grad_(True)


def build_freeze(method: Freeze, ctx: BuildContext) -> None:
    """``Freeze``: the chosen blocks or modules of the model train, every other weight is frozen (no peft config)."""
    # peft has no "train these blocks of the base model" method (its modules_to_save trains copies
    # beside the originals), and Freeze saves a whole model anyway: requires_grad is all it takes.
    model = ctx.model
    chosen: dict[str, Any] = {}
    if method.last_layers is not None:
        list_name, blocks = _blocks(model)
        if method.last_layers > len(blocks):
            raise ConfigError(
                f"Freeze(last_layers={method.last_layers}): this model has {len(blocks)} blocks ({list_name}); "
                f"use last_layers={len(blocks)} or fewer, or tk.Full() to train every weight"
            )
        first = len(blocks) - method.last_layers
        for i in range(first, len(blocks)):
            chosen[f"{list_name}.{i}"] = blocks[i]
    if method.modules is not None:
        names = dict(model.named_modules())
        for pattern in method.modules:
            hits = {n: m for n, m in names.items() if n and _matches(n, pattern)}
            if not hits:
                tops = sorted({n.split(".")[-1] for n in names if n and not n.split(".")[-1].isdigit()})
                raise ConfigError(
                    f"Freeze(modules={method.modules!r}): no module matches {pattern!r}; this model's modules "
                    f"are named {tops} (use a last name part, a full dotted name or a glob like 'model.layers.*.mlp')"
                )
            chosen.update(hits)
    for p in model.parameters():
        p.requires_grad_(False)
    for module in chosen.values():
        for p in module.parameters():
            p.requires_grad_(True)
    if task_type(model).value == "SEQ_CLS":  # a reward model's fresh score head must train
        head = getattr(model, "score", None) or getattr(model, "classifier", None)
        if head is not None:
            head.requires_grad_(True)
    _train_new_token_rows(model, ctx.new_token_ids)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.split(".")[-1] == pattern or fnmatch.fnmatchcase(name, pattern)


def _blocks(model: Any) -> tuple[str, Any]:
    """The model's list of transformer blocks: the longest ``nn.ModuleList`` of same-typed modules (of the language
    model, in a vision-language model)."""
    import torch

    best: tuple[str, Any] | None = None
    vision = is_vision_model(model)
    for name, m in model.named_modules():
        if vision and part_of(name) != "language_model":
            continue
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise ConfigError(
            "Freeze(last_layers=...): cannot find this model's list of transformer blocks; "
            "name the modules to train instead, e.g. Freeze(modules=['model.layers.*'])"
        )
    return best


def _train_new_token_rows(model: Any, new_token_ids: list[int]) -> None:
    """Let the rows of tokens tunekit added train even when the embeddings are frozen.

    A gradient mask keeps every other row at its value (with the default weight_decay=0; AdamW's
    decoupled decay would still shrink frozen rows slightly when weight_decay > 0).
    """
    if not new_token_ids:
        return
    import torch

    embeddings = (model.get_input_embeddings(), model.get_output_embeddings())
    for emb in {id(e): e for e in embeddings if e is not None}.values():  # tied: one matrix
        weight = emb.weight
        if weight.requires_grad:
            continue  # already trained whole
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[new_token_ids] = 1
        weight.requires_grad_(True)
        weight.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device, grad.dtype))
