"""The bridge from transformers' TrainerCallback to tunekit hooks.

Every trl trainer tunekit builds gets one :class:`HookBridge`, so every objective fires the same
``tk.Hook`` events. The bridge also turns ``ctx.request_stop()`` and ``Run.cancel()`` into the
trainer's own control flags (``should_training_stop``, and ``should_save`` for a resumable
checkpoint), so a run always ends through transformers' normal path: trackers closed, state saved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunekit.backends.hf.processes import share_stop
from tunekit.errors import TrainingError
from tunekit.hooks import Hook, HookDispatcher

__all__ = ["HookBridge", "check_finite", "numeric"]


def check_finite(logs: dict[str, Any], step: int) -> None:
    """Raise TrainingError on a non-finite loss or gradient norm, naming the step."""
    for key in ("loss", "grad_norm"):
        v = logs.get(key)
        if isinstance(v, (int, float)) and not math.isfinite(v):
            raise TrainingError(
                f"non-finite {key} ({v}) at step {step}; lower Training(learning_rate=...), "
                "check the data for empty or huge examples, or use precision='fp32'"
            )


def numeric(values: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a trainer log as floats (hooks get ``dict[str, float]``)."""
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _is_history_entry(logs: dict[str, Any]) -> bool:
    return "loss" in logs or any(k.startswith("eval_") for k in logs)


class HookBridge(TrainerCallback):  # type: ignore[misc]
    """Forwards trainer events to the hooks and records the logged history.

    Takes the run's :class:`HookDispatcher` (hooks, context, error policy and the run's
    :class:`~tunekit.hooks.RunControl`). With ``evaluate_at_end``, the final evaluation runs inside
    the training loop, at the last step (see :meth:`on_step_end`), and :meth:`eval_at` gives its metrics.
    """

    def __init__(
        self,
        dispatcher: HookDispatcher,
        *,
        evaluate_at_end: bool = False,
        check_nonfinite: bool = True,
    ) -> None:
        self.dispatcher = dispatcher
        self.control = dispatcher.control
        self.ctx = dispatcher.ctx
        self.history: list[dict[str, Any]] = self.control.history
        self.evals: list[dict[str, float]] = []
        self.evaluate_at_end = evaluate_at_end
        self.check_nonfinite = check_nonfinite  # off with Training(on_nonfinite="skip"): the NaN is logged as it is
        self._evals_at: dict[int, dict[str, float]] = {}
        self.last_checkpoint: Path | None = None
        self._saved_at = -1

    @property
    def hooks(self) -> list[Hook]:
        return self.dispatcher.hooks

    def _sync(self, state: Any) -> None:
        self.ctx.step = int(state.global_step)
        self.ctx.max_steps = int(state.max_steps)
        self.ctx.epoch = float(state.epoch or 0.0)

    def _steer(self, control: Any, *, may_save: bool = True, shared: bool = False) -> Any:
        """Apply a stop request (and a checkpoint for a cancel or a failed hook) to the trainer."""
        ctx = self.ctx
        if not shared:
            share_stop(self.control)  # several processes: a stop asked for on one holds on all, or they would hang
        if ctx.stop_requested:
            control.should_training_stop = True
            # Only with a real output_dir: a temporary one is deleted with everything in it.
            wanted = self.control.checkpoint_on_stop
            if may_save and wanted and ctx.output_dir is not None and self._saved_at != ctx.step:
                control.should_save = True
        return control

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self._sync(state)
        if state.global_step > 0 and not self.history:
            # Resumed from a checkpoint: the history starts with what the checkpoint logged.
            self.history.extend(
                {"step": int(e.get("step", 0)), "epoch": round(float(e.get("epoch") or 0.0), 4), **numeric(e)}
                for e in state.log_history
                if _is_history_entry(e)
            )
        self.dispatcher.emit("fit_start")
        # transformers checks the stop flag after each step: a stop asked for now ends after step 1.
        return self._steer(control, may_save=False)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self._sync(state)
        self.dispatcher.emit("step_end")
        share_stop(self.control)  # before deciding on the final evaluation, which every process must do alike
        last = control.should_training_stop or self.ctx.stop_requested or state.global_step >= state.max_steps
        if self.evaluate_at_end and last and self.control.finished:
            # Evaluate the final model now, before on_train_end: an evaluate() after train() would log
            # into trackers that on_train_end already closed (a second MLflow run, a second TB file).
            control.should_evaluate = True
        return self._steer(control, shared=True)

    def eval_at(self, step: int) -> dict[str, float] | None:
        """The metrics of the evaluation done at ``step``, if there was one."""
        return self._evals_at.get(step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> Any:
        self._sync(state)
        values = numeric(logs)
        if _is_history_entry(values):
            entry: dict[str, Any] = {"step": self.ctx.step, "epoch": round(self.ctx.epoch, 4), **values}
            self.history.append(entry)
            self.ctx.metrics = {k: float(v) for k, v in entry.items()}
        if self.check_nonfinite:
            check_finite(values, self.ctx.step)
        self.dispatcher.emit("log", values)
        return self._steer(control)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any
    ) -> Any:
        self._sync(state)
        values = numeric(metrics)
        self.evals.append(values)
        self._evals_at[self.ctx.step] = values
        self.dispatcher.emit("evaluate", values)
        return self._steer(control)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self._sync(state)
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.last_checkpoint, self._saved_at = path, self.ctx.step
        self.dispatcher.emit("checkpoint", path)
        return self._steer(control, may_save=False)
