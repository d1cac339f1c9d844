"""Measure one SFT training step's memory on the CPU, component by component, to check ``plan()`` against.

This is the ground truth for ``tuner.plan()``'s estimate (tests/integration/test_plan_accuracy.py,
benchmarks/plan_accuracy.py); ``plan()`` itself never runs the model. The step is the one tunekit's
fast SFT path takes (fastpath.py): the same collator (packed or padded), the same attention
implementation, trl's chunked LM-head loss, gradient checkpointing as the Trainer enables it, and
bf16 autocast as accelerate applies it.

- ``weights``: every parameter's storage; ``gradients``: the ``.grad`` tensors after the backward;
  ``optimizer``: the tensors of ``torch.optim.AdamW``'s state after one update (learning rate 0).
- ``activations``: what the forward leaves for the backward. Every tensor autograd saves is caught
  with ``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage, at the storage's
  full size (a view saves its whole base); parameters and buffers are not activations. With
  gradient checkpointing, the checkpoint keeps each layer's inputs instead (caught where the layer
  calls its checkpoint function), and the backward recomputes one layer at a time: the largest
  layer's own saved tensors (measured in a forward without checkpointing) are added once.
- ``loss``: the transient peak of the LM head's chunked loss, forward and backward (its tile of
  logits and the temporaries of folding it, the fp32 accumulators of the gradients), taken from the
  allocator's events under ``torch.profiler`` with memory profiling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from tunekit._torch import unique_parameters, unwrap_peft
from tunekit.backends.hf import fastpath
from tunekit.backends.hf.attention import VARLEN, varlen_attention
from tunekit.backends.hf.memory import backbone
from tunekit.backends.hf.optimizers import measured_state_bytes
from tunekit.backends.hf.quantization import parameter_bytes
from tunekit.backends.hf.sft import fused_loss_only, packed_collator
from tunekit.data.encoding import Encoded
from tunekit.training import Training

__all__ = ["StepMemory", "measure_step"]


@dataclass(frozen=True)
class StepMemory:
    """Measured bytes of one training step (see the module docstring for what each is)."""

    tokens: int  # positions in the micro-batch (padding included)
    padded_length: int  # the padded batch's sequence length; 0 when the batch is packed
    weights: int
    gradients: int
    optimizer: int
    saved: int  # tensors saved for the backward (checkpoint inputs and one recomputed layer under checkpointing)
    loss: int  # the LM head loss's transient peak

    @property
    def activations(self) -> int:
        return self.saved + self.loss

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "activations": self.activations, "total": self.total}


class _Saved:
    """Storages saved for the backward, by decoder layer (None: outside any layer)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.by_layer: dict[int | None, dict[int, int]] = {}
        self.layer: int | None = None

    def add(self, t: Any) -> None:
        s = t.untyped_storage()
        if s.device.type != "meta" and s.data_ptr() not in self.exclude and s.nbytes():
            self.by_layer.setdefault(self.layer, {})[s.data_ptr()] = s.nbytes()

    def pack(self, t: Any) -> Any:
        self.add(t)
        return t

    def total(self) -> int:
        merged: dict[int, int] = {}
        for d in self.by_layer.values():
            merged.update(d)
        return sum(merged.values())

    def largest_layer(self) -> int:
        return max((sum(d.values()) for k, d in self.by_layer.items() if k is not None), default=0)


def _layers(model: Any) -> list[Any]:
    return list(getattr(backbone(model), "layers", []))


