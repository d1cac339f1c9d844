"""``Training(auto_batch_size=True)``: on CUDA out-of-memory, retry with a smaller micro-batch, same effective batch.

accelerate's ``find_executable_batch_size`` runs the retry loop (its out-of-memory detection and
cache clearing); tunekit gives it the next batch size, the largest divisor of the effective batch
``batch_size * grad_accum`` at most half the current one, and raises ``grad_accum`` to match, so
the optimizer sees the same examples per step. transformers' own ``auto_find_batch_size`` only
shrinks the batch, which changes the effective batch and with it the training dynamics.

A retry starts the run again, so it is only done when the out-of-memory error came before the first
optimizer step finished (the weights are still the starting ones); later, the run stops with
TrainingError and the advice to resume with a smaller ``batch_size``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunekit.errors import TrainingError
from tunekit.training import Training

__all__ = ["next_batch_size", "train_fitting"]

logger = logging.getLogger("tunekit")


def next_batch_size(effective: int, current: int) -> int:
    """The largest divisor of ``effective`` at most ``current // 2``; 0 when ``current`` is already 1."""
    return next((d for d in range(current // 2, 0, -1) if effective % d == 0), 0)


def train_fitting(
    build: Callable[[Training], Any],
    training: Training,
    resume_from: Path | None,
    release: Callable[[Any], None],
) -> tuple[Any, Any]:
    """Build a trainer for ``training`` and train; with ``auto_batch_size``, retry smaller on out-of-memory.

    Returns the trainer and its ``TrainOutput``. ``release`` undoes what a failed trainer left on the model.
    """
    checkpoint = str(resume_from) if resume_from else None
    if not training.auto_batch_size:
        trainer = build(training)
        try:
            return trainer, trainer.train(resume_from_checkpoint=checkpoint)
        except BaseException:
            release(trainer)
            raise

    from accelerate.utils import find_executable_batch_size
    from accelerate.utils.memory import should_reduce_batch_size

    effective = training.batch_size * training.grad_accum
    size = training.batch_size

    def reduce() -> int:
        nonlocal size
        smaller = next_batch_size(effective, size)
        if smaller:
            logger.warning(
                "out of memory at batch_size=%d; retrying with batch_size=%d, grad_accum=%d (effective batch %d)",
                size, smaller, effective // smaller, effective,
            )  # fmt: skip
        size = smaller
        return smaller

    @find_executable_batch_size(starting_batch_size=size, reduce_batch_size_fn=reduce)  # type: ignore[untyped-decorator]
    def attempt(batch_size: int) -> tuple[Any, Any]:
        t = training.model_copy(update={"batch_size": batch_size, "grad_accum": effective // batch_size})
        trainer = build(t)
        try:
            return trainer, trainer.train(resume_from_checkpoint=checkpoint)
        except Exception as e:
            step = int(getattr(trainer.state, "global_step", 0) or 0)
            release(trainer)
            if not should_reduce_batch_size(e):
                raise
            for p in trainer.model.parameters():
                p.grad = None
            started = int(getattr(getattr(trainer, "_tk_guard", None), "start_step", 0) or 0)
            if step > started:
                raise TrainingError(
                    f"out of memory at step {step} with batch_size={batch_size}, after training began (a longer "
                    "batch than the first ones?); resume from the last checkpoint with a smaller "
                    f"Training(batch_size=...) and a larger grad_accum (effective batch {effective})"
                ) from e
            traceback.clear_frames(e.__traceback__)  # the frames hold the trainer: let its memory go
            del trainer
            raise

    try:
        result: tuple[Any, Any] = attempt()
        return result
    except RuntimeError as e:
        if "No executable batch size found" not in str(e):
            raise
        raise TrainingError(
            f"out of memory even at batch_size=1 (grad_accum={effective}); lower Training(max_length=...), use "
            "a parameter-efficient method such as tk.LoRA(), gradient_checkpointing=True, or a larger GPU"
        ) from None
