"""Runs: ``Tuner.fit`` (in the caller's thread) and ``Tuner.start`` (a background :class:`Run`).

Both go through :func:`prepare` (everything that can be checked without loading a model: the data,
the resume request, the trackers, the hooks), then :func:`execute` (encode, train, fire the hooks).
``start`` does the first part in the caller's thread, so a bad row or a missing package raises at
once, and the second in a background thread.

Example:
    >>> run = tuner.start("train.jsonl")  # doctest: +SKIP
    >>> for event in run.events():  # doctest: +SKIP
    ...     print(event.name, run.progress.step, run.progress.total, run.progress.eta_s)
    >>> result = run.wait()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, Literal, TypeVar

from tunekit.backends.base import Backend, LoadedModel, RunSpec
from tunekit.data.formats import NormalisedData
from tunekit.data.streaming import StreamedEncoded, StreamedRows
from tunekit.distributed import world
from tunekit.errors import ConfigError
from tunekit.evaluation import EvalItem, items_of, training_evaluator
from tunekit.events import Checkpoint, Evaluate, Event, Failed, FitEnd, FitStart, Log, RunEvent, StepEnd
from tunekit.hooks import Hook, HookDispatcher, RunContext, RunControl, preflight
from tunekit.hooks_builtin import ProgressBar
from tunekit.inference import generate_text
from tunekit.output_dir import claim
from tunekit.results import FitResult
from tunekit.training import Training, check_fit_options
from tunekit.training_data import encode_for

__all__ = ["Prepared", "Progress", "Run", "RunState", "check_resume", "execute", "prepare", "run_hooks"]

logger = logging.getLogger("tunekit")

RunState = Literal["starting", "running", "completed", "stopped", "cancelled", "failed"]
_E = TypeVar("_E", bound=RunEvent)


@dataclass(frozen=True)
class Prepared:
    """A run checked by :func:`prepare`, ready for :func:`execute`: its description, its data (normalised, not yet
    encoded: that needs the tokenizer) and the checkpoint it resumes from."""

    spec: RunSpec
    train: NormalisedData
    eval: NormalisedData | None
    resume_from: Path | None
    eval_items: list[EvalItem] | None = None  # what Training(eval_metrics=...) scores


def check_resume(resume: bool | str | Path | None, training: Training, output_dir: Path | None) -> bool | str | Path:
    """The resume request of ``fit(resume=...)`` (``None``: ``Training.resume``), checked before anything else."""
    if resume is None:
        resume = training.resume
    if not isinstance(resume, (bool, str, PurePath)) or resume == "":
        raise ConfigError(
            f"resume={resume!r}: pass True (the newest checkpoint in output_dir), 'auto' (the newest if there is "
            "one), a checkpoint directory, or False"
        )
    if resume is True and output_dir is None:
        raise ConfigError(
            f"resume={resume!r}: resuming looks for checkpoints in output_dir, and this Tuner has none; "
            "pass Tuner(output_dir=...) or resume='<path to a checkpoint-N directory>'"
        )
    return resume


def prepare(
    spec: RunSpec,
    backend: Backend,
    train: NormalisedData,
    evaluation: NormalisedData | None,
    resume: bool | str | Path,
) -> Prepared:
    """Validate everything else that needs no model: the backend's preflight (trackers, output_dir, the checkpoint
    to resume from) and the hooks'."""
    check_fit_options(spec.training, output_dir=spec.output_dir, has_eval=evaluation is not None, hooks=spec.hooks)
    if spec.output_dir is not None:  # then: nothing is written into a directory of someone else's files
        claim(Path(spec.output_dir), reuse=spec.reuse_output_dir, write=world().is_main)
    resume_from = backend.preflight(spec, resume=resume)
    preflight(run_hooks(spec), output_dir=spec.output_dir, has_eval=evaluation is not None, training=spec.training)
    items = items_of(evaluation) if evaluation is not None and spec.training.eval_metrics else None
    return Prepared(spec, train, evaluation, resume_from, items)


def run_hooks(spec: RunSpec, extra: Sequence[Hook] = ()) -> list[Hook]:
    """The run's hooks, plus the automatic progress bar (unless ``progress=False`` or one is given)."""
    hooks = list(spec.hooks)
    if spec.progress is not False and not any(isinstance(h, ProgressBar) for h in hooks):
        hooks.append(ProgressBar(enabled=spec.progress))
    return hooks + list(extra)


