"""One dispatch table: a tunekit Method to a peft config (or to training the model's own weights).

Adding a method: its module under ``tunekit/methods/`` and one entry in :data:`TRANSLATIONS`
(a test over the registry fails until it has one). Everything a method needs beyond its peft
config (a per-step call, gradient checkpointing off, a reload that differs) is driven by the
capabilities the method declares, in the functions at the end of this module.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunekit._torch import is_quantized, unwrap_peft
from tunekit.backends.base import builder_for
from tunekit.backends.hf.build_context import BuildContext, task_type
from tunekit.backends.hf.quantization import prepare_for_kbit_training
from tunekit.backends.hf.vision import is_vision_model, part_of
from tunekit.backends.hf.whole_model import build_freeze, build_full
from tunekit.errors import ConfigError, IncompatibleError
from tunekit.methods import (
    IA3,
    OFT,
    AdaLoRA,
    Freeze,
    Full,
    LoHa,
    LoKr,
    LoRA,
    Method,
    PrefixTuning,
    PromptTuning,
    PTuning,
    VeRA,
)
from tunekit.training import Training

__all__ = [
    "TRANSLATIONS",
    "BuildContext",
    "apply_method",
    "load_adapter",
    "merged_model",
    "training_for",
]

logger = logging.getLogger("tunekit")


# --- helpers ----------------------------------------------------------------------------------------
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


def _embeddings_to_save(model: Any, new_token_ids: list[int]) -> list[str] | None:
    """For adapters without peft's ``trainable_token_indices`` (only LoRA and AdaLoRA have it): train
    the embedding matrices whole when tunekit added template tokens, or the model could never learn
    to read or write them. Costs adapter size, so it is logged."""
    tokens = _trainable_tokens(model, new_token_ids)
    if tokens is None:
        return None
    logger.warning(
        "the chat template added %d tokens; this method trains the embedding matrices %s whole so that "
        "it can learn them (a larger adapter); LoRA trains only their rows",
        len(new_token_ids),
        sorted(tokens),
    )
    return sorted(tokens)


def _linear_names(model: Any) -> list[str]:
    import torch

    return sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "." in n})


def _check_targets(
    model: Any, targets: list[str], method: Method | None = None, option: str = "target_modules"
) -> None:
    missing = [t for t in targets if not any(n.split(".")[-1] == t for n, _ in model.named_modules())]
    if missing:
        name = method.name if method is not None else "LoRA"
        raise ConfigError(
            f"{name}({option}={targets!r}): no module named {missing} in this model; "
            f"its linear modules are {_linear_names(model)}"
        )


def _target_parameters(method: LoRA, model: Any) -> list[str] | None:
    """``LoRA(target_parameters=...)``, each checked to end the name of a parameter of this model."""
    wanted = method.target_parameters
    if not wanted:
        return None
    names = [n for n, _ in model.named_parameters()]
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        import torch

        linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        bare = sorted(
            {
                re.sub(r"^.*?\.\d+\.", "", n)  # without the layer prefix: model.layers.0.
                for n, p in model.named_parameters()
                if p.dim() >= 2 and n.rsplit(".", 1)[0] not in linear
            }
        )
        raise ConfigError(
            f"LoRA(target_parameters={wanted!r}): no parameter named {missing} in this model; parameters no linear "
            f"module holds (what target_parameters is for): {bare[:12] or 'none'}"
        )
    return list(wanted)


def _targets(method: Any, model: Any) -> Any:
    targets = method.target_modules
    if isinstance(targets, list):
        _check_targets(model, targets, method)
    if is_vision_model(model):
        return _vision_targets(method, model, targets)
    return targets


_PARTS = (("vision_tower", "the vision tower"), ("projector", "the projector"))


def _vision_targets(method: Any, model: Any, targets: Any) -> list[str]:
    """A vision-language model's modules to adapt, by full name: those ``targets`` names (every linear module for
    'all-linear', the output head excepted as peft does) in the language model, and in the vision tower and the
    projector where the method says ``"lora"`` (peft's 'all-linear' would adapt the image encoder too)."""
    import torch

    adapted = {"language_model"} | {part for part, _ in _PARTS if getattr(method, part, "frozen") == "lora"}
    _, head = _embedding_names(model)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and n != head
        and part_of(n) in adapted
        and (targets == "all-linear" or n.split(".")[-1] in targets)
    ]
    if not names:
        raise ConfigError(
            f"{method.name}(target_modules={targets!r}): none of those modules is in the parts of this vision-language "
            f"model that train ({sorted(adapted)}); its linear modules are {_linear_names(model)}"
        )
    return names


