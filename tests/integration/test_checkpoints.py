"""tunekit's checkpoints: atomic and verified, rotated after completion, Windows-safe, resumed exactly.

One uninterrupted reference run (module fixture) is compared with interrupted and resumed ones:
the same loss at every later step and the same final weights on CPU (1e-6).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch

import tunekit as tk
from tunekit import _fs
from tunekit.backends.hf.checkpoints import MANIFEST, RUN_STATE, STAGING
from tunekit.testing import reverse_task

from .helpers import StopAt, cpu

DATA = reverse_task(20, seed=3)  # 5 batches of 4 per epoch: max_steps=8 crosses an epoch boundary


def training(**kw):
    kw.setdefault("max_steps", 8)
    kw.setdefault("batch_size", 4)
    kw.setdefault("learning_rate", 1e-2)
    kw.setdefault("save_every", 2)
    return cpu(**kw)


def tuner(model, out, hooks=(), method=None, **kw):
    # LoRA dropout: the resumed run must restore the dropout RNG, not only the data order.
    return tk.Tuner(
        model, method=method or tk.LoRA(r=4, dropout=0.1), training=training(**kw), output_dir=out, hooks=hooks,
        progress=False,
    )  # fmt: skip


def losses(result):
    return {h["step"]: h["loss"] for h in result.history if "loss" in h}


def weights(t):
    return {k: v.detach().clone() for k, v in t.model.named_parameters() if v.requires_grad}


def same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    t = tuner(tiny_llama, tmp_path_factory.mktemp("ref"))
    result = t.fit(DATA)
    return losses(result), weights(t), result


def test_checkpoint_layout_and_manifest(reference):
    _, _, result = reference
    out = result.output_dir
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == [
        f"checkpoint-{s}" for s in (2, 4, 6, 8)
    ]
    assert not (out / STAGING).exists()  # nothing half-written left behind
    assert json.loads((out / RUN_STATE).read_text(encoding="utf-8"))["finished"] is True
    ckpt = out / "checkpoint-6"
    m = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(m["files"]) == on_disk and {"optimizer.pt", "rng_state.pth", "trainer_state.json"} <= on_disk
    for name, meta in m["files"].items():
        assert meta == {"size": (ckpt / name).stat().st_size, "sha256": _fs.sha256_file(ckpt / name)}
    assert m["step"] == 6 and m["max_steps"] == 8 and m["tunekit_version"] == tk.__version__
    assert len(m["config_hash"]) == 64 and len(m["data_fingerprint"]) == 64
    assert m["config"]["training"]["learning_rate"] == 1e-2 and m["config"]["method"]["name"] == "LoRA"
    assert m["rng_and_sampler"]["seed"] == 42 and m["rng_and_sampler"]["rng_files"] == ["rng_state.pth"]
    assert m["rng_and_sampler"]["epoch"] == pytest.approx(6 / 5)


def test_interrupted_run_resumes_exactly_and_data_order_continues(tiny_llama, tmp_path, reference):
    ref_losses, ref_weights, _ = reference
    t = tuner(tiny_llama, tmp_path, hooks=[StopAt(3)])  # stops mid-epoch at step 3, checkpoint-3 written
    with pytest.raises(tk.TrainingError, match="interrupted"):
        t.fit(DATA)
    assert (tmp_path / "checkpoint-3" / MANIFEST).is_file() and not (tmp_path / RUN_STATE).exists()
    t.hooks = []
    again = tuner(tiny_llama, tmp_path)  # a new process would do this: a fresh Tuner, resume="auto" (the default)
    result = again.fit(DATA)
    assert result.steps == 8
    got = losses(result)
    after = {s: v for s, v in got.items() if s > 3}
    assert sorted(after) == [4, 5, 6, 7, 8]
    assert after == pytest.approx({s: ref_losses[s] for s in after}, rel=0, abs=1e-6)
    same_weights(weights(again), ref_weights)


def test_finished_run_is_not_resumed_and_a_new_run_replaces_its_checkpoints(tiny_llama, tmp_path, caplog):
    t = tuner(tiny_llama, tmp_path, max_steps=4)
    t.fit(DATA)
    old_run = json.loads((tmp_path / "checkpoint-4" / MANIFEST).read_text(encoding="utf-8"))["run_id"]
    with pytest.raises(tk.CheckpointError, match=r"finished .* resume=False"):
        t.fit(DATA, resume=True)
    with caplog.at_level(logging.INFO, logger="tunekit"):
        result = t.fit(DATA)  # "auto": the run finished, so this is a new run of 4 steps, not 0
    assert result.steps == 4 and len(losses(result)) == 4
    assert "finished; starting a new run" in caplog.text
    runs = {json.loads((p / MANIFEST).read_text(encoding="utf-8"))["run_id"] for p in tmp_path.glob("checkpoint-*")}
    assert len(runs) == 1 and old_run not in runs  # the earlier run's checkpoints went once the new one had its own


def test_keep_checkpoints_removes_old_ones_only_after_the_new_one_is_complete(tiny_llama, tmp_path, monkeypatch):
    from tunekit.backends.hf import checkpoints

    seen = []
    real = checkpoints._rotate

    def rotate(output_dir, run_id, keep, newest):
        assert (newest / MANIFEST).is_file()  # the new checkpoint stands before anything is removed
        seen.append(sorted(p.name for p in output_dir.glob("checkpoint-*")))
        real(output_dir, run_id, keep, newest)

    monkeypatch.setattr(checkpoints, "_rotate", rotate)
    tuner(tiny_llama, tmp_path, max_steps=6, keep_checkpoints=2).fit(DATA)
    assert seen[-1] == ["checkpoint-4", "checkpoint-6"] or seen[-1] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_incomplete_or_corrupt_checkpoints_are_skipped_with_a_warning(tiny_llama, tmp_path, caplog, reference):
    ref_losses, _, _ = reference
    t = tuner(tiny_llama, tmp_path, hooks=[StopAt(5)])
    with pytest.raises(tk.TrainingError):
        t.fit(DATA)
    # checkpoint-5 corrupt (a byte flipped), checkpoint-4 incomplete (no manifest): resume from checkpoint-2.
    f = tmp_path / "checkpoint-5" / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    (tmp_path / "checkpoint-4" / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        result = tuner(tiny_llama, tmp_path).fit(DATA)
    assert "skipping checkpoint-5" in caplog.text and "sha256" in caplog.text
    assert "skipping checkpoint-4" in caplog.text and "no tunekit-checkpoint.json" in caplog.text
    got = losses(result)
    assert min(s for s in got if s > 2) == 3 and got[3] == pytest.approx(ref_losses[3], abs=1e-6)


def test_a_changed_config_or_data_is_named_and_can_be_forced(tiny_llama, tmp_path, caplog):
    t = tuner(tiny_llama, tmp_path, hooks=[StopAt(2)])
    with pytest.raises(tk.TrainingError):
        t.fit(DATA)
    with pytest.raises(tk.CheckpointError) as info:
        tuner(tiny_llama, tmp_path, learning_rate=5e-3).fit(DATA)
    message = str(info.value)
    assert "training.learning_rate: checkpoint 0.01, this run 0.005" in message
    assert "resume=False" in message and "force_resume=True" in message
    with pytest.raises(tk.CheckpointError, match=r"training data .* differs"):
        tuner(tiny_llama, tmp_path).fit(DATA[:-4])
    assert (tmp_path / "checkpoint-2" / MANIFEST).is_file()  # refusing touched nothing
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        result = tuner(tiny_llama, tmp_path, learning_rate=5e-3, force_resume=True).fit(DATA)
    assert "force_resume=True" in caplog.text and result.steps == 8 and min(losses(result)) > 0
    assert min(s for s in losses(result) if s > 2) == 3  # it resumed, at step 3


def test_windows_simulation_checkpoints_and_resume(tiny_llama, tmp_path, monkeypatch, reference):
    """Opening a directory raises PermissionError; the first rename of each checkpoint meets a locked file."""
    ref_losses, ref_weights, _ = reference
    real_open, real_replace = os.open, os.replace
    refused, first_try = [], set()

    def open_(path, flags, *a, **k):
        if os.path.isdir(path):
            refused.append(path)
            raise PermissionError(errno.EACCES, "Access is denied", str(path))
        return real_open(path, flags, *a, **k)

    def replace(src, dst):
        name = Path(dst).name
        if STAGING in Path(src).parts and name.startswith("checkpoint-") and name not in first_try:
            first_try.add(name)
            raise PermissionError(errno.EACCES, "The process cannot access the file (in use)", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "replace", replace)
    import shutil

    monkeypatch.setattr(shutil, "_use_fd_functions", False)  # Windows' rmtree walks paths, it opens no directory
    t = tuner(tiny_llama, tmp_path, hooks=[StopAt(4)])
    with pytest.raises(tk.TrainingError, match="interrupted"):
        t.fit(DATA)
    assert first_try == {"checkpoint-2", "checkpoint-4"} and refused  # both obstacles were met, and retried
    again = tuner(tiny_llama, tmp_path)
    result = again.fit(DATA)
    assert {s: v for s, v in losses(result).items() if s > 4} == pytest.approx(
        {s: ref_losses[s] for s in range(5, 9)}, abs=1e-6
    )
    same_weights(weights(again), ref_weights)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    assert not (tmp_path / STAGING).exists()
    saved = again.save(tmp_path / "adapter")  # the final save too, and replacing it
    again.save(saved)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging or trash left
    same_weights(weights(tk.load(saved)), ref_weights)


def test_full_disk_during_save_keeps_the_previous_checkpoint(tiny_llama, tmp_path, monkeypatch):
    from tunekit.backends.hf import checkpoints

    real = _fs.list_files
    calls = []

    def full(root):
        calls.append(root)
        if len(calls) == 2:  # the second checkpoint: the disk fills up while it is written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(root)

    monkeypatch.setattr(checkpoints._fs, "list_files", full)
    t = tuner(tiny_llama, tmp_path, max_steps=6)
    with pytest.raises(tk.CheckpointError) as info:
        t.fit(DATA)
    message = str(info.value)
    assert "checkpoint-4" in message and "disk is full" in message and "checkpoint-2 is intact" in message
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / STAGING).exists()  # the half-written checkpoint-4 is gone
    from tunekit.backends.hf.checkpoints import verify

    verify(tmp_path / "checkpoint-2")  # whole and matching its manifest
    monkeypatch.undo()
    assert tuner(tiny_llama, tmp_path, max_steps=6).fit(DATA).steps == 6  # and it resumes from there


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_llama, tmp_path):
    class Poison(tk.Hook):
        def on_checkpoint(self, ctx, path):  # right after checkpoint-4 is written, the weights go bad
            if ctx.step == 4:
                with torch.no_grad():
                    next(p for p in t.model.parameters() if p.requires_grad).fill_(float("nan"))

    t = tuner(tiny_llama, tmp_path, hooks=[Poison()], log_every=3)
    with pytest.raises(tk.TrainingError) as info:
        t.fit(DATA)
    message = str(info.value)
    assert "non-finite loss" in message and "at step 5" in message
    assert "last good checkpoint is checkpoint-4" in message and "on_nonfinite='skip'" in message
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoint-4" / "adapter_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_nonfinite_step_is_skipped_when_asked(tiny_llama, tmp_path, caplog):
    """One poisoned forward at step 3: that step changes nothing, the others train, and the NaN shows in the log."""
    seen = {}

    class Snapshot(tk.Hook):
        def on_step_end(self, ctx):
            seen[ctx.step] = weights(t)
            if ctx.step == 2:
                arm[0] = True

    arm = [False]

    def poison(module, args, output):
        if arm[0]:
            arm[0] = False
            return output * float("nan")
        return output

    t = tuner(tiny_llama, None, hooks=[Snapshot()], on_nonfinite="skip", max_steps=5, save_every=None)
    t.model.get_input_embeddings().register_forward_hook(poison)
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        result = t.fit(DATA)
    assert result.steps == 5 and result.metrics["nonfinite_skipped_steps"] == 1
    assert "step 3: non-finite loss and gradient norm; the step was skipped" in caplog.text
    same_weights(seen[3], seen[2])  # no update at the skipped step
    assert any((seen[4][k] != seen[3][k]).any() for k in seen[3])  # training went on
    logged = losses(result)
    assert logged[3] != logged[3] and all(v == v for s, v in logged.items() if s != 3)  # NaN shown, not averaged
