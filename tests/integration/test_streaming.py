"""tk.Data(..., streaming=True) on a real tiny model: it learns while reading the file lazily (a bad row beyond what
the run reads is never met; one within it stops the run naming its row), packs (and packs to a token budget), and
a run killed mid-stream resumes at the same position (the same losses and weights as the uninterrupted run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.testing import first_task, reverse_task

from .helpers import StopAt, cpu, heldout_loss


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_stream_trains_and_is_read_only_as_far_as_the_run_goes(tiny_llama_init02: Path, tmp_path: Path) -> None:
    rows = first_task(2000, seed=1)
    rows[599] = {"prompt": "first: 1 2", "completion": ""}  # row 600: bad, beyond the 30 x 16 rows read
    path = write(tmp_path / "big.jsonl", rows)
    held = first_task(16, seed=2)
    tuner = tk.Tuner(
        tiny_llama_init02, method=tk.LoRA(r=16), training=cpu(max_steps=30, learning_rate=5e-3, batch_size=16)
    )
    before = heldout_loss(tuner, held)
    result = tuner.fit(tk.Data(str(path), streaming=True))
    assert heldout_loss(tuner, held) < 0.5 * before
    assert 480 <= result.num_examples < 600 and result.num_tokens > 0  # what the trainer read of the stream
    assert tuner.data_summary is not None and tuner.data_summary["train"]["streaming"] is True

    def further(**kw: Any) -> tk.Tuner:  # 20 x 32 rows: this run reads row 600
        return tk.Tuner(tiny_llama_init02, method=tk.LoRA(r=4), training=cpu(max_steps=20, batch_size=32, **kw))

    with pytest.raises((tk.DatasetError, tk.TrainingError), match=r"row 600, field 'completion': empty string"):
        further().fit(tk.Data(str(path), streaming=True))  # it stops there, naming the row
    assert further(on_bad_rows="skip").fit(tk.Data(str(path), streaming=True)).skipped_rows == [600]


def test_a_stream_packs_to_a_token_budget(tiny_llama: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", reverse_task(200, seed=1))
    training = cpu(max_steps=8, max_length=128, tokens_per_batch=256, learning_rate=1e-2)
    tuner = tk.Tuner(tiny_llama, method=tk.LoRA(r=4), training=training)
    result = tuner.fit(tk.Data(str(path), streaming=True))
    assert result.steps == 8 and result.train_loss < result.history[0]["loss"]


def test_an_interrupted_stream_resumes_at_the_same_position(tiny_llama: Path, tmp_path: Path) -> None:
    """10 rows a step over a 36-row file (the stream wraps around inside step 4): stopped at step 6 (a checkpoint is
    written there), a fresh Tuner resumes from it and trains on the rows the uninterrupted run trained on next."""
    path = write(tmp_path / "s.jsonl", reverse_task(36, seed=3))
    data = tk.Data(str(path), streaming=True)

    def run(out: Path, hooks: list[tk.Hook]) -> tuple[tk.Tuner, tk.FitResult | None]:
        training = cpu(max_steps=8, batch_size=10, learning_rate=1e-2, save_every=4)
        t = tk.Tuner(tiny_llama, method=tk.LoRA(r=4, dropout=0.1), training=training, output_dir=out, hooks=hooks,
                     progress=False)  # fmt: skip
        try:
            return t, t.fit(data)
        except tk.TrainingError:
            return t, None

    reference, ref_result = run(tmp_path / "ref", [])
    _, stopped = run(tmp_path / "run", [StopAt(6)])
    assert stopped is None and (tmp_path / "run" / "checkpoint-6").is_dir()
    again, result = run(tmp_path / "run", [])  # a fresh Tuner resumes from checkpoint-6 (resume="auto")
    assert ref_result is not None and result is not None and result.steps == 8
    ref_losses = {h["step"]: h["loss"] for h in ref_result.history if "loss" in h}
    got = {h["step"]: h["loss"] for h in result.history if "loss" in h and h["step"] > 6}
    assert sorted(got) == [7, 8]
    assert got == pytest.approx({s: ref_losses[s] for s in got}, rel=0, abs=1e-6)
    for (name, a), (_, b) in zip(reference.model.named_parameters(), again.model.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
