"""The checkpoint writer (CheckpointMixin) without a training run: a stand-in for transformers' Trainer that writes
a checkpoint's files the way ``Trainer._save_checkpoint`` does (the model through ``_save``, the optimizer, the
scaler, the RNG state, then ``trainer_state.json``), so every branch of the writer runs in milliseconds. Written
against the mutants of `nox -s mutation` (tests/MUTATION.md) the training tests let live; the same paths under a
real Trainer are tested in tests/integration/test_checkpoints.py."""

from __future__ import annotations

import errno
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit import _fs
from tunekit.backends.hf import checkpoints
from tunekit.backends.hf.checkpoints import MANIFEST, STAGING, CheckpointMixin, RunIdentity, install


class Guard:
    """What the mixin reports to (tunekit.backends.hf.guards): every loss and gradient norm it observes."""

    def __init__(self, mode: str = "stop") -> None:
        self.mode = mode
        self.losses: list[Any] = []
        self.norms: list[Any] = []

    def observe_loss(self, loss: Any) -> None:
        self.losses.append(loss)

    def observe_grad_norm(self, norm: Any) -> None:
        self.norms.append(norm)


class FakeTrainer:
    """transformers' Trainer as the mixin sees it. ``fail`` maps a write (``_save``, ``_save_rng_state``, ...) to
    the exception it raises."""

    def __init__(self, out: Path, *, step: int = 2, should_save: bool = True, fail: dict[str, Exception] | None = None):
        self.out = out
        self.state = SimpleNamespace(global_step=step, max_steps=10, epoch=0.5)
        self.args = SimpleNamespace(
            should_save=should_save, seed=11, data_seed=12, per_device_train_batch_size=4,
            gradient_accumulation_steps=3, world_size=1,
        )  # fmt: skip
        self.fail = fail or {}
        self.callbacks: list[Any] = []
        self.trials: list[Any] = []
        self.state_dict: dict[str, Any] | None = {"weight": [1, 2, 3]}

    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def _get_output_dir(self, trial: Any = None) -> str:
        self.trials.append(trial)
        return str(self.out)

    def _write(self, name: str, output_dir: str, file: str, content: str) -> None:
        if name in self.fail:
            raise self.fail[name]
        Path(output_dir, file).write_text(content, encoding="utf-8")

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self.written_for = trial
        output_dir = str(Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self._save(output_dir, state_dict=self.state_dict)  # as Trainer.save_model calls it under FSDP / DeepSpeed
        self._save_optimizer_and_scheduler(output_dir)
        self._save_scaler(output_dir)
        self._save_rng_state(output_dir)
        # not deferred, as in transformers: fails when an earlier write left no directory behind
        Path(output_dir, "trainer_state.json").write_text(json.dumps({"step": model}), encoding="utf-8")

    def _save(self, output_dir: str, state_dict: Any = None) -> None:
        self._write("_save", output_dir, "model.safetensors", json.dumps(state_dict))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        self._write("_save_optimizer_and_scheduler", output_dir, "optimizer.pt", "optimizer")

    def _save_scaler(self, output_dir: str) -> None:
        self._write("_save_scaler", output_dir, "scaler.pt", "scaler")

    def _save_rng_state(self, output_dir: str) -> None:
        self._write("_save_rng_state", output_dir, "rng_state.pth", "rng")

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        return torch.tensor(float(sum(inputs)) * model + (num_items_in_batch or 0))

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        # transformers: without clipping (grad_norm None) the norm is computed from the model's parameters
        return grad_norm if grad_norm is not None else float(sum(model))

    def log(self, logs: dict[str, float], start_time: Any = None) -> None:
        self.logged = (logs, start_time)


IDENTITY = RunIdentity("run-a", {"model": "m", "training": {"seed": 11}}, "f" * 64)


def trainer(out: Path, *, keep: int | None = None, guard: Guard | None = None, **kw: Any) -> Any:
    t = install(FakeTrainer(out, **kw), identity=IDENTITY, keep=keep, guard=guard or Guard())
    assert isinstance(t, CheckpointMixin) and isinstance(t, FakeTrainer)
    return t


def test_a_checkpoint_lands_whole_with_its_manifest_and_nothing_staged_is_left(tmp_path):
    t = trainer(tmp_path)
    t._save_checkpoint(7, trial=None)
    ckpt = tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING, "checkpoint-2"]
    assert list((tmp_path / STAGING).iterdir()) == []  # nothing staged is left (the run's end removes the folder)
    files = {"model.safetensors", "optimizer.pt", "rng_state.pth", "scaler.pt", "trainer_state.json"}
    assert {p.name for p in ckpt.iterdir()} == files | {MANIFEST}
    assert json.loads((ckpt / "model.safetensors").read_text(encoding="utf-8")) == {"weight": [1, 2, 3]}
    assert json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8")) == {"step": 7}
    m = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    created = m.pop("created")
    assert created.endswith("+00:00") and len(created) == len("2026-01-01T00:00:00+00:00")
    assert m == {
        "format": 1,
        "tunekit_version": tk.__version__,
        "run_id": "run-a",
        "step": 2,
        "max_steps": 10,
        "config": IDENTITY.config,
        "config_hash": IDENTITY.config_hash,
        "data_fingerprint": "f" * 64,
        "rng_and_sampler": {
            "seed": 11,
            "data_seed": 12,
            "epoch": 0.5,
            "global_step": 2,
            "batch_size": 4,
            "grad_accum": 3,
            "world_size": 1,
            "rng_files": ["rng_state.pth"],
        },
        "files": {n: {"size": (ckpt / n).stat().st_size, "sha256": _fs.sha256_file(ckpt / n)} for n in files},
    }
    assert checkpoints.verify(ckpt) == {**m, "created": created}
    assert t.trials == [None]  # the run's output_dir, asked once; the writes went to the staging directory
    assert "_get_output_dir" not in t.__dict__  # the redirect is undone