def execute(
    prepared: Prepared,
    backend: Backend,
    model: Callable[[], LoadedModel],
    *,
    on_result: Callable[[FitResult], None] | None = None,
    ctx: RunContext | None = None,
    extra_hooks: Sequence[Hook] = (),
) -> FitResult:
    """Load (``model()``: the tuner's model, loaded on first use), encode, train and fire the hooks; raise the
    run's error (a failing hook's as TrainingError). ``on_result`` receives the result as soon as training
    ends, before ``on_fit_end`` and before a hook's failure is raised."""
    spec = prepared.spec
    ctx = ctx if ctx is not None else RunContext()
    ctx.output_dir = spec.output_dir
    here = world()  # several processes (torchrun): hooks run on rank 0 unless they set all_ranks
    ctx.rank, ctx.world_size = here.rank, here.size
    ctx.objective, ctx.method = spec.objective.name, spec.method.name
    dispatcher = HookDispatcher(run_hooks(spec, extra_hooks), ctx, spec.hook_errors)
    control = dispatcher.control
    try:
        try:
            loaded = model()
            control.generator = functools.partial(generate_text, backend, loaded, spec.objective)
            if prepared.eval_items is not None:
                control.evaluator = training_evaluator(
                    backend, loaded, spec.objective, prepared.eval_items, spec.training.eval_metrics
                )
            train = encode_for(spec, prepared.train, loaded.tokenizer)
            evaluation = encode_for(spec, prepared.eval, loaded.tokenizer) if prepared.eval is not None else None
            result = backend.fit(
                spec, loaded, train, evaluation, dispatcher=dispatcher, resume_from=prepared.resume_from
            )
            if isinstance(
                train, (StreamedEncoded, StreamedRows)
            ):  # what the stream gave, counted as the trainer read it
                skipped = dict(sorted(train.skipped))  # once each, though a stream read twice meets them twice
                update = {"num_examples": train.streamed.rows, "num_tokens": train.streamed.tokens}
                result = result.model_copy(
                    update={**update, "skipped_rows": sorted(skipped), "skipped_reasons": skipped}
                )
        except BaseException as err:
            dispatcher.emit("exception", err)
            raise
        if on_result is not None:
            on_result(result)
        if dispatcher.failure is None:
            dispatcher.emit("fit_end", result)
        dispatcher.summary()
        failure, error = dispatcher.failure, dispatcher.error(result.checkpoint)
        if failure is not None and error is not None:
            dispatcher.emit("exception", error)
            raise error from failure.error
    finally:
        control.generator = None  # no reference from a kept context back to the model
        control.evaluator = None
    logger.info("%s", result)
    return result


def _event(cls: type[_E], ctx: RunContext, **payload: Any) -> _E:
    """An event of class ``cls`` where the run stands now."""
    return cls(step=ctx.step, max_steps=ctx.max_steps, epoch=ctx.epoch, **payload)


@dataclass(frozen=True)
class Progress:
    """Where a background run stands: ``step`` of ``total`` optimizer steps, the last logged ``loss``,
    seconds ``elapsed_s`` since training began and the estimated seconds left (``eta_s``, None until
    a step was timed)."""

    step: int = 0
    total: int = 0
    loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        """Share of the steps done, 0..1."""
        return min(1.0, self.step / self.total) if self.total else 0.0


