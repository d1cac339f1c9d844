"""The bridge from transformers' TrainerCallback to tunekit hooks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunekit.errors import TrainingError
from tunekit.hooks import Hook, RunContext

__all__ = ["HookBridge", "check_finite"]


def check_finite(logs: dict[str, Any], step: int) -> None:
    """Raise TrainingError on a non-finite loss or gradient norm, naming the step."""
    for key in ("loss", "grad_norm"):
        v = logs.get(key)
        if isinstance(v, (int, float)) and not math.isfinite(v):
            raise TrainingError(
                f"non-finite {key} ({v}) at step {step}; lower Training(learning_rate=...), "
                "check the data for empty or huge examples, or use precision='fp32'"
            )


class HookBridge(TrainerCallback):  # type: ignore[misc]
    """Forwards trainer events to ``hooks`` and records the logged history."""

    def __init__(self, hooks: list[Hook], ctx: RunContext) -> None:
        self.hooks = hooks
        self.ctx = ctx
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, float]] = []

    def _sync(self, state: Any) -> None:
        self.ctx.step = int(state.global_step)
        self.ctx.max_steps = int(state.max_steps)
        self.ctx.epoch = float(state.epoch or 0.0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync(state)
        for h in self.hooks:
            h.on_fit_start(self.ctx)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self._sync(state)
        for h in self.hooks:
            h.on_step_end(self.ctx)
        if self.ctx.stop_requested:
            control.should_training_stop = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        self._sync(state)
        logs = dict(logs or {})
        if "loss" in logs or any(k.startswith("eval_") for k in logs):
            entry = {"step": self.ctx.step, "epoch": round(self.ctx.epoch, 4)}
            entry.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            self.history.append(entry)
            self.ctx.metrics = {k: float(v) for k, v in entry.items() if isinstance(v, (int, float))}
        check_finite(logs, self.ctx.step)
        for h in self.hooks:
            h.on_log(self.ctx, logs)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any
    ) -> None:
        self._sync(state)
        metrics = dict(metrics or {})
        self.evals.append(metrics)
        for h in self.hooks:
            h.on_evaluate(self.ctx, metrics)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync(state)
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for h in self.hooks:
            h.on_checkpoint(self.ctx, path)
