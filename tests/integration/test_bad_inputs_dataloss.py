"""The bad-input catalogue, data loss: a run or a save never writes over the user's files, and a run whose
result cannot be kept is refused before it trains; one tuner does one thing at a time."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.backends.hf import checkpoints
from tunekit.cli import main
from tunekit.output_dir import MARKER, writes

from .bad_input_kit import GOOD, Case, Row, check, read_only, snapshot
from .helpers import cpu


def user_dir(c: Case, *names: str) -> Path:
    """A directory of the user's: a README.md and the given files, each with its own content."""
    d = c.tmp / "mine"
    d.mkdir(exist_ok=True)
    for name in ("README.md", *names):
        (d / name).write_text(f"my own {name}\n", encoding="utf-8")
    return c.protect(d)


def fit_into(c: Case, out: Path, **kw: Any) -> Any:
    tuner = tk.Tuner(
        c.model, training=cpu(max_steps=2, batch_size=4, save_every=1), output_dir=out, progress=False, **kw
    )
    return tuner.fit(GOOD)


def base_copy(c: Case) -> Path:
    base = c.tmp / "base"
    shutil.copytree(c.model, base)
    return c.protect(base)


def dangling(c: Case) -> Path:
    link = c.tmp / "link"
    link.symlink_to(c.tmp / "gone")
    return c.protect(link)  # still a link to nothing: the refused call created no target


def under_a_file(c: Case) -> Path:
    return c.file("plain-file", "x") / "run"


def trained(c: Case) -> tk.Tuner:
    tuner = tk.Tuner(c.model, training=cpu(max_steps=1, batch_size=4), progress=False)
    tuner.fit(GOOD)
    return tuner


CATALOGUE: list[Row] = [
    ("output-dir-holds-user-files", lambda c: fit_into(c, user_dir(c, "notes.txt")), tk.ConfigError,
     r"holds files tunekit did not write \(README.md, notes.txt\)", r"new or empty directory.*reuse_output_dir=True"),
    ("output-dir-is-the-base-model", lambda c: fit_into(c, base_copy(c)), tk.ConfigError,
     r"holds files tunekit did not write \(.*config.json", "reuse_output_dir=True"),
    ("reuse-would-write-over-metrics", lambda c: fit_into(c, user_dir(c, "metrics.jsonl"), reuse_output_dir=True),
     tk.ConfigError, "would write over metrics.jsonl, which tunekit did not write", "move it away"),
    ("output-dir-dangling-link", lambda c: fit_into(c, dangling(c)), tk.ConfigError,
     "symbolic link to .*gone', which does not exist", "create its target"),
    ("output-dir-under-a-file", lambda c: fit_into(c, under_a_file(c)), tk.ConfigError,
     "plain-file' is a file, not a directory", "choose another output_dir"),
    ("metrics-path-is-a-users-file",
     lambda c: c.tuner(hooks=[tk.JSONLMetrics(c.file("notes.md", "my notes\n"))]).fit(GOOD), tk.ConfigError,
     "notes.md' holds a file tunekit did not write, which the run would replace", "choose another path"),
    ("loss-plot-path-is-a-users-png",
     lambda c: c.tuner(hooks=[tk.LossPlot(c.file("photo.png", b"\x89PNG\r\n\x1a\n my photo"))]).fit(GOOD),
     tk.ConfigError, "photo.png' holds a file tunekit did not write", "move it"),
    ("loss-plot-path-is-a-users-matplotlib-png",
     lambda c: c.tuner(hooks=[tk.LossPlot(c.file("fig1.png", b"\x89PNG\r\n\x1a\n tEXtSoftware Matplotlib"))]).fit(GOOD),
     tk.ConfigError, "fig1.png' holds a file tunekit did not write", "move it"),
    ("metrics-path-is-a-users-jsonl",
     lambda c: c.tuner(hooks=[tk.JSONLMetrics(c.file("log.jsonl", '{"step": 1, "note": "mine"}\n'))]).fit(GOOD),
     tk.ConfigError, "log.jsonl' holds a file tunekit did not write", "choose another path"),
    ("metrics-path-under-a-file",
     lambda c: c.tuner(hooks=[tk.JSONLMetrics(under_a_file(c) / "m.jsonl")]).fit(GOOD), tk.ConfigError,
     "plain-file' is a file, not a directory", "choose another path"),
    ("hooks-not-a-list", lambda c: tk.Tuner(c.model, hooks=tk.JSONLMetrics()), tk.ConfigError,  # type: ignore[arg-type]
     r"pass a list of hooks", r"hooks=\[JSONLMetrics\(...\)\]"),
    ("save-under-a-file", lambda c: trained(c).save(under_a_file(c)), tk.CheckpointError,
     "a file is in the way .*plain-file", "choose a directory path"),
    ("save-to-dangling-link", lambda c: trained(c).save(dangling(c)), tk.CheckpointError,
     "a symbolic link to .*gone', which does not exist", "create its target"),
    # nothing is written at the path cut short at its NUL either
    ("save-to-nul-path", lambda c: (c.protect(c.tmp / "bad"), trained(c).save(c.tmp / "bad\x00name")),
     tk.CheckpointError, "not a usable path",
     "choose a directory path"),
    ("save-read-only", lambda c: trained(c).save(read_only(c) / "adapter"), tk.CheckpointError,
     "cannot write to .*locked", "choose a directory you can write to"),
]  # fmt: skip