def test_a_new_checkpoint_rotates_old_ones_only_once_it_stands(tmp_path):
    t = trainer(tmp_path, keep=2)
    for step in (2, 4, 6):
        t.state.global_step = step
        t._save_checkpoint(0, trial=None)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    t.state.global_step = 4  # resumed from checkpoint-4 and saved there again: the later one is gone
    t._save_checkpoint(1, trial=None)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4"]
    assert json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text(encoding="utf-8")) == {"step": 1}


def test_a_leftover_of_a_crash_at_the_same_step_is_cleared_first(tmp_path):
    leftover = tmp_path / STAGING / "checkpoint-2"
    leftover.mkdir(parents=True)
    (leftover / "half-written.bin").write_bytes(b"x")
    trainer(tmp_path)._save_checkpoint(0, trial=None)
    assert "half-written.bin" not in {p.name for p in (tmp_path / "checkpoint-2").iterdir()}
    checkpoints.verify(tmp_path / "checkpoint-2")


def test_another_process_writes_its_part_and_leaves_publishing_to_the_main_one(tmp_path):
    (tmp_path / STAGING).mkdir()  # the main process made it
    trainer(tmp_path, should_save=False)._save_checkpoint(0, trial=None)
    staged = tmp_path / STAGING / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING]
    assert MANIFEST not in {p.name for p in staged.iterdir()} and (staged / "optimizer.pt").is_file()


