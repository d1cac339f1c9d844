"""Embedding options without training: validation, trackers, resume, hook policy, quiet(), Run mechanics."""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.backends.hf import tracking
from tunekit.backends.hf.resume import resolve_resume
from tunekit.hooks import HookDispatcher, RunContext
from tunekit.run import run_hooks

ROWS = [{"prompt": "reverse: 1 2", "completion": "2 1"}] * 4


# --- Training(report_to=..., resume=...) ----------------------------------------------------------


def test_report_to_takes_a_name_or_a_list() -> None:
    assert tk.Training().report_to == ()
    assert tk.Training(report_to="tensorboard").report_to == ("tensorboard",)
    assert tk.Training(report_to="none").report_to == ()
    assert tk.Training(report_to=["mlflow", "wandb"]).model_dump(mode="json")["report_to"] == ["mlflow", "wandb"]
    with pytest.raises(tk.ConfigError, match="report_to must be one of 'tensorboard', 'mlflow', 'trackio' or 'wandb'"):
        tk.Training(report_to=["tensorbord"])
    with pytest.raises(tk.ConfigError, match="lists a tracker twice"):
        tk.Training(report_to=["mlflow", "mlflow"])


def test_resume_values() -> None:
    assert tk.Training().resume == "auto"  # the newest complete checkpoint of an unfinished run, if any
    assert tk.Training(resume="auto").resume == "auto"
    assert tk.Training(resume=Path("runs/x/checkpoint-4")).resume == str(Path("runs/x/checkpoint-4"))
    with pytest.raises(tk.ConfigError, match="did you mean 'resume'"):
        tk.Training(resume_from_checkpoint=True)


def _fake_checkpoint(path: Path) -> None:
    """A checkpoint as tunekit writes it: trainer_state.json, then the manifest listing it."""
    from tunekit import _fs
    from tunekit.backends.hf.checkpoints import MANIFEST

    path.mkdir()
    (path / "trainer_state.json").write_text("{}", encoding="utf-8")
    _fs.write_json(path / MANIFEST, {"run_id": "r", "files": _fs.list_files(path)})


def test_resume_resolution(tmp_path: Path) -> None:
    assert resolve_resume(False, None) is None
    assert resolve_resume("auto", None) is None  # nowhere to look: start afresh
    with pytest.raises(tk.ConfigError, match=r"resume=True: .* this Tuner has none; pass Tuner\(output_dir=...\)"):
        resolve_resume(True, None)
    with pytest.raises(tk.CheckpointError, match=r"there is no complete checkpoint in .* resume='auto'"):
        resolve_resume(True, tmp_path)
    assert resolve_resume("auto", tmp_path) is None
    for step in (2, 10):
        _fake_checkpoint(tmp_path / f"checkpoint-{step}")
    assert resolve_resume(True, tmp_path) == tmp_path / "checkpoint-10"
    assert resolve_resume(str(tmp_path / "checkpoint-2"), None) == tmp_path / "checkpoint-2"
    with pytest.raises(tk.CheckpointError, match="not a checkpoint directory"):
        resolve_resume(str(tmp_path), None)


# --- trackers -----------------------------------------------------------------------------------


def test_missing_tracker_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(tk.MissingDependencyError, match=r"needs the wandb package.*pip install wandb"):
        tracking.check_trackers(("wandb",), tmp_path)
    # fit() fails before loading anything (the model path does not even exist).
    tuner = tk.Tuner("no/such-model", training=tk.Training(report_to="wandb"), output_dir=tmp_path)
    with pytest.raises(tk.MissingDependencyError, match="pip install wandb"):
        tuner.fit(ROWS)


