"""The fast SFT / CausalLM path: padding-free batches, attention within each example, no per-step syncs.

What it changes against trl's SFTTrainer defaults, and why each is correct:

- **Padding-free batches.** The examples of a micro-batch are concatenated into one row, with
  ``position_ids`` restarting at 0 for each example and no padding (trl's
  ``DataCollatorForLanguageModeling(padding_free=True)``, which also unsupervises the first token
  of each example, so no example predicts across a boundary). The loss is the same token-weighted
  mean as a padded batch: the sum of per-token losses over every supervised token of the batch,
  divided by their number.
- **Attention within each example.** trl's collator hands the sequence boundaries
  (``cu_seq_lens_q``) to the model. With flash-attention installed on CUDA, transformers' varlen
  kernel uses them; otherwise tunekit registers ``tunekit_varlen`` with transformers'
  ``AttentionInterface``. On CUDA in bf16/fp16 it calls PyTorch's own flash-attention varlen kernel
  (``torch.nn.attention.varlen.varlen_attn``, torch >= 2.10: one launch per layer for the whole
  row); elsewhere it runs SDPA causally on each example's slice. transformers' own SDPA path
  would build a block-diagonal ``(tokens x tokens)`` mask for the whole row instead, costing
  ``(sum of lengths)^2`` attention work rather than ``sum of lengths^2``.
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
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["VARLEN", "FastPath", "choose", "fast_sft_trainer", "own_attention", "packed_collator", "varlen_attention"]

logger = logging.getLogger("tunekit")

VARLEN = "tunekit_varlen"
# Attention implementations whose packed batches tunekit can isolate (by its varlen function or flash varlen).
_PACKABLE_ATTENTION = {"sdpa", "eager", "flash_attention_2", "flash_attention_3", VARLEN}


@dataclass(frozen=True)
class FastPath:
    """What the fast path turns on for one run, and why not when it does not."""

    packing: bool
    attention: str | None  # the attention implementation used while training (None: the model's own)
    liger: bool
    compile: bool
    reason: str = ""  # why packing is off, for the log


def _varlen_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """SDPA on each example of a padding-free row; plain SDPA for anything else.

    ``query``/``key``/``value`` are ``(1, heads, tokens, head_dim)``. ``cu_seq_lens_q`` (from
    trl's collator, built on the CPU) gives the example boundaries; ``tunekit_bounds`` is the same
    as a tuple of ints, so that on CUDA no boundary has to be read back from the device.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("s_aux") is not None:  # attention sinks (gpt-oss): plain SDPA would silently drop them
        raise NotImplementedError(
            "tunekit's varlen attention cannot compute attention sinks (s_aux); train this model with packing=False"
        )
    bounds = kwargs.pop("tunekit_bounds", None)
    cu = kwargs.get("cu_seq_lens_q")
    if bounds is None and cu is not None and query.shape[0] == 1:
        bounds = tuple(int(x) for x in cu.tolist())
    if bounds is None or query.shape[0] != 1 or len(bounds) <= 2:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    gqa = key.shape[1] != query.shape[1]  # grouped-query attention: SDPA shares the key/value heads itself
    drop = dropout if module.training else 0.0
    if _flash_eligible(query, drop):
        out = _flash_varlen(query, key, value, kwargs.get("cu_seq_lens_q"), bounds, scaling)
        if out is not None:
            return out, None
    sizes = {end - start for start, end in itertools.pairwise(bounds)}
    if len(sizes) == 1:  # examples of one length: a batch of them, one SDPA call
        (size,) = sizes
        n, heads, dim = len(bounds) - 1, query.shape[1], query.shape[-1]

        def batch(t: Any) -> Any:  # (1, heads, n * size, dim) -> (n, heads, size, dim)
            return t[0].reshape(t.shape[1], n, size, t.shape[-1]).transpose(0, 1)

        out = torch.nn.functional.scaled_dot_product_attention(
            batch(query), batch(key), batch(value), dropout_p=drop, scale=scaling, is_causal=size > 1, enable_gqa=gqa
        )
        return out.transpose(0, 1).reshape(1, heads, n * size, dim).transpose(1, 2).contiguous(), None
    parts = []
    for start, end in itertools.pairwise(bounds):
        if end <= start:
            continue
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=drop,
                scale=scaling,
                is_causal=end - start > 1,
                enable_gqa=gqa,
            )
        )
    out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return out.transpose(1, 2).contiguous(), None


