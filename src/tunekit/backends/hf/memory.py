"""Activation and loss memory of a training step, from the model's structure (no probe forward).

Activation memory comes from a per-layer formula (:func:`layer_bytes_per_token`: the layer's norms,
attention, the projections that train and their LoRA ranks, its MLP), the precision (bf16 autocast,
fp32 norms) and gradient checkpointing, plus the LM head loss's transient peak (:func:`loss_bytes`,
after trl's chunked log-prob kernel) and autocast's weight copies. Each term is a tensor the step really
keeps: ``memory_measure.py`` measures a step on the CPU, and the formula is tested against it
(tests/integration/test_plan_accuracy.py, benchmarks/plan_accuracy.py). :mod:`.planning` assembles a
:class:`tunekit.Plan` from these figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tunekit._torch import unique_parameters, unwrap_peft
from tunekit.backends.hf.fastpath import importable

__all__ = [
    "activation_parts",
    "autocast_copies",
    "backbone",
    "base_bytes",
    "block_bytes_per_token",
    "layer_bytes_per_token",
    "loss_bytes",
    "rest_bytes_per_token",
    "text_config",
]

logger = logging.getLogger("tunekit")

_TOKEN_TILE, _VOCAB_TILE = 4096, 32768  # trl.kernels.chunked_logprob's tiles
_TORCH_FOLD_TEMPS = 7  # fp32 tile-sized temporaries alive at once in its torch (non-Triton) backward, measured


def backbone(model: Any) -> Any:
    """The decoder stack (``model.model`` of a causal LM) under any peft wrapper; of a vision-language model, its
    language model's (``model.model.language_model``, Idefics3 / SmolVLM's ``text_model``)."""
    base: Any = unwrap_peft(model)
    inner = getattr(base, str(base.base_model_prefix), base)
    for name in ("language_model", "text_model"):
        decoder = getattr(inner, name, None)
        if decoder is not None and hasattr(decoder, "layers"):
            return decoder
    return inner


def text_config(model: Any) -> Any:
    """The config of the model's language model: its own for a text model, ``text_config`` for a vision-language
    one (whose top-level config holds the tower's and the language model's)."""
    config = unwrap_peft(model).config
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


@dataclass(frozen=True)
class _Linear:
    """One projection of a decoder layer, as far as its saved input is concerned."""

    name: str
    in_features: int
    trainable: bool  # its weight or an adapter on it trains: the backward needs its input
    rank: int  # LoRA rank (0: none); lora_B keeps lora_A's output, rank values per token
    # bitsandbytes' 4-bit layer (QLoRA) computes in the compute dtype but returns its output in its input's dtype
    # (Linear4bit.forward), the residual stream's: in a QLoRA model, fp32 (peft's kbit preparation upcasts the norms).
    output_in_input_dtype: bool = False


def _decoder_layer(model: Any) -> Any:
    """The layer the formula reads: the first that trains (tk.Freeze trains only the last ones), else the first."""
    layers = getattr(backbone(model), "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"{type(backbone(model)).__name__} has no .layers to read a decoder layer from")
    return next((x for x in layers if any(p.requires_grad for p in x.parameters())), layers[0])


def _linears(layer: Any) -> list[_Linear]:
    """The layer's projections (peft-wrapped ones as one, with their LoRA rank)."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: list[_Linear] = []
    inside: str | None = None  # the peft layer being walked: its lora_A / lora_B / base_layer are not projections
    for name, m in layer.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        short = name.rsplit(".", 1)[-1]
        if isinstance(m, BaseTunerLayer):
            base = m.get_base_layer()
            ranks = getattr(m, "r", {})
            rank = max(ranks.values(), default=0) if isinstance(ranks, dict) else 0
            trainable = any(p.requires_grad for p in layer.get_submodule(name).parameters())
            four_bit = type(base).__name__ == "Linear4bit"
            found.append(_Linear(short, int(getattr(base, "in_features", 0)), trainable, int(rank), four_bit))
            inside = f"{name}."
        elif isinstance(m, torch.nn.Linear):
            four_bit = type(m).__name__ == "Linear4bit"
            found.append(_Linear(short, m.in_features, m.weight.requires_grad, 0, four_bit))
    return found


