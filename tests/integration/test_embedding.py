"""Embedding tunekit in an application: events, built-in hooks, background runs, trackers, state.

Few, tiny runs, each checked from several sides (module-scoped fixtures), to stay fast on 2 CPUs.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import random
import struct
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit import events as ev
from tunekit.testing import reverse_task

from .helpers import cpu

ALL_EVENTS = ["fit_start", "step_end", "log", "evaluate", "checkpoint", "fit_end", "exception"]


class TypedRecorder(tk.Hook):
    """Records every event with its payload, and checks the payload types on the way."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Any]] = []

    def on_fit_start(self, ctx: tk.RunContext) -> None:
        assert ctx.max_steps > 0 and ctx.objective and ctx.method
        self.calls.append(("fit_start", ctx.step, None))

    def on_step_end(self, ctx: tk.RunContext) -> None:
        self.calls.append(("step_end", ctx.step, None))

    def on_log(self, ctx: tk.RunContext, logs: dict[str, float]) -> None:
        assert logs and all(isinstance(k, str) and type(v) is float for k, v in logs.items())
        self.calls.append(("log", ctx.step, logs))

    def on_evaluate(self, ctx: tk.RunContext, metrics: dict[str, float]) -> None:
        assert type(metrics["eval_loss"]) is float
        self.calls.append(("evaluate", ctx.step, metrics))

    def on_checkpoint(self, ctx: tk.RunContext, path: Path) -> None:
        assert isinstance(path, Path) and path.is_dir()
        self.calls.append(("checkpoint", ctx.step, path))

    def on_fit_end(self, ctx: tk.RunContext, result: tk.FitResult) -> None:
        assert isinstance(result, tk.FitResult)
        self.calls.append(("fit_end", ctx.step, result))

    def on_exception(self, ctx: tk.RunContext, error: BaseException) -> None:
        self.calls.append(("exception", ctx.step, error))

    def steps(self, name: str) -> list[int]:
        return [s for n, s, _ in self.calls if n == name]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- one run with every built-in hook and both local trackers ----------------------------------------


@pytest.fixture(scope="module")
def full_run(tiny_llama, tmp_path_factory):
    import tunekit.plotting

    out = tmp_path_factory.mktemp("full-run")
    drawn: list[dict[str, Any]] = []
    real_draw = tunekit.plotting._draw

    def spy(series, path, *, title):
        drawn.append({k: (list(s), list(v)) for k, (s, v) in series.items()})
        return real_draw(series, path, title=title)

    rec = TypedRecorder()
    bar_stream = io.StringIO()
    hooks = [
        rec,
        tk.JSONLMetrics(),
        tk.LossPlot(),
        tk.SampleGenerations(["reverse: 1 2 3", "reverse: 4 5"], every=2, max_new_tokens=4),
        tk.ProgressBar(enabled=True, stream=bar_stream),
    ]
    training = cpu(max_steps=4, batch_size=4, eval_every=2, save_every=2, report_to=["tensorboard", "mlflow"])
    tuner = tk.Tuner(tiny_llama, hooks=hooks, training=training, output_dir=out)
    env_before = dict(os.environ)
    mp = pytest.MonkeyPatch()
    mp.setattr(tunekit.plotting, "_draw", spy)
    try:
        result = tuner.fit(reverse_task(16), eval_data=reverse_task(8, seed=1))
    finally:
        mp.undo()
    env = (env_before, dict(os.environ))
    return {"result": result, "rec": rec, "out": out, "drawn": drawn, "bar": bar_stream.getvalue(), "env": env}


def test_every_event_fires_with_typed_payloads(full_run):
    rec, result = full_run["rec"], full_run["result"]
    names = [n for n, _, _ in rec.calls]
    assert names[0] == "fit_start" and names[-1] == "fit_end" and "exception" not in names
    assert rec.steps("step_end") == [1, 2, 3, 4]
    assert rec.steps("log") == [1, 2, 2, 3, 4, 4, 4]  # loss per step, eval at 2 and 4, the run summary
    assert rec.steps("evaluate") == [2, 4]
    assert rec.steps("checkpoint") == [2, 4]
    assert [p.name for n, _, p in rec.calls if n == "checkpoint"] == ["checkpoint-2", "checkpoint-4"]
    assert rec.calls[-1][2] is result
    assert result.checkpoint == full_run["out"] / "checkpoint-4" and result.stop_reason is None