def _varlen_kernel() -> Any:
    """PyTorch's flash-attention varlen function, or None (torch < 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flash_eligible(query: Any, dropout: float) -> bool:
    # The flash kernel: CUDA, half precision, no dropout (it takes none), head sizes it compiles for.
    import torch

    return (
        query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and dropout == 0.0
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= 256
    )


@functools.lru_cache(maxsize=4)
def _parameters(kernel: Any) -> frozenset[str]:
    """The keyword names the installed kernel takes (its signature changed between torch versions)."""
    import inspect

    return frozenset(inspect.signature(kernel).parameters)


_flash_failed: str | None = None  # why the kernel was refused once: the per-example loop is used from then on


def _flash_varlen(query: Any, key: Any, value: Any, cu: Any, bounds: tuple[int, ...], scaling: float | None) -> Any:
    """Causal attention within each example of a packed row in one kernel: ``(1, tokens, heads, dim)``, or None
    when the kernel is missing or refuses these tensors (then the caller loops over the examples)."""
    global _flash_failed
    kernel = _varlen_kernel()
    if kernel is None or _flash_failed is not None:
        return None
    import torch

    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (1, heads, tokens, dim) -> (tokens, heads, dim)
    takes = _parameters(kernel)
    # Causal: a window of (-1, 0) from torch 2.11 on; torch 2.10 took is_causal=True.
    extra: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in takes else {"is_causal": True}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in takes:  # torch >= 2.12
            extra["enable_gqa"] = True
        else:  # earlier versions take as many key/value heads as query heads
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    if cu is None or cu.device != q.device:
        cu = torch.tensor(bounds, device=q.device)  # built from ints already on the host: no device sync
    cu = cu.to(torch.int32)
    longest = max(end - start for start, end in itertools.pairwise(bounds))
    try:
        out = kernel(q, k, v, cu, cu, longest, longest, scale=scaling, **extra)
    except torch.OutOfMemoryError:
        raise  # the batch is too large (auto_batch_size retries smaller), not a kernel it cannot run
    except (RuntimeError, NotImplementedError, TypeError) as e:  # an unsupported GPU or build: keep training
        _flash_failed = f"{type(e).__name__}: {e}"
        logger.warning("flash varlen attention unavailable (%s); attending example by example", _flash_failed)
        return None
    return out.unsqueeze(0)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    # Deliberately not registered with AttentionMaskInterface: transformers then builds no
    # (tokens x tokens) mask for the row, and the boundaries alone isolate the examples.
    AttentionInterface.register(VARLEN, _varlen_sdpa)
    _registered = True


def _attention_of(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def choose(model: Any, training: Any, device: Any) -> FastPath:
    """The fast-path settings for an SFT / CausalLM run on ``model`` (a peft model or a plain one)."""
    packing_opt = getattr(training, "packing", "auto")
    liger = device.type == "cuda" and importable("liger_kernel")
    compile_ = bool(getattr(training, "compile", False))
    attn = _attention_of(model)
    reason = ""
    if packing_opt is False:
        reason = "Training(packing=False)"
    elif _prompt_learning(model):
        reason = (
            "prompt-based methods put virtual tokens in front of the input, which a packed row cannot repeat per "
            "example"
        )
    elif attn not in _PACKABLE_ATTENTION:
        reason = f"the model's attention implementation {attn!r} cannot keep packed examples apart"
    elif not getattr(type(_base_model(model)), "_supports_attention_backend", False):
        reason = (
            f"{type(_base_model(model)).__name__} does not route its attention through transformers' "
            "AttentionInterface, so it cannot keep packed examples apart"
        )
    else:
        reason = _attention_quirk(model, training)
    if reason:
        return FastPath(packing=False, attention=None, liger=liger, compile=compile_, reason=reason)
    if attn.startswith("flash_attention") and device.type == "cuda":
        return FastPath(packing=True, attention=None, liger=liger, compile=compile_)
    return FastPath(packing=True, attention=VARLEN, liger=liger, compile=compile_)


def _base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (``model`` itself when it is not wrapped)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


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


@contextlib.contextmanager
def varlen_attention(model: Any, path: FastPath) -> Iterator[None]:
    """Train with ``path.attention`` and give the model its own implementation back afterwards."""
    if path.attention is None:
        yield
        return
    _register()
    configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    configs = list({id(c): c for c in configs}.values())
    before = [c._attn_implementation for c in configs]
    for c, b in zip(configs, before):
        c._attn_implementation = path.attention
        c._tk_attn_own = b  # for own_attention(): generation during training (SampleGenerations)
    try:
        yield
    finally:
        for c, b in zip(configs, before):
            c._attn_implementation = b
            c.__dict__.pop("_tk_attn_own", None)


@contextlib.contextmanager
def own_attention(model: Any) -> Iterator[None]:
    """The model's own attention implementation while it generates inside a packed run.

    tunekit_varlen keeps packed examples apart but builds no padding mask, and generation pads a
    batch of prompts on the left: the model's own implementation masks the padding.
    """
    configs = [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_tk_attn_own")]
    configs = list({id(c): c for c in configs}.values())
    training = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = c._tk_attn_own
    try:
        yield
    finally:
        for c, t in zip(configs, training):
            c._attn_implementation = t


class _PackedCollator:
    """trl's padding-free collator, plus the boundaries as ints and a CPU-side count of real tokens."""

    def __init__(self, pad_token_id: int, packing: bool) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.packing = packing
        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=packing)
        self.tokens = 0  # real tokens of the training batches collated, read by tokens_seen()

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        if self.packing:
            batch["tunekit_bounds"] = tuple(int(x) for x in batch["cu_seq_lens_q"].tolist())
            real = int(batch["input_ids"].shape[1])
        else:
            real = int(batch["attention_mask"].sum())
        batch["tunekit_real_tokens"] = real
        return batch


