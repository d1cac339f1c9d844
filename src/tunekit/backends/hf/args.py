"""The arguments every trainer tunekit builds shares: ``TrainingArguments`` from ``tk.Training``, and the data,
tokenizer and callbacks every trl trainer takes alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunekit.backends.hf.optimizers import optimizer_args
from tunekit.backends.hf.processes import engine_args
from tunekit.distributed import world
from tunekit.training import Training

__all__ = ["Setup", "trainer_data", "training_args"]


@dataclass
class Setup:
    """Everything a trainer builder needs."""

    objective: Any
    model: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    training: Training
    output_dir: str
    precision: str
    device: Any
    learning_rate: float
    callbacks: list[Any]
    processor: Any = None  # a vision-language model's processor (trl's DPO trainer reads rows with images with it)


def training_args(setup: Setup) -> dict[str, Any]:
    """TrainingArguments shared by every trainer, from ``tk.Training``."""
    t = setup.training
    return {
        "output_dir": setup.output_dir,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "learning_rate": setup.learning_rate,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        "weight_decay": t.weight_decay,
        **optimizer_args(t),  # Training(optimizer=...): transformers' optim= (GaLore, APOLLO, Muon: install_optimizer)
        "max_grad_norm": t.max_grad_norm or 0.0,
        "seed": t.seed,
        "data_seed": t.seed,
        "bf16": setup.precision == "bf16",
        "fp16": setup.precision == "fp16",
        "use_cpu": setup.device.type == "cpu",
        "gradient_checkpointing": t.gradient_checkpointing is True,  # "auto" is resolved by the backend
        "logging_strategy": "steps",
        "logging_steps": t.log_every,
        "logging_first_step": True,
        "logging_nan_inf_filter": False,  # a NaN must show, never be averaged away
        "eval_strategy": "steps" if (setup.eval_dataset is not None and t.eval_every) else "no",
        "eval_steps": t.eval_every,
        "save_strategy": "steps" if t.save_every else "no",
        "save_steps": t.save_every or 500,
        "save_only_model": False,
        "report_to": list(t.report_to) or "none",  # Training(report_to=...): transformers' integrations
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_liger_kernel": False,
        **engine_args(t, setup.model, world_size=world().size),  # DDP / FSDP2 / DeepSpeed under torchrun
    }


def trainer_data(setup: Setup) -> dict[str, Any]:
    """The keyword arguments every trl trainer takes alike: data, tokenizer and callbacks."""
    return {
        "train_dataset": setup.train_dataset,
        "eval_dataset": setup.eval_dataset,
        "processing_class": setup.tokenizer,
        "callbacks": setup.callbacks,
    }