def test_jsonl_metrics_hold_every_logged_value(full_run):
    lines = (full_run["out"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    logged = [logs for n, _, logs in full_run["rec"].calls if n == "log"]
    assert len(rows) == len(logged)
    for row, logs in zip(rows, logged):
        assert {k: row[k] for k in logs} == logs and {"step", "epoch", "time"} <= row.keys()
    assert [r["loss"] for r in rows if "loss" in r] == [h["loss"] for h in full_run["result"].history if "loss" in h]


def test_loss_plot_is_a_png_of_the_logged_losses(full_run):
    width, height = png_size(full_run["out"] / "loss.png")
    assert (width, height) == (700, 400)
    assert (full_run["out"] / "loss.png").stat().st_size > 10_000  # axes, two curves, labels
    history = full_run["result"].history
    (drawn,) = full_run["drawn"]
    assert drawn["loss"] == ([h["step"] for h in history if "loss" in h], [h["loss"] for h in history if "loss" in h])
    assert drawn["eval_loss"][0] == [2, 4]


def test_plot_on_demand(full_run, tmp_path):
    path = tk.plot_loss(full_run["result"], tmp_path / "deep" / "curve.png")
    assert png_size(path) == (700, 400)
    with pytest.raises(tk.ConfigError, match="no 'loss' or 'eval_loss' entries"):
        tk.plot_loss([], tmp_path / "empty.png")


def test_sample_generations_are_in_the_history(full_run):
    samples = [h for h in full_run["result"].history if "samples" in h]
    assert [h["step"] for h in samples] == [2, 4]
    for h in samples:
        assert [s["prompt"] for s in h["samples"]] == ["reverse: 1 2 3", "reverse: 4 5"]
        assert all(isinstance(s["output"], str) for s in h["samples"])


def test_progress_bar_draws_the_run(full_run):
    assert "4/4" in full_run["bar"] and "loss" in full_run["bar"]


def test_tensorboard_event_files_hold_the_losses(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((full_run["out"] / "runs").rglob("events.out.tfevents.*"))
    assert len(files) == 1  # one run, one file: the final evaluation ran before the trackers closed
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    logged = [(h["step"], h["loss"]) for h in full_run["result"].history if "loss" in h]
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [s for s, _ in logged]
    assert [e.value for e in losses] == pytest.approx([v for _, v in logged], rel=1e-5)  # stored as float32
    assert [e.step for e in acc.Scalars("eval/loss")] == [2, 4]


def test_mlflow_run_holds_the_metrics(full_run):
    from mlflow.tracking import MlflowClient

    store = full_run["out"] / "mlruns"
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 asks for this opt-in to read a file store
    try:
        client = MlflowClient(tracking_uri=store.resolve().as_uri())
        (run,) = client.search_runs(experiment_ids=["0"])
        losses = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    logged = [(h["step"], h["loss"]) for h in full_run["result"].history if "loss" in h]
    assert run.info.status == "FINISHED"
    assert [s for s, _ in sorted(losses)] == [s for s, _ in logged]
    assert [v for _, v in sorted(losses)] == pytest.approx([v for _, v in logged], rel=1e-6)
    assert run.data.metrics["eval_loss"] == pytest.approx(full_run["result"].eval_loss)
    before, after = full_run["env"]
    assert after == before  # MLFLOW_TRACKING_URI and the others were set for the run only


# --- background runs: events, progress, cancel, resume -----------------------------------------------


@pytest.fixture(scope="module")
def reference_losses(tiny_llama):
    result = tk.Tuner(tiny_llama, training=cpu(max_steps=6, batch_size=4)).fit(reverse_task(24))
    return [h["loss"] for h in result.history if "loss" in h]


def test_cancel_stops_within_a_step_and_resume_continues_exactly(tiny_llama, tmp_path, reference_losses):
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=6, batch_size=4), output_dir=tmp_path, progress=False)
    run = tuner.start(reverse_task(24))
    assert run.state in ("starting", "running")
    seen: list[ev.RunEvent] = []
    progress_at_2 = None
    for event in run.events(timeout=120):
        assert isinstance(event, ev.RunEvent)
        seen.append(event)
        if isinstance(event, ev.StepEnd) and event.step == 2:
            progress_at_2 = run.progress
            run.cancel()  # from this thread, while training goes on in its own
    result = run.wait(timeout=60)
    stopped = result.steps
    assert stopped in (2, 3)  # the step in flight when cancel() came may finish, no more
    assert [type(e).__name__ for e in seen][:3] == ["FitStart", "StepEnd", "Log"]
    assert isinstance(seen[-1], ev.FitEnd) and seen[-1].result is result
    assert [e.step for e in seen if isinstance(e, ev.StepEnd)] == list(range(1, stopped + 1))
    assert [e.path.name for e in seen if isinstance(e, ev.Checkpoint)] == [f"checkpoint-{stopped}"]
    assert progress_at_2.step == 2 and progress_at_2.total == 6 and progress_at_2.elapsed_s > 0
    assert (
        progress_at_2.eta_s is not None and progress_at_2.eta_s > 0 and progress_at_2.fraction == pytest.approx(1 / 3)
    )
    assert run.state == "cancelled" and run.done
    assert result.stop_reason == "cancelled" and result.stopped_early and result.eval_loss is None
    assert result.checkpoint == tmp_path / f"checkpoint-{stopped}" and (result.checkpoint / "optimizer.pt").is_file()

    resumed = tuner.start(reverse_task(24), resume=True)
    final = resumed.wait(timeout=120)
    assert resumed.state == "completed" and final.steps == 6 and final.stop_reason is None
    assert [e.step for e in resumed.events() if isinstance(e, ev.StepEnd)] == list(range(stopped + 1, 7))
    # Weights, optimizer, schedule, RNG and data position came back: the losses are the uninterrupted run's.
    assert [h["loss"] for h in final.history if "loss" in h] == pytest.approx(reference_losses, rel=1e-5)
    assert list(resumed.events()) == []  # the stream stays ended


def test_cancel_from_another_thread_ends_within_one_step(tiny_llama, tmp_path):
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=200, batch_size=2), output_dir=tmp_path, progress=False)
    run = tuner.start(reverse_task(16))
    with pytest.raises(tk.ConfigError, match="training in the background"):
        tuner.fit(reverse_task(16))  # one run per tuner at a time
    with pytest.raises(tk.ConfigError, match="training in the background"):
        tuner.generate("reverse: 1 2")
    while run.progress.step < 1:
        threading.Event().wait(0.05)
    asked_at = run.progress.step
    run.cancel()
    result = run.wait(timeout=60)
    assert asked_at <= result.steps <= asked_at + 1
    assert (tmp_path / f"checkpoint-{result.steps}" / "trainer_state.json").is_file()
    assert isinstance(tuner.generate("reverse: 1 2", max_new_tokens=2), str)  # the tuner is free again