def _failed(t: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        t._save_checkpoint(0, trial=None)
    return info.value


def test_a_failed_write_is_a_checkpoint_error_saying_what_to_do_and_what_is_kept(tmp_path):
    t = trainer(tmp_path)
    t._save_checkpoint(0, trial=None)  # checkpoint-2 stands
    io = OSError(errno.EIO, "Input/output error")
    t.state.global_step, t.fail = 4, {"_save_optimizer_and_scheduler": io}
    error = _failed(t)
    assert type(error) is tk.CheckpointError and error.__cause__ is io
    assert str(error) == (
        f"could not write checkpoint-4 in {tmp_path} (Input/output error): check output_dir and its disk; the "
        "previous checkpoint checkpoint-2 is intact"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # the partial one and the staging gone
    checkpoints.verify(tmp_path / "checkpoint-2")


def test_the_first_failed_write_is_the_cause_not_what_failed_after_it(tmp_path):
    # The model write fails after removing its directory (as a write that never made it would): the later writes
    # and transformers' own trainer_state.json then fail too; the first failure is the one reported.
    denied = PermissionError(errno.EACCES, "Permission denied")
    t = trainer(tmp_path, fail={"_save": denied, "_save_rng_state": OSError(errno.EIO, "later")})
    real_write = t._write

    def write(name: str, output_dir: str, file: str, content: str) -> None:
        if name == "_save":
            Path(output_dir).rmdir()
        real_write(name, output_dir, file, content)

    t._write = write
    error = _failed(t)
    assert type(error) is tk.CheckpointError and error.__cause__ is denied
    assert str(error) == (
        f"could not write checkpoint-2 in {tmp_path} (Permission denied): a file is locked or not writable (another "
        "program, antivirus, a read-only directory); check output_dir (tunekit waited 10 s for it; if antivirus or a "
        "sync client (OneDrive) holds new files, exclude the folder from real-time scanning or wait longer with "
        "TUNEKIT_FS_RETRY_SECONDS=30); there is no earlier checkpoint"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_failure_that_is_not_a_write_is_raised_as_it_is_and_nothing_is_published(tmp_path):
    bug = TypeError("a bug in the writer")
    t = trainer(tmp_path, fail={"_save_scaler": bug})
    assert _failed(t) is bug
    assert list(tmp_path.iterdir()) == []
    t = trainer(tmp_path)
    t.state_dict = {"not json": {1, 2}}  # the model write itself fails (TypeError from json)
    assert type(_failed(t)) is TypeError
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_librarys_own_error_is_a_checkpoint_error(tmp_path):
    from safetensors import SafetensorError

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    error = _failed(trainer(tmp_path, fail={"_save": full}))
    assert type(error) is tk.CheckpointError and error.__cause__ is full
    assert str(error).startswith(f"could not write checkpoint-2 in {tmp_path} (No space left on device): the disk")


def test_a_failure_while_publishing_removes_the_staged_checkpoint(tmp_path, monkeypatch):
    def no_rename(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoints._fs, "replace_dir", no_rename)
    error = _failed(trainer(tmp_path))
    assert str(error) == (
        f"could not write checkpoint-2 in {tmp_path} (Read-only file system): check output_dir and its disk; there "
        "is no earlier checkpoint"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_write_outside_a_checkpoint_is_not_deferred(tmp_path):
    t = trainer(tmp_path, fail={"_save": OSError(errno.EIO, "direct")})
    with pytest.raises(OSError, match="direct"):
        t._save(str(tmp_path), state_dict={})  # Tuner.save's own call: raised at once
    t.fail = {}
    t._save(str(tmp_path), state_dict={"a": 1})
    t._save_rng_state(str(tmp_path))
    assert json.loads((tmp_path / "model.safetensors").read_text(encoding="utf-8")) == {"a": 1}
    assert (tmp_path / "rng_state.pth").read_text(encoding="utf-8") == "rng"


def test_the_guard_sees_every_loss_and_gradient_norm(tmp_path):
    guard = Guard()
    t = trainer(tmp_path, guard=guard)
    assert t.callbacks == [guard]
    loss = t.training_step(2.0, [1, 2], num_items_in_batch=1)
    assert loss.item() == 7.0 and guard.losses == [loss]
    assert t._get_grad_norm([1.0, 2.5]) == 3.5  # no clipping: the norm comes from the model
    assert t._get_grad_norm([1.0], grad_norm=0.25) == 0.25
    assert guard.norms == [3.5, 0.25]


def test_a_skipped_nonfinite_step_does_not_poison_the_next_logging_window(tmp_path):
    guard = Guard(mode="skip")
    t = trainer(tmp_path, guard=guard)
    t._tr_loss = torch.tensor(math.nan)
    t.log({"loss": math.nan}, 1.5)
    assert t.logged == ({"loss": math.nan}, 1.5) and t._tr_loss.item() == 0.0
    t._tr_loss = torch.tensor(math.inf)
    t.log({"grad_norm": 1.0})  # not a loss line: left alone
    assert t._tr_loss.item() == math.inf
    guard.mode = "stop"  # stopping: the NaN is the error's to report, not reset
    t._tr_loss = torch.tensor(math.nan)
    t.log({"loss": math.nan})
    assert math.isnan(t._tr_loss.item())


def test_trl_writes_no_model_card_into_output_dir(tmp_path):
    t = trainer(tmp_path)
    assert t.create_model_card(model_name="x") is None
    assert list(tmp_path.iterdir()) == []


def test_install_makes_one_class_per_trainer_class(tmp_path):
    a, b = trainer(tmp_path / "a"), trainer(tmp_path / "b")
    assert type(a) is type(b) and type(a).__name__ == "FakeTrainer" and type(a).__module__ == __name__
    again = install(a, identity=IDENTITY, keep=3, guard=Guard())
    assert type(again) is type(a) and again._tk_keep == 3


# --- messages and logs of the checkpoint helpers --------------------------------------------------------------------


def test_a_corrupt_checkpoint_manifest_says_to_resume_from_another(tmp_path):
    (tmp_path / MANIFEST).write_text("[]", encoding="utf-8")
    with pytest.raises(tk.CheckpointError) as info:
        checkpoints.read_manifest(tmp_path)
    fix = "the checkpoint is incomplete; resume from another one"
    assert str(info.value) == f"{tmp_path / MANIFEST} is corrupt (expected a JSON object); {fix}"
    (tmp_path / MANIFEST).write_text("{}", encoding="utf-8")
    with pytest.raises(tk.CheckpointError) as info:
        checkpoints.read_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path / MANIFEST} is corrupt (it lists no files); {fix}"


def test_rotation_logs_what_it_removes_and_why(tmp_path, caplog):
    t = trainer(tmp_path)
    t._save_checkpoint(0, trial=None)  # checkpoint-2 of run-a
    t2 = install(FakeTrainer(tmp_path, step=4), identity=RunIdentity("run-b", {}, ""), keep=None, guard=Guard())
    with caplog.at_level(logging.INFO, logger="tunekit"):
        t2._save_checkpoint(0, trial=None)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"removing checkpoint-2, left by an earlier run in {tmp_path}"
    ]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4"]


def test_recover_puts_back_a_checkpoint_a_crashed_save_moved_aside(tmp_path, caplog):
    staging = tmp_path / STAGING
    (staging / "old-checkpoint-2").mkdir(parents=True)
    (staging / "old-checkpoint-2" / "model.safetensors").write_bytes(b"w")
    (staging / "checkpoint-4").mkdir()  # half-written: dropped
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        checkpoints.recover(tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f"restoring {tmp_path / 'checkpoint-2'}, which an interrupted save had moved aside"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / "model.safetensors").read_bytes() == b"w"


def test_a_hyperparameter_trial_reaches_transformers_writer_unchanged(tmp_path):
    t = trainer(tmp_path)
    trial = {"learning_rate": 1e-3}
    t._save_checkpoint(0, trial=trial)
    assert t.trials == [trial] and t.written_for is trial
    checkpoints.verify(tmp_path / "checkpoint-2")
