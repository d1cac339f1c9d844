"""``tuner.plan(data)`` for the hf backend: exact parameter counts, data figures, a memory estimate.

Nothing is trained and, when the tuner has not loaded its model yet, no weights are read: the
model is built from its config on the meta device and the method applied to it there, which
gives exact parameter counts and dtypes. Activation memory is measured rather than guessed: a
one-layer and a two-layer slice of the same architecture, with the same method, run one forward
on the CPU with uninitialised weights under ``saved_tensors_hooks``; the difference is what one
layer keeps per token for the backward pass. The LM head's share follows trl's chunked log-prob
kernel (tiles of 4096 tokens by 32768 vocabulary entries).
"""

from __future__ import annotations

import copy
import logging
import math
import random
from pathlib import Path
from typing import Any

from tunekit.plan import Plan

__all__ = ["checkpointing_needed", "make_plan"]

logger = logging.getLogger("tunekit")

_PROBE_TOKENS = 64
_TOKEN_TILE, _VOCAB_TILE = 4096, 32768  # trl.kernels.chunked_logprob's tiles


def _unique_params(model: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def _meta_model(tuner: Any) -> tuple[Any, Any]:
    """(model with the method applied on the meta device, tokenizer with the template), as load() would make them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunekit.backends.hf.models import head_kwargs, load_tokenizer, resolve_device, resolve_precision, torch_dtype
    from tunekit.backends.hf.peft_map import apply_method
    from tunekit.data.templates import PAD, ensure_template

    training = tuner.training
    device = resolve_device(training.device)
    precision = resolve_precision(training.precision, device)
    dtype = torch_dtype(precision) if (tuner.method.is_adapter and precision != "fp32") else torch.float32
    ref = str(tuner.model_ref)
    tok_ref = tuner.tokenizer_ref if tuner.tokenizer_ref is not None else ref
    if isinstance(tok_ref, (str, Path)):
        tokenizer = load_tokenizer(str(tok_ref), trust_remote_code=training.trust_remote_code)
    else:
        tokenizer = tok_ref
    _template, added = ensure_template(tokenizer, tuner.template)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in added if t != PAD]
    config = AutoConfig.from_pretrained(ref, trust_remote_code=training.trust_remote_code)
    kwargs = head_kwargs(tuner.objective_used)
    cls = kwargs.pop("auto_class", AutoModelForCausalLM)
    for k, v in kwargs.items():
        setattr(config, k, v)
    with torch.device("meta"):
        model = cls.from_config(config, dtype=dtype, trust_remote_code=training.trust_remote_code)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model = apply_method(model, tuner.method, new_ids, tokenizer=tokenizer, training=training)
    return model, tokenizer


def _backbone(model: Any) -> Any:
    from peft import PeftModel

    base: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base, str(base.base_model_prefix), base)


def _saved_bytes(model: Any, tokens: int, packing: bool) -> int:
    """Bytes the autograd graph keeps after one forward of ``tokens`` tokens through the backbone."""
    import torch

    from tunekit.backends.hf import fastpath

    ids = torch.zeros(1, tokens, dtype=torch.long)
    storages: dict[int, int] = {}
    # Weights the graph keeps (a frozen linear keeps its weight for the input's gradient) are not activations.
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}

    def keep(t: Any) -> Any:
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            storages[s.data_ptr()] = s.nbytes()
        return t

    path = fastpath.FastPath(packing, fastpath.VARLEN if packing else None, False, False)
    half = tokens // 2
    extra: dict[str, Any] = (
        {"position_ids": torch.cat([torch.arange(half), torch.arange(tokens - half)])[None]} if packing else {}
    )
    if packing:
        extra["tunekit_bounds"] = (0, half, tokens)
    model.train()
    with fastpath.varlen_attention(model, path), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        _backbone(model)(input_ids=ids, use_cache=False, **extra)
    return sum(storages.values())


def _per_layer_bytes_per_token(tuner: Any, model: Any, packing: bool) -> tuple[float, float]:
    """(bytes one layer keeps per token, bytes the rest of the backbone keeps per token), measured."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunekit.backends.hf.peft_map import apply_method

    base_config = getattr(model, "get_base_model", lambda: model)().config
    sizes = []
    for layers in (1, 2):
        config = copy.deepcopy(base_config)
        config.num_hidden_layers = layers
        config.vocab_size = min(int(getattr(config, "vocab_size", 1024) or 1024), 1024)
        if hasattr(config, "layer_types") and config.layer_types is not None:
            config.layer_types = list(config.layer_types)[:layers]
        params = _unique_params(model)
        dtype = next((p.dtype for p in params if not p.requires_grad), params[0].dtype)  # the base's dtype
        with torch.device("meta"):
            probe = AutoModelForCausalLM.from_config(config, dtype=dtype)
        probe = probe.to_empty(device="cpu")  # uninitialised: only the shapes of what is saved matter
        probe = apply_method(probe, tuner.method, [], training=tuner.training)
        sizes.append(_saved_bytes(probe, _PROBE_TOKENS, packing) / _PROBE_TOKENS)
    return sizes[1] - sizes[0], max(0.0, 2 * sizes[0] - sizes[1])


def _micro_batch_tokens(lengths: list[int], training: Any, packing: bool, micro_batches: int) -> int:
    """Tokens in the largest micro-batch the run will likely see (what its activations are sized for).

    Batches are drawn at random (the trainer shuffles), so rather than the worst batch possible (the
    longest examples together), the largest of the run's ``micro_batches`` random batches is taken,
    simulated with the run's seed (at most 5,000 batches).
    """
    if training.tokens_per_batch is not None and packing:
        return min(training.tokens_per_batch, sum(lengths))
    rng = random.Random(training.seed)
    order = list(range(len(lengths)))
    size, worst, drawn, limit = training.batch_size, 0, 0, max(1, min(micro_batches, 5000))
    while drawn < limit:
        rng.shuffle(order)
        for k in range(0, len(order), size):
            batch = [lengths[i] for i in order[k : k + size]]
            worst = max(worst, sum(batch) if packing else len(batch) * max(batch))
            drawn += 1
            if drawn >= limit:
                break
    return worst


def _steps(batches: int, training: Any) -> int:
    if training.max_steps:
        return int(training.max_steps)
    per_epoch = max(batches // training.grad_accum + int(batches % training.grad_accum > 0), 1)
    return math.ceil(training.epochs * per_epoch)


def _device_memory(device: Any) -> int | None:
    import torch

    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def make_plan(tuner: Any, data: Any, eval_data: Any = None, *, checkpointing: bool | None = None) -> Plan:
    """The Plan of ``tuner.fit(data, eval_data=eval_data)``; see :class:`tunekit.Plan`."""
    from tunekit._quiet import quiet
    from tunekit.backends.hf.quantization import quantize_of

    norm = tuner._normalise(data, "training")
    if eval_data is not None:
        tuner._normalise(eval_data, "eval")  # the same checks fit makes
    with quiet():
        if tuner._loaded is not None or not isinstance(tuner.model_ref, (str, Path)) or quantize_of(tuner.method):
            model, tokenizer = tuner.model, tuner.tokenizer  # already in memory (or quantized: needs the real load)
        else:
            model, tokenizer = _meta_model(tuner)
        enc = tuner._encode(norm, tokenizer=tokenizer)
        return plan_encoded(tuner, model, enc, checkpointing=checkpointing)


def plan_encoded(tuner: Any, model: Any, enc: Any, *, checkpointing: bool | None = None) -> Plan:
    """The Plan of training ``model`` (method applied) on encoded data ``enc``."""
    from tunekit.backends.hf import fastpath
    from tunekit.backends.hf.models import resolve_device, resolve_precision
    from tunekit.data.encoding import Encoded

    training = tuner.training
    device = resolve_device(training.device)
    precision = resolve_precision(training.precision, device)
    params = _unique_params(model)
    trainable = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = 2 * grads  # AdamW: two moments in each parameter's dtype
    tokenised = isinstance(enc, Encoded)
    if tokenised:
        lengths = [len(x) for x in enc.input_ids]
        packing = fastpath.choose(model, training, device).packing
    else:  # preference / RL rows: trl pads them; a row's tokens are spread over its prompt and answers
        lengths = [max(1, enc.num_tokens // max(1, len(enc.records)))] * len(enc.records)
        packing = False
    if tokenised and packing and training.tokens_per_batch is not None:
        batches = len(fastpath.pack_to_budget(enc.to_dataset(), training.tokens_per_batch))
    else:
        batches = math.ceil(len(lengths) / training.batch_size)
    steps = _steps(batches, training)
    micro = _micro_batch_tokens(lengths, training, packing, steps * training.grad_accum)
    try:
        per_layer, rest = _per_layer_bytes_per_token(tuner, model, packing)
    except Exception as e:  # an architecture the probe cannot slice: a conservative analytic estimate
        logger.info("activation probe failed (%s); using an analytic estimate", e)
        cfg = getattr(model, "config", None)
        h = int(getattr(cfg, "hidden_size", 1024))
        inter = int(getattr(cfg, "intermediate_size", 4 * h) or 4 * h)
        per_layer, rest = 4.0 * (40 * h + 10 * inter), 8.0 * h
    config = getattr(model, "get_base_model", lambda: model)().config
    layers = int(getattr(config, "num_hidden_layers", 1))
    hidden = int(getattr(config, "hidden_size", 0))
    vocab = int(getattr(config, "vocab_size", 0))
    gc = bool(checkpointing) if checkpointing is not None else training.gradient_checkpointing is True
    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    if gc:  # layer inputs kept, one layer's activations recomputed at a time
        activations = micro * (layers * hidden * act_bytes + per_layer + rest)
    else:
        activations = micro * (layers * per_layer + rest)
    head = min(micro, _TOKEN_TILE) * min(vocab, _VOCAB_TILE) * act_bytes + micro * hidden * (4 + act_bytes)
    activations = int(activations + head)
    total_mem = _device_memory(device)
    total = weights + grads + optimizer + activations
    return Plan(
        method=tuner.method.name,
        objective=tuner.objective_used.name,
        device=str(device),
        precision=precision,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in params),
        examples=len(enc.rows),
        tokens=int(enc.num_tokens),
        steps=steps,
        micro_batch_tokens=int(micro),
        packing=packing,
        gradient_checkpointing=gc,
        weights_bytes=int(weights),
        gradients_bytes=int(grads),
        optimizer_bytes=int(optimizer),
        activations_bytes=activations,
        device_memory_bytes=total_mem,
        fits=None if total_mem is None else total <= 0.95 * total_mem,
    )


def checkpointing_needed(tuner: Any, model: Any, enc: Any) -> bool:
    """``Training(gradient_checkpointing="auto")``: on only when the run would not fit on its CUDA device without it."""
    if getattr(model, "device", None) is None or model.device.type != "cuda":
        return False
    plan = plan_encoded(tuner, model, enc, checkpointing=False)
    if plan.fits is None or plan.fits:
        return False
    logger.info("gradient checkpointing on: the run needs about %.1f GiB without it", plan.total_bytes / 2**30)
    return True