def test_run_errors_reach_wait_and_events(tiny_llama, tmp_path):
    class Nan(tk.Hook):
        def on_fit_start(self, ctx):
            import torch

            with torch.no_grad():
                next(tuner.model.parameters()).fill_(float("nan"))

    tuner = tk.Tuner(tiny_llama, method=tk.Full(), hooks=[Nan()], training=cpu(max_steps=3, batch_size=4))
    run = tuner.start(reverse_task(8))
    kinds = [e.name for e in run.events(timeout=120)]
    assert kinds[-1] == "exception"
    with pytest.raises(tk.TrainingError, match="non-finite loss"):
        run.wait()
    assert run.state == "failed"
    run.cancel()  # a run that ended: nothing to do, even without an output_dir for a checkpoint
    run.cancel(checkpoint=False)
    assert run.state == "failed"


# --- a hook that raises, under each policy -----------------------------------------------------------


class Boom(tk.Hook):
    def __init__(self, event: str, at: int = 1) -> None:
        self.event, self.at, self.calls = event, at, 0

    def _maybe(self, ctx):
        self.calls += 1
        if ctx.step >= self.at:
            raise ValueError(f"boom in {self.event} at {ctx.step}")

    def on_step_end(self, ctx):
        if self.event == "step_end":
            self._maybe(ctx)

    def on_fit_start(self, ctx):
        if self.event == "fit_start":
            self._maybe(ctx)


