"""Runs and hooks through the public test double (tk.testing.FakeBackend): the real Tuner, data path, run and hook
dispatcher, with the training scripted. These are the run and hook mechanics, in milliseconds; the same events on a
real model are in tests/integration/test_embedding.py and test_hooks_and_generate.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.hooks import RunContext
from tunekit.testing import FakeBackend, reverse_task

ROWS = reverse_task(6)


class Recorder(tk.Hook):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_fit_start(self, ctx: RunContext) -> None:
        self.events.append(("fit_start", ctx.step))

    def on_step_end(self, ctx: RunContext) -> None:
        self.events.append(("step_end", ctx.step))

    def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
        self.events.append(("log", ctx.step))

    def on_evaluate(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        self.events.append(("evaluate", ctx.step))

    def on_checkpoint(self, ctx: RunContext, path: Path) -> None:
        self.events.append(("checkpoint", ctx.step))

    def on_fit_end(self, ctx: RunContext, result: tk.FitResult) -> None:
        self.events.append(("fit_end", ctx.step))

    def on_exception(self, ctx: RunContext, error: BaseException) -> None:
        self.events.append(("exception", ctx.step))


def tuner_on(backend: FakeBackend, **kw: Any) -> tk.Tuner:
    training = kw.pop("training", tk.Training(log_every=1))
    return tk.Tuner("fake-model", backend=backend, progress=False, training=training, **kw)


def test_events_fire_in_order_and_the_result_is_the_scripted_run(tmp_path: Path) -> None:
    rec = Recorder()
    training = tk.Training(log_every=2, eval_every=2, save_every=3)
    backend = FakeBackend(losses=[4.0, 3.0, 2.0, 1.0])
    tuner = tuner_on(backend, hooks=[rec], training=training, output_dir=tmp_path)
    result = tuner.fit(ROWS, eval_data=ROWS[:2])
    assert rec.events == [
        ("fit_start", 0),
        ("step_end", 1), ("log", 1),
        ("step_end", 2), ("log", 2), ("evaluate", 2),
        ("step_end", 3), ("checkpoint", 3),
        ("step_end", 4), ("log", 4), ("evaluate", 4),
        ("fit_end", 4),
    ]  # fmt: skip
    assert [h["loss"] for h in result.history] == [4.0, 3.0, 1.0] and result.train_loss == 1.0
    assert result.steps == 4 and result.num_examples == 6 and result.num_tokens > 0
    assert result.checkpoint == tmp_path / "checkpoint-3" and tuner.last_result is result
    assert backend.calls == ["preflight", "load", "fit"] and backend.specs[0].objective.name == "SFT"
    assert tuner.model.steps == 4  # the "model" the fake trained


def test_request_stop_ends_the_run_after_the_step_with_its_reason() -> None:
    class StopAt(tk.Hook):
        def on_step_end(self, ctx: RunContext) -> None:
            if ctx.step == 2:
                ctx.request_stop("enough at 2")

    result = tuner_on(FakeBackend(losses=[1.0] * 10), hooks=[StopAt()]).fit(ROWS)
    assert (result.steps, result.stopped_early, result.stop_reason) == (2, True, "enough at 2")


def test_a_failing_hook_stops_with_a_checkpoint_and_raises_training_error(tmp_path: Path) -> None:
    class Boom(tk.Hook):
        def on_step_end(self, ctx: RunContext) -> None:
            if ctx.step == 2:
                raise KeyError("broken")

    rec = Recorder()
    tuner = tuner_on(FakeBackend(losses=[1.0] * 6), hooks=[Boom(), rec], output_dir=tmp_path)
    with pytest.raises(tk.TrainingError, match=r"hook Boom.on_step_end raised KeyError.*checkpoint-2") as err:
        tuner.fit(ROWS)
    assert isinstance(err.value.__cause__, KeyError)
    assert ("checkpoint", 2) in rec.events and ("fit_end", 2) not in rec.events and rec.events[-1] == ("exception", 2)
    assert tuner.last_result is not None and tuner.last_result.steps == 2  # kept before the error was raised


def test_log_policy_keeps_training_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    class Boom(tk.Hook):
        def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
            raise ValueError("every time")

    result = tuner_on(FakeBackend(losses=[1.0] * 3), hooks=[Boom()], hook_errors="log").fit(ROWS)
    assert result.steps == 3 and not result.stopped_early
    assert sum("Boom.on_log raised ValueError" in r.getMessage() for r in caplog.records) == 1


def test_a_training_error_reaches_the_hooks_and_the_caller() -> None:
    rec = Recorder()
    tuner = tuner_on(FakeBackend(losses=[1.0, float("nan")]), hooks=[rec])
    with pytest.raises(tk.TrainingError, match="non-finite loss"):
        tuner.fit(ROWS)
    assert rec.events[-1] == ("exception", 2)  # the step that gave the NaN


def test_generate_inside_a_hook_and_record_reach_the_history() -> None:
    class Sample(tk.Hook):
        def on_step_end(self, ctx: RunContext) -> None:
            ctx.record({"sample": ctx.generate("reverse: 1 2")})

    backend = FakeBackend(losses=[1.0, 0.5], replies=lambda text: text[::-1])
    result = tuner_on(backend, hooks=[Sample()]).fit(ROWS)
    assert [h.get("sample") for h in result.history if "sample" in h] == ["2 1 :esrever", "2 1 :esrever"]


def test_run_context_generate_outside_a_run_is_a_training_error() -> None:
    with pytest.raises(tk.TrainingError, match=r"only while a run is going"):
        RunContext().generate("hi")


def test_cancel_from_another_thread_leaves_a_checkpoint(tmp_path: Path) -> None:
    gate = threading.Semaphore(0)
    backend = FakeBackend(losses=[1.0] * 50, step_gate=gate)
    run = tuner_on(backend, output_dir=tmp_path).start(ROWS)
    gate.release(2)
    for event in run.events(timeout=30):
        if event.name == "step_end" and event.step == 2:
            break
    run.cancel()
    gate.release(1)  # a step may be waiting at its gate: it runs, then the run stops with a checkpoint
    result = run.wait(timeout=30)
    assert run.state == "cancelled" and result.stop_reason == "cancelled" and result.steps in (2, 3)
    assert result.checkpoint == tmp_path / f"checkpoint-{result.steps}" and result.checkpoint.is_dir()


def test_fit_and_save_through_the_double_write_a_real_save(tmp_path: Path) -> None:
    tuner = tuner_on(FakeBackend())
    tuner.fit(ROWS)
    saved = tuner.save(tmp_path / "save")
    manifest = json.loads((saved / "tunekit.json").read_text(encoding="utf-8"))
    assert manifest["method"] == tk.LoRA().record() and manifest["objective"] == tk.SFT().record()
    assert manifest["data"]["train"]["rows"] == len(ROWS) and "fake_model.json" in manifest["files"]


def test_plan_score_and_errors_before_loading() -> None:
    backend = FakeBackend(params=(10, 100), rewards=lambda item: 1.0)
    tuner = tuner_on(backend)
    plan = tuner.plan(ROWS)
    assert (plan.trainable_params, plan.total_params, plan.examples) == (10, 100, len(ROWS))
    assert plan.fits is True and tuner.plan(ROWS, device_memory_gib=2**-30).fits is False  # a device of 1 byte
    with pytest.raises(tk.IncompatibleError, match="needs a reward model"):
        tuner.score([("a", "b")])
    rm = tuner_on(backend, objective=tk.RewardModeling())
    assert rm.score([("a", "b"), ("c", "d")]) == [1.0, 1.0]
    with pytest.raises(tk.IncompatibleError, match="reward model"):
        rm.generate("hi")
    assert backend.calls == ["plan", "plan", "load", "score"]  # a plan loads nothing; the refused calls did not load


def test_bad_rows_are_refused_before_the_backend_is_called() -> None:
    backend = FakeBackend()
    with pytest.raises(tk.DatasetError, match="row 1"):
        tuner_on(backend).fit([{"prompt": "x", "completion": ""}])
    assert backend.calls == []


def test_generate_and_score_take_any_iterable() -> None:
    tuner = tuner_on(FakeBackend(replies=lambda text: text.upper()))
    assert tuner.generate(p for p in ["a", "b"]) == ["A", "B"]  # a generator is read once
    rm = tuner_on(FakeBackend(rewards=lambda item: 2.0), objective=tk.RewardModeling())
    assert rm.score(x for x in [("a", "b"), ("c", "d")]) == [2.0, 2.0]


def test_an_ended_run_is_not_kept_alive_by_its_tuner() -> None:
    """A failed run's error holds the frames of the run (and the trainer in a real one): once the application
    drops the run, nothing of the tuner keeps it."""
    import gc
    import weakref

    tuner = tuner_on(FakeBackend(losses=[1.0] * 4, fail_at=2, error=RuntimeError("scripted")))
    run = tuner.start(ROWS)
    with pytest.raises(RuntimeError, match="scripted"):
        run.wait(timeout=30)
    gone = weakref.ref(run)
    del run
    gc.collect()
    assert gone() is None


def test_save_and_export_refuse_bad_requests_before_anything_loads(tmp_path: Path) -> None:
    backend = FakeBackend()
    tuner = tuner_on(backend)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(tk.CheckpointError, match="a file is in the way"):
        tuner.save(tmp_path / "file")
    with pytest.raises(tk.CheckpointError, match="not a tunekit save"):
        tuner.save(tmp_path / "theirs")
    with pytest.raises(tk.ConfigError, match=r"max_new_tokens=0"):
        tuner.export(tmp_path / "out", max_new_tokens=0)
    with pytest.raises(tk.ConfigError, match="choose one of"):
        tuner.export(tmp_path / "out", format="onnx")
    assert backend.calls == [] and (tmp_path / "theirs" / "notes.txt").read_text(encoding="utf-8") == "keep me"
