"""Application hooks: ``tk.Hook``, the ``RunContext`` every event receives, and the dispatcher.

A :class:`Hook` overrides the events it needs. Every objective fires the same events, in this
order: ``on_fit_start``; then per optimizer step ``on_step_end``, and, when due, ``on_log``,
``on_evaluate`` and ``on_checkpoint``; finally ``on_fit_end`` with the :class:`FitResult`, or
``on_exception`` when the run failed. Built-in hooks live in :mod:`tunekit.hooks_builtin`.

What happens when a hook raises is the ``Tuner(hook_errors=...)`` policy:

- ``"stop"`` (default): the run ends cleanly after the current step (trackers are closed, a
  checkpoint is written when the Tuner has an ``output_dir``, so the run can resume once the hook
  is fixed), then ``fit`` raises :class:`tunekit.TrainingError` naming the hook and the event,
  with the hook's exception chained as ``__cause__``.
- ``"log"``: the error is logged on the ``tunekit`` logger (with its traceback the first time)
  and training continues.

An exception raised by ``on_exception`` itself is always logged, never raised, so that it cannot
hide the error that failed the run.

With several processes (torchrun, ``tunekit launch``), hooks run on the main process (rank 0)
only, so files are written once; a hook class that sets ``all_ranks = True`` runs on every
process. ``ctx.rank``, ``ctx.world_size`` and ``ctx.is_main_process`` say where a hook runs, and a
stop asked for on any process stops all of them after the same step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tunekit.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from tunekit.results import FitResult

__all__ = ["HOOK_ERROR_POLICIES", "Hook", "HookDispatcher", "HookErrors", "RunContext", "RunControl", "preflight"]

logger = logging.getLogger("tunekit")

HookErrors = Literal["stop", "log"]
HOOK_ERROR_POLICIES: tuple[str, ...] = ("stop", "log")
_EVENTS = ("fit_start", "step_end", "log", "evaluate", "checkpoint", "fit_end", "exception")


@dataclass
class RunContext:
    """The state of a run as hooks see it.

    ``step`` counts optimizer steps done, ``max_steps`` the planned total, ``epoch`` the (fractional)
    epoch, ``metrics`` the latest logged values, ``output_dir`` the Tuner's (``None`` when it has
    none), ``objective`` and ``method`` their names, ``rank`` and ``world_size`` this process's place
    when the script runs in several processes (0 and 1 otherwise). Call :meth:`request_stop` to end the run
    cleanly after the current step, :meth:`generate` to sample from the model being trained and
    :meth:`record` to add an entry to ``FitResult.history``.

    Example:
        >>> import tunekit as tk
        >>> class StopAt(tk.Hook):
        ...     def on_step_end(self, ctx):
        ...         if ctx.step >= 100:
        ...             ctx.request_stop(f"step {ctx.step} of {ctx.max_steps}: enough")
    """

    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None
    objective: str = ""
    method: str = ""
    rank: int = 0
    world_size: int = 1
    _stop: bool = field(default=False, init=False, repr=False)
    _stop_reason: str | None = field(default=None, init=False, repr=False)
    # The engine's side of this run's state (RunControl.of(ctx)); hooks use the methods above and below.
    _control: RunControl | None = field(default=None, init=False, repr=False, compare=False)

    def request_stop(self, reason: str = "stop requested by a hook") -> None:
        """Ask the run to stop after the current step (cooperative; the result is kept).

        ``reason`` ends up in ``FitResult.stop_reason``. The first request wins.
        """
        if not self._stop:
            self._stop_reason = reason
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        """Whether the run will stop after the current step."""
        return self._stop

    @property
    def stop_reason(self) -> str | None:
        """Why the run stops (``"cancelled"``, an early-stopping message, ...), or ``None``."""
        return self._stop_reason

    def generate(self, prompts: Any, **options: Any) -> Any:
        """``Tuner.generate`` on the model as it is now (used by ``SampleGenerations``).

        Raises :class:`tunekit.TrainingError` outside a run (no model is being trained then).
        """
        generator = RunControl.of(self).generator
        if generator is None:
            raise TrainingError(
                "RunContext.generate() works only while a run is going (inside a hook); after the run, call "
                "tuner.generate(...)"
            )
        return generator(prompts, **options)

    def record(self, values: Mapping[str, Any]) -> None:
        """Append ``{"step": ..., "epoch": ..., **values}`` to ``FitResult.history``."""
        RunControl.of(self).history.append({"step": self.step, "epoch": round(self.epoch, 4), **values})

    @property
    def is_main_process(self) -> bool:
        """Whether this is rank 0, the process that writes files (always True in a single process)."""
        return self.rank == 0

    @property
    def cancelled(self) -> bool:
        return self._stop_reason == "cancelled"


class RunControl:
    """The engine's side of a run's state, beside the :class:`RunContext` hooks see.

    The run (``Tuner.fit``, ``Run``) and the backend share it through the :class:`HookDispatcher`
    (``dispatcher.control``): what hooks and the application asked for (a stop with a checkpoint, a
    cancel), whether a hook failed, the history ``FitResult.history`` is made of, and the generator
    ``ctx.generate`` calls while the run goes. A context has exactly one control (:meth:`of`).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.checkpoint_on_stop = False  # write a resumable checkpoint when the run stops (a cancel, a failed hook)
        self.hook_failed = False  # a hook raised under hook_errors="stop" (on any process: shared like a stop)
        self.history: list[dict[str, Any]] = []  # FitResult.history: logged entries and ctx.record() values
        self.generator: Callable[..., Any] | None = None  # what ctx.generate() calls, while a run goes
        # Training(eval_metrics=...): scores the eval data on the model as it is, {"eval_<metric>": value}
        self.evaluator: Callable[[], dict[str, float]] | None = None

    @classmethod
    def of(cls, ctx: RunContext) -> RunControl:
        """The control of ``ctx`` (made on first use)."""
        if ctx._control is None:
            ctx._control = cls(ctx)
        return ctx._control

    def cancel(self, *, checkpoint: bool) -> None:
        """Stop at the next step boundary; with ``checkpoint``, write a resumable checkpoint first."""
        self.checkpoint_on_stop = self.checkpoint_on_stop or checkpoint
        self.ctx.request_stop("cancelled")

    def fail(self, reason: str) -> None:
        """A hook failed under ``hook_errors="stop"``: keep the work done so far (a checkpoint) and stop."""
        self.checkpoint_on_stop = True
        self.hook_failed = True
        self.ctx.request_stop(reason)

    def merge(self, *, checkpoint_on_stop: bool, hook_failed: bool) -> None:
        """Take what another process asked for (several processes: a stop asked on one holds on all)."""
        self.checkpoint_on_stop = self.checkpoint_on_stop or checkpoint_on_stop
        self.hook_failed = self.hook_failed or hook_failed

    @property
    def finished(self) -> bool:
        """Whether the run ends as a finished run: not cancelled, and no hook failed (a final evaluation runs)."""
        return not (self.ctx.cancelled or self.hook_failed)