def test_raising_hook_with_log_policy_keeps_training(tiny_llama, caplog):
    rec = TypedRecorder()
    boom = Boom("step_end")
    tuner = tk.Tuner(tiny_llama, hooks=[boom, rec], hook_errors="log", training=cpu(max_steps=3, batch_size=4))
    with caplog.at_level(logging.DEBUG, logger="tunekit"):
        result = tuner.fit(reverse_task(12))
    assert result.steps == 3 and not result.stopped_early and boom.calls == 3
    assert rec.steps("step_end") == [1, 2, 3] and rec.steps("exception") == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "Boom.on_step_end" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None  # once with the traceback, then counted
    assert any("raised 3 times" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_raising_hook_with_stop_policy_checkpoints_and_resumes(tiny_llama, tmp_path):
    rec = TypedRecorder()
    tuner = tk.Tuner(
        tiny_llama, hooks=[Boom("step_end", at=2), rec], training=cpu(max_steps=4, batch_size=4), output_dir=tmp_path
    )
    with pytest.raises(tk.TrainingError) as info:
        tuner.fit(reverse_task(12))
    message = str(info.value)
    assert "hook Boom.on_step_end raised ValueError: boom in step_end at 2 at step 2" in message
    assert "checkpoint-2" in message and "hook_errors='log'" in message
    assert isinstance(info.value.__cause__, ValueError)
    assert rec.steps("step_end") == [1, 2] and rec.steps("fit_end") == []
    (error,) = [e for n, _, e in rec.calls if n == "exception"]
    assert error is info.value
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()
    tuner.hooks = [rec]  # the hook is fixed: continue where it stopped
    result = tuner.fit(reverse_task(12), resume=True)
    assert result.steps == 4 and rec.steps("step_end")[-2:] == [3, 4]


def test_raising_on_fit_start_stops_after_the_first_step(tiny_llama):
    tuner = tk.Tuner(tiny_llama, hooks=[Boom("fit_start", at=0)], training=cpu(max_steps=4, batch_size=4))
    with pytest.raises(tk.TrainingError, match=r"Boom\.on_fit_start raised ValueError"):
        tuner.fit(reverse_task(8))
    assert tuner.last_result is not None and tuner.last_result.steps == 1


# --- early stopping, and the same events for another objective --------------------------------------


def test_early_stopping_ends_the_run_with_a_reason(tiny_llama):
    # min_delta far above any change a step makes: the second evaluation is "no improvement".
    stopper = tk.EarlyStopping("loss", patience=1, min_delta=100.0)
    rec = TypedRecorder()
    tuner = tk.Tuner(tiny_llama, hooks=[stopper, rec], training=cpu(max_steps=20, batch_size=4, eval_every=1))
    result = tuner.fit(reverse_task(12), eval_data=reverse_task(4, seed=3))
    assert result.steps == 2 and result.stopped_early
    assert result.stop_reason.startswith("early stopping: eval_loss did not improve by more than 100")
    assert rec.steps("evaluate") == [1, 2] and result.eval_loss == pytest.approx(rec.calls[-1][2].eval_loss)


def _length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def _objective_case(name: str) -> tuple[Any, list[dict[str, Any]]]:
    pairs = [
        {"prompt": f"reverse: {i} {i + 1}", "chosen": f"{i + 1} {i}", "rejected": f"{i} {i + 1}"} for i in range(8)
    ]
    if name == "CausalLM":
        return tk.CausalLM(), reverse_task(8, fmt="text")
    if name == "KTO":
        rows = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
                for i, p in enumerate(pairs)]  # fmt: skip
        return tk.KTO(), rows
    if name == "GRPO":
        grpo = tk.GRPO(reward=_length_reward, num_generations=2, max_completion_length=4)
        return grpo, [{"prompt": p["prompt"]} for p in pairs]
    return {"DPO": tk.DPO(), "RewardModeling": tk.RewardModeling()}[name], pairs


