"""Scale-out configs: ``tk.DDP()``, ``tk.FSDP(...)``, ``tk.DeepSpeed(stage=...)``.

Pass one as ``tk.Training(distributed=...)`` and start the same script with several processes
(``torchrun --nproc_per_node N script.py`` or ``tunekit launch --nproc N script.py``). tunekit
builds no process group of its own: the config is translated into transformers'
``TrainingArguments`` (``fsdp`` / ``fsdp_config`` / ``deepspeed`` / ``ddp_*``), from which the
Trainer builds accelerate's ``FullyShardedDataParallelPlugin`` (FSDP2) or ``DeepSpeedPlugin``.

Run with several processes and no ``distributed`` config, a run uses DDP (what torchrun implies).
These are pure configs: they import neither torch nor accelerate.

Example:
    >>> import tunekit as tk
    >>> tk.Training(distributed=tk.FSDP(cpu_offload=True)).distributed.cpu_offload
    True
    >>> tk.DeepSpeed(stage=3, offload="optimizer").stage
    3
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from tunekit._config import Config

__all__ = [
    "DDP",
    "FSDP",
    "DeepSpeed",
    "Distributed",
    "World",
    "coerce",
    "shards_parameters",
    "state_memory_per_gpu",
    "world",
]

logger = logging.getLogger("tunekit")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:  # world() is asked at every step: say it once per process
        _warned.add(message)
        logger.warning("%s", message)


class DDP(Config):
    """Data parallel: a full replica of the model on each process, gradients averaged every step.

    The fastest choice when the model, its gradients and optimizer states fit on one device (any
    LoRA run of a 7B model on a 24 GB GPU). Options map to transformers' ``ddp_*`` arguments.

    Example:
        >>> import tunekit as tk
        >>> tk.Training(distributed=tk.DDP(find_unused_parameters=False)).distributed.kind
        'ddp'
    """

    kind: Literal["ddp"] = Field("ddp", description="Names the engine in dumped configs (YAML / JSON).")

    find_unused_parameters: bool | None = Field(
        None,
        description="Let DDP look for parameters that got no gradient (slower); None: transformers' choice (on "
        "unless gradient checkpointing is on).",
    )
    bucket_cap_mb: int | None = Field(None, ge=1, description="Gradient bucket size for the all-reduce, in MB.")
    timeout_s: int = Field(1800, ge=10, description="How long a collective waits for the other processes.")

    _aliases: ClassVar[dict[str, str]] = {
        "ddp_find_unused_parameters": "find_unused_parameters",
        "ddp_bucket_cap_mb": "bucket_cap_mb",
        "ddp_timeout": "timeout_s",
        "timeout": "timeout_s",
    }


class FSDP(Config):
    """Fully sharded data parallel (PyTorch FSDP2, through accelerate): parameters, gradients and
    optimizer states are split across the processes and gathered layer by layer when needed.

    ``reshard_after_forward=True`` frees each layer's gathered weights after its forward (ZeRO-3's
    memory, one more all-gather in the backward); ``False`` keeps them until the backward (ZeRO-2's
    memory, less communication). ``auto_wrap="transformer"`` shards per decoder layer (the model's
    own ``_no_split_modules``, or ``wrap_classes``); ``"size"`` per module of at least
    ``min_params`` parameters. Needs CUDA GPUs: accelerate runs FSDP on accelerators only (on CPU
    it would quietly fall back to DDP, so tunekit refuses it there).

    Example:
        >>> import tunekit as tk
        >>> tk.FSDP(reshard_after_forward=False, activation_checkpointing=True).auto_wrap
        'transformer'
    """

    kind: Literal["fsdp"] = Field("fsdp", description="Names the engine in dumped configs (YAML / JSON).")

    reshard_after_forward: bool = Field(
        True, description="Free gathered layer weights after the forward (ZeRO-3-like); False keeps them (ZeRO-2-like)."
    )
    cpu_offload: bool = Field(False, description="Keep the sharded parameters and gradients in CPU memory.")
    auto_wrap: Literal["transformer", "size", "none"] = Field(
        "transformer", description="Shard unit: each decoder layer, each module over min_params, or the whole model."
    )
    wrap_classes: tuple[str, ...] | None = Field(
        None, description="Module class names sharded as units with auto_wrap='transformer' (default: the model's)."
    )
    min_params: int = Field(100_000_000, ge=1, description="Smallest module sharded on its own with auto_wrap='size'.")
    activation_checkpointing: bool = Field(
        False, description="FSDP's own activation checkpointing (use it instead of Training.gradient_checkpointing)."
    )
    state_dict: Literal["full", "sharded"] = Field(
        "full", description="Checkpoints hold the full state dict (gathered on rank 0) or one shard per process."
    )
    timeout_s: int = Field(1800, ge=10, description="How long a collective waits for the other processes.")

    _aliases: ClassVar[dict[str, str]] = {
        "transformer_layer_cls_to_wrap": "wrap_classes",
        "auto_wrap_policy": "auto_wrap",
        "min_num_params": "min_params",
        "offload": "cpu_offload",
        "offload_params": "cpu_offload",
        "sharding_strategy": "reshard_after_forward",
        "state_dict_type": "state_dict",
        "timeout": "timeout_s",
    }

    @model_validator(mode="after")
    def _check(self) -> FSDP:
        if self.wrap_classes is not None and self.auto_wrap != "transformer":
            raise ValueError(
                f"wrap_classes={list(self.wrap_classes)!r} applies to auto_wrap='transformer' only, not "
                f"auto_wrap={self.auto_wrap!r}; drop wrap_classes or use auto_wrap='transformer'"
            )
        if self.wrap_classes is not None and not self.wrap_classes:
            raise ValueError("wrap_classes must name at least one module class, or be None for the model's own")
        return self


class DeepSpeed(Config):
    """DeepSpeed ZeRO (through accelerate): stage 1 shards optimizer states, 2 also gradients, 3 also
    parameters. ``offload="optimizer"`` keeps optimizer states (and the update) on the CPU;
    ``"all"`` (stage 3) the parameters too. Needs CUDA and ``pip install "tunekit[deepspeed]"``.

    tunekit writes the DeepSpeed config (batch size, accumulation, clipping, precision come from
    ``tk.Training``, as transformers' ``"auto"`` values); ``overrides`` is merged into it last, for
    any other DeepSpeed option.

    Example:
        >>> import tunekit as tk
        >>> tk.Training(distributed=tk.DeepSpeed(stage=3, offload="all")).distributed.stage
        3
    """

    kind: Literal["deepspeed"] = Field("deepspeed", description="Names the engine in dumped configs (YAML / JSON).")

    stage: Literal[1, 2, 3] = Field(2, description="ZeRO stage: 1 optimizer states, 2 + gradients, 3 + parameters.")
    offload: Literal["none", "optimizer", "all"] = Field(
        "none", description="Offload to CPU memory: 'optimizer' states, or 'all' (optimizer and parameters, stage 3)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="DeepSpeed config entries merged over tunekit's (nested dicts merge)."
    )
    timeout_s: int = Field(1800, ge=10, description="How long a collective waits for the other processes.")

    _aliases: ClassVar[dict[str, str]] = {
        "zero_stage": "stage",
        "zero": "stage",
        "offload_optimizer": "offload",
        "offload_param": "offload",
        "offload_params": "offload",
        "config": "overrides",
        "ds_config": "overrides",
        "timeout": "timeout_s",
    }

    def __hash__(self) -> int:  # configs are hashable; ``overrides`` is a dict, so hash its JSON form
        return hash((type(self), json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)))

    @model_validator(mode="after")
    def _check(self) -> DeepSpeed:
        if self.offload == "all" and self.stage != 3:
            raise ValueError(
                f"offload='all' moves parameters to the CPU, which needs stage=3 (parameters sharded), not "
                f"stage={self.stage}; use stage=3, or offload='optimizer'"
            )
        return self


Distributed = Annotated[DDP | FSDP | DeepSpeed, Field(discriminator="kind")]

ENGINES: dict[str, type[Config]] = {"ddp": DDP, "fsdp": FSDP, "deepspeed": DeepSpeed}


def shards_parameters(config: DDP | FSDP | DeepSpeed | None) -> bool:
    """Whether each process holds only a shard of the weights (FSDP, ZeRO-3)."""
    return isinstance(config, FSDP) or (isinstance(config, DeepSpeed) and config.stage == 3)


def coerce(value: Any) -> Any:
    """``"fsdp"`` -> ``{"kind": "fsdp"}``: a bare engine name (YAML, CLI) means its defaults."""
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "").replace("_", "")
        key = {"zero2": "deepspeed", "zero3": "deepspeed", "ds": "deepspeed"}.get(key, key)
        if key not in ENGINES:
            raise ValueError(
                f"{value!r} is not an engine; use 'ddp', 'fsdp' or 'deepspeed' (or tk.DDP(), "
                "tk.FSDP(...), tk.DeepSpeed(stage=...)), or None for a single process / plain DDP"
            )
        data: dict[str, Any] = {"kind": key}
        if value.strip().lower() in ("zero2", "zero3", "zero-2", "zero-3", "zero_2", "zero_3"):
            data["stage"] = int(value.strip()[-1])
        return data
    if isinstance(value, dict) and "kind" not in value:
        raise ValueError(
            "say which engine with kind='ddp', 'fsdp' or 'deepspeed', "
            "or pass tk.DDP(), tk.FSDP(...) or tk.DeepSpeed(...)"
        )
    return value


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and runs hooks."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:  # not set by torchrun: a process of its own
        _warn_once(f"WORLD_SIZE / RANK / LOCAL_RANK are not numbers ({e}); running as one process")
        size, rank, local = 1, 0, 0
    if size <= 1:
        dist = sys.modules.get("torch.distributed")  # a process group started by hand; never import torch to ask
        if dist is not None and dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_rank(), dist.get_world_size())
    return World(rank, local, max(size, 1))


def state_memory_per_gpu(
    total_params: int,
    trainable_params: int,
    *,
    engine: DDP | FSDP | DeepSpeed | None,
    processes: int,
    weight_bytes: int = 2,
) -> dict[str, float]:
    """Bytes of model state (weights, gradients, optimizer) each GPU holds, by the ZeRO paper's count.

    Weights and gradients in the compute dtype (``weight_bytes``, 2 for bf16), AdamW's fp32 master
    weights, momentum and variance (12 bytes) for each trainable parameter. DDP shards nothing;
    ZeRO-1 shards the optimizer states, ZeRO-2 also the gradients, ZeRO-3 and FSDP everything;
    offloaded parts leave the GPU. Activations, the CUDA context and temporary buffers come on
    top (they depend on batch size and sequence length). ``Tuner.plan()`` builds on it.

    Example:
        >>> from tunekit.distributed import state_memory_per_gpu, FSDP
        >>> round(state_memory_per_gpu(7_000_000_000, 7_000_000_000, engine=FSDP(), processes=8)["total"] / 1e9)
        14
    """
    if processes < 1 or not 0 <= trainable_params <= total_params:
        raise ValueError("processes must be >= 1 and 0 <= trainable_params <= total_params")
    n = processes
    weights = float(weight_bytes * total_params)
    grads = float(weight_bytes * trainable_params)
    optimizer = 12.0 * trainable_params
    stage = 0 if engine is None or isinstance(engine, DDP) else 3 if isinstance(engine, FSDP) else engine.stage
    optimizer /= n if stage >= 1 else 1
    grads /= n if stage >= 2 else 1
    weights /= n if stage >= 3 else 1
    if isinstance(engine, DeepSpeed) and engine.offload != "none":
        optimizer = grads = 0.0  # ZeRO-Offload: gradients go to the CPU, where the optimizer steps
        weights = 0.0 if engine.offload == "all" else weights
    if isinstance(engine, FSDP) and engine.cpu_offload:
        weights = grads = optimizer = 0.0  # sharded state lives in CPU memory; one layer at a time is gathered
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "total": weights + grads + optimizer}
