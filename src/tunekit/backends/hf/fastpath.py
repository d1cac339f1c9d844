"""The fast SFT / CausalLM path: padding-free batches, attention within each example, no per-step syncs.

What it changes against trl's SFTTrainer defaults, and why each is correct:

- **Padding-free batches.** The examples of a micro-batch are concatenated into one row, with
  ``position_ids`` restarting at 0 for each example and no padding (trl's
  ``DataCollatorForLanguageModeling(padding_free=True)``, which also unsupervises the first token
  of each example, so no example predicts across a boundary). The loss is the same token-weighted
  mean as a padded batch: the sum of per-token losses over every supervised token of the batch,
  divided by their number.
- **Attention within each example** (:mod:`.attention`): the sequence boundaries reach the
  attention kernel, which never attends across them.
- **No per-step metrics that sync the device.** trl computes entropy and token accuracy from its
  fused LM head and calls ``.item()`` several times per step; tunekit's trainer computes the loss
  only (still through trl's chunked LM head, which never materialises the full logits) and counts
  real tokens on the CPU, in the collator.
- **Liger kernels** (RMSNorm, SwiGLU, RoPE) on CUDA when ``liger-kernel`` is installed.
- **Token-budget batching** (``Training(tokens_per_batch=N)``): examples are packed best-fit
  decreasing into micro-batches of at most N tokens (trl's ``pack_dataset``).

Methods that put virtual tokens in front of the input (prompt tuning, prefix tuning, P-tuning)
cannot be packed (their prefix would sit in front of the row, not of each example) and fall back
to padded batches; so do models whose attention implementation tunekit does not know to isolate,
models that do not route their attention through transformers' ``AttentionInterface`` (Bloom,
Falcon, MPT: their class's ``_supports_attention_backend`` is false, so they would ignore
``tunekit_varlen`` and attend across the packed examples) and models with attention sinks
(gpt-oss), which per-example SDPA does not compute.

This module holds the policy (what a run turns on: :func:`choose`), the token-budget packing and
whether the fused loss applies; the trainer that implements it is :mod:`.sft`, the kernels :mod:`.attention`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from tunekit._torch import unwrap_peft
from tunekit.backends.hf.attention import PACKABLE_ATTENTION, VARLEN, attention_of

__all__ = ["FastPath", "choose", "fused_loss_applies", "importable", "pack_to_budget"]


@dataclass(frozen=True)
class FastPath:
    """What the fast path turns on for one run, and why not when it does not."""

    packing: bool
    attention: str | None  # the attention implementation used while training (None: the model's own)
    liger: bool
    compile: bool
    reason: str = ""  # why packing is off, for the log


def choose(model: Any, training: Any, device: Any) -> FastPath:
    """The fast-path settings for an SFT / CausalLM run on ``model`` (a peft model or a plain one)."""
    packing_opt = getattr(training, "packing", "auto")
    liger = device.type == "cuda" and importable("liger_kernel")
    compile_ = bool(getattr(training, "compile", False))
    attn = attention_of(model)
    reason = ""
    if packing_opt is False:
        reason = "Training(packing=False)"
    elif _prompt_learning(model):
        reason = (
            "prompt-based methods put virtual tokens in front of the input, which a packed row cannot repeat per "
            "example"
        )
    elif attn not in PACKABLE_ATTENTION:
        reason = f"the model's attention implementation {attn!r} cannot keep packed examples apart"
    elif not getattr(type(unwrap_peft(model)), "_supports_attention_backend", False):
        reason = (
            f"{type(unwrap_peft(model)).__name__} does not route its attention through transformers' "
            "AttentionInterface, so it cannot keep packed examples apart"
        )
    else:
        reason = _attention_quirk(model, training)
    if reason:
        return FastPath(packing=False, attention=None, liger=liger, compile=compile_, reason=reason)
    if attn.startswith("flash_attention") and device.type == "cuda":
        return FastPath(packing=True, attention=None, liger=liger, compile=compile_)
    return FastPath(packing=True, attention=VARLEN, liger=liger, compile=compile_)


_SINK_FLAGS = ("sinks", "attention_sinks", "use_sinks", "use_attention_sinks")


def _attention_quirk(model: Any, training: Any) -> str:
    """Why tunekit's per-example SDPA would not compute this model's attention exactly ("" if it would)."""
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    config = get_text() if callable(get_text) else config
    if getattr(config, "model_type", None) == "gpt_oss" or any(getattr(config, f, None) for f in _SINK_FLAGS):
        return "the model uses attention sinks, which per-example SDPA cannot compute"
    if getattr(config, "attn_logit_softcapping", None):
        return "the model caps its attention logits (softcapping), which SDPA cannot do"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < getattr(training, "max_length", 0):
        return f"the model uses sliding-window attention ({window} tokens) shorter than max_length"
    return ""


def _prompt_learning(model: Any) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def fused_loss_applies(model: Any) -> bool:
    """Whether an SFT / CausalLM run on ``model`` takes trl's fused (chunked) LM-head loss.

    trl's fused loss reads ``lm_head.weight`` directly, which skips whatever peft wrapped around the head
    (trainable rows for added template tokens, LoRA on lm_head), and it ignores ``outputs.loss``, where
    peft adds AdaLoRA's orthogonal regulariser, and a mixture-of-experts router loss: those train with
    the model's own loss.
    """
    import torch

    configs = getattr(model, "peft_config", None) or {}
    adalora = any(str(getattr(c, "peft_type", "")).endswith("ADALORA") for c in configs.values())
    plain_head = type(model.get_output_embeddings()) is torch.nn.Linear
    return plain_head and not adalora and not _router_aux_loss(model)


def _router_aux_loss(model: Any) -> bool:
    """Whether the model adds a mixture-of-experts router loss to ``outputs.loss``.

    With ``config.output_router_logits`` on, MoE models (Mixtral, Qwen-MoE, gpt-oss, ...) add
    ``router_aux_loss_coef * aux_loss`` to their own loss; trl's fused LM-head loss computes the
    token loss from the hidden states alone and would drop it, so such runs take the model's own loss.
    """
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    configs = [config, get_text() if callable(get_text) else None]
    return any(bool(getattr(c, "output_router_logits", False)) for c in configs if c is not None)


def pack_to_budget(dataset: Any, tokens: int) -> Any:
    """Examples packed best-fit decreasing into rows of at most ``tokens`` tokens (trl's ``pack_dataset``).

    Every example is already at most ``max_length <= tokens`` long, so nothing is truncated.
    """
    from trl.data_utils import pack_dataset

    return pack_dataset(dataset, tokens, strategy="bfd")
