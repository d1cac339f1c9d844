"""tk.Data(..., streaming=True) on a real tiny model: it learns while reading the file lazily (a bad row beyond what
the run reads is never met; one within it stops the run naming its row), packs (and packs to a token budget), a
run killed mid-stream resumes at the same position (the same losses and weights as the uninterrupted run) by seeking
there, a shuffled stream resumes exactly too, and preference, KTO and RL objectives stream."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.data import streaming
from tunekit.testing import first_task, reverse_task

from .helpers import StopAt, cpu, heldout_loss
from .toy_tasks import prefers_chosen, say_prompts, sevens, sort_pairs, unpaired


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


def test_a_resumed_stream_seeks_to_its_position_instead_of_reading_again(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A .jsonl stream checkpointed at step 10 (40 rows trained): the resumed run seeks to row 40's line and reads on
    from there (a handful of rows, not the 40 again), and trains exactly as the uninterrupted run; once the file
    changed, the resumed run warns and reads it again from the top."""
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 4)  # rows read as they are needed, so the counts tell
    read: list[int] = []
    normalise = streaming.normalise_row

    def counted(fmt: str, row: dict[str, Any], i: int, **kw: Any) -> Any:
        read.append(i)
        return normalise(fmt, row, i, **kw)

    monkeypatch.setattr(streaming, "normalise_row", counted)
    path = write(tmp_path / "s.jsonl", reverse_task(300, seed=4))

    def run(out: Path, hooks: list[tk.Hook], **kw: Any) -> tuple[tk.Tuner, tk.FitResult | None]:
        training = cpu(max_steps=12, batch_size=4, learning_rate=1e-2, save_every=10, **kw)
        t = tk.Tuner(tiny_llama, method=tk.LoRA(r=4, dropout=0.1), training=training, output_dir=out, hooks=hooks,
                     progress=False)  # fmt: skip
        try:
            return t, t.fit(tk.Data(str(path), streaming=True))
        except tk.TrainingError:
            return t, None

    reference, ref_result = run(tmp_path / "ref", [])
    assert run(tmp_path / "run", [StopAt(10)])[1] is None
    state = json.loads((tmp_path / "run" / "checkpoint-10" / streaming.STATE_FILE).read_text(encoding="utf-8"))
    assert state["position"][2:5] == [40, 0, 40]  # row 40, its first sequence, 40 sequences streamed
    read.clear()
    again, result = run(tmp_path / "run", [])  # resume="auto": from checkpoint-10
    assert read[0] == 40 and len(read) < 40, read  # from the checkpoint's row on, not rows 1-40 again
    assert ref_result is not None and result is not None and result.steps == 12
    assert 48 <= result.num_examples < 40 + len(read)  # counted on from the checkpoint's count
    ref_losses = {h["step"]: h["loss"] for h in ref_result.history if "loss" in h}
    got = {h["step"]: h["loss"] for h in result.history if "loss" in h and h["step"] > 10}
    assert sorted(got) == [11, 12] and got == pytest.approx({s: ref_losses[s] for s in got}, rel=0, abs=1e-6)
    for (name, a), (_, b) in zip(reference.model.named_parameters(), again.model.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)

    assert run(tmp_path / "edited", [StopAt(10)])[1] is None
    rows = reverse_task(300, seed=4)
    rows[20] = {"prompt": rows[20]["prompt"], "completion": rows[20]["completion"] + " 1"}  # before the position
    write(path, rows)
    read.clear()
    with caplog.at_level("WARNING", logger="tunekit"):
        assert run(tmp_path / "edited", [], force_resume=True)[1] is not None  # its first rows changed too
    assert "changed since checkpoint-10" in caplog.text and read[0] == 1 and len(read) > 40


def test_a_shuffled_stream_is_drawn_by_the_seed_and_resumes_exactly(tiny_llama: Path, tmp_path: Path) -> None:
    """shuffle_buffer: datasets' buffered shuffle by Training(seed); a run killed at step 4 resumes (by reading the
    stream again up to its step, in the same order) with the uninterrupted run's losses."""
    path = write(tmp_path / "s.jsonl", reverse_task(60, seed=5))
    data = tk.Data(str(path), streaming=True, shuffle_buffer=16)

    def run(out: Path, hooks: list[tk.Hook], seed: int = 0) -> tk.FitResult | None:
        training = cpu(max_steps=6, batch_size=4, learning_rate=1e-2, save_every=4, seed=seed)
        t = tk.Tuner(tiny_llama, method=tk.LoRA(r=4), training=training, output_dir=out, hooks=hooks, progress=False)
        try:
            return t.fit(data)
        except tk.TrainingError:
            return None

    ref = run(tmp_path / "ref", [])
    assert run(tmp_path / "run", [StopAt(4)]) is None
    assert not (tmp_path / "run" / "checkpoint-4" / streaming.STATE_FILE).exists()  # no position: the trainer skips
    result = run(tmp_path / "run", [])
    assert ref is not None and result is not None
    ref_losses = {h["step"]: h["loss"] for h in ref.history if "loss" in h}
    got = {h["step"]: h["loss"] for h in result.history if "loss" in h and h["step"] > 4}
    assert got == pytest.approx({s: ref_losses[s] for s in got}, rel=0, abs=1e-6) and sorted(got) == [5, 6]
    assert ref.history[-1]["loss"] < ref.history[0]["loss"]  # and it learns