def packed_collator(tokenizer: Any, path: FastPath) -> _PackedCollator:
    return _PackedCollator(tokenizer.pad_token_id, path.packing)


def fast_sft_trainer(base: Any, *, fused_head: bool) -> Any:
    """A subclass of trl's SFTTrainer ``base`` whose step computes the loss and nothing else.

    ``fused_head``: the loss through trl's chunked LM head (no full logits); otherwise the model's
    own loss (heads peft wraps, AdaLoRA's regulariser: see trainers._model_loss_trainer).
    """
    import torch
    from transformers import Trainer

    class FastSFTTrainer(base):  # type: ignore[misc,valid-type]
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            real = inputs.pop("tunekit_real_tokens", 0)
            if model.training:
                self._total_train_tokens += int(real)
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]  # logged, as trl does
            inputs["use_cache"] = False
            # self.model, not model: under DDP ``model`` is the wrapper, which has no config, and the boundaries
            # dropped here would be read back from the device in every layer.
            if _attention_of(self.model) != VARLEN:  # the boundaries are for tunekit's attention only
                inputs.pop("tunekit_bounds", None)
            if not fused_head:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**inputs, fused_lm_head=True)
            count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -outputs.log_probs.sum() / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return (loss, outputs) if return_outputs else loss

        def floating_point_ops(self, inputs: Any) -> int:
            # transformers walks every parameter each step to count them; the count does not change.
            if not hasattr(self, "_tunekit_params"):
                count = getattr(self.model, "num_parameters", None)
                self._tunekit_params = int(count(exclude_embeddings=True)) if count is not None else 0
            ids = inputs.get("input_ids")
            return 6 * (int(ids.numel()) if ids is not None else 0) * self._tunekit_params

        def _prepare_inputs(self, inputs: Any) -> Any:
            extra = {k: inputs.pop(k) for k in ("tunekit_bounds", "tunekit_real_tokens") if k in inputs}
            prepared = super()._prepare_inputs(inputs)
            prepared.update(extra)
            return prepared

    FastSFTTrainer.__name__ = f"Fast{base.__name__}"
    return FastSFTTrainer


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