def test_local_trackers_need_an_output_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_installed", lambda modules: True)
    with pytest.raises(
        tk.ConfigError, match=r"tensorboard, mlflow write their logs under output_dir.*Tuner\(output_dir"
    ):
        tracking.check_trackers(("tensorboard", "mlflow", "wandb"), None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    tracking.check_trackers(("mlflow", "wandb"), None)  # the user's own tracking server: fine


def test_tracking_env_is_set_for_the_run_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_DIR", "TRACKIO_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    before = dict(os.environ)
    with tracking.tracking_env(("wandb", "trackio"), tmp_path):
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(tmp_path)
        assert os.environ["TRACKIO_DIR"] == str(tmp_path / "trackio")
    assert dict(os.environ) == before
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's choice wins
    with tracking.tracking_env(("wandb",), tmp_path):
        assert os.environ["WANDB_MODE"] == "online"
    with pytest.raises(RuntimeError), tracking.tracking_env(("wandb",), tmp_path):
        raise RuntimeError("the run failed")
    assert "WANDB_DIR" not in os.environ


# --- hook policy -------------------------------------------------------------------------------------


class Raises(tk.Hook):
    def on_step_end(self, ctx: RunContext) -> None:
        raise KeyError("missing")

    def on_exception(self, ctx: RunContext, error: BaseException) -> None:
        raise RuntimeError("a broken error handler")


def test_stop_policy_records_the_first_failure_and_asks_to_stop() -> None:
    ctx = RunContext(step=3, output_dir=Path("out"))
    d = HookDispatcher([Raises()], ctx, "stop")
    d.emit("step_end")
    assert (
        ctx.stop_requested
        and d.control.checkpoint_on_stop
        and d.control.hook_failed
        and ctx.stop_reason == "hook Raises.on_step_end raised KeyError"
    )
    err = d.error(Path("out/checkpoint-3"))
    assert isinstance(err, tk.TrainingError)
    assert str(err).startswith("hook Raises.on_step_end raised KeyError: 'missing' at step 3; the run stopped cleanly")
    assert "out/checkpoint-3" in str(err).replace("\\", "/") and "Tuner(hook_errors='log')" in str(err)


def test_on_exception_errors_are_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    d = HookDispatcher([Raises()], RunContext(), "stop")
    with caplog.at_level(logging.ERROR, logger="tunekit"):
        d.emit("exception", ValueError("the real error"))
    assert d.failure is None and "Raises.on_exception raised RuntimeError" in caplog.text


def test_hook_errors_and_progress_are_validated() -> None:
    with pytest.raises(tk.ConfigError, match=r"Tuner\(hook_errors='ignore'\): must be 'stop'.* or 'log'"):
        tk.Tuner("m", hook_errors="ignore")  # type: ignore[arg-type]
    with pytest.raises(tk.ConfigError, match=r"Tuner\(progress='yes'\)"):
        tk.Tuner("m", progress="yes")  # type: ignore[arg-type]


# --- built-in hooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hooks", "eval_data", "message"),
    [
        ([tk.JSONLMetrics()], None, r"JSONLMetrics\(path=None\): there is no output_dir"),
        ([tk.LossPlot()], None, r"LossPlot\(path=None\): there is no output_dir"),
        ([tk.EarlyStopping()], None, "needs evaluations during training"),
        ([tk.EarlyStopping()], ROWS, r"Training\(eval_every=N\)"),
    ],
)
def test_builtin_hooks_fail_before_loading(hooks: list[tk.Hook], eval_data: Any, message: str) -> None:
    tuner = tk.Tuner("no/such-model", hooks=hooks)
    with pytest.raises(tk.ConfigError, match=message):
        tuner.fit(ROWS, eval_data=eval_data)


def test_builtin_hook_options_are_validated() -> None:
    with pytest.raises(tk.ConfigError, match=r"EarlyStopping\(patience=0\): patience must be"):
        tk.EarlyStopping(patience=0)
    with pytest.raises(tk.ConfigError, match=r"EarlyStopping\(mode='lowest'\)"):
        tk.EarlyStopping(mode="lowest")  # type: ignore[arg-type]
    with pytest.raises(tk.ConfigError, match=r"EarlyStopping\(min_delta=-1\)"):
        tk.EarlyStopping(min_delta=-1)
    with pytest.raises(tk.ConfigError, match="non-empty list of prompts"):
        tk.SampleGenerations("one prompt")  # type: ignore[arg-type]
    with pytest.raises(tk.ConfigError, match=r"SampleGenerations\(every=0\)"):
        tk.SampleGenerations(["p"], every=0)
    with pytest.raises(tk.ConfigError, match=r"LossPlot\(every=0\)"):
        tk.LossPlot(every=0)
    chat = [{"role": "user", "content": "hi"}]
    assert tk.SampleGenerations(chat).prompts == [chat]  # one chat prompt, as in generate()


def test_early_stopping_counts_evaluations_without_improvement() -> None:
    stop = tk.EarlyStopping("eval_acc", patience=2, min_delta=0.01, mode="max")
    ctx = RunContext()
    stop.on_fit_start(ctx)
    for value in (0.5, 0.6, 0.605, 0.59):
        stop.on_evaluate(ctx, {"eval_acc": value})
    assert ctx.stop_requested and stop.best == 0.6
    assert ctx.stop_reason is not None and "eval_acc did not improve by more than 0.01 for 2" in ctx.stop_reason
    with pytest.raises(tk.ConfigError, match=r"EarlyStopping\(metric='eval_acc'\): the evaluation has no such"):
        stop.on_evaluate(ctx, {"eval_loss": 1.0})


