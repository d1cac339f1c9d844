"""Reliability primitives without training: retries, fsync rules, manifests, recovery, guards, batch-size fallback."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tunekit as tk
from tunekit import _fs
from tunekit.backends.hf import checkpoints
from tunekit.backends.hf.batch_size import next_batch_size, train_fitting
from tunekit.backends.hf.checkpoints import MANIFEST, STAGING, RunIdentity, compare_identity, recover
from tunekit.backends.hf.guards import MAX_CONSECUTIVE_SKIPS, NonFiniteGuard
from tunekit.backends.hf.resume import resolve_resume

# --- filesystem ---------------------------------------------------------------------------------------


def test_retry_waits_out_a_briefly_locked_file(monkeypatch):
    monkeypatch.setattr(_fs.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise PermissionError(errno.EACCES, "in use")
        return "done"

    assert _fs.retry(flaky) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(PermissionError):
        _fs.retry(_locked_for_good)
    with pytest.raises(FileNotFoundError):  # not a lock: raised at once, not retried
        _fs.retry(lambda: os.replace("/nonexistent/a", "/nonexistent/b"))


def _locked_for_good():
    raise PermissionError(errno.EACCES, "locked for good")


def test_fsync_dir_never_fails_where_directories_cannot_be_opened(tmp_path, monkeypatch):
    def refuse(path, flags, *a, **k):
        raise PermissionError(errno.EACCES, "Access is denied", str(path))

    monkeypatch.setattr(os, "open", refuse)
    _fs.fsync_dir(tmp_path)  # Windows: skipped, no error
    monkeypatch.setattr(os, "name", "nt")
    _fs.fsync_dir(tmp_path)


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "a/../../b", "", "C:/x" if os.name == "nt" else "/x"])
def test_manifest_paths_cannot_leave_their_directory(tmp_path, bad):
    with pytest.raises(tk.CheckpointError, match="outside its directory"):
        _fs.inside(tmp_path, bad)
    assert "outside" in _fs.verify_files(tmp_path, {bad: {"size": 1, "sha256": "x"}}, hashes=True)


def test_verify_files_names_what_is_wrong(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    files = _fs.list_files(tmp_path)
    assert _fs.verify_files(tmp_path, files, hashes=True) is None
    (tmp_path / "a.bin").write_bytes(b"abd")
    assert "sha256" in _fs.verify_files(tmp_path, files, hashes=True)
    assert _fs.verify_files(tmp_path, files, hashes=False) is None  # same size: only the hash tells
    (tmp_path / "a.bin").write_bytes(b"ab")
    assert "2 bytes, the manifest says 3" in _fs.verify_files(tmp_path, files, hashes=False)
    (tmp_path / "a.bin").unlink()
    assert "a.bin is missing" in _fs.verify_files(tmp_path, files, hashes=False)
    assert "lists no files" in _fs.verify_files(tmp_path, {}, hashes=False)


def test_replace_dir_puts_the_old_one_back_when_the_new_one_cannot_move(tmp_path, monkeypatch):
    monkeypatch.setattr(_fs.time, "sleep", lambda s: None)
    old, new = tmp_path / "target", tmp_path / "staged"
    old.mkdir()
    (old / "f").write_text("old", encoding="utf-8")
    new.mkdir()
    (new / "f").write_text("new", encoding="utf-8")
    real = os.replace

    def locked(src, dst):
        if Path(src) == new:
            raise PermissionError(errno.EACCES, "locked")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", locked)
    with pytest.raises(PermissionError):
        _fs.replace_dir(new, old, trash=tmp_path / "trash")
    assert (old / "f").read_text(encoding="utf-8") == "old" and not (tmp_path / "trash").exists()
    monkeypatch.setattr(os, "replace", real)
    _fs.replace_dir(new, old, trash=tmp_path / "trash")
    assert (old / "f").read_text(encoding="utf-8") == "new" and not (tmp_path / "trash").exists()


def test_remove_tree_refuses_paths_outside_its_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(tk.CheckpointError, match="outside"):
        _fs.remove_tree(outside, within=tmp_path / "run")
    assert outside.is_dir()


def test_output_dir_writability_is_checked_up_front(tmp_path, monkeypatch):
    _fs.check_writable(tmp_path / "new" / "dir", "Tuner(output_dir=...)")
    assert (tmp_path / "new" / "dir").is_dir() and not any((tmp_path / "new" / "dir").iterdir())
    monkeypatch.setattr("tempfile.mkstemp", _refuse)
    with pytest.raises(tk.ConfigError, match=r"Tuner\(output_dir=...\): cannot write to .*Permission denied.*choose"):
        _fs.check_writable(tmp_path, "Tuner(output_dir=...)")


def _refuse(*a, **k):
    raise PermissionError(errno.EACCES, "Permission denied")


# --- checkpoints on disk --------------------------------------------------------------------------------


def fake_checkpoint(path: Path, run_id: str = "r", **extra) -> Path:
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}", encoding="utf-8")
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    _fs.write_json(path / MANIFEST, {"run_id": run_id, "files": _fs.list_files(path), **extra})
    return path


def test_recover_restores_a_checkpoint_a_crash_left_aside_and_drops_half_written_ones(tmp_path, caplog):
    staging = tmp_path / STAGING
    fake_checkpoint(staging / "old-checkpoint-4")  # moved aside for a new checkpoint-4 that never arrived
    (staging / "checkpoint-6").mkdir()  # half written: no manifest
    (staging / "checkpoint-6" / "optimizer.pt").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        recover(tmp_path)
    assert (tmp_path / "checkpoint-4" / MANIFEST).is_file() and "restoring" in caplog.text
    assert not staging.exists()
    assert resolve_resume(True, tmp_path) == tmp_path / "checkpoint-4"


def test_a_manifest_naming_paths_outside_is_not_trusted(tmp_path, caplog):
    fake_checkpoint(tmp_path / "checkpoint-2")
    bad = fake_checkpoint(tmp_path / "checkpoint-4")
    m = json.loads((bad / MANIFEST).read_text(encoding="utf-8"))
    m["files"]["../checkpoint-2/trainer_state.json"] = {"size": 2, "sha256": "0" * 64}
    (bad / MANIFEST).write_text(json.dumps(m), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        assert resolve_resume("auto", tmp_path) == tmp_path / "checkpoint-2"
    assert "skipping checkpoint-4" in caplog.text and "outside its directory" in caplog.text


def test_rotation_never_follows_links_out_of_output_dir(tmp_path):
    outside = fake_checkpoint(tmp_path / "elsewhere" / "checkpoint-1", run_id="other")
    out = tmp_path / "run"
    fake_checkpoint(out / "checkpoint-2", run_id="other")
    (out / "checkpoint-3").symlink_to(outside, target_is_directory=True)
    newest = fake_checkpoint(out / "checkpoint-5", run_id="me")
    checkpoints._rotate(out, "me", None, newest)
    assert outside.is_dir() and (out / "checkpoint-3").is_symlink()  # untouched
    assert not (out / "checkpoint-2").exists()  # the earlier run's own checkpoint went


def test_differences_are_named_in_option_names():
    config = {"training": {"learning_rate": 0.01, "seed": 1}, "method": {"name": "LoRA", "r": 8}}
    identity = RunIdentity("me", config, "data-a")
    manifest = {"config": {**config, "method": {"name": "LoRA", "r": 16}}, "config_hash": "x", "data_fingerprint": "b"}
    diffs = compare_identity(manifest, identity, data=True)
    assert diffs[0] == "method.r: checkpoint 16, this run 8" and "training data" in diffs[1]
    same = {"config": config, "config_hash": identity.config_hash, "data_fingerprint": "data-a"}
    assert compare_identity(same, identity, data=True) == []
    two = {**same, "rng_and_sampler": {"world_size": 2}}  # written by 2 processes, resumed by 1
    assert compare_identity(two, identity, data=True) == ["processes: checkpoint 2, this run 1"]


def test_checkpoints_of_either_layout_of_the_method_resume():
    """The config records the method as {"name", "options"} (Method.record); a checkpoint written before, with the
    options beside the name, compares equal, and differences are named by option either way."""
    from tunekit.backends.base import RunSpec
    from tunekit.backends.hf.checkpoints import run_config

    spec = RunSpec(model_ref="m", method=tk.LoRA(r=8), objective=tk.SFT(), training=tk.Training())
    identity = RunIdentity("me", run_config(spec), "data-a")
    flat = {key: {"name": value["name"], **value["options"]} if key in ("method", "objective") else value
            for key, value in identity.config.items()}  # fmt: skip
    old = {"config": flat, "config_hash": "written-by-an-earlier-tunekit", "data_fingerprint": "data-a"}
    assert compare_identity(old, identity, data=True) == []
    other = {**old, "config": {**flat, "method": {**flat["method"], "r": 16}}}
    assert compare_identity(other, identity, data=True) == ["method.r: checkpoint 16, this run 8"]


def test_explicit_resume_of_a_checkpoint_without_manifest_needs_force(tmp_path, caplog):
    plain = tmp_path / "checkpoint-3"
    plain.mkdir()
    (plain / "trainer_state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(tk.CheckpointError, match=r"checkpoint-3': no tunekit-checkpoint\.json .*force_resume=True"):
        resolve_resume(str(plain), None)
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        assert resolve_resume(str(plain), None, force=True) == plain
    assert "no tunekit manifest" in caplog.text


# --- numerical guard --------------------------------------------------------------------------------


def _state(step, max_steps=10):
    return SimpleNamespace(global_step=step, max_steps=max_steps)


def _control(**flags):
    keys = ("should_log", "should_save", "should_evaluate", "should_training_stop")
    return SimpleNamespace(**{k: flags.get(k, False) for k in keys})


def test_deferred_guard_reads_the_device_flags_only_before_a_log_or_save(tmp_path):
    guard = NonFiniteGuard("error", sync_each_step=False)
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step, loss in ((0, 1.0), (1, float("nan")), (2, 2.0)):
        guard.observe_loss(torch.tensor(loss))
        guard.observe_grad_norm(torch.tensor(0.5))
        guard.on_pre_optimizer_step(args, _state(step), _control())  # no host sync, no raise
        guard.on_step_end(args, _state(step + 1), _control())
    with pytest.raises(tk.TrainingError, match=r"non-finite loss at step 2: the run stopped"):
        guard.on_step_end(args, _state(3), _control(should_save=True))  # a checkpoint is due: check first


def test_skip_guard_drops_the_gradients_and_gives_up_after_too_many(tmp_path):
    guard = NonFiniteGuard("skip")
    p = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([p])
    args = SimpleNamespace(output_dir=None)
    for step in range(MAX_CONSECUTIVE_SKIPS):
        p.grad = torch.ones(2)
        guard.observe_grad_norm(torch.tensor(float("inf")))
        guard.on_pre_optimizer_step(args, _state(step), _control(), optimizer=optimizer)
        assert p.grad is None
    assert guard.skipped == list(range(1, MAX_CONSECUTIVE_SKIPS + 1))
    guard.observe_loss(torch.tensor(float("nan")))
    with pytest.raises(tk.TrainingError, match="in a row"):
        guard.on_pre_optimizer_step(args, _state(99), _control(), optimizer=optimizer)


# --- batch size on out-of-memory -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effective", "current", "expected"), [(8, 8, 4), (12, 12, 6), (12, 6, 3), (12, 3, 1), (9, 9, 3), (12, 1, 0)]
)
def test_next_batch_size_keeps_the_effective_batch(effective, current, expected):
    assert next_batch_size(effective, current) == expected
    assert expected == 0 or effective % expected == 0


class FakeTrainer:
    """Runs out of CUDA memory above ``fits`` examples a micro-batch, like a real GPU would."""

    def __init__(self, training, fits, oom_at_step=0):
        self.training, self.fits, self.oom_at_step = training, fits, oom_at_step
        self.state = SimpleNamespace(global_step=0)
        self.model = torch.nn.Linear(2, 2)
        self._tk_guard = SimpleNamespace(start_step=0)

    def train(self, resume_from_checkpoint=None):
        if self.training.batch_size > self.fits:
            self.state.global_step = self.oom_at_step
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "trained"


def test_auto_batch_size_halves_the_micro_batch_and_keeps_the_effective_batch(caplog):
    built, released = [], []
    training = tk.Training(batch_size=12, grad_accum=2, auto_batch_size=True)

    def build(t):
        built.append((t.batch_size, t.grad_accum))
        return FakeTrainer(t, fits=3)

    with caplog.at_level(logging.WARNING, logger="tunekit"):
        trainer, output = train_fitting(build, training, None, released.append)
    assert trainer.training.batch_size == 3
    assert output == "trained" and built == [(12, 2), (6, 4), (3, 8)]
    assert all(b * a == 24 for b, a in built) and len(released) == 2
    assert (
        "out of memory at batch_size=12; retrying with batch_size=6, grad_accum=4 (effective batch 24)" in caplog.text
    )


def test_auto_batch_size_gives_up_with_advice():
    with pytest.raises(tk.TrainingError, match=r"even at batch_size=1 .*max_length"):
        train_fitting(lambda t: FakeTrainer(t, fits=0), tk.Training(batch_size=4, auto_batch_size=True), None, print)
    with pytest.raises(tk.TrainingError, match=r"out of memory at step 5 .* resume from the last checkpoint"):
        train_fitting(
            lambda t: FakeTrainer(t, fits=2, oom_at_step=5),
            tk.Training(batch_size=4, auto_batch_size=True),
            None,
            print,
        )
    with pytest.raises(torch.cuda.OutOfMemoryError):  # not asked for: the error is the user's to see
        train_fitting(lambda t: FakeTrainer(t, fits=2), tk.Training(batch_size=4), None, lambda t: None)


def _checkpoint(output_dir: Path, step: int, run_id: str) -> Path:
    """A complete checkpoint as tunekit writes one (trainer state and a manifest listing it)."""
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    manifest = {"format": checkpoints.FORMAT, "run_id": run_id, "step": step, "files": _fs.list_files(path)}
    _fs.write_json(path / MANIFEST, manifest)
    return path


def test_a_finished_run_trained_further_is_resumed_by_auto(tmp_path):
    # Run A finished at step 100; trained further (force_resume) it wrote checkpoint-150 and crashed:
    # "auto" must continue from 150, not start afresh (which would delete A's checkpoints at its first save).
    _checkpoint(tmp_path, 100, "A")
    checkpoints.mark_finished(tmp_path, "A", 100)
    assert resolve_resume("auto", tmp_path) is None  # finished at its newest checkpoint: a new run
    later = _checkpoint(tmp_path, 150, "A")
    assert resolve_resume("auto", tmp_path) == later
    assert resolve_resume(True, tmp_path) == later


def test_a_run_resumed_from_an_earlier_checkpoint_drops_the_later_ones_it_abandoned(tmp_path):
    # Run A wrote 100 and 150; resumed from 100 it writes 110: "auto" must never go back to 150.
    kept = _checkpoint(tmp_path, 100, "A")
    abandoned = _checkpoint(tmp_path, 150, "A")
    newest = _checkpoint(tmp_path, 110, "A")
    checkpoints._rotate(tmp_path, "A", None, newest)
    assert kept.is_dir() and newest.is_dir() and not abandoned.exists()
    assert resolve_resume("auto", tmp_path) == newest