@pytest.mark.slow  # about 17 s on 2 cores: DPO must learn
def test_preference_and_rl_objectives_stream(tiny_llama_init02: Path, tmp_path: Path) -> None:
    """DPO and KTO learn from a streamed file (trl reads the IterableDataset of records tunekit prepares a chunk at a
    time); GRPO takes a streamed prompt file too."""
    pairs = write(tmp_path / "pairs.jsonl", sort_pairs(400, seed=1))
    held = sort_pairs(64, seed=2)
    dpo = tk.Tuner(tiny_llama_init02, method=tk.LoRA(r=8), objective=tk.DPO(),
                   training=cpu(max_steps=25, learning_rate=3e-3, batch_size=16))  # fmt: skip
    before = prefers_chosen(dpo, held)
    result = dpo.fit(tk.Data(str(pairs), streaming=True))
    assert prefers_chosen(dpo, held) >= before + 0.15 and result.num_examples >= 25 * 16
    labelled = write(tmp_path / "kto.jsonl", unpaired(sort_pairs(400, seed=1)))
    kto = tk.Tuner(tiny_llama_init02, method=tk.LoRA(r=8), objective=tk.KTO(),
                   training=cpu(max_steps=10, learning_rate=3e-3, batch_size=16))  # fmt: skip
    history = kto.fit(tk.Data(str(labelled), streaming=True)).history
    margin = [h["rewards/chosen"] - h["rewards/rejected"] for h in history if "rewards/chosen" in h]
    assert margin[-1] > margin[0], margin
    prompts = write(tmp_path / "prompts.jsonl", say_prompts(40, seed=1))
    grpo = tk.Tuner(tiny_llama_init02, method=tk.LoRA(r=4),
                    objective=tk.GRPO(reward=sevens, num_generations=4, max_completion_length=4),
                    training=cpu(max_steps=2, batch_size=8, learning_rate=1e-2))  # fmt: skip
    start = {n: p.detach().clone() for n, p in grpo.model.named_parameters() if p.requires_grad}
    result = grpo.fit(tk.Data(str(prompts), streaming=True))
    assert result.steps == 2 and result.num_examples > 0 and "reward" in result.history[-1]
    assert any(not torch.equal(p, start[n]) for n, p in grpo.model.named_parameters() if n in start)


def test_a_streamed_row_with_tools_past_the_first_rows_is_refused_never_dropped(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """trl's records take their columns from the rows read before the run: a later row's tools would be lost."""
    tools = [{"type": "function", "function": {"name": "sort", "parameters": {"type": "object", "properties": {}}}}]
    rows = sort_pairs(streaming.SAMPLE_ROWS + 16, seed=3)
    rows[streaming.SAMPLE_ROWS + 5]["tools"] = tools
    data = write(tmp_path / "pairs.jsonl", rows)
    tuner = tk.Tuner(tiny_llama, method=tk.LoRA(r=4), objective=tk.DPO(), training=cpu(max_steps=40, batch_size=4))
    with pytest.raises(tk.IncompatibleError, match=rf"row {streaming.SAMPLE_ROWS + 6} lists tools.*first 64 rows"):
        tuner.fit(tk.Data(str(data), streaming=True))


def test_a_resumed_stream_still_reports_the_rows_skipped_before_its_checkpoint(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint records the rows skipped up to its position: the resumed run, which seeks past them and never
    meets them again, lists them with the ones it skips itself (FitResult.skipped_rows reads this list)."""
    from tunekit.training_data import encode_for, normalise_for

    monkeypatch.setattr(streaming, "CHUNK_ROWS", 4)  # rows read as they are needed
    rows = reverse_task(30, seed=4)
    for bad in (3, 25):
        rows[bad - 1] = {"prompt": rows[bad - 1]["prompt"], "completion": ""}
    data = tk.Data(str(write(tmp_path / "s.jsonl", rows)), streaming=True)
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=2, on_bad_rows="skip"), progress=False)

    def stream() -> Any:
        norm, _ = normalise_for(data, training=tuner.training, method=tuner.method, objective=None)
        return encode_for(tuner._spec(), norm, tuner.tokenizer)

    first = stream()
    trained = list(itertools.islice(iter(first.to_dataset()), 10))  # rows 1-11 but 3
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    state = first.checkpoint_state(trained[-1][streaming.POSITION])
    (checkpoint / streaming.STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    assert [row for row, _ in state["skipped"]] == [3]
    resumed = stream()
    assert resumed.resume(checkpoint)  # it seeks to row 11
    read = [item[streaming.POSITION][2] for item in itertools.islice(iter(resumed.to_dataset()), 17)]
    assert read[0] == 12 and 3 not in read and 25 not in read
    assert sorted({row for row, _ in resumed.skipped}) == [3, 25]
    assert dict(resumed.skipped)[3] == dict(first.skipped)[3]  # with its reason
