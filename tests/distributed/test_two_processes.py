"""The same script in two processes (torchrun, gloo on CPU): parity with one process, one writer,
resume, and a failing rank ending the job.

One torchrun per scenario (each process imports torch and transformers, ~5-10 s): the ``train``
run serves several tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tests.distributed.helpers import torchrun

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def two_processes(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("two-processes")
    proc = torchrun("train", tiny_llama, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    return {"out": out, "ranks": ranks}


@pytest.fixture(scope="module")
def one_process(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same run in one process, with the same global batch (2 x 4 = 8 examples a step)."""
    from tests.distributed import worker

    out = tmp_path_factory.mktemp("one-process")
    tuner = tk.Tuner(
        tiny_llama, method=tk.LoRA(r=4), training=worker.training(2 * worker.PER_RANK_BATCH), output_dir=out / "run"
    )
    result = tuner.fit(worker.DATA)
    tuner.save(out / "adapter")
    return {
        "out": out,
        "losses": [h["loss"] for h in result.history if "loss" in h],
        "generated": tuner.generate(worker.PROMPT, max_new_tokens=8),
    }


def _adapter(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_loss_and_weights_match_one_process_with_the_same_global_batch(two_processes, one_process):
    # transformers (through accelerate) gives each rank consecutive batches of one shuffled order:
    # rank 0 examples [0:4], rank 1 [4:8] of the permutation one process takes as [0:8], so the
    # steps see the same examples and the all-reduced gradient is the one-process gradient.
    one = one_process["losses"]
    assert len(one) == 6 and one[-1] < one[0] - 0.2  # it learned something
    for rank in two_processes["ranks"]:
        assert rank["steps"] == 6
        assert rank["losses"] == pytest.approx(one, abs=1e-4)
    two_w, one_w = _adapter(two_processes["out"] / "adapter"), _adapter(one_process["out"] / "adapter")
    assert two_w.keys() == one_w.keys() and two_w
    for key, value in one_w.items():
        assert (two_w[key] - value).abs().max().item() < 1e-4, key
    assert any(v.abs().max().item() > 1e-3 for k, v in two_w.items() if "lora_B" in k)  # trained, not the init


def test_only_rank_0_writes_and_runs_hooks(two_processes):
    rank0, rank1 = two_processes["ranks"]
    # tunekit's save and every adapter write (checkpoints 3 and 6, the save; the resumed run stops at 5
    # without one) happen on rank 0 only.
    assert rank0["writes"] == {"_write": 1, "save_pretrained": 3}
    assert rank1["writes"] == {}
    assert rank0["main_only_hook"][0] == "fit_start" and rank0["main_only_hook"][-1] == "fit_end"
    assert rank1["main_only_hook"] == []
    assert rank1["every_rank_hook"] == rank0["every_rank_hook"] == rank0["main_only_hook"]
    assert (rank0["where"], rank1["where"]) == ([0, 2], [1, 2])
    run = two_processes["out"] / "run"
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["step"] for x in lines if "loss" in json.loads(x)] == [1, 2, 3, 4, 5, 6]  # once each
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3", "checkpoint-6"]
    assert {p.name for p in (run / "checkpoint-3").glob("rng_state_*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not [p for p in two_processes["out"].iterdir() if p.name.startswith(".")]  # no stray temporary saves


def test_packed_rows_keep_their_boundaries_through_the_ddp_wrapper(two_processes):
    # Without them tunekit's varlen attention reads the boundaries back from the device in every layer.
    for rank in two_processes["ranks"]:
        assert rank["bounds"] == [True] * 6


def test_generate_and_load_after_a_distributed_fit(two_processes, one_process):
    for rank in two_processes["ranks"]:
        assert rank["generated"] == rank["generated_after_load"] == one_process["generated"]


def test_two_process_resume_continues_exactly(two_processes):
    for rank in two_processes["ranks"]:
        resumed = dict(rank["resumed_history"])
        for step in (4, 5):  # trained after the resume, from checkpoint-3
            assert resumed[step] == pytest.approx(rank["losses"][step - 1], abs=1e-6)


def test_a_stop_asked_for_on_one_rank_stops_every_rank_after_the_same_step(two_processes):
    rank0, rank1 = two_processes["ranks"]
    assert rank0["resumed_steps"] == rank1["resumed_steps"] == 5
    assert rank1["resumed_stop_reason"] == "rank 1 had enough"
    assert rank0["resumed_stop_reason"] == "rank 1 had enough (on rank 1)"


def test_a_failing_rank_ends_the_job_with_its_error(tiny_llama, tmp_path):
    # Started with `tunekit launch --nproc 2` (a real launch: the command it builds, its exit status passed on).
    start = time.time()
    proc = torchrun("crash", tiny_llama, tmp_path, timeout=180, via_launch=True)
    ended = time.time()
    assert proc.returncode != 0
    assert "rank 1 failed on purpose in forward 3" in proc.stdout + proc.stderr
    failed_at = float((tmp_path / "failed_at").read_text(encoding="utf-8"))
    assert ended - failed_at < 30, f"the job took {ended - failed_at:.1f}s to end after rank 1 failed"
    assert ended - start < 170


def test_a_write_failing_on_rank_0_alone_raises_on_every_rank_and_hangs_none(tiny_llama, one_process, tmp_path):
    # Each failure used to leave rank 1 waiting in a barrier for a rank 0 that had given up (until the
    # 30-minute collective timeout, in a script that catches the error).
    proc = torchrun("failures", tiny_llama, tmp_path, str(one_process["out"] / "adapter"), timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1))
    # tk.load(...).save(...) with no fit: rank 1 returned only once rank 0's copy was complete.
    assert rank0["copy_whole_on_return"] and rank1["copy_whole_on_return"]
    assert rank0["failed_save"].startswith("CheckpointError: ") and "disk is full" in rank0["failed_save"]
    assert rank1["failed_save"].startswith("CheckpointError: save(") and "failed on rank 0" in rank1["failed_save"]
    assert "disk is full" in rank1["failed_save"]  # rank 0's own message, passed on
    assert not (tmp_path / "failed").exists()
    assert rank0["save_after"] == rank1["save_after"] == "ok"  # the processes are still in step
    assert (tmp_path / "after" / "tunekit.json").is_file()
    assert rank0["failed_checkpoint"].startswith("CheckpointError: could not write checkpoint-3")
    assert rank1["failed_checkpoint"] == f"CheckpointError: checkpoint-3 failed on rank 0: {rank0['failed_checkpoint']}"
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    assert not (tmp_path / "run" / ".tunekit-staging").exists()
    # A write that fails inside transformers' save, before a collective of its own: rank 0 still takes part.
    assert rank0["failed_inside_transformers"].startswith("CheckpointError: could not write checkpoint-3")
    assert "disk is full" in rank0["failed_inside_transformers"]
    assert rank1["failed_inside_transformers"] == (
        f"CheckpointError: checkpoint-3 failed on rank 0: {rank0['failed_inside_transformers']}"
    )
    assert not list((tmp_path / "run-inside").glob("checkpoint-*"))
    assert not (tmp_path / "run-inside" / ".tunekit-staging").exists()  # removed once every rank had written
