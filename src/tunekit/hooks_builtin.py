"""Built-in hooks: progress bar, JSONL metrics, loss plot, early stopping, sample generations.

All are exported at the top level (``tk.ProgressBar``, ...) and are plain :class:`tunekit.Hook`
subclasses: pass them in ``Tuner(hooks=[...])``. Each resets its state at ``on_fit_start``, so
one instance can serve several runs.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from tunekit import _fs
from tunekit.errors import ConfigError
from tunekit.hooks import Hook, RunContext
from tunekit.metrics import METRICS
from tunekit.plotting import PNG_SOURCE, loss_series, plot_loss, require_matplotlib
from tunekit.results import FitResult

__all__ = ["EarlyStopping", "JSONLMetrics", "LossPlot", "ProgressBar", "SampleGenerations"]

logger = logging.getLogger("tunekit")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar(Hook):
    """One progress bar for the run (rich), on stderr: step, loss, elapsed time and ETA.

    ``enabled=None`` (default) shows it only when the stream is a terminal, so services and CI
    logs stay clean; ``True`` forces it, ``False`` turns it off. A Tuner adds one automatically
    unless its hooks already hold a ``ProgressBar`` or it was built with ``progress=False``.

    Example:
        >>> import sys, tunekit as tk
        >>> tuner = tk.Tuner("Qwen/Qwen2-0.5B", hooks=[tk.ProgressBar(True, stream=sys.stdout)])
    """

    # Not transformers' ProgressCallback: that one draws tqdm bars for training and for every
    # evaluation, prints the metric dicts (with PrinterCallback) and always writes to stderr. Here
    # the application gets one bar, on the stream it chooses, shown only on a terminal.

    def __init__(self, enabled: bool | None = None, *, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self._bar: Any = None
        self._task: Any = None

    def _active(self) -> bool:
        stream = self.stream if self.stream is not None else sys.stderr
        return self.enabled if self.enabled is not None else _is_terminal(stream)

    def on_fit_start(self, ctx: RunContext) -> None:
        self._close()
        if not self._active():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=self.stream if self.stream is not None else sys.stderr)
        # redirect_stdout/stderr=False: rich would otherwise swap sys.stdout for the whole process.
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._bar.start()
        label = f"{ctx.method} {ctx.objective}".strip() or "fine-tuning"
        self._task = self._bar.add_task(label, total=ctx.max_steps or None, completed=ctx.step, loss="-")

    def on_step_end(self, ctx: RunContext) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=ctx.step, total=ctx.max_steps or None)

    def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
        if self._bar is not None and "loss" in logs:
            self._bar.update(self._task, loss=f"{logs['loss']:.4f}")

    def on_fit_end(self, ctx: RunContext, result: FitResult) -> None:
        self._close()

    def on_exception(self, ctx: RunContext, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.stop()


def _metrics_file(head: bytes) -> bool:
    """A file JSONLMetrics wrote: every line (of the first 4 KiB) a JSON object with its step, epoch and time."""
    lines = [line for line in head.split(b"\n")[:-1] if line.strip()] or [head]
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            return False
        if not (isinstance(row, dict) and {"step", "epoch", "time"} <= set(row)):
            return False
    return True


def _tunekit_png(head: bytes) -> bool:
    """A PNG tunekit's loss plot wrote (its text chunk names it; any other PNG, matplotlib's included, is not)."""
    return head.startswith(b"\x89PNG\r\n\x1a\n") and PNG_SOURCE.encode() in head


def _check_target(what: str, path: Path, ours: Callable[[bytes], bool]) -> None:
    """Before training: ``path`` can be written, and is not a file of the user's that the hook would replace."""
    if path.is_dir():
        raise ConfigError(f"{what}: {str(path)!r} is a directory; pass a file path")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            head = f.read(4096)
        if not ours(head):
            raise ConfigError(
                f"{what}: {str(path)!r} holds a file tunekit did not write, which the run would replace; "
                "move it or choose another path"
            )
    parent = next(p for p in (path.absolute().parent, *path.absolute().parents) if p.exists())
    if not parent.is_dir():
        raise ConfigError(f"{what}: {str(parent)!r} is a file, not a directory; choose another path")
    _fs.check_writable(path.absolute().parent, what)


