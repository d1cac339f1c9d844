"""``tuner.plan(data)`` for the hf backend: exact parameter counts, data figures, a memory estimate.

Nothing is trained or run and, when the tuner has not loaded its model yet, no weights are read:
the model is built as ``fit`` builds it (:func:`.models.build_model`) on the meta device, with the
method applied, which gives exact parameter counts and dtypes; a QLoRA base is built as its quantized
skeleton, whose weights are counted as bitsandbytes stores them (:func:`.quantization.parameter_bytes`).
Activation memory comes from the formulas of :mod:`.memory`.

A plan can be made for a CUDA device this machine does not have (``Training(device="cuda")`` on a laptop): it
is planned as a CUDA run with bf16 (``precision="auto"``) and Triton (which torch's Linux CUDA wheels install), and
compared with ``device_memory`` when the caller gives it (else ``fits`` is unknown).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from tunekit._quiet import quiet
from tunekit._torch import count_parameters, unique_parameters, unwrap_peft
from tunekit.backends.base import LoadedModel, RunSpec, VisionRows
from tunekit.backends.hf import fastpath
from tunekit.backends.hf.memory import activation_parts, base_bytes
from tunekit.backends.hf.models import build_model, resolve_device, resolve_precision
from tunekit.backends.hf.optimizers import state_bytes
from tunekit.backends.hf.quantization import check_before_load, parameter_bytes
from tunekit.backends.hf.vision import VisionEncoded, is_vision_model
from tunekit.backends.hf.vision_plan import (
    VisionCount,
    count_preference_images,
    count_vision,
    tower_bytes,
    vision_params,
)
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.rows import IMAGES, TrainerRows
from tunekit.errors import IncompatibleError
from tunekit.plan import Plan
from tunekit.training import Training
from tunekit.training_data import encode_for

__all__ = ["checkpointing_needed", "make_plan", "plan_encoded"]

logger = logging.getLogger("tunekit")


def _micro_batch_tokens(lengths: list[int], training: Training, packing: bool, micro_batches: int) -> int:
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


def _steps(batches: int, training: Training) -> int:
    if training.max_steps:
        return int(training.max_steps)
    per_epoch = max(batches // training.grad_accum + int(batches % training.grad_accum > 0), 1)
    return math.ceil(training.epochs * per_epoch)


def _absent(device: Any) -> bool:
    """Whether ``device`` is a CUDA device this machine does not have (a plan made here for a GPU elsewhere)."""
    import torch

    return bool(device.type == "cuda" and not torch.cuda.is_available())


def _planned_device(pref: str) -> Any:
    """The device a plan is for: ``Training.device`` as ``fit`` resolves it, except that a CUDA device this machine
    does not have is planned for all the same (where ``fit`` would refuse it)."""
    import torch

    if pref != "auto" and torch.device(pref).type == "cuda" and not torch.cuda.is_available():
        return torch.device(pref)
    return resolve_device(pref)


def _planned_precision(pref: str, device: Any) -> str:
    """``Training.precision`` as ``fit`` resolves it; ``"auto"`` on a CUDA device this machine does not have is bf16
    (every CUDA GPU since Ampere, 2020, computes in bf16; pass ``precision="fp16"`` to plan for an older one)."""
    if pref == "auto" and _absent(device):
        return "bf16"
    return resolve_precision(pref, device)


def _device_memory(device: Any) -> int | None:
    """Memory the run can use: the CUDA device's total, or on the CPU the RAM available now; None for a CUDA device
    this machine does not have.

    On the CPU, what other processes hold is not the run's, so the figure is psutil's ``available``
    (free plus reclaimable caches; psutil comes with accelerate), not the machine's total.
    """
    import torch

    if _absent(device):
        return None
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(psutil.virtual_memory().available)


def make_plan(
    spec: RunSpec,
    norm: NormalisedData,
    loaded: LoadedModel | None,
    *,
    checkpointing: bool | None = None,
    device_memory: int | None = None,
) -> Plan:
    """The Plan of fitting ``norm``; see :class:`tunekit.Plan`. ``loaded``: the tuner's model when it is in memory;
    else the model is built as ``fit`` builds it (:func:`.models.build_model`), on the meta device (a QLoRA base as
    its quantized skeleton). ``device_memory``: the bytes to compare the total with, instead of the device's own."""
    with quiet():
        if loaded is not None:
            model, tokenizer = loaded.model, loaded.tokenizer
            processor = getattr(loaded, "processor", None)
        else:
            device = _planned_device(spec.training.device)
            check_before_load(spec.method, spec.model_ref, device, planning=True)  # QLoRA: on CUDA, with bitsandbytes
            precision = _planned_precision(spec.training.precision, device)
            model, tokenizer, _, processor = build_model(spec, precision=precision, meta=True)
        enc: Encoded | TrainerRows | VisionRows | VisionCount = encode_for(spec, norm, tokenizer)
        if isinstance(enc, VisionRows):  # rows with images: counted as fit encodes them, the images by size
            if processor is None:
                raise IncompatibleError(
                    f"the training data's row {enc.first_image_row()} holds an image, but the model (model type "
                    f"{getattr(unwrap_peft(model).config, 'model_type', None)!r}) is a text-only model: it has no "
                    "vision tower to read images; use a vision-language model, or drop the images"
                )
            image_token = getattr(unwrap_peft(model).config, "image_token_id", None)
            enc = count_vision(processor, tokenizer, enc.examples, enc.settings, image_token_id=image_token)
        elif isinstance(enc, TrainerRows) and processor is not None and any(r.get(IMAGES) for r in enc.records):
            image_token = getattr(unwrap_peft(model).config, "image_token_id", None)  # DPO pairs with images
            enc = count_preference_images(processor, tokenizer, enc, image_token_id=image_token)
        assert not isinstance(enc, VisionRows)
        return plan_encoded(spec, model, enc, checkpointing=checkpointing, device_memory=device_memory)