def fused_loss_only(model: Any) -> None:
    """Re-install trl's fused LM head computing log-probabilities only (no entropy, no top-1)."""
    from peft import PeftModel
    from trl.trainer.utils import add_fused_lm_head

    target: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    target.__dict__.pop("forward", None)
    add_fused_lm_head(target, outputs=("log_probs",))


def apply_liger(model: Any) -> bool:
    """Liger's layer kernels (RMSNorm, SwiGLU, RoPE) on ``model`` in place; False when it has none for it."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    from peft import PeftModel

    target = model.get_base_model() if isinstance(model, PeftModel) else model
    try:
        # Not its fused linear cross-entropy: it replaces the forward trl's chunked LM head patches.
        _apply_liger_kernel_to_instance(model=target, fused_linear_cross_entropy=False, cross_entropy=False)
    except Exception as e:  # an architecture Liger does not know: train without it
        logger.info("Liger kernels not applied: %s", e)
        return False
    return True


def sft_trainer(run: Any, *, fused_head: bool) -> Any:
    """trl's SFTTrainer on the fast path for ``run`` (a trainers.Setup); undone by :func:`release`."""
    from trl import SFTConfig, SFTTrainer

    t = run.training
    if fused_head and _router_aux_loss(run.model):  # the fused loss would drop the MoE router loss
        fused_head = False
    path = choose(run.model, t, run.device)
    if not path.packing and t.packing is True:
        logger.warning("packing is off: %s", path.reason)
    train_dataset = run.train_dataset
    batch = t.batch_size
    if t.tokens_per_batch is not None and path.packing:
        train_dataset = pack_to_budget(train_dataset, t.tokens_per_batch)
        batch = 1  # one packed row of at most tokens_per_batch tokens per micro-batch
    from tunekit.backends.hf.trainers import _common

    common = {**_common(run), "per_device_train_batch_size": batch}
    if path.compile:
        common["torch_compile"] = True
    args = SFTConfig(
        **common,
        max_length=t.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},  # tunekit tokenised and masked the data itself
        remove_unused_columns=False,
    )
    if path.liger:
        apply_liger(run.model)
    cls = fast_sft_trainer(SFTTrainer, fused_head=fused_head)
    trainer = cls(
        model=run.model,
        args=args,
        data_collator=packed_collator(run.tokenizer, path),
        train_dataset=train_dataset,
        eval_dataset=run.eval_dataset,
        processing_class=run.tokenizer,
        callbacks=run.callbacks,
    )
    if fused_head:
        fused_loss_only(run.model)
    stack = contextlib.ExitStack()
    stack.enter_context(varlen_attention(run.model, path))
    trainer._tunekit_release = stack.close
    trainer._tunekit_fastpath = path
    return trainer


def pack_to_budget(dataset: Any, tokens: int) -> Any:
    """Examples packed best-fit decreasing into rows of at most ``tokens`` tokens (trl's ``pack_dataset``).

    Every example is already at most ``max_length <= tokens`` long, so nothing is truncated.
    """
    from trl.data_utils import pack_dataset

    return pack_dataset(dataset, tokens, strategy="bfd")


def release(trainer: Any) -> None:
    """Give the model back its own attention implementation once the trainer is done."""
    done = trainer.__dict__.pop("_tunekit_release", None)
    if done is not None:
        done()