@pytest.mark.parametrize("row", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(tiny_llama, earlier_run, tmp_path, monkeypatch, row):
    check(tiny_llama, earlier_run, tmp_path, monkeypatch, row)
    mine = tmp_path / "mine"
    if mine.exists():  # the user's files are as they were, and nothing was added beside them
        assert {p.name: p.read_text(encoding="utf-8") for p in mine.iterdir()} == {
            p.name: f"my own {p.name}\n" for p in mine.iterdir()
        }


def test_correct_a_refused_base_dir_is_untouched(tiny_llama, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    before = snapshot(base)
    with pytest.raises(tk.ConfigError):
        tk.Tuner(base, training=cpu(max_steps=1), output_dir=base, progress=False).fit(GOOD)
    assert snapshot(base) == before


def test_correct_reuse_writes_beside_the_users_files(tiny_llama, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("README.md", "notes.txt"):
        (mine / name).write_text(f"my own {name}\n", encoding="utf-8")
    tuner = tk.Tuner(
        tiny_llama,
        training=cpu(max_steps=2, batch_size=4, save_every=1),
        output_dir=mine,
        reuse_output_dir=True,
        hooks=[tk.JSONLMetrics()],
        progress=False,
    )
    result = tuner.fit(GOOD)
    assert result.checkpoint is not None and result.checkpoint.parent == mine
    assert (mine / "metrics.jsonl").read_text(encoding="utf-8").count("\n") >= 2
    for name in ("README.md", "notes.txt"):  # trl's draft model card no longer replaces README.md
        assert (mine / name).read_text(encoding="utf-8") == f"my own {name}\n"
    marker = json.loads((mine / MARKER).read_text(encoding="utf-8"))
    assert marker["foreign"] == ["README.md", "notes.txt"]
    # The directory is tunekit's now: the next run needs no flag, and still leaves those files alone.
    tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4), output_dir=mine, progress=False).fit(GOOD)
    assert (mine / "README.md").read_text(encoding="utf-8") == "my own README.md\n"


def test_correct_a_new_output_dir_gets_no_readme(tiny_llama, tmp_path):
    out = tmp_path / "run"
    fit_into(Case(tiny_llama, out, tmp_path, pytest.MonkeyPatch()), out)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2", MARKER, "tunekit-run.json"]


def test_correct_an_output_dir_of_an_earlier_tunekit_is_adopted(tiny_llama, earlier_run, tmp_path):
    """A run directory written before the marker existed (with trl's README.md in it) is still resumable."""
    out = tmp_path / "run"
    shutil.copytree(earlier_run, out)
    (out / MARKER).unlink()
    (out / "README.md").write_text("trl's draft card\n", encoding="utf-8")
    tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4), output_dir=out, progress=False).fit(GOOD)
    assert json.loads((out / MARKER).read_text(encoding="utf-8"))["foreign"] == ["README.md"]


