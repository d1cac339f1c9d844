"""Attention within each example of a packed (padding-free) row.

trl's padding-free collator hands the sequence boundaries (``cu_seq_lens_q``) to the model. With
flash-attention installed on CUDA, transformers' varlen kernel uses them; otherwise tunekit registers
``tunekit_varlen`` with transformers' ``AttentionInterface``. On CUDA in bf16/fp16 it calls PyTorch's
own flash-attention varlen kernel (``torch.nn.attention.varlen.varlen_attn``, torch >= 2.10: one
launch per layer for the whole row); elsewhere it runs SDPA causally on each example's slice.
transformers' own SDPA path would build a block-diagonal ``(tokens x tokens)`` mask for the whole row
instead, costing ``(sum of lengths)^2`` attention work rather than ``sum of lengths^2``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["PACKABLE_ATTENTION", "VARLEN", "attention_of", "own_attention", "varlen_attention"]

logger = logging.getLogger("tunekit")

VARLEN = "tunekit_varlen"
# Attention implementations whose packed batches tunekit can isolate (by its varlen function or flash varlen).
PACKABLE_ATTENTION = {"sdpa", "eager", "flash_attention_2", "flash_attention_3", VARLEN}


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


def attention_of(model: Any) -> str:
    """The name of the attention implementation ``model`` runs with now (``"eager"`` when it names none)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


@contextlib.contextmanager
def varlen_attention(model: Any, attention: str | None) -> Iterator[None]:
    """Train with the attention implementation ``attention`` (None: the model's own); restore the model's own after."""
    if attention is None:
        yield
        return
    _register()
    configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    configs = list({id(c): c for c in configs}.values())
    before = [c._attn_implementation for c in configs]
    for c, b in zip(configs, before):
        c._attn_implementation = attention
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