@contextlib.contextmanager
def _track_layers(model: Any, saved: _Saved) -> Iterator[None]:
    handles = []
    for i, layer in enumerate(_layers(model)):
        handles.append(layer.register_forward_pre_hook(lambda _m, _a, i=i: setattr(saved, "layer", i)))
        handles.append(layer.register_forward_hook(lambda _m, _a, _o: setattr(saved, "layer", None)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _track_checkpoint_inputs(model: Any, saved: _Saved) -> Iterator[None]:
    """Count what each checkpointed layer keeps for its recomputation: its tensor arguments."""
    import torch

    originals = []
    for m in model.modules():
        fn = getattr(m, "_gradient_checkpointing_func", None)
        if fn is None:
            continue

        def wrapped(function: Any, *args: Any, _fn: Any = fn, **kwargs: Any) -> Any:
            keywords = getattr(function, "keywords", {}) or {}
            for v in [*args, *kwargs.values(), *keywords.values()]:
                for t in v if isinstance(v, (tuple, list)) else (v,):
                    if isinstance(t, torch.Tensor):
                        saved.add(t)
            return _fn(function, *args, **kwargs)

        originals.append((m, fn))
        m._gradient_checkpointing_func = wrapped
    try:
        yield
    finally:
        for m, fn in originals:
            m._gradient_checkpointing_func = fn


def _peak_allocated(fn: Any) -> int:
    """Peak bytes allocated on the CPU (above the start) while ``fn()`` runs.

    From the allocator's own records under ``torch.profiler(profile_memory=True)``: every allocation
    and free, in time order (the per-op summaries net an op's frees against its allocations).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())  # type: ignore[union-attr]
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.typed[0] == _EventType.Allocation and e.typed[1].device.type == "cpu":
            sizes.append((e.start_time_ns, int(e.typed[1].alloc_size)))
    live = peak = 0
    for _, n in sorted(sizes):
        live += n
        peak = max(peak, live)
    return peak


def _loss_peak(model: Any, hidden: Any, labels: Any, autocast: Any) -> int:
    """The transient peak of trl's chunked log-prob loss on ``hidden`` (tokens x hidden), forward and backward.

    Called as trl's fused LM head calls it (trl.trainer.utils.add_fused_lm_head), on a copy of the hidden states
    (the backbone's output is already counted among the saved tensors).
    """
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    head = model.get_output_embeddings()
    h = hidden.detach().requires_grad_(True)

    def step() -> None:
        with autocast():
            out = ChunkedLogProbFunction.apply(
                h, head.weight, head.bias, labels, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs",)
            )
        (-out[0].sum()).backward()

    peak = _peak_allocated(step)
    model.zero_grad(set_to_none=True)
    return peak


def measure_step(
    model: Any, tokenizer: Any, enc: Encoded, training: Training, *, checkpointing: bool = False
) -> StepMemory:
    """Measure one training step of ``model`` (method applied) on the encoded data ``enc``, all of it as one
    micro-batch (CPU only), as ``training`` configures the step: ``measure_step(tuner.model, tuner.tokenizer,
    tuner.prepare(rows), tuner.training)``.

    Leaves trl's fused LM head installed on ``model``, as a ``fit`` would; the weights are not changed.
    """
    import torch

    device = torch.device("cpu")
    if not isinstance(enc, Encoded):
        raise TypeError("measure_step measures supervised (tokenised) data only")
    path = fastpath.choose(model, training, device)
    collate = packed_collator(tokenizer, path)
    batch = collate(list(enc.to_dataset()))
    batch.pop("tunekit_real_tokens")
    if path.attention != VARLEN:
        batch.pop("tunekit_bounds", None)
    tokens = int(batch["input_ids"].numel())
    params = unique_parameters(model)
    trainable = [p for p in params if p.requires_grad]
    weights = sum(parameter_bytes(p) for p in params)  # a quantized weight with its quantization state
    bf16 = training.precision == "bf16"

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    exclude = {t.untyped_storage().data_ptr() for t in [*params, *model.buffers()]}
    fused_loss_only(model)
    model.train()
    # The plain forward must not checkpoint: a model prepared for QLoRA with checkpointing has it on already.
    was_checkpointing = bool(getattr(unwrap_peft(model), "is_gradient_checkpointing", False))
    if was_checkpointing:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()

    state: dict[str, int] = {}

    def forward(gc: bool) -> _Saved:
        saved = _Saved(exclude)
        if gc:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(varlen_attention(model, path.attention))
                stack.enter_context(_track_layers(model, saved))
                if gc:
                    stack.enter_context(_track_checkpoint_inputs(model, saved))
                with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), autocast():
                    out = model(**batch, use_cache=False, fused_lm_head=True)
                (-out.log_probs.sum()).backward()  # inside the attention context: checkpointing recomputes there
            # What the step holds besides activations: the gradients, and AdamW's state after one update (lr 0).
            # (plan() counts the chosen optimizer's state; tests/integration/test_optimizers.py measures each one.)
            state["gradients"] = sum(p.grad.nbytes for p in trainable if p.grad is not None)
            optimizer = torch.optim.AdamW(trainable, lr=0.0)
            optimizer.step()
            state["optimizer"] = measured_state_bytes(optimizer)  # its step counters (fp32 scalars) included
        finally:
            model.zero_grad(set_to_none=True)
            if gc:
                disable = getattr(model, "activation_checkpointing_disable", None) or (
                    model.gradient_checkpointing_disable
                )
                disable()
        return saved

    plain = forward(False)
    saved = plain.total()
    if checkpointing:
        saved = forward(True).total() + plain.largest_layer()
    if was_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    # The head scores each position but the last of each row (trl shifts the labels), from the backbone's output.
    labels = batch["labels"][:, 1:].clamp(min=0).reshape(-1)
    head_weight = model.get_output_embeddings().weight
    hidden = torch.zeros(labels.numel(), head_weight.shape[1], dtype=head_weight.dtype)
    loss = _loss_peak(model, hidden, labels, autocast)
    return StepMemory(
        tokens=tokens,
        padded_length=0 if path.packing else int(batch["input_ids"].shape[1]),
        weights=int(weights),
        gradients=int(state["gradients"]),
        optimizer=int(state["optimizer"]),
        saved=int(saved),
        loss=int(loss),
    )