# Projections that read one and the same tensor: in full precision they share one saved input.
_SHARED_INPUTS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"}, {"query", "key", "value"}, {"w1", "w3"})
_GATED = {"gate_proj", "w1", "w3", "gate_up_proj"}


def _norms(layer: Any, config: Any) -> list[tuple[int, bool]]:
    """(values per token, weight trains) of each normalisation in the layer (per-head q/k norms span every head)."""
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", heads) or heads)
    out = []
    for name, m in layer.named_modules():
        weight = getattr(m, "weight", None)
        if "norm" not in type(m).__name__.lower() or weight is None:
            continue
        size = int(weight.numel())
        short = name.rsplit(".", 1)[-1]
        if short.startswith("q_") and size < int(config.hidden_size):
            size *= heads
        elif short.startswith("k_") and size < int(config.hidden_size):
            size *= kv_heads
        out.append((size, bool(weight.requires_grad)))
    return out


def layer_bytes_per_token(model: Any, config: Any, *, mixed: bool, liger: bool = False) -> float:
    """Bytes one decoder layer keeps per token for the backward pass, from the model's structure.

    ``mixed``: the step runs under bf16 / fp16 autocast (16-bit compute, whatever dtype the weights are in).
    ``liger``: Liger's RMSNorm and SwiGLU kernels replace the model's (tunekit applies them on CUDA
    when liger-kernel is installed); they keep less, see the terms below.
    Checked against tensors saved for the backward, measured (backends/hf/memory_measure.py).
    """
    w = base_bytes(model)  # the residual stream's dtype
    return block_bytes_per_token(_decoder_layer(model), config, w=w, mixed=mixed, liger=liger)


def block_bytes_per_token(layer: Any, config: Any, *, w: int, mixed: bool, liger: bool = False) -> float:
    """Bytes one transformer block ``layer`` keeps per token for the backward: :func:`layer_bytes_per_token`'s
    terms, for any block whose shape ``config`` gives (``hidden_size``, ``num_attention_heads``, ...); ``w``: bytes
    of the residual stream's values (a vision tower's block too: vision_plan.py)."""
    a = 2 if mixed else w  # the compute dtype: what matmuls take and give
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    linears = _linears(layer)
    inter = max((x.in_features for x in linears if x.name in {"down_proj", "w2", "fc2", "dense_4h_to_h"}), default=0)
    inter = inter or int(getattr(config, "intermediate_size", 4 * h) or 4 * h)
    total = 0.0
    # RMSNorm / LayerNorm compute in fp32: they keep their fp32 input and 1/rms per token; a trainable weight
    # also keeps the normalised input it multiplies (cast back to the residual stream's dtype).
    # Liger's RMSNorm keeps only its input, as it is, and 1/rms (it recomputes the rest in its backward).
    for size, trains in _norms(layer, config):
        total += w * size + 4 if liger else 4 * size + 4 + (w * size if trains else 0)
    # Attention (SDPA, also tunekit's per-example varlen SDPA): q, k, v, its output, and an fp32 log-sum-exp per head.
    total += a * (2 * heads * head_dim + 2 * kv_heads * head_dim) + 4 * heads
    # Each projection whose weight (or adapter) trains keeps its input. q/k/v (and gate/up) read one tensor and
    # share it, unless autocast has to cast it to 16 bits first (an fp32 residual stream, or peft's fp32 adapters,
    # which take their input in fp32): then each projection casts, and keeps, its own copy.
    shared: set[str] = set()
    for x in linears:
        if not x.trainable:
            continue
        group = next((g for g in _SHARED_INPUTS if x.name in g), None)
        own_copy = mixed and (w == 4 or x.rank > 0)
        if group is not None and not own_copy:
            if any(n in shared for n in group):
                continue
            shared.add(x.name)
        total += a * x.in_features + a * x.rank  # lora_B keeps lora_A's output (rank values)
    # The MLP's elementwise part: a gated MLP keeps gate, act(gate) and up (Liger's SwiGLU only gate and up); a
    # plain one its activation's input. In the projections' output dtype: the compute dtype, or for bitsandbytes'
    # 4-bit layers the residual stream's (measured: tests/integration/test_plan_qlora.py).
    gated = any(x.name in _GATED for x in linears)
    m = w if any(x.output_in_input_dtype for x in linears) else a
    total += m * ((2 if liger else 3) if gated else 1) * inter
    return total


