"""Numerical safety: a non-finite loss or gradient norm stops the run (or skips the step), never trains on.

:class:`NonFiniteGuard` sees every micro-batch loss and every gradient norm (through
:class:`tunekit.backends.hf.checkpoints.CheckpointMixin`) and acts before the optimizer step:

- ``Training(on_nonfinite="error")`` (default): raise :class:`TrainingError` naming the step and
  what was not finite. No checkpoint is written after it, so the last one on disk is good.
- ``"skip"``: drop that step's update (the gradients are discarded, so the optimizer leaves the
  weights and its moments untouched; the schedule moves on), log a warning, count it in
  ``FitResult.metrics["nonfinite_skipped_steps"]``. The logged loss of that window stays NaN: a
  non-finite value is shown, never averaged away. Too many skips in a row raise TrainingError.

Checking needs the value on the host, one device sync. On CPU that is free and it happens every
step; on an accelerator in "error" mode the flags stay on the device (the first bad step recorded
there) and are read only at steps that log, save, evaluate or end, so the check adds no sync per
step and still raises before any checkpoint is written. "skip" must decide before each update, so
it syncs once per optimizer step. Under fp16 the gradient scaler already skips steps whose
gradients overflow, so only the loss is checked there.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from tunekit.backends.hf.checkpoints import checkpoint_dirs
from tunekit.errors import TrainingError

__all__ = ["MAX_CONSECUTIVE_SKIPS", "NonFiniteGuard"]

logger = logging.getLogger("tunekit")

MAX_CONSECUTIVE_SKIPS = 10  # beyond this the run is not recovering: stop instead of skipping forever


class NonFiniteGuard(TrainerCallback):  # type: ignore[misc]
    def __init__(self, mode: str = "error", *, sync_each_step: bool = True, check_grad_norm: bool = True) -> None:
        self.mode = mode
        self.sync_each_step = sync_each_step or mode == "skip"
        self.check_grad_norm = check_grad_norm
        self.skipped: list[int] = []
        self.start_step = 0
        self._consecutive = 0
        self._loss_bad: Any = None  # this step's flags (tensors, on the device)
        self._norm_bad: Any = None
        self._first: dict[str, Any] = {}  # deferred mode: first bad step per kind, on the device (-1: none)

    # --- fed by the trainer ------------------------------------------------------------------------
    def observe_loss(self, loss: Any) -> None:
        bad = _not_finite(loss)
        if bad is not None:
            self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def observe_grad_norm(self, norm: Any) -> None:
        if self.check_grad_norm:
            self._norm_bad = _not_finite(norm)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self.start_step = int(state.global_step)  # after a resume: the checkpoint's step
        self._consecutive, self._loss_bad, self._norm_bad, self._first = 0, None, None, {}
        return control

    # --- decisions ---------------------------------------------------------------------------------
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        step = int(state.global_step) + 1
        flags = {"loss": self._loss_bad, "gradient norm": self._norm_bad}
        self._loss_bad = self._norm_bad = None
        if self.sync_each_step:
            bad = [kind for kind, flag in flags.items() if flag is not None and bool(flag)]
            if not bad:
                self._consecutive = 0
            elif self.mode == "skip":
                self._skip(step, bad, kw.get("optimizer"))
            else:
                raise TrainingError(_message(step, bad, args.output_dir))
        else:
            for kind, flag in flags.items():
                if flag is None:
                    continue
                first = self._first.get(kind)
                if first is None:
                    first = torch.full((), -1, dtype=torch.long, device=flag.device)
                self._first[kind] = torch.where((first < 0) & flag, torch.full_like(first, step), first)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        # Deferred mode: read the device flags only where it matters (before a log, save, eval or the end).
        due = control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
        if self._first and (due or state.global_step >= state.max_steps):
            found = {kind: int(first) for kind, first in self._first.items()}
            self._first = {}
            bad = sorted((step, kind) for kind, step in found.items() if step >= 0)
            if bad:
                first_step = bad[0][0]
                raise TrainingError(
                    _message(first_step, [k for s, k in bad if s == first_step], args.output_dir, deferred=True)
                )
        return control

    def _skip(self, step: int, bad: list[str], optimizer: Any) -> None:
        self._consecutive += 1
        if self._consecutive > MAX_CONSECUTIVE_SKIPS:
            raise TrainingError(
                f"non-finite {' and '.join(bad)} at {MAX_CONSECUTIVE_SKIPS + 1} steps in a row (up to step {step}) "
                "with Training(on_nonfinite='skip'): the run is not recovering; lower Training(learning_rate=...), "
                "use precision='fp32', or check the data for empty or huge examples"
            )
        # Without gradients torch's optimizers leave a parameter and its state (moments, step count) alone.
        for group in getattr(optimizer, "param_groups", None) or []:
            for p in group["params"]:
                p.grad = None
        self.skipped.append(step)
        logger.warning("step %d: non-finite %s; the step was skipped (no update)", step, " and ".join(bad))


def _not_finite(value: Any) -> Any:
    """A device bool tensor (or a Python bool) that is True when ``value`` is NaN or infinite."""

    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return ~torch.isfinite(value.detach()).all()
    if isinstance(value, (int, float)):
        return not math.isfinite(value)
    return None


def _message(step: int, bad: list[str], output_dir: Any, *, deferred: bool = False) -> str:
    kept = [p.name for s, p in checkpoint_dirs(Path(output_dir)) if s < step] if output_dir else []
    where = f"; the last good checkpoint is {kept[0]}" if kept else ""
    when = "the run stopped" if deferred else "the run stopped before that step's update"
    return (
        f"non-finite {' and '.join(bad)} at step {step}: {when}{where}. Lower Training(learning_rate=...), check "
        "the data for empty or huge examples, use precision='fp32', or pass Training(on_nonfinite='skip') to skip "
        "such steps"
    )