@pytest.mark.parametrize("name", ["CausalLM", "DPO", "KTO", "RewardModeling", "GRPO"])
def test_every_objective_fires_the_same_events(tiny_llama, tmp_path, name):
    """SFT is the full run above; every other objective's trl trainer goes through the same bridge."""
    objective, rows = _objective_case(name)
    rec = TypedRecorder()
    training = cpu(max_steps=2, batch_size=4, eval_every=2, save_every=2, max_length=64)
    tuner = tk.Tuner(tiny_llama, objective=objective, hooks=[rec], training=training, output_dir=tmp_path)
    result = tuner.fit(rows, eval_data=rows[:4])
    assert [(n, s) for n, s, _ in rec.calls] == [
        ("fit_start", 0), ("step_end", 1), ("log", 1), ("step_end", 2), ("log", 2),
        ("log", 2), ("evaluate", 2), ("checkpoint", 2), ("log", 2), ("fit_end", 2),
    ]  # fmt: skip
    assert result.eval_loss is not None and rec.calls[-1][2] is result


# --- several runs in one process: no leaked models, no changed global state --------------------------


def _rng_state() -> tuple[Any, ...]:
    import numpy as np
    import torch

    return random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state().numpy().tobytes()


def _global_state() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "env": dict(os.environ),
        "warnings": list(warnings.filters),
        "loggers": {n: logging.getLogger(n).handlers[:] for n in ("transformers", "trl", "peft", "datasets")},
        "tf_bars": transformers.utils.logging.is_progress_bar_enabled(),
    }


def test_sequential_runs_leak_neither_models_nor_global_state(tiny_llama, tmp_path):
    import torch

    def modules() -> int:
        return sum(isinstance(o, torch.nn.Module) for o in gc.get_objects())

    refs, counts = [], []
    for i in range(3):
        rng_before = _rng_state()
        tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4), output_dir=tmp_path / str(i))
        if i == 1:  # one of them in the background
            run = tuner.start(reverse_task(8))
            run.wait(timeout=120)
        else:
            tuner.fit(reverse_task(8))
        assert _rng_state() == rng_before  # random, numpy and torch draw as if no fit had run
        refs.append(weakref.ref(tuner.model))
        del tuner
        gc.collect()
        counts.append(modules())
        if i == 0:  # after the first run: the libraries are imported, their import-time setup done
            state = _global_state()
    assert [r() is None for r in refs] == [True, True, True]
    assert counts[2] <= counts[0]
    assert _global_state() == state


def test_cancel_of_a_live_run_without_output_dir_asks_for_one(tiny_llama):
    import threading

    started, release = threading.Event(), threading.Event()

    class Hold(tk.Hook):
        def on_fit_start(self, ctx):
            started.set()
            release.wait(60)

    tuner = tk.Tuner(tiny_llama, hooks=[Hold()], training=cpu(max_steps=2, batch_size=4))
    run = tuner.start(reverse_task(8))
    assert started.wait(120)
    try:
        with pytest.raises(tk.ConfigError, match=r"cancel\(checkpoint=False\)"):
            run.cancel()  # no output_dir: no checkpoint possible
    finally:
        release.set()
    assert run.wait(timeout=120).steps == 2