class _Collector(Hook):
    """Turns hook calls into typed events on the run's queue and keeps ``run.progress`` current."""

    all_ranks = True  # the application on every process watches its own run

    def __init__(self, run: Run) -> None:
        self.run = run
        self._t0 = 0.0
        self._step0 = 0

    def on_fit_start(self, ctx: RunContext) -> None:
        self._t0, self._step0 = time.monotonic(), ctx.step
        self.run._set_state("running")
        self.run._update(step=ctx.step, total=ctx.max_steps, elapsed_s=0.0)
        self.run._put(_event(FitStart, ctx))

    def on_step_end(self, ctx: RunContext) -> None:
        elapsed = time.monotonic() - self._t0
        done = ctx.step - self._step0
        eta = (ctx.max_steps - ctx.step) * elapsed / done if done > 0 else None
        self.run._update(step=ctx.step, total=ctx.max_steps, elapsed_s=elapsed, eta_s=eta)
        self.run._put(_event(StepEnd, ctx))

    def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
        if "loss" in logs:
            self.run._update(loss=logs["loss"])
        self.run._put(_event(Log, ctx, logs=dict(logs)))

    def on_evaluate(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        self.run._put(_event(Evaluate, ctx, metrics=dict(metrics)))

    def on_checkpoint(self, ctx: RunContext, path: Path) -> None:
        self.run._put(_event(Checkpoint, ctx, path=path))

    def on_fit_end(self, ctx: RunContext, result: FitResult) -> None:
        self.run._update(step=ctx.step, eta_s=0.0)
        self.run._put(_event(FitEnd, ctx, result=result))

    def on_exception(self, ctx: RunContext, error: BaseException) -> None:
        self.run._put(_event(Failed, ctx, error=error))


class Run:
    """A fine-tuning run going on in a background thread; made by ``Tuner.start(...)``.

    - ``events()`` yields the run's typed events (:mod:`tunekit.events`) as they happen, the same
      ones hooks receive, and ends when the run ends;
    - ``progress`` is a :class:`Progress` snapshot (step, total, loss, elapsed, ETA);
    - ``cancel()`` stops the run after the current step and leaves a resumable checkpoint in
      ``output_dir``; ``tuner.fit(data, resume=True)`` or ``tuner.start(data, resume=True)``
      continues from it;
    - ``wait()`` blocks until the run ends and returns its :class:`FitResult`, or raises its error.

    The thread is a daemon: call ``wait()`` (or ``cancel()`` then ``wait()``) before the
    application exits, or use the run as a context manager, which does that on leaving. While it
    trains, ``tuner.generate()`` and ``tuner.save()`` from other threads raise ``ConfigError``.

    Example:
        >>> run = tuner.start("train.jsonl")  # doctest: +SKIP
        >>> for event in run.events():  # doctest: +SKIP
        ...     print(run.progress.step, run.progress.loss)
        >>> result = run.wait()  # doctest: +SKIP
    """

    def __init__(
        self,
        prepared: Prepared,
        backend: Backend,
        model: Callable[[], LoadedModel],
        *,
        on_result: Callable[[FitResult], None] | None = None,
    ) -> None:
        self._output_dir: Path | None = prepared.spec.output_dir
        self._ctx = RunContext(output_dir=self._output_dir)
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._progress = Progress()
        self._state: RunState = "starting"
        self._result: FitResult | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        # The thread drops its arguments when it ends: the run keeps neither the model nor its owner alive.
        self._thread = threading.Thread(
            target=self._main, args=(prepared, backend, model, on_result), name="tunekit-run", daemon=True
        )
        self._thread.start()

    # --- the background thread ----------------------------------------------------------------------
    def _main(
        self,
        prepared: Prepared,
        backend: Backend,
        model: Callable[[], LoadedModel],
        on_result: Callable[[FitResult], None] | None,
    ) -> None:
        try:
            result = execute(
                prepared, backend, model, on_result=on_result, ctx=self._ctx, extra_hooks=[_Collector(self)]
            )
            self._result = result
            if self._ctx.cancelled:
                self._set_state("cancelled")
            elif result.stopped_early:
                self._set_state("stopped")
            else:
                self._set_state("completed")
        except BaseException as err:  # handed to wait(); the thread itself ends quietly
            self._error = err
            self._set_state("failed")
        finally:
            self._finished.set()
            self._queue.put(None)

    def _put(self, event: Event) -> None:
        self._queue.put(event)

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._progress = replace(self._progress, **changes)

    def _set_state(self, state: RunState) -> None:
        with self._lock:
            self._state = state

    # --- the application's side -----------------------------------------------------------------
    @property
    def progress(self) -> Progress:
        """A snapshot of where the run stands (safe to read from any thread)."""
        with self._lock:
            return self._progress

    @property
    def state(self) -> RunState:
        """``"starting"`` (loading, encoding), ``"running"``, then ``"completed"``, ``"stopped"``
        (a hook asked, e.g. early stopping), ``"cancelled"`` or ``"failed"``."""
        with self._lock:
            return self._state

    @property
    def done(self) -> bool:
        """Whether the run has ended (in any state)."""
        return self._finished.is_set()

    def owns_current_thread(self) -> bool:
        """Whether the calling thread is the run's own (where its hooks run, between steps)."""
        return threading.current_thread() is self._thread

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield the run's events in order until it ends (thread-safe; meant for one consumer).

        Events are queued from the start, so none is missed by calling this late. ``timeout``
        bounds the wait for each next event (``TimeoutError`` when it passes).
        """
        while True:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"no run event for {timeout}s (state {self.state!r}, step {self.progress.step})"
                ) from None
            if item is None:
                self._queue.put(None)  # the end stays visible to later calls
                return
            yield item

    def cancel(self, *, checkpoint: bool = True) -> None:
        """Stop after the current step; with ``checkpoint`` (default), write a resumable checkpoint first.

        Returns at once; ``wait()`` returns the (partial) ``FitResult`` with
        ``stop_reason == "cancelled"`` and ``checkpoint`` set. Cancelling a run that ended does nothing.
        """
        if self.done:
            return
        if checkpoint and self._output_dir is None:
            raise ConfigError(
                "run.cancel(): a cancelled run leaves a resumable checkpoint in output_dir, and this Tuner has "
                "none; pass Tuner(output_dir=...), or call run.cancel(checkpoint=False) to stop without one"
            )
        if not self.done:
            RunControl.of(self._ctx).cancel(checkpoint=checkpoint)

    def wait(self, timeout: float | None = None) -> FitResult:
        """Block until the run ends; return its ``FitResult`` or raise its error.

        Raises ``TimeoutError`` if ``timeout`` seconds pass first (the run goes on).
        """
        if not self._finished.wait(timeout):
            p = self.progress
            raise TimeoutError(
                f"the run is still going after {timeout}s (step {p.step} of {p.total}); call wait() again, "
                "or cancel() it"
            )
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Leaving the block cancels a run that is still going (with a checkpoint when there is an output_dir)."""
        if not self.done:
            self.cancel(checkpoint=self._output_dir is not None)
        self._finished.wait()

    def __repr__(self) -> str:
        p = self.progress
        return f"<Run {self.state} step {p.step}/{p.total}>"