def test_missing_matplotlib_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tunekit.plotting

    real = tunekit.plotting.importlib.util.find_spec
    monkeypatch.setattr(
        tunekit.plotting.importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    with pytest.raises(tk.MissingDependencyError, match=r'pip install "tunekit\[plot\]"'):
        tk.plot_loss([{"step": 1, "loss": 2.0}], tmp_path / "loss.png")
    with pytest.raises(tk.MissingDependencyError, match="matplotlib"):
        tk.Tuner("no/such-model", hooks=[tk.LossPlot()], output_dir=tmp_path).fit(ROWS)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = RunContext(max_steps=3, method="LoRA", objective="SFT")
    quiet_stream = io.StringIO()
    bar = tk.ProgressBar(stream=quiet_stream)
    bar.on_fit_start(ctx)
    bar.on_fit_end(ctx, None)  # type: ignore[arg-type]
    assert quiet_stream.getvalue() == ""
    tty = FakeTTY()
    bar = tk.ProgressBar(stream=tty)
    bar.on_fit_start(ctx)
    for step in (1, 2, 3):
        ctx.step = step
        bar.on_step_end(ctx)
        bar.on_log(ctx, {"loss": 1.5})
    bar.on_fit_end(ctx, None)  # type: ignore[arg-type]
    assert "3/3" in tty.getvalue() and "1.5000" in tty.getvalue()
    # The Tuner adds one (auto) unless told not to, or given its own.
    assert [type(h).__name__ for h in run_hooks(tk.Tuner("m"))] == ["ProgressBar"]
    assert run_hooks(tk.Tuner("m", progress=False)) == []
    mine = tk.ProgressBar(enabled=False)
    assert run_hooks(tk.Tuner("m", hooks=[mine])) == [mine]
    monkeypatch.setattr("sys.stderr", FakeTTY())
    assert run_hooks(tk.Tuner("m"))[0]._active() and not run_hooks(tk.Tuner("m", progress=None))[0].enabled


# --- quiet() ---------------------------------------------------------------------------------------


def test_quiet_routes_library_logs_once_and_restores_everything(caplog: pytest.LogCaptureFixture) -> None:
    import transformers

    from tunekit._quiet import quiet

    tf = logging.getLogger("transformers")
    handlers, filters = tf.handlers[:], warnings.filters[:]
    bars = transformers.utils.logging.is_progress_bar_enabled()
    with caplog.at_level(logging.DEBUG, logger="tunekit"), quiet():
        with quiet():  # nested (a background run and a generate() overlapping): restored once, at the end
            logging.getLogger("transformers.modeling_utils").warning("noisy %s", "warning")
        assert not transformers.utils.logging.is_progress_bar_enabled()
        logging.getLogger("transformers.modeling_utils").warning("noisy %s", "warning")
        logging.getLogger("trl.trainer").error("a real problem")
    routed = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("tunekit.libs")]
    assert routed == [
        ("tunekit.libs.transformers", logging.DEBUG, "noisy warning"),
        ("tunekit.libs.trl", logging.WARNING, "a real problem"),
    ]
    assert tf.handlers == handlers and warnings.filters == filters
    assert transformers.utils.logging.is_progress_bar_enabled() == bars


# --- Run mechanics, with a fake backend (the seam users' own tests can use too) ----------------------


def fake_tuner(**kw: Any) -> tuple[tk.Tuner, tk.testing.FakeBackend]:
    """A Tuner on the test double: each step waits for the test to release its gate."""
    backend = tk.testing.FakeBackend(losses=[1.0, 1 / 2, 1 / 3], step_gate=threading.Semaphore(0))
    tuner = tk.Tuner("fake-model", progress=False, backend=backend, training=tk.Training(log_every=1), **kw)
    return tuner, backend


def test_run_events_progress_and_timeouts() -> None:
    tuner, backend = fake_tuner()
    run = tuner.start(ROWS)
    stream = run.events(timeout=30)
    assert next(stream).name == "fit_start"
    with pytest.raises(TimeoutError, match=r"still going after 0\.01s"):
        run.wait(timeout=0.01)
    with pytest.raises(TimeoutError, match=r"no run event for 0\.01s"):
        next(run.events(timeout=0.01))
    backend.step_gate.release(3)
    rest = [(e.name, e.step) for e in stream]
    assert rest == [
        ("step_end", 1),
        ("log", 1),
        ("step_end", 2),
        ("log", 2),
        ("step_end", 3),
        ("log", 3),
        ("fit_end", 3),
    ]
    result = run.wait()
    assert result.steps == 3 and run.state == "completed"
    assert run.progress.step == 3 and run.progress.loss == pytest.approx(1 / 3) and run.progress.eta_s == 0.0
    assert repr(run) == "<Run completed step 3/3>"


def test_leaving_a_run_block_cancels_it(tmp_path: Path) -> None:
    tuner, backend = fake_tuner(output_dir=tmp_path)
    with tuner.start(ROWS) as run:
        backend.step_gate.release(1)
        for event in run.events(timeout=30):
            if event.name == "step_end":
                break
        backend.step_gate.release(1)  # the step in flight may finish
    assert run.done and run.state == "cancelled"
    assert run.wait().stop_reason == "cancelled" and run.wait().steps <= 2


def test_start_checks_data_and_resume_in_the_callers_thread(tmp_path: Path) -> None:
    tuner, _ = fake_tuner()
    with pytest.raises(tk.DatasetError):
        tuner.start([{"prompt": "reverse: 1", "completion": ""}])
    with pytest.raises(tk.ConfigError, match=r"resume=True: .*Tuner\(output_dir"):
        tuner.start(ROWS, resume=True)
    with pytest.raises(tk.ConfigError, match=r"resume=3: pass True"):
        tuner.start(ROWS, resume=3)  # type: ignore[arg-type]
    assert tuner._access.active_run is None
