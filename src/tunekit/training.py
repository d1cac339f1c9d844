"""``tk.Training``: the hyper-parameters of one run, one flat, documented model."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tunekit._config import Config, suggest
from tunekit.distributed import Distributed, coerce
from tunekit.errors import ConfigError
from tunekit.metrics import check_metrics
from tunekit.optimizers import OPTIMIZER_ALIASES, OPTIMIZERS, OPTIONS, OptimizerName, OptimizerOptions

__all__ = ["Training", "check_fit_options"]


class Training(Config):
    """How long and how hard to train. Every field has a safe default.

    Example:
        >>> import tunekit as tk
        >>> tk.Training(epochs=3, learning_rate=2e-4, batch_size=8, max_length=1024).epochs
        3.0
    """

    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps; overrides epochs.")
    learning_rate: float | None = Field(
        None, gt=0, lt=1, description="Peak learning rate; None uses the method's default (LoRA 2e-4, Full 2e-5)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch on each device.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_length: int = Field(1024, ge=8, description="Tokens per example; longer examples are truncated at the end.")
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seed for data order, initialisation and dropout (0 to 2**32 - 1)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 on GPUs that support it, else fp32."
    )
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of the steps spent warming the rate up.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay of the optimizer (not on biases and norms).")
    optimizer: OptimizerName = Field(
        "adamw",
        description="'adamw' (fused on CUDA), 'adamw_8bit' and 'paged_adamw_8bit' (bitsandbytes), 'adafactor', "
        "'lion', 'galore', 'apollo', 'muon' or 'sgd'; see docs/guides/optimizers.md for the memory of each.",
    )
    optimizer_options: OptimizerOptions | None = Field(
        None,
        description="The chosen optimizer's settings: tk.SGDOptions, tk.LionOptions, tk.GaLoreOptions, "
        "tk.APOLLOOptions or tk.MuonOptions (a mapping of them in a config file); None: their defaults.",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; None disables clipping.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass: less memory, one more forward pass per step (about a "
        "third more compute). 'auto': only on CUDA when tuner.plan() estimates the run would not fit in the device's "
        "memory without it.",
    )
    activation_offload: bool = Field(
        False,
        description="Move the activations the backward needs to CPU memory during the forward and bring them back "
        "layer by layer (trl's activation offloading, CUDA only): less GPU memory for long sequences, some "
        "transfer time. tuner.plan() counts it.",
    )
    log_every: int = Field(10, ge=1, description="Record the loss in FitResult.history every N steps.")
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate on eval_data every N steps (and always at the end)."
    )
    eval_metrics: tuple[str, ...] = Field(
        (),
        description="Generation metrics scored on eval_data at each evaluation (names from tunekit.metrics: "
        "'exact_match', 'rouge_l', 'bleu', 'chrf', 'contains', 'accuracy', 'perplexity'), recorded as eval_<name> in "
        "FitResult.history and given to hooks' on_evaluate (EarlyStopping(metric='exact_match') stops on one).",
    )
    save_every: int | None = Field(None, ge=1, description="Write a checkpoint into output_dir every N steps.")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="'error' stops at the first malformed row; 'skip' drops them and reports which."
    )
    trust_remote_code: bool = Field(False, description="Allow model repositories to run their own Python code.")
    report_to: tuple[Literal["tensorboard", "mlflow", "trackio", "wandb"], ...] = Field(
        (),
        description="Experiment trackers to log to, through transformers' integrations: 'tensorboard', 'mlflow' "
        "(local, <output_dir>/mlruns), 'trackio' (local), 'wandb' (offline). A string or a list.",
    )
    resume: bool | str = Field(
        "auto",
        description="Continue from a checkpoint: 'auto' (default: the newest complete checkpoint in output_dir of a "
        "run that did not finish, else start afresh), True (the newest; an error if there is none), a checkpoint "
        "directory, or False (start afresh; the earlier run's checkpoints are replaced once this run writes its "
        "first). fit(resume=...) overrides it for one call.",
    )

    # --- reliability: checkpoints, resume, numerical safety, memory, loading (see docs/reliability.md) ---
    keep_checkpoints: int | None = Field(
        None,
        ge=1,
        description="Keep only the newest N checkpoints of the run (older ones are removed once a new one is "
        "complete); None keeps them all.",
    )
    force_resume: bool = Field(
        False,
        description="Resume even when the checkpoint's config or training data differ from this run's (the "
        "differences are logged as a warning); by default such a resume raises CheckpointError naming them.",
    )
    on_nonfinite: Literal["error", "skip"] = Field(
        "error",
        description="A NaN or infinite loss or gradient norm: 'error' stops the run with TrainingError naming the "
        "step (the last checkpoint stays good); 'skip' drops that step's update and counts it.",
    )
    auto_batch_size: bool = Field(
        False,
        description="On a CUDA out-of-memory error, retry with half the batch_size and twice the grad_accum (the "
        "effective batch stays batch_size * grad_accum) until it fits.",
    )
    allow_pickle: bool = Field(
        False,
        description="Allow loading model or adapter weights stored with pickle (.bin, .pt, .pkl), which can run "
        "code when loaded; by default only safetensors and JSON are read.",
    )
    allow_control_tokens: bool = Field(
        False,
        description="Read control-token strings typed inside data and prompts (e.g. '<|im_end|>') as the control "
        "tokens; by default they are encoded as the plain text they are, so untrusted text cannot forge a turn.",
    )

    # --- images (vision-language models) ---
    max_pixels: int | None = Field(
        None,
        ge=1,
        description="The most pixels (width x height) an image of the data may have: a larger one is downscaled, "
        "aspect ratio kept, as the data is read (or refused with resize_images=False). Processors with their own "
        "budget (Qwen-VL) get it too. None: no budget (an image over PIL's decompression-bomb limit is refused).",
    )
    min_pixels: int | None = Field(
        None,
        ge=1,
        description="The fewest pixels an image of the data may have: a smaller one is upscaled, aspect ratio kept "
        "(or refused with resize_images=False). None: no minimum.",
    )
    resize_images: bool = Field(
        True,
        description="Fit images outside max_pixels / min_pixels to them as the data is read; False refuses such an "
        "image with a DatasetError naming the row.",
    )

    # --- speed (SFT and CausalLM; the other objectives train through trl's own batching) ---------
    packing: bool | Literal["auto"] = Field(
        "auto",
        description="Padding-free batches: a micro-batch's examples in one row, attention kept within each example, "
        "same loss as padded batches. 'auto': on wherever it is exact (not for prompt/prefix tuning, nor for "
        "vision-language models, whose image positions and tensors are per sequence: they train on padded batches).",
    )
    tokens_per_batch: int | None = Field(
        None,
        ge=8,
        le=2**22,  # the packer's index grows with the budget: 2**40 ran out of host memory before training
        description="Token-budget batching: pack examples into micro-batches of at most this many tokens (best-fit "
        "decreasing) instead of batch_size examples each; needs packing. Must be at least max_length, at most 2**22.",
    )
    compile: bool = Field(False, description="torch.compile the model for training (slow first steps; opt-in).")
    cache: bool = Field(
        True,
        description="Reuse tokenised data across runs, keyed by the data, tokenizer, template and encoding "
        "settings, under cache_dir.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where the tokenisation cache lives; None: $TUNEKIT_CACHE, else $XDG_CACHE_HOME/tunekit, "
        "else ~/.cache/tunekit.",
    )
    data_workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Processes that read, validate and tokenise the data (datasets.map's num_proc); the result is "
        "identical to one process. None: half the cores this process may use (at most 8), one per 20,000 rows (small "
        "data is prepared in this process).",
    )

    # --- scale-out (issue 9) ---
    distributed: Distributed | None = Field(
        None,
        description="The engine when the script runs in several processes (torchrun, tunekit launch): tk.DDP(), "
        "tk.FSDP(...), tk.DeepSpeed(stage=...) or their names 'ddp' / 'fsdp' / 'deepspeed'. None: DDP when "
        "launched with several processes, else a single process. Ignored in a single process.",
    )

    # Option names users bring from transformers / trl, so the error suggests the tunekit name.
    _aliases: ClassVar[dict[str, str]] = {
        "lr": "learning_rate",
        "num_train_epochs": "epochs",
        "num_epochs": "epochs",
        "n_epochs": "epochs",
        "per_device_train_batch_size": "batch_size",
        "train_batch_size": "batch_size",
        "num_proc": "data_workers",
        "dataset_num_proc": "data_workers",
        "preprocessing_num_workers": "data_workers",
        "bs": "batch_size",
        "gradient_accumulation_steps": "grad_accum",
        "gradient_accumulation": "grad_accum",
        "max_seq_length": "max_length",
        "max_seq_len": "max_length",
        "seq_len": "max_length",
        "bf16": "precision",
        "fp16": "precision",
        "dtype": "precision",
        "torch_dtype": "precision",
        "lr_scheduler_type": "lr_scheduler",
        "optim": "optimizer",
        "optim_args": "optimizer_options",
        "optimizer_kwargs": "optimizer_options",
        "optim_target_modules": "optimizer_options",
        "activation_offloading": "activation_offload",
        "offload_activations": "activation_offload",
        "scheduler": "lr_scheduler",
        "warmup": "warmup_ratio",
        "warmup_steps": "warmup_ratio",
        "logging_steps": "log_every",
        "eval_steps": "eval_every",
        "save_steps": "save_every",
        "report": "report_to",
        "trackers": "report_to",
        "resume_from_checkpoint": "resume",
        "save_total_limit": "keep_checkpoints",
        "max_checkpoints": "keep_checkpoints",
        "keep_last": "keep_checkpoints",
        "auto_find_batch_size": "auto_batch_size",
        "nan_policy": "on_nonfinite",
        "on_nan": "on_nonfinite",
        "trust_pickle": "allow_pickle",
        "padding_free": "packing",
        "group_by_length": "packing",
        "max_tokens_per_batch": "tokens_per_batch",
        "torch_compile": "compile",
        "use_cache": "cache",
        "fsdp": "distributed",
        "fsdp_config": "distributed",
        "deepspeed": "distributed",
        "ddp": "distributed",
        "strategy": "distributed",
        "parallelism": "distributed",
        "image_max_pixels": "max_pixels",
        "image_min_pixels": "min_pixels",
    }

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        if isinstance(v, str):
            return () if v == "none" else (v,)
        return v

    @field_validator("eval_metrics", mode="before")
    @classmethod
    def _metric_names(cls, v: object) -> object:
        names = [v] if isinstance(v, str) else v
        if isinstance(names, (list, tuple)) and names:
            if not all(isinstance(n, str) for n in names):
                raise ValueError(
                    "eval_metrics takes metric names (a function metric is for tuner.evaluate(metrics=[...]): "
                    "Training must stay writable as YAML)"
                )
            try:
                check_metrics(list(names), where="Training(eval_metrics=...)")
            except ConfigError as e:
                raise ValueError(str(e).split(": ", 1)[-1]) from None
            return tuple(names)
        return v

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_name(cls, v: object) -> object:
        if isinstance(v, str) and v not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {v!r}; {suggest(v, list(OPTIMIZERS), OPTIMIZER_ALIASES)} (the optimizers are "
                f"{', '.join(repr(o) for o in OPTIMIZERS)})"
            )
        return v

    @field_validator("optimizer_options", mode="before")
    @classmethod
    def _options_of(cls, v: object, info: ValidationInfo) -> object:
        name = info.data.get("optimizer")
        if v is None or name is None:  # no options, or the optimizer's own error is reported
            return v
        options = OPTIONS.get(name)
        if options is None:
            meant = getattr(type(v), "optimizer", None) if type(v) in OPTIONS.values() else None
            raise ValueError(
                f"optimizer={name!r} takes no options; "
                + (f"set optimizer={meant!r} for tk.{type(v).__name__}, or " if meant else "")
                + f"drop optimizer_options (optimizers with options: {', '.join(repr(o) for o in OPTIONS)})"
            )
        if isinstance(v, dict):
            return options(**v)
        if not isinstance(v, options):
            other = getattr(type(v), "optimizer", None) if type(v) in OPTIONS.values() else None
            raise ValueError(
                f"optimizer={name!r} takes tk.{options.__name__}, not {type(v).__name__}; pass "
                f"optimizer_options=tk.{options.__name__}(...)" + (f" or optimizer={other!r}" if other else "")
            )
        return v

    @field_validator("gradient_checkpointing", "packing", mode="before")
    @classmethod
    def _bool_or_auto(cls, v: object, info: ValidationInfo) -> object:
        if v is True or v is False or v == "auto":
            return v
        raise ValueError(f"{info.field_name} must be True, False or 'auto'")

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _dir_to_str(cls, v: object) -> object:
        return str(v) if isinstance(v, PurePath) else v

    @field_validator("distributed", mode="before")
    @classmethod
    def _engine_name(cls, v: object) -> object:
        return coerce(v)

    @field_validator("resume", mode="before")
    @classmethod
    def _path_to_str(cls, v: object) -> object:
        return str(v) if isinstance(v, PurePath) else v

    @model_validator(mode="after")
    def _check(self) -> Training:
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("fp16 needs a GPU; use precision='fp32' or 'bf16' on CPU")
        if self.activation_offload and self.device in ("cpu", "mps"):
            raise ValueError(
                f"activation_offload=True moves activations from a CUDA device to CPU memory; on device="
                f"{self.device!r} they are in CPU memory already: drop activation_offload, or train on a CUDA device"
            )
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', not {self.device!r}")
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"report_to lists a tracker twice: {list(self.report_to)!r}")
        if isinstance(self.resume, str) and not self.resume.strip():
            raise ValueError("resume must be True, False, 'auto' or a checkpoint directory, not an empty string")
        if self.max_pixels is not None and self.min_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels={self.min_pixels} is larger than max_pixels={self.max_pixels}: no image could fit both; "
                "lower min_pixels or raise max_pixels"
            )
        if self.tokens_per_batch is not None:
            if self.packing is False:
                raise ValueError(
                    f"tokens_per_batch={self.tokens_per_batch} packs examples into micro-batches, which needs "
                    "packing; drop packing=False or tokens_per_batch"
                )
            if self.tokens_per_batch < self.max_length:
                raise ValueError(
                    f"tokens_per_batch={self.tokens_per_batch} is smaller than max_length={self.max_length}: the "
                    f"longest examples would not fit; use tokens_per_batch >= {self.max_length}"
                )
        return self


def _handles_checkpoints(hook: Any) -> bool:
    """Whether a hook does something with each checkpoint (overrides ``on_checkpoint``, e.g. to upload it)."""
    method = getattr(type(hook), "on_checkpoint", None)
    return method is not None and getattr(method, "__qualname__", "") != "Hook.on_checkpoint"


def check_fit_options(training: Training, *, output_dir: Any, has_eval: bool, hooks: Sequence[Any] = ()) -> None:
    """Options of ``training`` that would do nothing in this fit: raise ConfigError rather than ignore them.

    ``eval_every`` with no eval data evaluates nothing; ``save_every`` with no ``output_dir`` writes checkpoints to a
    temporary directory deleted when the run ends (allowed when a hook handles each checkpoint in ``on_checkpoint``).
    """
    if training.eval_every is not None and not has_eval:
        raise ConfigError(
            f"Training(eval_every={training.eval_every}): there is no eval data to evaluate on; pass "
            "fit(..., eval_data=...) (eval_data: in a config file), or drop eval_every"
        )
    if training.eval_metrics and not has_eval:
        raise ConfigError(
            f"Training(eval_metrics={list(training.eval_metrics)!r}): there is no eval data to score them on; pass "
            "fit(..., eval_data=...) (eval_data: in a config file), or drop eval_metrics"
        )
    if training.save_every is not None and output_dir is None and not any(_handles_checkpoints(h) for h in hooks):
        raise ConfigError(
            f"Training(save_every={training.save_every}): this Tuner has no output_dir, so the checkpoints would be "
            "written to a temporary directory and deleted when the run ends; pass Tuner(output_dir=...) (or set "
            "tuner.output_dir) to keep them, or drop save_every"
        )