class Hook:
    """Base class for application callbacks; override the events you need (all are no-ops).

    Hooks run in the training thread, between optimizer steps: keep them quick, and hand slow
    work (uploads, UI updates) to your own thread or use ``tuner.start(...).events()``.

    Example:
        >>> import tunekit as tk
        >>> class StopAt(tk.Hook):
        ...     def on_step_end(self, ctx):
        ...         if ctx.step >= 10:
        ...             ctx.request_stop()
    """

    all_ranks: ClassVar[bool] = False
    """With several processes, run this hook on every process rather than on rank 0 only."""

    def on_fit_start(self, ctx: RunContext) -> None:
        """Before the first step, after the model and data are ready (``ctx.step`` > 0 on resume)."""

    def on_step_end(self, ctx: RunContext) -> None:
        """After each optimizer step."""

    def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
        """When metrics are logged (every ``Training.log_every`` steps, after evaluations, at the end)."""

    def on_evaluate(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        """After an evaluation on ``eval_data`` (``metrics`` keys start with ``eval_``)."""

    def on_checkpoint(self, ctx: RunContext, path: Path) -> None:
        """After a checkpoint was written to ``path``."""

    def on_fit_end(self, ctx: RunContext, result: FitResult) -> None:
        """After training (completed, stopped or cancelled), with the ``FitResult``."""

    def on_exception(self, ctx: RunContext, error: BaseException) -> None:
        """When the run fails (loading, data or training); the error is re-raised after the hooks ran."""

    def _preflight(self, *, output_dir: Path | None, has_eval: bool, training: Any) -> None:
        """Check the hook can work in this run before anything loads (built-in hooks raise ConfigError)."""


def preflight(hooks: Sequence[Hook], *, output_dir: Path | None, has_eval: bool, training: Any) -> None:
    """Check, before anything loads, that each hook can work in this run (built-in hooks raise ConfigError)."""
    for hook in hooks:
        hook._preflight(output_dir=output_dir, has_eval=has_eval, training=training)


@dataclass
class HookFailure:
    """The first hook exception under ``hook_errors="stop"``."""

    hook: str
    event: str
    step: int
    error: Exception


def check_hook_errors(value: object) -> HookErrors:
    if value not in HOOK_ERROR_POLICIES:
        raise ConfigError(
            f"Tuner(hook_errors={value!r}): must be 'stop' (end the run cleanly and raise TrainingError) "
            "or 'log' (log the error and keep training)"
        )
    return value  # type: ignore[return-value]


class HookDispatcher:
    """Calls every hook for an event, in order, and applies the ``hook_errors`` policy.

    Backends call :meth:`emit` from their own callback system (the ``hf`` backend from a
    transformers ``TrainerCallback``), so every objective fires the same events.
    """

    def __init__(self, hooks: Sequence[Hook], ctx: RunContext, hook_errors: HookErrors = "stop") -> None:
        self.hooks = list(hooks)
        self.ctx = ctx
        self.control = RunControl.of(ctx)  # the engine's side of the run: stop, checkpoint, failure, history
        self.policy = check_hook_errors(hook_errors)
        self.failure: HookFailure | None = None
        self._logged: dict[tuple[str, str], int] = {}

    def emit(self, event: str, *payload: Any) -> None:
        """Call ``on_<event>(ctx, *payload)`` on every hook; a hook's exception follows the policy."""
        assert event in _EVENTS, event
        if event == "evaluate" and self.control.evaluator is not None:
            self._add_eval_metrics(payload[0])
        main = self.ctx.is_main_process
        for hook in self.hooks:
            if not (main or hook.all_ranks):
                continue
            try:
                getattr(hook, "on_" + event)(self.ctx, *payload)
            except Exception as err:  # KeyboardInterrupt and SystemExit still end the run at once
                self._on_error(hook, event, err)

    def _add_eval_metrics(self, metrics: dict[str, float]) -> None:
        """Training(eval_metrics=...): score the eval data now (every process: a sharded model generates on all),
        add the figures to the evaluation's metrics (what hooks and the final result see) and to its history
        entry."""
        assert self.control.evaluator is not None
        extra = self.control.evaluator()
        metrics.update(extra)
        history, step = self.control.history, self.ctx.step
        entry = next(
            (e for e in reversed(history) if e.get("step") == step and any(str(k).startswith("eval_") for k in e)),
            None,
        )
        if entry is None:
            history.append({"step": step, "epoch": round(self.ctx.epoch, 4), **extra})
        else:
            entry.update(extra)

    def _on_error(self, hook: Hook, event: str, err: Exception) -> None:
        name = type(hook).__name__
        if self.policy == "stop" and event != "exception":
            if self.failure is None:
                self.failure = HookFailure(name, event, self.ctx.step, err)
                # Keep the work done so far: write a checkpoint (when there is an output_dir) and stop.
                self.control.fail(f"hook {name}.on_{event} raised {type(err).__name__}")
            else:
                logger.error("hook %s.on_%s also raised %s: %s", name, event, type(err).__name__, err)
            return
        key = (name, event)
        count = self._logged.get(key, 0) + 1
        self._logged[key] = count
        if count == 1:
            what = "while the run was failing" if event == "exception" else "; training continues (hook_errors='log')"
            logger.error(
                "hook %s.on_%s raised %s at step %d %s",
                name,
                event,
                type(err).__name__,
                self.ctx.step,
                what,
                exc_info=err,
            )
        else:
            logger.debug("hook %s.on_%s raised again (%d times): %s", name, event, count, err)

    def error(self, checkpoint: Path | None = None) -> TrainingError | None:
        """The ``TrainingError`` to raise for the first hook failure under ``"stop"``, if any.

        ``checkpoint`` is the last checkpoint the run wrote, named so the user can resume from it.
        """
        f = self.failure
        if f is None:
            return None
        if f.event == "fit_end":
            what = f"after the run completed ({self.ctx.step} steps; the result is in tuner.last_result)"
        else:
            what = f"at step {f.step}; the run stopped cleanly after step {self.ctx.step}"
            if checkpoint is not None:
                what += f" and left the checkpoint {checkpoint} (fit(..., resume=True) continues from it)"
        return TrainingError(
            f"hook {f.hook}.on_{f.event} raised {type(f.error).__name__}: {f.error} {what}. "
            "Fix the hook, or pass Tuner(hook_errors='log') to log hook errors and keep training"
        )

    def summary(self) -> None:
        """Log how often each hook failed under ``"log"`` (one line per hook and event)."""
        for (name, event), count in self._logged.items():
            if count > 1:
                logger.warning("hook %s.on_%s raised %d times during the run", name, event, count)
