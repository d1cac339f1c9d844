"""Application hooks: ``tk.Hook`` and the ``RunContext`` every event receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Hook", "RunContext"]


@dataclass
class RunContext:
    """The state of a run as hooks see it.

    ``step`` counts optimizer steps done, ``max_steps`` the planned total, ``epoch`` the (fractional)
    epoch, ``metrics`` the latest logged values. Call :meth:`request_stop` to end the run cleanly
    after the current step.
    """

    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None
    objective: str = ""
    method: str = ""
    _stop: bool = False

    def request_stop(self) -> None:
        """Ask the run to stop after the current step (cooperative; the result is kept)."""
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop


class Hook:
    """Base class for application callbacks; override the events you need (all are no-ops).

    Example:
        >>> import tunekit as tk
        >>> class StopAt(tk.Hook):
        ...     def on_step_end(self, ctx):
        ...         if ctx.step >= 10:
        ...             ctx.request_stop()
    """

    def on_fit_start(self, ctx: RunContext) -> None:
        """Before the first step, after the model and data are ready."""

    def on_step_end(self, ctx: RunContext) -> None:
        """After each optimizer step."""

    def on_log(self, ctx: RunContext, logs: dict[str, Any]) -> None:
        """When metrics are logged (every ``Training.log_every`` steps)."""

    def on_evaluate(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        """After an evaluation on ``eval_data``."""

    def on_checkpoint(self, ctx: RunContext, path: Path) -> None:
        """After a checkpoint was written to ``path``."""

    def on_fit_end(self, ctx: RunContext, result: Any) -> None:
        """After training, with the ``FitResult``."""

    def on_exception(self, ctx: RunContext, error: BaseException) -> None:
        """When the run fails; the error is re-raised after the hooks ran."""
