"""Objectives to trl trainers: one table, one config builder."""

from __future__ import annotations

from typing import Any

from tunekit.errors import TrainingError
from tunekit.objectives import SFT, CausalLM, Objective
from tunekit.training import Training

__all__ = ["build_trainer"]


def _sft_args(training: Training, *, output_dir: str, precision: str, device: Any, lr: float, has_eval: bool) -> Any:
    from trl import SFTConfig

    eval_strategy = "steps" if (has_eval and training.eval_every) else "no"
    return SFTConfig(
        output_dir=output_dir,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=lr,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm or 0.0,
        seed=training.seed,
        data_seed=training.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        gradient_checkpointing=training.gradient_checkpointing,
        logging_strategy="steps",
        logging_steps=training.log_every,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must show, never be averaged away
        eval_strategy=eval_strategy,
        eval_steps=training.eval_every,
        save_strategy="steps" if training.save_every else "no",
        save_steps=training.save_every or 500,
        save_only_model=False,
        report_to="none",
        disable_tqdm=True,
        max_length=training.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},  # tunekit tokenised and masked the data itself
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_liger_kernel=False,
    )


def _plain_lm_head(model: Any) -> bool:
    import torch

    head = model.get_output_embeddings()
    return type(head) is torch.nn.Linear


def _model_loss_trainer() -> Any:
    """SFTTrainer with the model's own loss.

    trl's fused LM-head loss reads ``lm_head.weight`` directly, which skips whatever peft wrapped
    around the head (trainable rows for added template tokens, LoRA on lm_head): those would get
    no gradient. When the head is wrapped, use transformers' plain loss instead.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):  # type: ignore[misc]
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if model.training and "attention_mask" in inputs:
                # Same real-token count trl's own loss keeps, for FitResult.tokens_per_s.
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return ModelLossSFTTrainer


def build_trainer(
    objective: Objective,
    *,
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any,
    training: Training,
    output_dir: str,
    precision: str,
    device: Any,
    learning_rate: float,
    callbacks: list[Any],
) -> Any:
    """The trl trainer for ``objective``, configured from ``training``."""
    from trl import SFTTrainer

    if not isinstance(objective, (SFT, CausalLM)):
        raise TrainingError(f"objective {objective.name} has no trainer in the hf backend yet")
    args = _sft_args(
        training,
        output_dir=output_dir,
        precision=precision,
        device=device,
        lr=learning_rate,
        has_eval=eval_dataset is not None,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    cls = SFTTrainer if _plain_lm_head(model) else _model_loss_trainer()
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    # The library never prints: progress and logs reach the application through hooks.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