def base_bytes(model: Any) -> int:
    """Bytes per value of the frozen base weights (the residual stream's dtype); the weights' when all train."""
    params = unique_parameters(model)
    frozen = [p for p in params if not p.requires_grad]
    return int((frozen or params)[0].element_size())


def rest_bytes_per_token(model: Any, config: Any, *, padded_length: int, liger: bool = False) -> float:
    """Bytes per token kept outside the decoder layers: embeddings, final norm, the LM head's inputs, masks."""
    w = base_bytes(model)  # the residual stream, the backbone's output
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    embedding = backbone(model).get_input_embeddings() if hasattr(backbone(model), "get_input_embeddings") else None
    trains_embedding = any(p.requires_grad for p in embedding.parameters()) if embedding is not None else False
    norm = getattr(backbone(model), "norm", None)
    norm_trains = any(p.requires_grad for p in norm.parameters()) if norm is not None else False
    total = 8.0 if trains_embedding else 0.0  # the token ids, for the embedding's gradient
    total += w * h + 4 if liger else 4 * h + 4 + (w * h if norm_trains else 0)  # the final norm, as in a layer
    total += w * h + 8 + 4 + 1  # the head's copy of the shifted hidden states, labels (int64), log Z, label mask
    total += 2 * head_dim * w  # the rotary cos and sin, shared by every layer
    total += padded_length  # a padded batch's boolean attention mask: one row of it per token
    return total


def autocast_copies(model: Any, mixed: bool) -> int:
    """Bytes of autocast's 16-bit copies of the layers' trainable fp32 weights, cached for the whole step."""
    if not mixed:
        return 0
    layers = getattr(backbone(model), "layers", None) or []
    params = {id(p): p for layer in layers for p in layer.parameters()}.values()
    return sum(2 * p.numel() for p in params if p.requires_grad and p.dim() == 2 and p.element_size() == 4)


def _triton(device: Any) -> bool:
    """Whether trl's chunked loss runs its Triton kernel on ``device``: on CUDA with Triton installed. A plan for a
    CUDA device this machine does not have assumes Triton there (torch's Linux CUDA wheels install it)."""
    import torch

    return bool(device.type == "cuda" and (importable("triton") or not torch.cuda.is_available()))


def loss_bytes(model: Any, tokens: int, *, mixed: bool, device: Any, fused: bool = True) -> int:
    """Peak transient bytes of the loss, in its backward.

    ``fused`` (SFT / CausalLM with a plain LM head): trl's chunked log-prob loss
    (trl.kernels.chunked_logprob). Its backward recomputes each tile of logits into a (4096 tokens x
    32768) buffer (always that wide), folds it in fp32 (where Triton is missing, as on the CPU,
    through several fp32 temporaries of the tile's real width), and accumulates the hidden states'
    gradient, and the head's if it trains, in fp32. Measured: backends/hf/memory_measure.py.

    Otherwise (the model's own loss, preference and RL trainers) the full logits exist: in the compute
    dtype, upcast to fp32 for the cross-entropy, its log-softmax kept, and their gradient (not measured).
    """
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None:  # a sequence-classification head: one score per sequence, nothing to speak of
        return 0
    vocab, h = int(weight.shape[0]), int(weight.shape[1])
    c = 2 if mixed else int(weight.element_size())
    if not fused:
        return int(tokens * vocab * (c + 3 * 4))
    rows = min(tokens, _TOKEN_TILE)
    total = rows * _VOCAB_TILE * c  # the tile buffer
    if not _triton(device):
        total += _TORCH_FOLD_TEMPS * rows * min(vocab, _VOCAB_TILE) * 4
    total += tokens * h * 4  # grad of the hidden states, fp32
    if weight.requires_grad:
        total += vocab * h * 4  # grad of the head's weight, fp32
    return int(total)


