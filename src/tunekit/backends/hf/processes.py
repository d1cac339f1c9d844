"""Several processes (torchrun, ``tunekit launch``): ranks, devices, engines and who writes.

tunekit builds no process group and no wrapper of its own. torchrun sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; transformers' ``TrainingArguments`` starts the process group
through accelerate (NCCL on GPUs, gloo on CPU) and the Trainer wraps the model (DDP, FSDP2 or
DeepSpeed, from the arguments :func:`engine_args` builds) and shards the data: each optimizer step
takes ``batch_size`` examples on every process, consecutive batches of one shuffled order, so a
global batch of ``batch_size * world_size`` matches one process with that batch size.

What tunekit adds is the rule for its own side effects, written once here:

- Only the main process (rank 0) writes: ``Tuner.save``, manifests, ``JSONLMetrics``, ``LossPlot``
  and the other hooks (the Trainer's checkpoints already are rank-0 aware).
- Hooks run on rank 0 only, unless a hook class sets ``all_ranks = True`` (``SampleGenerations``,
  which must generate on every process when the weights are sharded). ``ctx.rank``,
  ``ctx.world_size`` and ``ctx.is_main_process`` tell a hook where it runs.
- A stop asked for on any process (``ctx.request_stop()``, a failing hook, ``run.cancel()``) is
  shared with all of them at the next callback, so every process stops after the same step
  (a process that stopped alone would leave the others waiting in a collective forever).
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from typing import Any

from tunekit._torch import unwrap_peft
from tunekit.distributed import DDP, FSDP, DeepSpeed, shards_parameters, world
from tunekit.errors import CheckpointError, ConfigError, IncompatibleError, MissingDependencyError
from tunekit.hooks import RunControl
from tunekit.methods import Method
from tunekit.training import Training

__all__ = [
    "check_distributed",
    "deepspeed_config",
    "engine_args",
    "gather_weights",
    "join_group",
    "rank_device",
    "settle",
    "share_stop",
]


def rank_device(pref: str, device: Any) -> Any:
    """The device of this process: with several processes on GPUs, ``cuda:LOCAL_RANK``."""
    import torch

    w = world()
    if not w.distributed or device.type != "cuda":
        return device
    if pref.startswith("cuda:"):
        raise ConfigError(
            f"Training(device={pref!r}) with {w.size} processes: each process uses the GPU of its LOCAL_RANK; "
            "use device='auto' or 'cuda', and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if w.local_rank >= torch.cuda.device_count():
        raise IncompatibleError(
            f"process with LOCAL_RANK={w.local_rank} has no GPU: {torch.cuda.device_count()} visible; start at most "
            "that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", w.local_rank)


def _method_call(method: Method) -> str:
    q = method.quantization
    return f"{method.name}(quantize={q!r})" if q else f"{method.name}()"


def check_distributed(method: Method, training: Training, device: Any) -> None:
    """Raise IncompatibleError (before any weight loads) for engine choices that cannot work.

    The engine applies only when the script runs in several processes (in one, it is ignored).
    """
    if not world().distributed:
        return
    if training.auto_batch_size:
        raise IncompatibleError(
            "Training(auto_batch_size=True) in several processes: an out-of-memory error strikes one process, and "
            "retrying there alone would leave the others waiting in a collective; set batch_size and grad_accum "
            "(tuner.plan(data) estimates the memory) and leave auto_batch_size off"
        )
    engine = training.distributed
    if engine is None:
        return
    label = type(engine).__name__
    if isinstance(engine, DeepSpeed):
        label = f"DeepSpeed(stage={engine.stage})"
        if device.type != "cuda":
            raise IncompatibleError(
                f"Training(distributed=tk.{label}) needs CUDA GPUs, and this run's device is {str(device)!r}; "
                "on CPU use distributed=tk.DDP() or tk.FSDP() (gloo)"
            )
        if training.on_nonfinite == "skip":
            raise IncompatibleError(
                f"Training(on_nonfinite='skip') with tk.{label}: DeepSpeed applies the update inside its backward, "
                "before tunekit can drop a non-finite step; use on_nonfinite='error' (the run stops naming the "
                "step), or tk.DDP() / tk.FSDP()"
            )

        if importlib.util.find_spec("deepspeed") is None:
            raise MissingDependencyError(
                f'Training(distributed=tk.{label}) needs DeepSpeed: pip install "tunekit[deepspeed]"'
            )
    if isinstance(engine, FSDP) and device.type != "cuda":
        raise IncompatibleError(
            f"Training(distributed=tk.FSDP(...)) needs CUDA GPUs, and this run's device is {str(device)!r}: "
            "accelerate shards with FSDP on accelerators only (on CPU it would quietly run DDP); on CPU use "
            "distributed=tk.DDP() or None"
        )
    if method.quantization and shards_parameters(engine):
        raise IncompatibleError(
            f"{_method_call(method)} with Training(distributed=tk.{label}): sharding a bitsandbytes-quantized base "
            "needs it loaded without a device map and stored in the compute dtype, which tunekit does not do; "
            "use tk.DDP() or tk.DeepSpeed(stage=2) (each process keeps the whole 4-bit base, ~0.5 GB per billion "
            "parameters), or LoRA without quantize under FSDP"
        )
    if method.family == "prompt" and shards_parameters(engine):
        raise IncompatibleError(
            f"{method.name}() with Training(distributed=tk.{label}): prompt-based methods build their virtual "
            "tokens (and prefix tuning its per-layer key/value cache) outside the model's layers, which "
            "parameter sharding does not gather; use tk.DDP() (the base is frozen, so a replica per process "
            "costs only its weights) or tk.DeepSpeed(stage=2)"
        )
    if isinstance(engine, FSDP) and training.gradient_checkpointing and engine.activation_checkpointing:
        raise IncompatibleError(
            "Training(gradient_checkpointing=True) with tk.FSDP(activation_checkpointing=True): choose one; "
            "under FSDP prefer FSDP's (gradient_checkpointing=False), which avoids an extra all-gather"
        )


def engine_args(training: Any, model: Any, *, world_size: int) -> dict[str, Any]:
    """TrainingArguments entries for the engine (none for a single process)."""
    engine = training.distributed
    if world_size <= 1:
        return {}
    if engine is None:
        engine = DDP()
    args: dict[str, Any] = {"ddp_timeout": engine.timeout_s}
    if isinstance(engine, DDP):
        if engine.find_unused_parameters is not None:
            args["ddp_find_unused_parameters"] = engine.find_unused_parameters
        if engine.bucket_cap_mb is not None:
            args["ddp_bucket_cap_mb"] = engine.bucket_cap_mb
        return args
    if isinstance(engine, FSDP):
        fsdp_config: dict[str, Any] = {
            "version": 2,
            "reshard_after_forward": engine.reshard_after_forward,
            "cpu_offload": engine.cpu_offload,
            "auto_wrap_policy": {
                "transformer": "TRANSFORMER_BASED_WRAP",
                "size": "SIZE_BASED_WRAP",
                "none": "NO_WRAP",
            }[engine.auto_wrap],
            "activation_checkpointing": engine.activation_checkpointing,
            "state_dict_type": "FULL_STATE_DICT" if engine.state_dict == "full" else "SHARDED_STATE_DICT",
            # Off: tunekit loads the whole model in every process before the Trainer exists (see the guide).
            "cpu_ram_efficient_loading": False,
        }
        if engine.auto_wrap == "size":
            fsdp_config["min_num_params"] = engine.min_params
        if engine.auto_wrap == "transformer":
            fsdp_config["transformer_layer_cls_to_wrap"] = list(engine.wrap_classes or _layer_classes(model))
        return {**args, "fsdp": True, "fsdp_config": fsdp_config}
    return {**args, "deepspeed": deepspeed_config(engine)}


def _layer_classes(model: Any) -> list[str]:
    """The decoder-layer classes FSDP shards as units: the model's own ``_no_split_modules``."""
    base = unwrap_peft(model)
    names = list(getattr(base, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in base.modules()}
    found = [n for n in names if n in present]
    if not found:
        raise IncompatibleError(
            f"tk.FSDP(auto_wrap='transformer'): {type(base).__name__} names no decoder-layer class to shard "
            "(_no_split_modules); pass tk.FSDP(wrap_classes=['MyDecoderLayer']) or auto_wrap='size'"
        )
    return found


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(engine: DeepSpeed) -> dict[str, Any]:
    """The DeepSpeed JSON config; ``"auto"`` values are filled by transformers from TrainingArguments."""
    zero: dict[str, Any] = {
        "stage": engine.stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if engine.stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # Tuner.save writes one whole model or adapter, gathered on rank 0.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }
    if engine.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        # Offloaded optimizer states are updated by DeepSpeed's CPU Adam, which DeepSpeed builds from this entry.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    if engine.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return _merge(config, engine.overrides)


def _collective_device() -> Any:
    import torch
    import torch.distributed as dist

    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _ready() -> bool:
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def share_stop(control: RunControl) -> None:
    """Make a stop (and a checkpoint-on-stop) asked for on any process hold on all of them.

    Called by the hook bridge at every trainer callback, which every process reaches together.
    """
    if not _ready():
        return
    import torch
    import torch.distributed as dist

    ctx = control.ctx
    stop, save = int(ctx.stop_requested), int(control.checkpoint_on_stop)
    # One MAX all-reduce answers "did any process ask?" (stop, save, a hook failed) and "did every one?"
    # (1 - (1 - stop)). A failed hook (hooks run on rank 0) must be known everywhere: it skips the final
    # evaluation, which is a collective.
    flags = torch.tensor([stop, save, 1 - stop, int(control.hook_failed)], device=_collective_device())
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    any_stop, any_save, every_stop = bool(flags[0]), bool(flags[1]), not bool(flags[2])
    control.merge(checkpoint_on_stop=any_save, hook_failed=bool(flags[3]))
    if not any_stop or every_stop:
        return
    # Some processes asked and some did not (once per run): tell the others why.
    reasons: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reasons, ctx.stop_reason if ctx.stop_requested else None)
    if not ctx.stop_requested:
        rank, reason = next((r, why) for r, why in enumerate(reasons) if why is not None)
        ctx.request_stop(reason if reason == "cancelled" else f"{reason} (on rank {rank})")


def join_group(training: Any = None) -> None:
    """Start the process group from torchrun's environment if none exists yet, with the settings
    ``TrainingArguments`` would give it (the engine's ``timeout_s``; gloo when the run's device is the
    CPU), so that a save outside ``fit`` (``tk.load(...)`` then ``save``) can wait for every process and a
    later ``fit`` finds the group it would have made (the group's settings cannot change once made)."""
    if not world().distributed or _ready():
        return
    import torch
    from accelerate import PartialState

    engine = getattr(training, "distributed", None) or DDP()
    device = str(getattr(training, "device", "auto"))
    cpu = device.startswith("cpu") or not torch.cuda.is_available()
    PartialState(cpu=cpu, timeout=timedelta(seconds=engine.timeout_s))


def settle(error: BaseException | None, *, what: str) -> None:
    """End a step that may fail on some processes only (rank 0 writing a save or a checkpoint) on all of
    them together: a collective that every process reaches, failed or not, so none is left waiting in a
    barrier for a process that has gone. The failing process raises its own error; the others raise
    :class:`CheckpointError` naming the rank and its message. One process: ``error`` is raised, if any.
    """
    join_group()
    if _ready():
        import torch.distributed as dist

        messages: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
        failed = next(((rank, m) for rank, m in enumerate(messages) if m is not None), None)
        if error is None and failed is not None:
            raise CheckpointError(f"{what} failed on rank {failed[0]}: {failed[1]}")
    if error is not None:
        raise error


def gather_weights(model: Any, engine: Any, *, adapter: bool) -> dict[str, Any] | None:
    """The whole state dict of a model whose weights are sharded (FSDP2, ZeRO-3), on rank 0.

    A collective: every process must call it (``Tuner.save`` does, on every process). Returns None
    when the weights are not sharded (each process holds them whole: DDP, ZeRO-1/2, one process)
    and on the processes other than rank 0. For adapters only the trainable weights are gathered,
    which is all ``save_pretrained`` of a peft model keeps.
    """
    if not (_ready() and shards_parameters(engine)):
        return None
    import torch.distributed as dist

    main = dist.get_rank() == 0
    if isinstance(engine, FSDP):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # full_state_dict + cpu_offload: gathered layer by layer into rank 0's CPU memory (others get {}).
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if main else None
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not adapter]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        return {n: p.detach().cpu().clone() for n, p in named} if main else None