def _liger_knows(model: Any) -> bool:
    """Whether Liger has kernels for this architecture (fastpath.apply_liger applies them; else it trains without)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return False
    return getattr(unwrap_peft(model).config, "model_type", None) in MODEL_TYPE_TO_APPLY_LIGER_FN


def plan_encoded(
    spec: RunSpec,
    model: Any,
    enc: Encoded | TrainerRows | VisionCount,
    *,
    checkpointing: bool | None = None,
    device_memory: int | None = None,
) -> Plan:
    """The Plan of training ``model`` (method applied) on encoded data ``enc``; ``device_memory``: see make_plan."""
    vision = enc if isinstance(enc, VisionCount) else None
    data: Encoded | TrainerRows | VisionEncoded = enc.encoded if isinstance(enc, VisionCount) else enc
    training = spec.training
    device = _planned_device(training.device)
    precision = _planned_precision(training.precision, device)
    params = unique_parameters(model)
    trainable = [p for p in params if p.requires_grad]
    weights = sum(parameter_bytes(p) for p in params)  # a quantized weight as bitsandbytes stores it
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = state_bytes(training, model)  # the chosen optimizer's state, as it allocates it (optimizers.py)
    tokenised = isinstance(data, Encoded)
    liger = False
    if isinstance(data, VisionEncoded):  # vision-language models train unpacked, with the model's own loss (sft.py)
        lengths = [len(x) for x in data.input_ids]
        packing = False
    elif isinstance(data, Encoded):
        lengths = [len(x) for x in data.input_ids]
        path = fastpath.choose(model, training, device)
        packing, liger = path.packing, path.liger and _liger_knows(model)
    else:  # preference / RL rows: trl pads them; a row's tokens are spread over its prompt and answers
        lengths = [max(1, data.num_tokens // max(1, len(data.records)))] * len(data.records)
        packing = False
    if isinstance(data, Encoded) and packing and training.tokens_per_batch is not None:
        batches = len(fastpath.pack_to_budget(data.to_dataset(), training.tokens_per_batch))
    else:
        batches = math.ceil(len(lengths) / training.batch_size)
    steps = _steps(batches, training)
    micro = _micro_batch_tokens(lengths, training, packing, steps * training.grad_accum)
    padded_length = 0 if packing else max(lengths, default=0)
    total_mem = device_memory if device_memory is not None else _device_memory(device)

    fused = tokenised and fastpath.fused_loss_applies(model)  # as the SFT trainer decides (sft.py)
    # A vision tower that trains keeps its blocks' activations for the micro-batch's images: sized for the
    # batch_size sequences whose images hold the most pixel values.
    tower = 0
    if vision is not None:
        pixels = sum(sorted(vision.pixel_values, reverse=True)[: training.batch_size])
        tower = tower_bytes(model, pixels, mixed=precision in ("bf16", "fp16"), weight_bytes=base_bytes(model))

    def activations_with(gc: bool) -> int:
        parts = activation_parts(
            model,
            tokens=micro,
            padded_length=padded_length,
            checkpointing=gc,
            precision=precision,
            device=device,
            fused_loss=fused,
            liger=liger,
            offload=training.activation_offload and device.type == "cuda",
        )
        return sum(parts.values()) + tower

    # As fit decides it (backend.fit, peft_map.training_for): "auto" is on only on a CUDA device the run would
    # not fit without it (with activation offloading when it is on: the cheapest setting that fits, as recomputing
    # costs more time than the transfers offloading overlaps with compute); methods that cannot checkpoint (prefix
    # tuning) train without. Against a device whose memory is not known (a CUDA device this machine does not have,
    # and no device_memory given) "auto" stays off.
    if checkpointing is not None:
        gc = bool(checkpointing)
    elif training.gradient_checkpointing == "auto":
        gc = (
            device.type == "cuda"
            and total_mem is not None
            and weights + grads + optimizer + activations_with(False) > 0.95 * total_mem
        )
    else:
        gc = training.gradient_checkpointing is True
    gc = gc and spec.method.supports_gradient_checkpointing
    activations = activations_with(gc)
    total = weights + grads + optimizer + activations
    n_trainable, n_total = count_parameters(model)
    vision_trainable, vision_total = vision_params(model) if vision is not None or is_vision_model(model) else (0, 0)
    return Plan(
        method=spec.method.name,
        objective=spec.objective.name,
        device=str(device),
        precision=precision,
        trainable_params=n_trainable,
        total_params=n_total,
        examples=len(data.rows),
        tokens=int(data.num_tokens),
        sources=() if isinstance(data, VisionEncoded) else tuple(data.sources),  # a tk.Mix's sources
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
        optimizer=training.optimizer,
        activation_offload=training.activation_offload and device.type == "cuda",
        images=vision.images if vision is not None else 0,
        image_tokens=vision.image_tokens if vision is not None else 0,
        vision_params=vision_total,
        vision_trainable_params=vision_trainable,
    )


def checkpointing_needed(spec: RunSpec, model: Any, enc: Encoded) -> bool:
    """``Training(gradient_checkpointing="auto")``: on only when the run would not fit on its CUDA device without it."""
    if getattr(model, "device", None) is None or model.device.type != "cuda":
        return False
    plan = plan_encoded(spec, model, enc, checkpointing=False)
    if plan.fits:
        return False
    logger.info("gradient checkpointing on: the run needs about %.1f GiB without it", plan.total_bytes / 2**30)
    return True
