"""Hooks fire and can stop a run; generate returns only new text and stops at end of turn."""

from __future__ import annotations

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

from .helpers import cpu


class Recorder(tk.Hook):
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.stop_at = stop_at
        self.result = None

    def on_fit_start(self, ctx):
        self.events.append(("fit_start", ctx.step))

    def on_step_end(self, ctx):
        self.events.append(("step_end", ctx.step))
        if self.stop_at is not None and ctx.step >= self.stop_at:
            ctx.request_stop()

    def on_log(self, ctx, logs):
        self.events.append(("log", ctx.step))

    def on_evaluate(self, ctx, metrics):
        self.events.append(("evaluate", ctx.step))
        assert "eval_loss" in metrics

    def on_fit_end(self, ctx, result):
        self.events.append(("fit_end", ctx.step))
        self.result = result

    def on_exception(self, ctx, error):
        self.events.append(("exception", ctx.step))


def test_events_fire_in_order(tiny_llama):
    rec = Recorder()
    tuner = tk.Tuner(tiny_llama, hooks=[rec], training=cpu(max_steps=4, eval_every=2, batch_size=4))
    result = tuner.fit(reverse_task(16), eval_data=reverse_task(8, seed=1))
    names = [e for e, _ in rec.events]
    assert names[0] == "fit_start" and names[-1] == "fit_end"
    assert [s for e, s in rec.events if e == "step_end"] == [1, 2, 3, 4]
    # Steps 2 and 4; the final evaluation is the one at step 4 (it runs inside the training loop,
    # before the trackers close), not a third one.
    assert names.count("evaluate") == 2
    assert result.eval_loss == rec_eval_loss(result, step=4)
    assert rec.result is result


def test_request_stop_ends_run_early(tiny_llama):
    rec = Recorder(stop_at=3)
    tuner = tk.Tuner(tiny_llama, hooks=[rec], training=cpu(max_steps=50, batch_size=4))
    result = tuner.fit(reverse_task(16))
    assert result.steps == 3 and result.stopped_early
    assert [s for e, s in rec.events if e == "step_end"] == [1, 2, 3]


def rec_eval_loss(result, *, step):
    return next(h["eval_loss"] for h in result.history if h["step"] == step and "eval_loss" in h)


def test_exception_reaches_hooks_and_caller(tiny_llama):
    """The default hook_errors="stop": the run ends cleanly after that step, then TrainingError."""

    class Boom(tk.Hook):
        def on_step_end(self, ctx):
            raise RuntimeError(f"boom at step {ctx.step}")

    rec = Recorder()
    tuner = tk.Tuner(tiny_llama, hooks=[Boom(), rec], training=cpu(max_steps=5, batch_size=4))
    with pytest.raises(tk.TrainingError, match=r"hook Boom\.on_step_end raised RuntimeError: boom at step 1") as info:
        tuner.fit(reverse_task(16))
    assert isinstance(info.value.__cause__, RuntimeError)  # the hook's own exception, chained
    assert ("exception", 1) in rec.events
    assert [s for e, s in rec.events if e == "step_end"] == [1]  # the other hooks still saw step 1
    assert "fit_end" not in [e for e, _ in rec.events]
    assert tuner.last_result is not None and tuner.last_result.steps == 1


def test_generate_shapes_and_no_echo(full_reverse):
    tuner = full_reverse[0]
    one = tuner.generate("reverse: 1 2 3", max_new_tokens=12)
    assert isinstance(one, str) and "reverse" not in one and one == "3 2 1"
    chat = tuner.generate([{"role": "user", "content": "reverse: 4 5 6"}], max_new_tokens=12)
    assert chat == "6 5 4"
    many = tuner.generate(["reverse: 1 2 3", "reverse: 7 8 9 0"], max_new_tokens=12)
    assert many == ["3 2 1", "0 9 8 7"]
    assert tuner.generate([]) == []


def test_nan_loss_stops_with_training_error(tiny_llama):
    tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=cpu(max_steps=5, batch_size=4))
    # Poison a weight so the first forward pass is non-finite.
    import torch

    with torch.no_grad():
        next(tuner.model.parameters()).fill_(float("nan"))
    with pytest.raises(tk.TrainingError, match=r"non-finite loss .* at step 1"):
        tuner.fit(reverse_task(16))
