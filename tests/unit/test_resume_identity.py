"""Checkpoint identity and resume, without training: which run a checkpoint belongs to, whether it may be resumed.

Every field the docs list as part of a run's identity (docs/reliability.md: the model, the method and objective
with their options, and the training fields that change what is computed) must stop a resume when it differs; the
others must not. Written against the mutants of `nox -s mutation` (tests/MUTATION.md) in checkpoints.py / resume.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit import _fs
from tunekit.backends.base import RunSpec
from tunekit.backends.hf import checkpoints
from tunekit.backends.hf.checkpoints import (
    MANIFEST,
    RUN_STATE,
    STAGING,
    RunIdentity,
    checkpoint_dirs,
    compare_identity,
    data_fingerprint,
    finished_run,
    mark_finished,
    read_manifest,
    run_config,
    verify,
)
from tunekit.backends.hf.resume import check_identity, latest_checkpoint, resolve_resume

# One changed value per training field that is part of the identity.
TRAJECTORY = {
    "epochs": 2.0,
    "max_steps": 7,
    "learning_rate": 1e-3,
    "batch_size": 3,
    "grad_accum": 2,
    "max_length": 64,
    "seed": 7,
    "precision": "bf16",
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.2,
    "weight_decay": 0.1,
    "max_grad_norm": None,
}
# Fields that may differ between a run and its resumption (logging, saving, resuming, device, safety switches).
FREE = {
    "log_every": 3,
    "save_every": 5,
    "keep_checkpoints": 1,
    "device": "cpu",
    "resume": False,
    "force_resume": True,
    "on_bad_rows": "skip",
    "cache": False,
}


def _spec(**training: Any) -> RunSpec:
    return RunSpec(model_ref="org/model", method=tk.LoRA(r=8), objective=tk.SFT(), training=tk.Training(**training))


def _manifest(identity: RunIdentity, **extra: Any) -> dict[str, Any]:
    return {
        "config": identity.config,
        "config_hash": identity.config_hash,
        "data_fingerprint": identity.data_fingerprint,
        **extra,
    }


def test_run_config_holds_the_model_method_objective_and_the_trajectory_fields():
    config = run_config(_spec())
    assert set(config) == {"model", "method", "objective", "training"}
    assert config["model"] == "org/model"
    assert config["method"] == tk.LoRA(r=8).record() and config["objective"] == tk.SFT().record()
    assert set(config["training"]) == set(TRAJECTORY)
    assert config["training"] == {k: tk.Training().model_dump(mode="json")[k] for k in TRAJECTORY}


@pytest.mark.parametrize("field", sorted(TRAJECTORY))
def test_every_trajectory_field_is_part_of_the_identity(field):
    base = RunIdentity("a", run_config(_spec()), "data")
    changed = RunIdentity("a", run_config(_spec(**{field: TRAJECTORY[field]})), "data")
    assert changed.config_hash != base.config_hash
    diffs = compare_identity(_manifest(base), changed, data=True)
    assert diffs == [f"training.{field}: checkpoint {base.config['training'][field]!r}, this run {TRAJECTORY[field]!r}"]


@pytest.mark.parametrize("field", sorted(FREE))
def test_fields_outside_the_trajectory_may_differ(field):
    base = RunIdentity("a", run_config(_spec()), "data")
    other = RunIdentity("a", run_config(_spec(**{field: FREE[field]})), "data")
    assert other.config_hash == base.config_hash
    assert compare_identity(_manifest(base), other, data=True) == []


def test_method_objective_and_model_are_part_of_the_identity(tmp_path):
    base = RunIdentity("a", run_config(_spec()), "data")
    for spec, diff in (
        (RunSpec("org/model", tk.LoRA(r=16), tk.SFT(), tk.Training()), "method.r: checkpoint 8, this run 16"),
        (RunSpec("org/model", tk.LoRA(r=8), tk.SFT(train_on_prompt=True), tk.Training()), "objective.train_on_prompt"),
        (RunSpec("org/other", tk.LoRA(r=8), tk.SFT(), tk.Training()), "model: checkpoint 'org/model', this run"),
        (RunSpec("org/model", tk.Full(), tk.SFT(), tk.Training()), "method.name: checkpoint 'LoRA', this run 'Full'"),
    ):
        diffs = compare_identity(_manifest(base), RunIdentity("a", run_config(spec), "data"), data=False)
        assert any(d.startswith(diff) for d in diffs), (diff, diffs)
    # A local model directory is named by its folder name: a moved directory is the same model.
    (tmp_path / "one" / "my-model").mkdir(parents=True)
    (tmp_path / "two" / "my-model").mkdir(parents=True)
    a = run_config(RunSpec(tmp_path / "one" / "my-model", tk.LoRA(), tk.SFT(), tk.Training()))
    b = run_config(RunSpec(str(tmp_path / "two" / "my-model"), tk.LoRA(), tk.SFT(), tk.Training()))
    assert a["model"] == b["model"] == "my-model"

    class Loaded:
        name_or_path = "org/loaded"

    assert run_config(RunSpec(Loaded(), tk.LoRA(), tk.SFT(), tk.Training()))["model"] == "org/loaded"
    assert run_config(RunSpec(object(), tk.LoRA(), tk.SFT(), tk.Training()))["model"] == "object"


def test_the_data_is_part_of_the_identity_only_when_asked():
    base = RunIdentity("a", run_config(_spec()), "data-a")
    other = RunIdentity("a", run_config(_spec()), "data-b")
    data_diff = "the training data (its examples, order or tokenisation) differs from the checkpoint's"
    assert compare_identity(_manifest(base), other, data=True) == [data_diff]
    assert compare_identity(_manifest(base), other, data=False) == []
    # A checkpoint that recorded no config is judged by its data only.
    assert compare_identity({"data_fingerprint": "data-a"}, other, data=True) == [data_diff]


def test_a_different_process_count_is_a_different_run():
    base = RunIdentity("a", run_config(_spec()), "d")
    assert compare_identity(_manifest(base, rng_and_sampler={"world_size": 2}), base, data=True) == [
        "processes: checkpoint 2, this run 1"
    ]
    assert compare_identity(_manifest(base, rng_and_sampler={"world_size": 1}), base, data=True) == []
    assert compare_identity(_manifest(base, rng_and_sampler={"world_size": "2"}), base, data=True) == []


class _Encoded:
    def __init__(self, input_ids: list[list[int]], labels: list[list[int]]) -> None:
        self.input_ids, self.labels = input_ids, labels


class _Records:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records


def test_data_fingerprint_sees_every_token_label_boundary_and_order():
    fp = data_fingerprint(_Encoded([[1, 2], [3]], [[-100, 2], [3]]))
    assert len(fp) == 64 and fp == data_fingerprint(_Encoded([[1, 2], [3]], [[-100, 2], [3]]))
    assert fp != data_fingerprint(_Encoded([[1], [2, 3]], [[-100], [2, 3]]))  # same tokens, other boundaries
    assert fp != data_fingerprint(_Encoded([[3], [1, 2]], [[3], [-100, 2]]))  # other order
    assert fp != data_fingerprint(_Encoded([[1, 2], [3]], [[1, 2], [3]]))  # other labels
    assert fp != data_fingerprint(_Encoded([[1, 2], [4]], [[-100, 2], [3]]))  # another token
    rows = data_fingerprint(_Records([{"prompt": "a", "chosen": "b"}]))
    assert rows == data_fingerprint(_Records([{"chosen": "b", "prompt": "a"}]))  # key order does not matter
    assert rows != data_fingerprint(_Records([{"prompt": "a", "chosen": "c"}]))
    assert data_fingerprint(_Records([{"prompt": "é"}])) != data_fingerprint(_Records([{"prompt": "e"}]))


# --- checkpoints on disk ---------------------------------------------------------------------------------------------


def _checkpoint(out: Path, step: int, run_id: str = "run-a", *, config: dict[str, Any] | None = None) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}", encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"weights" * step)
    files = _fs.list_files(path)
    identity = RunIdentity(run_id, config or run_config(_spec()), "data")
    manifest = {"run_id": run_id, "step": step, "files": files, **_manifest(identity)}
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return path


def test_checkpoint_dirs_lists_checkpoint_folders_newest_first(tmp_path):
    assert checkpoint_dirs(tmp_path / "missing") == []
    for step in (2, 10, 1):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-3").write_text("a file", encoding="utf-8")
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "my-checkpoint-4").mkdir()
    (tmp_path / "checkpoint-5").symlink_to(tmp_path / "checkpoint-10")
    assert checkpoint_dirs(tmp_path) == [(s, tmp_path / f"checkpoint-{s}") for s in (10, 2, 1)]


def test_verify_returns_the_manifest_of_a_complete_checkpoint_and_names_what_is_wrong(tmp_path):
    path = _checkpoint(tmp_path, 2)
    manifest = verify(path)
    assert manifest["run_id"] == "run-a" and manifest == read_manifest(path)
    (path / "model.safetensors").write_bytes(b"X" * len(b"weights" * 2))  # same size, other bytes
    assert verify(path, hashes=False)["step"] == 2
    with pytest.raises(tk.CheckpointError, match=r"checkpoint-2 is incomplete or corrupt: model.safetensors does not"):
        verify(path)
    (path / MANIFEST).write_text(json.dumps({"files": "none"}), encoding="utf-8")
    with pytest.raises(tk.CheckpointError, match="it lists no files"):
        read_manifest(path)
    (path / MANIFEST).unlink()
    with pytest.raises(tk.CheckpointError, match=r"no tunekit-checkpoint\.json \(the checkpoint is incomplete"):
        read_manifest(path)


def test_latest_checkpoint_skips_incomplete_ones_with_a_warning(tmp_path, caplog):
    _checkpoint(tmp_path, 1)
    newest = _checkpoint(tmp_path, 3)
    (newest / "model.safetensors").write_bytes(b"short")
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        path, manifest = latest_checkpoint(tmp_path) or (None, None)
    assert path == tmp_path / "checkpoint-1" and manifest["step"] == 1
    assert "skipping checkpoint-3: " in caplog.text and "model.safetensors is 5 bytes" in caplog.text
    assert latest_checkpoint(tmp_path / "empty") is None


def test_finished_run_reads_what_mark_finished_writes(tmp_path, caplog):
    assert finished_run(tmp_path) is None
    mark_finished(tmp_path, "run-a", 12)
    assert finished_run(tmp_path) == ("run-a", 12)
    assert not (tmp_path / STAGING).exists()  # nothing left beside it
    assert json.loads((tmp_path / RUN_STATE).read_text(encoding="utf-8")) == {
        "run_id": "run-a",
        "finished": True,
        "steps": 12,
    }
    (tmp_path / RUN_STATE).write_text(json.dumps({"run_id": "r", "finished": True}), encoding="utf-8")
    assert finished_run(tmp_path) == ("r", 2**62)  # no step recorded: finished at any step
    for state in ({"run_id": "r", "finished": False}, {"finished": True}, ["r"], {"run_id": 3, "finished": True}):
        (tmp_path / RUN_STATE).write_text(json.dumps(state), encoding="utf-8")
        assert finished_run(tmp_path) is None, state
    (tmp_path / RUN_STATE).write_text("{broken", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        assert finished_run(tmp_path) is None
    assert "is unreadable" in caplog.text and "counts as unfinished" in caplog.text


def test_mark_finished_keeps_a_staging_folder_that_holds_something_else(tmp_path):
    (tmp_path / STAGING).mkdir()
    (tmp_path / STAGING / "old-checkpoint-1").mkdir()
    mark_finished(tmp_path, "run-a", 3)
    assert (tmp_path / STAGING / "old-checkpoint-1").is_dir() and finished_run(tmp_path) == ("run-a", 3)


# --- resolve_resume --------------------------------------------------------------------------------------------------


def test_resume_false_and_auto_without_a_checkpoint_start_afresh(tmp_path):
    assert resolve_resume(False, tmp_path) is None
    assert resolve_resume("auto", None) is None
    assert resolve_resume("auto", tmp_path) is None
    with pytest.raises(tk.ConfigError, match=r"resume=True: resuming looks for checkpoints in output_dir"):
        resolve_resume(True, None)
    with pytest.raises(tk.CheckpointError, match=r"resume=True: there is no complete checkpoint in .* resume='auto'"):
        resolve_resume(True, tmp_path)


def test_resume_true_and_auto_take_the_newest_complete_checkpoint(tmp_path):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 4)
    assert resolve_resume(True, tmp_path) == tmp_path / "checkpoint-4"
    assert resolve_resume("auto", tmp_path, config=run_config(_spec())) == tmp_path / "checkpoint-4"


def test_a_finished_run_is_not_resumed(tmp_path, caplog):
    _checkpoint(tmp_path, 4)
    mark_finished(tmp_path, "run-a", 4)
    with caplog.at_level(logging.INFO, logger="tunekit"):
        assert resolve_resume("auto", tmp_path) is None
    assert "finished; starting a new run there" in caplog.text
    with pytest.raises(tk.CheckpointError, match=r"resume=True: the run in .* finished \(its newest checkpoint is"):
        resolve_resume(True, tmp_path)
    assert resolve_resume(True, tmp_path, force=True) == tmp_path / "checkpoint-4"
    # another run finished there: this checkpoint's run did not
    mark_finished(tmp_path, "run-b", 9)
    assert resolve_resume("auto", tmp_path) == tmp_path / "checkpoint-4"
    # the run finished at step 3 and was trained further: its checkpoint-4 belongs to the continuation
    mark_finished(tmp_path, "run-a", 3)
    assert resolve_resume("auto", tmp_path) == tmp_path / "checkpoint-4"


def test_resume_compares_the_config_and_names_the_difference(tmp_path, caplog):
    _checkpoint(tmp_path, 2)
    changed = run_config(_spec(seed=7))
    with pytest.raises(tk.CheckpointError) as info:
        resolve_resume(True, tmp_path, config=changed)
    message = str(info.value)
    assert message.startswith(f"resume=True: the checkpoint {tmp_path / 'checkpoint-2'} was written by a different")
    assert "training.seed: checkpoint 42, this run 7" in message and "force_resume=True" in message
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        assert resolve_resume(True, tmp_path, config=changed, force=True) == tmp_path / "checkpoint-2"
    assert "although this run differs (force_resume=True): training.seed" in caplog.text


def test_an_explicit_checkpoint_path_is_verified(tmp_path):
    path = _checkpoint(tmp_path, 2)
    assert resolve_resume(str(path), None) == path
    assert resolve_resume(path, tmp_path, config=run_config(_spec())) == path
    with pytest.raises(tk.CheckpointError, match=r"not a checkpoint directory \(no trainer_state\.json in it\)"):
        resolve_resume(str(tmp_path), None)
    (path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(tk.CheckpointError) as info:
        resolve_resume(str(path), None)
    assert str(info.value).startswith(f"resume={str(path)!r}: is incomplete or corrupt: model.safetensors is 1 bytes")
    with pytest.raises(tk.CheckpointError, match="is incomplete or corrupt"):
        resolve_resume(str(path), None, force=True)  # a manifest that does not match: force does not help


def test_check_identity_returns_the_run_to_continue(tmp_path, caplog):
    path = _checkpoint(tmp_path, 2, run_id="run-a")
    same = RunIdentity("new-id", run_config(_spec()), "data")
    assert check_identity(path, same, force=False) == "run-a"
    other_data = RunIdentity("new-id", run_config(_spec()), "other")
    with pytest.raises(tk.CheckpointError, match=r"resume from checkpoint-2: the checkpoint .* training data"):
        check_identity(path, other_data, force=False)
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        assert check_identity(path, other_data, force=True) == "run-a"
    (path / MANIFEST).unlink()
    assert check_identity(path, same, force=True) == "new-id"


def test_recover_puts_back_what_a_crash_moved_aside(tmp_path, caplog):
    staging = tmp_path / STAGING
    (staging / "old-checkpoint-3").mkdir(parents=True)
    (staging / "old-checkpoint-3" / "w").write_text("kept", encoding="utf-8")
    (staging / "half-written").mkdir()
    _checkpoint(tmp_path, 5)
    (staging / "old-checkpoint-5").mkdir()  # its checkpoint is back already: the copy aside goes
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        checkpoints.recover(tmp_path)
    assert (tmp_path / "checkpoint-3" / "w").read_text(encoding="utf-8") == "kept"
    assert "restoring" in caplog.text and not staging.exists()
    assert verify(tmp_path / "checkpoint-5")["step"] == 5


# --- the exact words (a resume refused is where a user reads what to do next) -----------------------------------------


def test_every_refusal_of_resolve_resume_says_what_to_do_in_full(tmp_path):
    with pytest.raises(tk.ConfigError) as info:
        resolve_resume(True, None)
    assert str(info.value) == (
        "resume=True: resuming looks for checkpoints in output_dir, and this Tuner has none; "
        "pass Tuner(output_dir=...) or resume='<path to a checkpoint-N directory>'"
    )
    with pytest.raises(tk.CheckpointError) as info:
        resolve_resume(True, tmp_path)
    assert str(info.value) == (
        f"resume=True: there is no complete checkpoint in {tmp_path} to resume from; use resume=False to start "
        "afresh, resume='auto' to resume only when one exists, or write checkpoints with Training(save_every=N) "
        "or run.cancel()"
    )
    with pytest.raises(tk.CheckpointError) as info:
        resolve_resume(str(tmp_path), None)
    assert str(info.value) == (
        f"resume={str(tmp_path)!r}: not a checkpoint directory (no trainer_state.json in it); pass a checkpoint-N "
        "directory written by a previous run, or resume=True for the newest one in output_dir"
    )
    _checkpoint(tmp_path, 4)
    mark_finished(tmp_path, "run-a", 4)
    with pytest.raises(tk.CheckpointError) as info:
        resolve_resume(True, tmp_path)
    assert str(info.value) == (
        f"resume=True: the run in {tmp_path} finished (its newest checkpoint is checkpoint-4); there is nothing left "
        "to resume. Start afresh with resume=False, or to train it further raise Training(max_steps=...) and pass "
        "Training(force_resume=True)"
    )


def test_a_resume_of_another_run_names_each_difference_and_the_ways_out(tmp_path, caplog):
    path = _checkpoint(tmp_path, 2)
    changed = RunIdentity("x", run_config(_spec(seed=7, batch_size=3)), "other")
    with pytest.raises(tk.CheckpointError) as info:
        check_identity(path, changed, force=False)
    assert str(info.value) == (
        f"resume from checkpoint-2: the checkpoint {path} was written by a different run: "
        "training.batch_size: checkpoint 8, this run 3; training.seed: checkpoint 42, this run 7; "
        "the training data (its examples, order or tokenisation) differs from the checkpoint's. Resume with the same "
        "settings and data, start afresh with resume=False (or another output_dir), or pass "
        "Training(force_resume=True) to resume anyway"
    )
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        check_identity(path, changed, force=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"resuming from {path} although this run differs (force_resume=True): training.batch_size: checkpoint 8, "
        "this run 3; training.seed: checkpoint 42, this run 7; the training data (its examples, order or "
        "tokenisation) differs from the checkpoint's"
    ]


def test_the_logged_lines_of_resolve_resume_name_the_directory(tmp_path, caplog):
    plain = tmp_path / "plain" / "checkpoint-3"
    plain.mkdir(parents=True)
    (plain / "trainer_state.json").write_text("{}", encoding="utf-8")
    _checkpoint(tmp_path, 4)
    mark_finished(tmp_path, "run-a", 4)
    with caplog.at_level(logging.INFO, logger="tunekit"):
        assert resolve_resume(str(plain), None, force=True) == plain
        assert resolve_resume("auto", tmp_path) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"resuming from {plain}, which has no tunekit manifest, because force_resume=True",
        f"the run in {tmp_path} finished; starting a new run there",
    ]


def test_a_checkpoint_without_a_step_counts_as_step_0(tmp_path):
    path = _checkpoint(tmp_path, 1)
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    del manifest["step"]
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    mark_finished(tmp_path, "run-a", 0)
    assert resolve_resume("auto", tmp_path) is None  # finished at step 0, and this checkpoint is at step 0


def test_only_the_main_process_tidies_what_a_crash_left(tmp_path, monkeypatch):
    aside = tmp_path / STAGING / "old-checkpoint-3"
    aside.mkdir(parents=True)
    monkeypatch.setenv("RANK", "1")
    assert resolve_resume(False, tmp_path) is None
    assert aside.is_dir()  # rank 1 leaves it to rank 0
    monkeypatch.setenv("RANK", "0")
    resolve_resume(False, tmp_path)
    assert (tmp_path / "checkpoint-3").is_dir() and not aside.exists()
    aside.mkdir(parents=True)
    monkeypatch.delenv("RANK")  # one process, no torchrun: the main process
    resolve_resume(False, tmp_path)
    assert not aside.exists()


def test_an_explicit_checkpoint_of_another_run_is_refused_unless_forced(tmp_path, caplog):
    path = _checkpoint(tmp_path, 2)
    changed = run_config(_spec(learning_rate=1e-3))
    with pytest.raises(tk.CheckpointError) as info:
        resolve_resume(str(path), None, config=changed)
    assert str(info.value).startswith(f"resume={str(path)!r}: the checkpoint {path} was written by a different run: ")
    assert "training.learning_rate: checkpoint None, this run 0.001" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        assert resolve_resume(str(path), None, config=changed, force=True) == path
    assert f"resuming from {path} although this run differs" in caplog.text
    assert resolve_resume(str(path), None, config=None) == path  # no config given: nothing to compare
