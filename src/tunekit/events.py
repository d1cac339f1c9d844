"""Typed run events: what ``Run.events()`` yields, one class per :class:`tunekit.Hook` method.

Every event carries the run's position (``step``, ``max_steps``, ``epoch``) at the moment it
happened, and its own payload, the same values the hook method receives:

=================  ======================  =======================================
hook method        event class             payload
=================  ======================  =======================================
``on_fit_start``   :class:`FitStart`       (none)
``on_step_end``    :class:`StepEnd`        (none)
``on_log``         :class:`Log`            ``logs: dict[str, float]``
``on_evaluate``    :class:`Evaluate`       ``metrics: dict[str, float]``
``on_checkpoint``  :class:`Checkpoint`     ``path: Path``
``on_fit_end``     :class:`FitEnd`         ``result: FitResult``
``on_exception``   :class:`Failed`         ``error: BaseException``
=================  ======================  =======================================

Example:
    >>> from tunekit.events import Log, StepEnd
    >>> for event in run.events():  # doctest: +SKIP
    ...     match event:
    ...         case Log(step=step, logs={"loss": loss}):
    ...             print(step, loss)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from tunekit.results import FitResult

__all__ = ["Checkpoint", "Evaluate", "Event", "Failed", "FitEnd", "FitStart", "Log", "RunEvent", "StepEnd"]


@dataclass(frozen=True)
class RunEvent:
    """Base of every event: where the run stood when it happened (``time`` is ``time.time()``)."""

    step: int
    max_steps: int
    epoch: float
    time: float = field(default_factory=time.time, kw_only=True)

    name: ClassVar[str] = ""
    """The hook method's name without ``on_``: ``"fit_start"``, ``"step_end"``, ``"log"``, ..."""


@dataclass(frozen=True)
class FitStart(RunEvent):
    """Training begins (``step`` > 0 when it resumed from a checkpoint)."""

    name: ClassVar[str] = "fit_start"


@dataclass(frozen=True)
class StepEnd(RunEvent):
    """An optimizer step finished."""

    name: ClassVar[str] = "step_end"


@dataclass(frozen=True)
class Log(RunEvent):
    """Metrics were logged (``loss``, ``learning_rate``, ``grad_norm``, ``eval_*``, ...)."""

    logs: dict[str, float]
    name: ClassVar[str] = "log"


@dataclass(frozen=True)
class Evaluate(RunEvent):
    """An evaluation on ``eval_data`` finished."""

    metrics: dict[str, float]
    name: ClassVar[str] = "evaluate"


@dataclass(frozen=True)
class Checkpoint(RunEvent):
    """A checkpoint was written to ``path`` (resume from it with ``resume=True`` or the path)."""

    path: Path
    name: ClassVar[str] = "checkpoint"


@dataclass(frozen=True)
class FitEnd(RunEvent):
    """The run finished (completed, stopped or cancelled) with ``result``."""

    result: FitResult
    name: ClassVar[str] = "fit_end"


@dataclass(frozen=True)
class Failed(RunEvent):
    """The run failed with ``error`` (``Run.wait()`` raises it)."""

    error: BaseException
    name: ClassVar[str] = "exception"


Event = FitStart | StepEnd | Log | Evaluate | Checkpoint | FitEnd | Failed
"""Any run event (a union, for ``match`` and type checkers)."""