def _part_roots(model: Any, part: str) -> list[str]:
    """The outermost modules of ``part`` (``"vision_tower"``, ``"projector"``) of a vision-language model."""
    names = [n for n, _ in model.named_modules() if n and part_of(n) == part]
    return [n for n in names if part_of(n.rsplit(".", 1)[0] if "." in n else "") != part]


def _vision_parts_to_save(method: Any, ctx: BuildContext) -> list[str]:
    """The parts a method trains whole on a vision-language model (``vision_tower="full"``, ``projector="full"``),
    as peft's ``modules_to_save`` (trained copies, saved with the adapter); a frozen projector inside a tower that
    trains whole (Qwen-VL's merger) is frozen again once peft has made the copy."""
    model = ctx.model
    if not is_vision_model(model):
        if any(getattr(method, part, "frozen") != "frozen" for part, _ in _PARTS):
            fields = ", ".join(f"{p}={getattr(method, p)!r}" for p, _ in _PARTS if getattr(method, p) != "frozen")
            raise IncompatibleError(
                f"{method.name}({fields}): {type(model).__name__} is a text-only model, it has no vision tower or "
                "projector; drop those options"
            )
        return []
    roots: list[str] = []
    for part, label in _PARTS:
        mode = getattr(method, part, "frozen")
        found = _part_roots(model, part)
        if mode != "frozen" and not found:
            raise IncompatibleError(
                f"{method.name}({part}={mode!r}): tunekit cannot find {label} of {type(model).__name__} (no module "
                "named like one); leave it 'frozen'"
            )
        if mode == "full":
            roots += found
    tower_full = getattr(method, "vision_tower", "frozen") == "full"
    projector_mode = getattr(method, "projector", "frozen")
    nested = [n for n in _part_roots(model, "projector") if any(n.startswith(r + ".") for r in roots)]
    if tower_full and nested and projector_mode == "lora":
        raise IncompatibleError(
            f"{method.name}(vision_tower='full', projector='lora'): in {type(model).__name__} the projector is "
            f"inside the vision tower ({nested[0]}), which trains whole: use projector='full' or 'frozen'"
        )
    if tower_full and nested and projector_mode == "frozen":
        ctx.after.append(_freeze_projector)
    roots = [r for r in roots if not any(r.startswith(o + ".") for o in roots)]
    return roots


def _freeze_projector(wrapped: Any) -> None:
    for n, p in wrapped.named_parameters():
        if part_of(n) == "projector":
            p.requires_grad_(False)


# --- translations -----------------------------------------------------------------------------------
def _lora(method: LoRA, ctx: BuildContext) -> Any:
    from peft import LoraConfig

    init: Any = True if method.init == "default" else method.init  # peft: True, "gaussian" or "pissa"
    return LoraConfig(
        task_type=task_type(ctx.model),
        r=method.r,
        lora_alpha=method.alpha or 2 * method.r,
        lora_dropout=method.dropout,
        target_modules=_targets(method, ctx.model),
        target_parameters=_target_parameters(method, ctx.model),
        use_dora=method.dora,
        use_rslora=method.rslora,
        init_lora_weights=init,
        trainable_token_indices=_trainable_tokens(ctx.model, ctx.new_token_ids),
        modules_to_save=_vision_parts_to_save(method, ctx) or None,
    )


def _lycoris(method: LoHa | LoKr, ctx: BuildContext) -> dict[str, Any]:
    """The options peft's LoHa and LoKr configs share."""
    return {
        "task_type": task_type(ctx.model),
        "r": method.r,
        "alpha": method.alpha or method.r,
        "rank_dropout": method.rank_dropout,
        "module_dropout": method.module_dropout,
        "target_modules": _targets(method, ctx.model),
        "modules_to_save": _embeddings_to_save(ctx.model, ctx.new_token_ids),
    }


def _loha(method: LoHa, ctx: BuildContext) -> Any:
    from peft import LoHaConfig

    return LoHaConfig(**_lycoris(method, ctx))


def _lokr(method: LoKr, ctx: BuildContext) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(
        **_lycoris(method, ctx), decompose_both=method.decompose_both, decompose_factor=method.decompose_factor
    )


def _adalora(method: AdaLoRA, ctx: BuildContext) -> Any:
    from peft import AdaLoraConfig

    # total_step, tinit and tfinal depend on the run's schedule, which is known only when training
    # starts; AdaLoraStep (method_callbacks.py) sets them then. peft insists on a value now.
    return AdaLoraConfig(
        task_type=task_type(ctx.model),
        init_r=method.init_r,
        target_r=method.target_r,
        lora_alpha=method.alpha or 2 * method.init_r,
        lora_dropout=method.dropout,
        target_modules=_targets(method, ctx.model),
        deltaT=method.update_every,
        beta1=method.beta1,
        beta2=method.beta2,
        orth_reg_weight=method.orth_reg_weight,
        tinit=0,
        tfinal=0,
        total_step=1,
        trainable_token_indices=_trainable_tokens(ctx.model, ctx.new_token_ids),
    )