def test_correct_everything_a_run_writes_is_among_the_names_it_may_write(tiny_llama, tmp_path):
    """Derived from a real run (checkpoints, the built-in hooks' files), not from a list: a new file the engine
    or a hook starts writing fails here until the claim knows it (and protects a user's file of that name)."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    hooks = [tk.JSONLMetrics(), tk.LossPlot()]
    tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4, save_every=1), output_dir=out, hooks=hooks).fit(GOOD)
    written = sorted(p.name for p in out.iterdir())
    assert {"checkpoint-2", "metrics.jsonl", "loss.png"} <= set(written)
    assert [n for n in written if not writes(n) and n != MARKER] == []


def test_correct_the_names_a_run_writes_are_the_engines():
    for name in (checkpoints.STAGING, checkpoints.RUN_STATE, "checkpoint-12", "metrics.jsonl", "loss.png", "final"):
        assert writes(name), name
    for name in ("runs", "mlruns", "wandb", "trackio"):  # the trackers' folders, beside them
        assert writes(name), name
    assert not writes("README.md") and not writes("checkpoint-x") and not writes("config.json")


# --- tunekit fit: the save path is checked before training ----------------------------------------


@pytest.mark.parametrize("where", ["foreign-dir", "a-file", "under-a-file"])
def test_correct_cli_fit_refuses_an_unusable_save_path_before_training(tmp_path, capsys, where):
    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "sft_lora.yaml"
    save = {"foreign-dir": tmp_path / "mine", "a-file": tmp_path / "f", "under-a-file": tmp_path / "f" / "x"}[where]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "f").write_text("mine", encoding="utf-8")
    out = tmp_path / "run"
    code = main(["fit", str(config), "--output_dir", str(out), "--save", str(save)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: save(") and err.count("\n") == 1, err
    assert not out.exists()  # refused before the run claimed or wrote anything
    assert (tmp_path / "mine" / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_correct_cli_fit_refuses_a_foreign_output_dir_unless_reuse_is_set(tmp_path, capsys):
    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "sft_lora.yaml"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    args = ["fit", str(config), "--output_dir", str(mine), "--training.max_steps", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds files tunekit did not write (notes.txt)" in err and "reuse_output_dir" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # not even the tiny model was written
    assert main([*args, "--reuse_output_dir", "true"]) == 0, capsys.readouterr().err
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (mine / "final" / "tunekit.json").is_file()


# --- one tuner, one activity ---------------------------------------------------------------------------


class Hold(tk.Hook):
    """Holds the run at its first step until released; what the hook itself calls is allowed."""

    def __init__(self, tuner_box: list[tk.Tuner]) -> None:
        self.box, self.at_step, self.release = tuner_box, threading.Event(), threading.Event()
        self.inside: Any = None

    def on_step_end(self, ctx: tk.RunContext) -> None:
        if ctx.step == 1:
            self.inside = self.box[0].generate("reverse: 1 2", max_new_tokens=2)  # from the training thread: fine
            self.at_step.set()
            assert self.release.wait(60)


@pytest.mark.parametrize("background", [False, True], ids=["fit", "start"])
def test_correct_one_tuner_one_activity(tiny_llama, tmp_path, background):
    box: list[tk.Tuner] = []
    hold = Hold(box)
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4), hooks=[hold], progress=False)
    box.append(tuner)
    tuner.model  # noqa: B018  (loaded here, so the other thread's first step comes quickly)
    errors: list[BaseException] = []
    if background:
        run = tuner.start(GOOD)
    else:
        worker = threading.Thread(target=lambda: _catch(errors, lambda: tuner.fit(GOOD)))
        worker.start()
    try:
        assert hold.at_step.wait(60)
        was_training = tuner.model.training
        for what, call in (
            ("generate", lambda: tuner.generate("reverse: 1 2")),
            ("save", lambda: tuner.save(tmp_path / "s")),
            ("merge", lambda: tuner.merge()),
            ("export", lambda: tuner.export(tmp_path / "e")),
            ("fit", lambda: tuner.fit(GOOD)),
            ("start", lambda: tuner.start(GOOD)),
        ):
            named = rf"{what}\(\): this Tuner is training" if what not in ("fit", "start") else "already training"
            with pytest.raises(tk.ConfigError, match=named):
                call()
        assert tuner.model.training == was_training  # nothing switched it to eval mode mid-run
        assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists()
    finally:
        hold.release.set()
        if background:
            run.wait()
        else:
            worker.join(60)
    assert not errors, errors
    assert isinstance(hold.inside, str)
    tuner.generate("reverse: 1 2", max_new_tokens=2)  # after the run: allowed again


def _catch(errors: list[BaseException], fn: Any) -> None:
    try:
        fn()
    except BaseException as e:  # reported by the test's main thread
        errors.append(e)


def test_correct_the_marker_is_written_by_the_main_process_only(tiny_llama, tmp_path, monkeypatch):
    from tunekit import output_dir

    out = tmp_path / "run"
    output_dir.claim(out, reuse=False, write=False)  # another process of a torchrun job: checks, writes nothing
    assert not out.exists()
    output_dir.claim(out, reuse=False, write=True)
    assert (out / MARKER).is_file() and os.listdir(out) == [MARKER]


def test_correct_an_explicit_metrics_path_of_an_earlier_run_is_reused(tiny_llama, tmp_path):
    target = tmp_path / "logs" / "metrics.jsonl"
    for _ in range(2):  # the second run replaces the first run's lines, which tunekit wrote
        tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4), hooks=[tk.JSONLMetrics(target)])
        tuner.fit(GOOD)
        lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
        assert [row["step"] for row in lines if "loss" in row] == [1, 2]


def test_correct_a_running_generate_blocks_fit_and_other_generates_wait(tiny_llama, monkeypatch):
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4), progress=False)
    tuner.model  # noqa: B018
    side = tuner.tokenizer.padding_side
    inside, release = threading.Event(), threading.Event()
    real = tuner.backend.generate
    active: list[int] = []

    def slow(*args: Any, **kw: Any) -> Any:
        active.append(1)
        assert len(active) == 1, "two generate() calls used the model at once"
        inside.set()
        assert release.wait(60)
        try:
            return real(*args, **kw)
        finally:
            active.pop()

    monkeypatch.setattr(tuner.backend, "generate", slow)
    errors: list[BaseException] = []
    first = threading.Thread(target=lambda: _catch(errors, lambda: tuner.generate("reverse: 1 2", max_new_tokens=1)))
    first.start()
    assert inside.wait(60)
    inside.clear()
    second = threading.Thread(target=lambda: _catch(errors, lambda: tuner.generate("reverse: 3", max_new_tokens=1)))
    second.start()
    with pytest.raises(tk.ConfigError, match=r"fit\(\): this Tuner is in use in another thread"):
        tuner.fit(GOOD)
    release.set()
    first.join(60)
    second.join(60)
    assert not errors, errors
    assert tuner.tokenizer.padding_side == side  # each generate put it back: they did not interleave
    assert tuner.fit(GOOD).steps == 1  # once they are done, training may start


def test_correct_a_nested_fit_from_a_hook_says_so(tiny_llama):
    class Again(tk.Hook):
        def on_step_end(self, ctx: tk.RunContext) -> None:
            box[0].fit(GOOD)

    box: list[tk.Tuner] = []
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4), hooks=[Again()], progress=False)
    box.append(tuner)
    with pytest.raises(tk.TrainingError, match="called from inside the running fit"):
        tuner.fit(GOOD)


def test_correct_an_explicit_loss_plot_path_of_an_earlier_run_is_reused(tiny_llama, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "plots" / "loss.png"
    for _ in range(2):  # the second run redraws the first run's plot, which tunekit wrote
        tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4), hooks=[tk.LossPlot(target)]).fit(GOOD)
        assert target.read_bytes().startswith(b"\x89PNG")