class JSONLMetrics(Hook):
    """Append every logged metric dict as one JSON line: ``{"step", "epoch", "time", **logs}``.

    ``path`` defaults to ``<output_dir>/metrics.jsonl``. A new run truncates the file; a run
    resumed from a checkpoint appends to it.

    Example:
        >>> import tunekit as tk
        >>> tuner = tk.Tuner("Qwen/Qwen2-0.5B", hooks=[tk.JSONLMetrics()], output_dir="runs/qa")
        >>> tuner.fit("train.jsonl")  # doctest: +SKIP
        >>> open("runs/qa/metrics.jsonl", encoding="utf-8").readline()  # doctest: +SKIP
        '{"step": 10, "epoch": 0.1, "time": 3.2, "loss": 2.31, ...}'
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._file: Path | None = None

    def _preflight(self, *, output_dir: Path | None, has_eval: bool, training: Any) -> None:
        if self.path is None and output_dir is None:
            raise ConfigError(
                "JSONLMetrics(path=None): there is no output_dir to write metrics.jsonl into; "
                "pass JSONLMetrics(path=...) or Tuner(output_dir=...)"
            )
        if self.path is not None:  # the default, in output_dir, is checked with output_dir (tunekit.output_dir)
            _check_target(f"JSONLMetrics(path={str(self.path)!r})", self.path, _metrics_file)

    def on_fit_start(self, ctx: RunContext) -> None:
        target = self.path or (ctx.output_dir / "metrics.jsonl" if ctx.output_dir is not None else None)
        if target is None:
            raise ConfigError("JSONLMetrics: pass JSONLMetrics(path=...) or Tuner(output_dir=...)")
        target.parent.mkdir(parents=True, exist_ok=True)
        if ctx.step == 0:  # a fresh run; a resumed one keeps the lines written before
            target.write_text("", encoding="utf-8")
        self._file = target

    def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
        if self._file is None:
            return
        row = {"step": ctx.step, "epoch": round(ctx.epoch, 4), "time": round(time.time(), 3), **logs}
        # Opened per line (a few per minute at most): the file is complete and readable at any moment.
        with self._file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n")


class LossPlot(Hook):
    """Write the loss curve (train and eval) as a PNG at the end of the run.

    ``path`` defaults to ``<output_dir>/loss.png``; ``every=N`` also redraws it every N steps
    (to watch a long run). Needs matplotlib (``pip install "tunekit[plot]"``). For a plot on
    demand, call ``tk.plot_loss(result, path)``.

    Example:
        >>> import tunekit as tk
        >>> tuner = tk.Tuner("Qwen/Qwen2-0.5B", hooks=[tk.LossPlot(every=100)], output_dir="runs/qa")
        >>> tuner.fit("train.jsonl")  # writes runs/qa/loss.png  # doctest: +SKIP
    """

    def __init__(self, path: str | Path | None = None, *, every: int | None = None) -> None:
        if every is not None and every < 1:
            raise ConfigError(f"LossPlot(every={every!r}): every must be at least 1 (or None for the end only)")
        self.path = Path(path) if path is not None else None
        self.every = every
        self._history: list[dict[str, Any]] = []

    def _preflight(self, *, output_dir: Path | None, has_eval: bool, training: Any) -> None:
        if self.path is None and output_dir is None:
            raise ConfigError(
                "LossPlot(path=None): there is no output_dir to write loss.png into; "
                "pass LossPlot(path=...) or Tuner(output_dir=...)"
            )
        require_matplotlib()
        if self.path is not None:
            _check_target(f"LossPlot(path={str(self.path)!r})", self.path, _tunekit_png)

    def _target(self, ctx: RunContext) -> Path | None:
        return self.path or (ctx.output_dir / "loss.png" if ctx.output_dir is not None else None)

    def on_fit_start(self, ctx: RunContext) -> None:
        self._history = []

    def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
        if "loss" in logs or "eval_loss" in logs:
            self._history.append({"step": ctx.step, **logs})

    def on_step_end(self, ctx: RunContext) -> None:
        target = self._target(ctx)
        if self.every and ctx.step % self.every == 0 and target is not None and self._history:
            plot_loss(self._history, target, title=self._title(ctx))

    def on_fit_end(self, ctx: RunContext, result: FitResult) -> None:
        target = self._target(ctx)
        if target is not None and loss_series(result):
            plot_loss(result, target, title=self._title(ctx))
            logger.info("loss curve written to %s", target)

    @staticmethod
    def _title(ctx: RunContext) -> str:
        return f"{ctx.method} {ctx.objective} loss".strip()


class EarlyStopping(Hook):
    """Stop when an evaluation metric has not improved for ``patience`` evaluations.

    ``metric`` is an evaluation metric (``"eval_loss"``, or a generation metric of
    ``Training(eval_metrics=[...])`` such as ``"exact_match"``; the ``eval_`` prefix may be left out),
    ``mode`` says whether lower (``"min"``) or higher (``"max"``) is better (default: ``"max"`` for the
    metrics of :mod:`tunekit.metrics` where higher is better, else ``"min"``), and an improvement
    must beat the best value so far by more than ``min_delta``. Needs ``eval_data`` and
    ``Training(eval_every=N)``. The run ends like ``ctx.request_stop()``: the result is kept and
    ``FitResult.stop_reason`` says why.

    Example:
        >>> import tunekit as tk
        >>> stop = tk.EarlyStopping("eval_loss", patience=3, min_delta=0.01)
        >>> tuner = tk.Tuner("Qwen/Qwen2-0.5B", hooks=[stop], training=tk.Training(eval_every=100))
        >>> tuner.fit("train.jsonl", eval_data="val.jsonl")  # doctest: +SKIP
        >>> tk.EarlyStopping("exact_match").mode  # with Training(eval_metrics=["exact_match"])
        'max'
    """

    # transformers' EarlyStoppingCallback needs load_best_model_at_end and metric_for_best_model in
    # TrainingArguments, which forces a checkpoint at every evaluation; this one works on tunekit's
    # events alone, for every objective, and leaves checkpointing to Training(save_every=...).

    def __init__(
        self,
        metric: str = "eval_loss",
        *,
        patience: int = 3,
        min_delta: float = 0.0,
        mode: Literal["min", "max"] | None = None,
    ) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"EarlyStopping(patience={patience!r}): patience must be a whole number of at least 1")
        if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta) or min_delta < 0:
            raise ConfigError(f"EarlyStopping(min_delta={min_delta!r}): min_delta must be a finite number >= 0")
        name = metric.removeprefix("eval_")
        if mode is None:
            mode = "max" if name in METRICS and METRICS[name].higher_is_better else "min"
        if mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping(mode={mode!r}): mode must be 'min' (lower is better) or 'max'")
        self.metric = metric
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode = mode
        self.best: float | None = None
        self.bad_evals = 0

    def _preflight(self, *, output_dir: Path | None, has_eval: bool, training: Any) -> None:
        if not has_eval or getattr(training, "eval_every", None) is None:
            raise ConfigError(
                f"EarlyStopping(metric={self.metric!r}) needs evaluations during training: pass "
                "eval_data=... to fit() and Training(eval_every=N)"
            )
        name = self.metric.removeprefix("eval_")
        if name in METRICS and name not in getattr(training, "eval_metrics", ()):
            raise ConfigError(
                f"EarlyStopping(metric={self.metric!r}) stops on a generation metric, which the evaluations score "
                f"only when asked: pass Training(eval_metrics=[{name!r}])"
            )

    def on_fit_start(self, ctx: RunContext) -> None:
        self.best, self.bad_evals = None, 0

    def on_evaluate(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        key = self.metric if self.metric in metrics else f"eval_{self.metric}"
        if key not in metrics:
            raise ConfigError(
                f"EarlyStopping(metric={self.metric!r}): the evaluation has no such metric; it has {sorted(metrics)}"
            )
        value = float(metrics[key])
        better = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if better:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience and not ctx.stop_requested:
            ctx.request_stop(
                f"early stopping: {key} did not improve by more than {self.min_delta:g} for {self.patience} "
                f"evaluations (best {self.best:.4g}, now {value:.4g})"
            )
            logger.info("%s at step %d", ctx.stop_reason, ctx.step)


class SampleGenerations(Hook):
    """Generate from fixed prompts every ``every`` steps and record them in ``FitResult.history``.

    Each time adds an entry ``{"step": N, "epoch": ..., "samples": [{"prompt": ..., "output": ...}]}``
    to the history (and logs it at INFO on the ``tunekit`` logger), so you can watch answers
    change during training. Options go to ``Tuner.generate`` (greedy, ``max_new_tokens=32`` by
    default). Generation costs time: keep the prompts few and ``every`` large.

    With several processes it generates on every process (``all_ranks``: with sharded weights,
    FSDP or ZeRO-3, a forward needs all of them) and logs on rank 0.

    Example:
        >>> import tunekit as tk
        >>> samples = tk.SampleGenerations(["Translate to French: cheese"], every=200, max_new_tokens=16)
        >>> result = tk.Tuner("Qwen/Qwen2-0.5B", hooks=[samples]).fit("train.jsonl")  # doctest: +SKIP
        >>> [h["samples"] for h in result.history if "samples" in h]  # doctest: +SKIP
    """

    all_ranks = True

    def __init__(
        self, prompts: Sequence[Any], *, every: int = 50, max_new_tokens: int = 32, **generate_options: Any
    ) -> None:
        if isinstance(prompts, str) or not prompts:
            raise ConfigError(
                f"SampleGenerations(prompts={prompts!r}): pass a non-empty list of prompts (strings or chat messages)"
            )
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"SampleGenerations(every={every!r}): every must be a whole number of at least 1")
        # A list of chat messages is one prompt, as in Tuner.generate.
        self.prompts = [list(prompts)] if isinstance(prompts[0], dict) else list(prompts)
        self.every = every
        self.options = {"max_new_tokens": max_new_tokens, **generate_options}

    def on_step_end(self, ctx: RunContext) -> None:
        if ctx.step % self.every:
            return
        outputs = ctx.generate(self.prompts, **self.options)
        samples = [{"prompt": p, "output": o} for p, o in zip(self.prompts, outputs)]
        ctx.record({"samples": samples})
        for s in samples if ctx.is_main_process else []:
            logger.info("step %d sample: %r -> %r", ctx.step, s["prompt"], s["output"])
