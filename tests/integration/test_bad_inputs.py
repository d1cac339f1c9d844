"""The bad-input catalogue, first part: data, config, model and path mistakes users make.

Each row asserts the error class, words naming the problem and words naming the fix, and that the
run's output_dir (which holds a complete checkpoint of an earlier run) is left exactly as it was.
The shared machinery is in ``bad_input_kit.py``; the other parts of the catalogue are the
``test_bad_inputs_*.py`` files beside this one.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

from . import __path__ as here
from .bad_input_kit import (
    GOOD,
    Row,
    check,
    conv,
    full_disk_at_first_save,
    full_disk_in_save,
    pickle_weights,
    read_only,
    remote_code,
    rows_with,
)
from .helpers import cpu

# id, action, error class, words of the problem, words of the fix
CATALOGUE: list[Row] = [
    # --- data ---
    ("invalid-json-line", lambda c: c.fit(c.file("d.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n')),
     tk.DatasetError, "invalid JSON on line 2", "one JSON object"),
    ("wrong-encoding", lambda c: c.fit(c.file("d.jsonl", '{"prompt": "你好", "completion": "世界"}\n'.encode("gbk"))),
     tk.DatasetError, "not valid UTF-8", "save the file as UTF-8"),
    ("empty-file", lambda c: c.fit(c.file("d.jsonl", "")), tk.DatasetError, "the file has no rows", "add at least one"),
    ("empty-list", lambda c: c.fit([]), tk.DatasetError, "dataset is empty", "add at least one"),
    ("missing-field", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2"})),
     tk.DatasetError, "row 3.*missing field 'completion'", "add it to every row"),
    ("wrong-type", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": 12})),
     tk.DatasetError, "row 3, field 'completion': expected a string or a list of chat messages, got int",
     "write it as text, or as a list of"),
    ("empty-string", lambda c: c.fit(rows_with({"prompt": "reverse: 1 2", "completion": "  "})),
     tk.DatasetError, "row 3, field 'completion': empty string", "needs text"),
    ("roles-out-of-order", lambda c: c.fit([conv("user", "user", "assistant")] * 4),
     tk.DatasetError, "row 1, field 'messages': roles out of order at message 2", "must alternate"),
    ("unknown-role", lambda c: c.fit([conv("user", "robot")] * 4),
     tk.DatasetError, "unknown role 'robot'", "expected one of"),
    ("no-answer", lambda c: c.fit([conv("user")] * 4), tk.DatasetError, "must end with an assistant message",
     "add the answer"),
    ("no-supervised-token", lambda c: c.fit([{"prompt": "reverse: " + "1 " * 200, "completion": "1"}], max_length=32),
     tk.DatasetError, "no supervised token left after truncation", r"raise Training\(max_length"),
    ("unknown-columns", lambda c: c.fit([{"question": "q", "answer": "a"}] * 4),
     tk.DatasetError, "cannot tell the data format", "expected one of"),
    ("row-not-an-object", lambda c: c.fit(["reverse: 1 2"] * 4), tk.DatasetError, "row 1: expected an object",
     "write each row as an object"),
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


@pytest.mark.parametrize("row", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(tiny_llama, earlier_run, tmp_path, monkeypatch, row):
    check(tiny_llama, earlier_run, tmp_path, monkeypatch, row)


def test_catalogue_is_complete():
    """Every part of the catalogue counts: its error rows and its ``test_correct_*`` behaviour tests."""
    ids: list[str] = []
    rows: list[Row] = []
    for info in pkgutil.iter_modules(here):
        if info.name == "test_bad_inputs" or info.name.startswith("test_bad_inputs_"):
            module = importlib.import_module(f"{__package__}.{info.name}")
            rows += getattr(module, "CATALOGUE", [])
            ids += [row[0] for row in getattr(module, "CATALOGUE", [])]
            ids += [name for name in vars(module) if name.startswith("test_correct_")]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    empty = [row[0] for row in rows if not row[3] or not row[4]]
    assert not empty, f"rows whose problem or fix pattern is empty (it would match anything): {empty}"
    assert len(ids) >= 160, len(ids)  # 36 before the hardening issue


def test_skip_bad_rows_reports_which_and_why(tiny_llama, caplog):
    rows = reverse_task(10, seed=4)
    rows[1] = {"prompt": "reverse: 1", "completion": ""}  # empty string
    rows[4] = {"prompt": "reverse: 2"}  # missing field
    rows[6] = {"prompt": "reverse: " + "3 " * 200, "completion": "3"}  # no supervised token after truncation
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4, max_length=32, on_bad_rows="skip"))
    with caplog.at_level("WARNING", logger="tunekit"):
        result = tuner.fit(rows)
    assert result.skipped_rows == [2, 5, 7] and result.num_examples == 7
    assert result.skipped_reasons[5] == "row 5: missing field 'completion'; add it to every row"
    assert "no supervised token left after truncation" in result.skipped_reasons[7]
    for why in (
        "row 2, field 'completion': empty string",
        "row 5: missing field 'completion'",
        "row 7: no supervised token left after truncation",
    ):
        assert why in caplog.text