def _layers_in_the_graph(model: Any, layers: int) -> int:
    """How many decoder layers the backward goes through: those from the first one that trains.

    Layers below it see inputs that need no gradient, so autograd keeps nothing of theirs, unless
    something before them trains (the embeddings, a prompt encoder's virtual tokens).
    """
    try:
        blocks = list(backbone(model).layers)
    except (AttributeError, TypeError) as e:  # an architecture laid out otherwise: every layer counts
        logger.debug("no decoder layers to read on %s (%s)", type(model).__name__, e)
        return layers
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    head = model.get_output_embeddings()
    after = {id(p) for p in head.parameters()} if head is not None else set()
    norm = getattr(backbone(model), "norm", None)
    after |= {id(p) for p in norm.parameters()} if norm is not None else set()
    embedding = backbone(model).get_input_embeddings()
    tied = {id(p) for p in embedding.parameters()} & after  # a tied head trains the embedding's weight too
    before = [p for p in unique_parameters(model) if id(p) not in in_blocks and (id(p) not in after or id(p) in tied)]
    prompt_learning = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    if prompt_learning or any(p.requires_grad for p in before):
        return layers
    first = next((i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())), len(blocks))
    return layers - first


def activation_parts(
    model: Any,
    *,
    tokens: int,
    padded_length: int,
    checkpointing: bool,
    precision: str,
    device: Any,
    fused_loss: bool = True,
    liger: bool = False,
    offload: bool = False,
) -> dict[str, int]:
    """Estimated activation memory of one micro-batch of ``tokens`` tokens, in three parts (bytes).

    ``saved``: what the forward keeps for the backward (per layer, from :func:`layer_bytes_per_token`);
    ``loss``: the LM head loss's transient peak; ``autocast``: autocast's 16-bit weight copies.
    ``padded_length``: the batch's padded sequence length (0 for packed batches); ``fused_loss``: the
    loss goes through trl's chunked LM head (the fast SFT / CausalLM path), see :func:`loss_bytes`;
    ``liger``: Liger's layer kernels are applied (see :func:`layer_bytes_per_token`); ``offload``: trl's activation
    offloading moves what the layers save to CPU memory in the forward and brings it back layer by layer in the
    backward, so the device holds about two layers' worth (the layer in its backward and the next one, fetched ahead
    on a second stream) instead of all of them (an estimate: not measured, it runs only on CUDA).
    """
    config = text_config(model)
    mixed = precision in ("bf16", "fp16")
    try:
        per_layer = layer_bytes_per_token(model, config, mixed=mixed, liger=liger)
        rest = rest_bytes_per_token(model, config, padded_length=padded_length, liger=liger)
    except (AttributeError, TypeError, ValueError) as e:  # an architecture laid out otherwise: a rough estimate
        logger.info("no per-layer memory formula for this model (%s); using a rough estimate", e)
        h = int(getattr(config, "hidden_size", 1024))
        inter = int(getattr(config, "intermediate_size", 4 * h) or 4 * h)
        per_layer, rest = 4.0 * (12 * h + 4 * inter), 16.0 * h
    layers = int(getattr(config, "num_hidden_layers", 1))
    # Under activation offloading two layers' saved tensors are on the device at a time (see above).
    in_flight = min(2, layers) if offload else layers
    if checkpointing:  # each layer keeps only its input (the residual stream); the backward recomputes one at a time
        saved = tokens * (in_flight * int(config.hidden_size) * base_bytes(model) + per_layer + rest)
    else:
        graph = _layers_in_the_graph(model, layers)
        saved = tokens * (min(graph, in_flight) * per_layer + rest)
    return {
        "saved": int(saved),
        "loss": loss_bytes(model, tokens, mixed=mixed, device=device, fused=fused_loss),
        # Under checkpointing the forward keeps no weight copies; the recomputation casts one layer's at a time.
        "autocast": autocast_copies(model, mixed) // (layers if checkpointing else 1),
    }
