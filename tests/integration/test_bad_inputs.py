"""The bad-input catalogue: data, config, model and path mistakes users make, each with its specific error.

Every row asserts the error class, words naming the problem and words naming the fix, and that the
run's output_dir (which holds a complete checkpoint of an earlier run) is left exactly as it was:
no partial checkpoint, nothing corrupted.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit import _fs
from tunekit.backends.hf.checkpoints import STAGING
from tunekit.testing import reverse_task

from .helpers import cpu

GOOD = reverse_task(8, seed=4)


@dataclass
class Case:
    model: Path
    out: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch

    def tuner(self, model: Any = None, **kw: Any) -> tk.Tuner:
        training = cpu(**{"max_steps": 2, "batch_size": 4, "save_every": 1, **kw.pop("training", {})})
        return tk.Tuner(model or self.model, training=training, output_dir=self.out, progress=False, **kw)

    def fit(self, data: Any, **kw: Any) -> Any:
        return self.tuner(training=kw).fit(data)

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return p

    def model_copy(self, edit: Callable[[Path], None]) -> Path:
        p = self.tmp / "model-copy"
        shutil.copytree(self.model, p)
        edit(p)
        return p


def rows_with(bad: dict[str, Any], at: int = 3) -> list[dict[str, Any]]:
    rows = list(GOOD)
    rows.insert(at - 1, bad)
    return rows


def conv(*roles: str) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": f"{r} text"} for r in roles]}


def remote_code(p: Path) -> None:
    config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "acme-custom"  # an architecture transformers does not know: only its own code loads it
    config["auto_map"] = {
        "AutoConfig": "configuration_acme.AcmeConfig",
        "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM",
    }
    (p / "config.json").write_text(json.dumps(config), encoding="utf-8")


def pickle_weights(p: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(p / "model.safetensors")), p / "pytorch_model.bin")
    (p / "model.safetensors").unlink()


def read_only(c: Case) -> Path:
    """A directory writes fail in (permissions are not enough when the tests run as root)."""
    target = c.tmp / "locked"
    target.mkdir()
    real = os.open

    def refuse(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if Path(path).parent == target and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *a, **k)

    c.monkeypatch.setattr(os, "open", refuse)
    return target


def full_disk_at_first_save(c: Case) -> Any:
    from tunekit.backends.hf import checkpoints

    def full(root: Path) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    c.monkeypatch.setattr(checkpoints._fs, "list_files", full)
    return c.fit(GOOD)


def full_disk_in_save(c: Case) -> Any:
    from tunekit import save_format

    tuner = tk.Tuner(c.model, training=cpu(max_steps=1, batch_size=4), progress=False)
    tuner.fit(GOOD)
    target = tuner.save(c.tmp / "adapter")

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    c.monkeypatch.setattr(save_format._fs, "write_json", full)
    try:
        tuner.save(target)
    finally:
        c.monkeypatch.undo()
        tk.load(target)  # the earlier save is whole


# id, action, error class, words of the problem, words of the fix
CATALOGUE: list[tuple[str, Callable[[Case], Any], type[Exception], str, str]] = [
    # --- data ---
    ("invalid-json-line", lambda c: c.fit(c.file("d.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n')),
     tk.DatasetError, "invalid JSON on line 2", "one JSON object"),
    ("wrong-encoding", lambda c: c.fit(c.file("d.jsonl", '{"prompt": "你好", "completion": "世界"}\n'.encode("gbk"))),
     tk.DatasetError, "not valid UTF-8", "save the file as UTF-8"),
    ("empty-file", lambda c: c.fit(c.file("d.jsonl", "")), tk.DatasetError, "the file has no rows", "add at least one"),
    ("empty-list", lambda c: c.fit([]), tk.DatasetError, "dataset is empty", "add at least one"),
    ("missing-field", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2"})),
     tk.DatasetError, "row 3.*missing field 'completion'", ""),
    ("wrong-type", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": 12})),
     tk.DatasetError, "row 3, field 'completion': expected a string or a list of chat messages, got int", ""),
    ("empty-string", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": "  "})),
     tk.DatasetError, "row 3, field 'completion': empty string", "needs text"),
    ("roles-out-of-order", lambda c: c.fit([conv("user", "user", "assistant")] * 4),
     tk.DatasetError, "row 1, field 'messages': roles out of order at message 2", "must alternate"),
    ("unknown-role", lambda c: c.fit([conv("user", "robot")] * 4),
     tk.DatasetError, "unknown role 'robot'", "expected one of"),
    ("no-answer", lambda c: c.fit([conv("user")] * 4), tk.DatasetError, "must end with an assistant message", ""),
    ("no-supervised-token", lambda c: c.fit([{"prompt": "reverse: " + "1 " * 200, "completion": "1"}], max_length=32),
     tk.DatasetError, "no supervised token left after truncation", r"raise Training\(max_length"),
    ("unknown-columns", lambda c: c.fit([{"question": "q", "answer": "a"}] * 4),
     tk.DatasetError, "cannot tell the data format", "expected one of"),
    ("row-not-an-object", lambda c: c.fit(["reverse: 1 2"] * 4), tk.DatasetError, "row 1: expected an object", ""),
    ("json-not-a-list", lambda c: c.fit(c.file("d.json", '{"prompt": "a"}')),
     tk.DatasetError, "expected a JSON list of objects", "one object a line"),
    ("unsupported-file", lambda c: c.fit(c.file("d.txt", "hello")),
     tk.DatasetError, "unsupported file type '.txt'", ".jsonl"),
    ("data-file-missing", lambda c: c.fit(c.tmp / "nope.jsonl"),
     tk.DatasetError, "data file not found", "check the path"),
    # --- config ---
    ("misspelled-option", lambda c: tk.Training(learning_rat=1e-4), tk.ConfigError, "unknown option 'learning_rat'",
     "did you mean 'learning_rate'"),
    ("foreign-option", lambda c: tk.Training(save_total_limit=2), tk.ConfigError, "unknown option 'save_total_limit'",
     "did you mean 'keep_checkpoints'"),
    ("method-option", lambda c: tk.LoRA(rank=8), tk.ConfigError, "unknown option 'rank'", "did you mean 'r'"),
    ("out-of-range", lambda c: tk.Training(batch_size=0), tk.ConfigError, "batch_size=0", "must be at least 1"),
    ("learning-rate-too-big", lambda c: tk.Training(learning_rate=5), tk.ConfigError, "learning_rate=5", "less than 1"),
    ("wrong-type-option", lambda c: tk.Training(max_steps="ten"), tk.ConfigError, "max_steps='ten'", "whole number"),
    ("bad-choice", lambda c: tk.Training(on_nonfinite="ignore"), tk.ConfigError, "on_nonfinite='ignore'",
     "one of 'error' or 'skip'"),
    ("method-vs-objective", lambda c: tk.Tuner(c.model, method=tk.PromptTuning(), objective=tk.DPO()),
     tk.IncompatibleError, "PromptTuning does not support the DPO objective", "it supports"),
    ("data-vs-objective", lambda c: c.tuner(objective=tk.SFT()).fit(reverse_task(4, fmt="text")),
     tk.IncompatibleError, "'text' format, which SFT cannot train on", r"tk\.CausalLM\(\)"),
    ("fp16-on-cpu", lambda c: tk.Training(precision="fp16", device="cpu"), tk.ConfigError, "fp16 needs a GPU",
     "precision='fp32'"),
    # --- model ---
    ("model-path-missing", lambda c: c.tuner(model="./no/such/model").fit(GOOD), tk.ConfigError,
     "model path does not exist", "local model directory or a hub id"),
    ("not-a-model-dir", lambda c: c.tuner(model=c.tmp).fit(GOOD), tk.ConfigError, "is not a model directory",
     "config.json"),
    ("needs-remote-code", lambda c: c.tuner(model=c.model_copy(remote_code)).fit(GOOD), tk.IncompatibleError,
     "needs its own Python code", r"Training\(trust_remote_code=True\)"),
    ("pickle-weights", lambda c: c.tuner(model=c.model_copy(pickle_weights)).fit(GOOD), tk.CheckpointError,
     r"stored with pickle \(pytorch_model.bin\)", r"Training\(allow_pickle=True\)"),
    # --- paths ---
    ("output-dir-is-a-file", lambda c: tk.Tuner(c.model, output_dir=c.file("f", "x")), tk.ConfigError,
     "is a file", "not a directory"),
    ("output-dir-read-only", lambda c: tk.Tuner(c.model, training=cpu(max_steps=1), output_dir=read_only(c)).fit(GOOD),
     tk.ConfigError, "cannot write to", "choose a directory you can write to"),
    ("resume-not-a-checkpoint", lambda c: c.tuner(training={"resume": str(c.tmp)}).fit(GOOD), tk.CheckpointError,
     "not a checkpoint directory", "resume=True"),
    ("full-disk-in-checkpoint", full_disk_at_first_save, tk.CheckpointError, "could not write checkpoint-1",
     "the disk is full"),
    ("full-disk-in-save", full_disk_in_save, tk.CheckpointError, "could not write the save",
     "the disk is full.*previous save there is intact"),
    ("save-over-a-file", lambda c: c.tuner().save(c.file("a-file", "x")), tk.CheckpointError, "a file is in the way",
     "choose a directory"),
]  # fmt: skip


@pytest.fixture(scope="module")
def earlier_run(tiny_llama, tmp_path_factory):
    """An output_dir holding a complete checkpoint of an earlier run (what must survive)."""
    out = tmp_path_factory.mktemp("earlier") / "run"

    class Stop(tk.Hook):
        def on_step_end(self, ctx):
            ctx.request_stop()

    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=3, batch_size=4, save_every=1), output_dir=out, hooks=[Stop()])
    tuner.fit(GOOD)  # stopped by request: a finished run whose checkpoint stays on disk
    assert (out / "checkpoint-1").is_dir()
    return out


def snapshot(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): _fs.sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("action", "error", "problem", "fix"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_bad_input(tiny_llama, earlier_run, tmp_path, monkeypatch, action, error, problem, fix):
    out = tmp_path / "run"
    shutil.copytree(earlier_run, out)
    before = snapshot(out)
    case = Case(tiny_llama, out, tmp_path, monkeypatch)
    with pytest.raises(error) as info:
        action(case)
    monkeypatch.undo()
    message = str(info.value)
    assert type(info.value) is error
    assert re.search(problem, message), message
    assert re.search(fix, message), message
    assert snapshot(out) == before  # the earlier checkpoint untouched, no partial one beside it
    assert not (out / STAGING).exists()


def test_catalogue_is_complete():
    assert len(CATALOGUE) >= 25 and len({c[0] for c in CATALOGUE}) == len(CATALOGUE)


def test_skip_bad_rows_reports_which_and_why(tiny_llama, caplog):
    rows = reverse_task(10, seed=4)
    rows[1] = {"prompt": "reverse: 1", "completion": ""}  # empty string
    rows[4] = {"prompt": "reverse: 2"}  # missing field
    rows[6] = {"prompt": "reverse: " + "3 " * 200, "completion": "3"}  # no supervised token after truncation
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4, max_length=32, on_bad_rows="skip"))
    with caplog.at_level("WARNING", logger="tunekit"):
        result = tuner.fit(rows)
    assert result.skipped_rows == [2, 5, 7] and result.num_examples == 7
    assert result.skipped_reasons[5] == "row 5: missing field 'completion'"
    assert "no supervised token left after truncation" in result.skipped_reasons[7]
    for why in (
        "row 2, field 'completion': empty string",
        "row 5: missing field 'completion'",
        "row 7: no supervised token left after truncation",
    ):
        assert why in caplog.text