def _vera(method: VeRA, ctx: BuildContext) -> Any:
    from peft import VeraConfig

    return VeraConfig(
        task_type=task_type(ctx.model),
        r=method.r,
        vera_dropout=method.dropout,
        d_initial=method.d_initial,
        target_modules=_targets(method, ctx.model),
        projection_prng_key=method.projection_seed,
        save_projection=method.save_projection,
        modules_to_save=_embeddings_to_save(ctx.model, ctx.new_token_ids),
    )


def _oft(method: OFT, ctx: BuildContext) -> Any:
    from peft import OFTConfig

    return OFTConfig(
        task_type=task_type(ctx.model),
        r=0,
        oft_block_size=method.block_size,
        module_dropout=method.module_dropout,
        coft=method.constrained,
        eps=method.eps,
        block_share=method.block_share,
        target_modules=_targets(method, ctx.model),
        modules_to_save=_embeddings_to_save(ctx.model, ctx.new_token_ids),
    )


def _ia3(method: IA3, ctx: BuildContext) -> Any:
    from peft import IA3Config
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF_DEFAULTS
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGET_DEFAULTS

    model_type = getattr(ctx.model.config, "model_type", None)
    targets: Any = method.target_modules
    if targets == "auto":
        if model_type not in TARGET_DEFAULTS:
            raise ConfigError(
                f"IA3(target_modules='auto'): peft has no default IA3 targets for model type {model_type!r}; "
                f"name them, e.g. IA3(target_modules=[...], feedforward_modules=[...]); "
                f"this model's linear modules are {_linear_names(ctx.model)}"
            )
        targets = list(TARGET_DEFAULTS[model_type])
    elif isinstance(targets, list):
        _check_targets(ctx.model, targets, method)
    ff: Any = method.feedforward_modules
    if ff == "auto":
        known = FF_DEFAULTS.get(str(model_type), [])
        ff = [m for m in known if targets == "all-linear" or m in targets]
    else:
        _check_targets(ctx.model, ff, method, "feedforward_modules")
    return IA3Config(
        task_type=task_type(ctx.model),
        target_modules=targets,
        feedforward_modules=ff,
        modules_to_save=_embeddings_to_save(ctx.model, ctx.new_token_ids),
    )


def _no_new_tokens(method: Method, ctx: BuildContext) -> None:
    """Prompt methods keep every base weight frozen, so the template tokens tunekit added could never be learned.

    (peft embeds the input with the original embedding module, so even ``modules_to_save`` would
    not train their input rows.)
    """
    if not ctx.new_token_ids:
        return
    names = [ctx.tokenizer.convert_ids_to_tokens(i) for i in ctx.new_token_ids] if ctx.tokenizer else ctx.new_token_ids
    raise IncompatibleError(
        f"{method.name} keeps every weight of the base model frozen, but this model has no chat template, so "
        f"tunekit added the template tokens {names}, whose embeddings would have to train; use a model that has a "
        "chat template, pass Tuner(template=...) with a template written in the tokenizer's own tokens, or use "
        "tk.LoRA() (it trains just those rows)"
    )


def _prompt_tuning(method: PromptTuning, ctx: BuildContext) -> Any:
    from peft import PromptTuningConfig

    _no_new_tokens(method, ctx)

    if method.init_text is not None:
        if ctx.tokenizer is None:
            raise ConfigError("PromptTuning(init_text=...): no tokenizer is available to encode the text")
        ctx.after.append(lambda peft_model: _init_prompt_from_text(peft_model, ctx.tokenizer, method.init_text or ""))
    return PromptTuningConfig(
        task_type=task_type(ctx.model),
        num_virtual_tokens=method.num_virtual_tokens,
    )


def _init_prompt_from_text(peft_model: Any, tokenizer: Any, text: str) -> None:
    """Start the virtual tokens from the embeddings of ``text`` (repeated or cut to length).

    peft's own text initialisation (``prompt_tuning_init="TEXT"``) re-loads the tokenizer by path,
    again on every trainable reload of the saved adapter, so the adapter would break whenever that
    path moves. We hold the tokenizer already; these lines do what peft does with it.
    """
    import torch

    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    n = encoder.embedding.num_embeddings
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"PromptTuning(init_text={text!r}): the text encodes to no tokens; use a longer text")
    ids = (ids * (n // len(ids) + 1))[:n]
    word_embeddings = unwrap_peft(peft_model).get_input_embeddings()
    with torch.no_grad():
        vectors = word_embeddings(torch.tensor(ids, device=word_embeddings.weight.device))
        encoder.embedding.weight.copy_(vectors.to(encoder.embedding.weight.dtype))


def _prefix_tuning(method: PrefixTuning, ctx: BuildContext) -> Any:
    from peft import PrefixTuningConfig

    _no_new_tokens(method, ctx)
    return PrefixTuningConfig(
        task_type=task_type(ctx.model),
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=method.projection,
        encoder_hidden_size=method.projection_hidden_size or ctx.model.config.hidden_size,
    )


def _p_tuning(method: PTuning, ctx: BuildContext) -> Any:
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

    _no_new_tokens(method, ctx)
    return PromptEncoderConfig(
        task_type=task_type(ctx.model),
        num_virtual_tokens=method.num_virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType(method.encoder.upper()),
        encoder_hidden_size=method.encoder_hidden_size or ctx.model.config.hidden_size,
        encoder_num_layers=method.encoder_layers,
        encoder_dropout=method.encoder_dropout,
    )


# Method class -> builder of its peft config (None: the builder set which of the model's own weights train).
TRANSLATIONS: dict[type[Method], Callable[[Any, BuildContext], Any]] = {
    Full: build_full,
    Freeze: build_freeze,
    LoRA: _lora,
    LoHa: _loha,
    LoKr: _lokr,
    AdaLoRA: _adalora,
    VeRA: _vera,
    OFT: _oft,
    IA3: _ia3,
    PromptTuning: _prompt_tuning,
    PrefixTuning: _prefix_tuning,
    PTuning: _p_tuning,
}


# --- what the backend calls --------------------------------------------------------------------------
def _translation(method: Method) -> Callable[[Any, BuildContext], Any]:
    return builder_for(TRANSLATIONS, method, backend="hf")


def apply_method(
    model: Any,
    method: Method,
    new_token_ids: list[int],
    *,
    tokenizer: Any = None,
    training: Training | None = None,
) -> Any:
    """Wrap ``model`` for ``method``: a peft model, or the model itself with the chosen weights trainable."""
    build = _translation(method)
    ctx = BuildContext(model=model, tokenizer=tokenizer, new_token_ids=list(new_token_ids))
    peft_config = build(method, ctx)
    if peft_config is None:
        return model
    from peft import get_peft_model

    if is_quantized(model):
        prepare_for_kbit_training(model, training)
    wrapped = get_peft_model(model, peft_config)
    for step in ctx.after:
        step(wrapped)
    return wrapped


def load_adapter(model: Any, method: Method, path: str | Path, *, training: Training | None = None) -> Any:
    """Put a saved adapter back on ``model``, trainable, giving the saved model's outputs."""
    _translation(method)  # an unknown method fails here, before peft guesses
    if is_quantized(model):
        prepare_for_kbit_training(model, training)
    try:
        return _load_adapter(model, path)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise IncompatibleError(
            f"the adapter at {str(path)!r} does not fit this base model ({first[:300]}): it was trained on a base "
            "of another size; load it on the base it was trained on"
        ) from None


def _load_adapter(model: Any, path: str | Path) -> Any:
    from peft import PeftConfig, PeftModel

    if not PeftConfig.from_pretrained(str(path)).is_prompt_learning:
        return PeftModel.from_pretrained(model, str(path), is_trainable=True)
    # peft refuses to reload prompt-learning adapters as trainable, and it saves P-tuning and
    # projected prefixes as the encoder's *output*, which a trainable reload would feed through a
    # fresh random encoder. Load them as plain virtual tokens (peft's inference layout) and let those
    # tokens train directly: the saved model's outputs, and further training still works.
    wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    for name, p in wrapped.named_parameters():
        if "prompt_encoder" in name or "modules_to_save" in name:
            p.requires_grad_(True)
    return wrapped


def training_for(method: Method, training: Training) -> Training:
    """The run's Training adjusted to what ``method`` can do (e.g. no gradient checkpointing for prefix tuning)."""
    if training.gradient_checkpointing is True and not method.supports_gradient_checkpointing:
        logger.warning(
            "%s does not work with gradient checkpointing; training without it (more memory, faster steps)",
            method.name,
        )
        return training.model_copy(update={"gradient_checkpointing": False})
    return training


def merged_model(model: Any, method: Method) -> Any:
    """A new plain transformers model with the trained adapter merged into the base weights.

    The tuner's own model is left as it is (peft's ``merge_and_unload`` runs on a copy), so it can
    still be saved as an adapter or trained further.
    """

    if not method.mergeable:
        raise IncompatibleError(f"{method.name} cannot be merged: {method.not_mergeable_because}")
    if is_quantized(model):
        raise IncompatibleError(
            f"{method.name}(quantize=...) cannot be merged into its quantized base without losing precision; "
            "save the adapter, load the base in bf16 or fp32, and merge there: "
            "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).merge_and_unload()"
        )
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    return merged
