"""Crash safety: a training process killed with SIGKILL (mid-training, mid-save) resumes as if never stopped.

Each child is ``_kill_child.py`` (a tiny LoRA run, checkpoint every 3 steps); the parent kills it,
checks the output directory is consistent, starts it again (``resume="auto"``), and compares the
losses after every resume point and the final weights with an uninterrupted run in this process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tunekit.backends.hf.checkpoints import MANIFEST, STAGING, checkpoint_dirs, verify

from . import _kill_child as child

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX-only")

SCRIPT = Path(child.__file__)


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, tmp_path_factory):
    tuner = child.build(tiny_llama, tmp_path_factory.mktemp("uninterrupted"))
    result = tuner.fit(child.data())
    losses = {h["step"]: h["loss"] for h in result.history if "loss" in h}
    weights = {k: v.detach().clone() for k, v in tuner.model.named_parameters() if v.requires_grad}
    return losses, weights


def start(model, out, losses, *extra, env=None):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(model), str(out), str(losses), *map(str, extra)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc, timeout=180.0):
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before it could be killed:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.02)


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def assert_consistent(out):
    """Every checkpoint-N in out is complete (its manifest matches its files); nothing else is visible."""
    for _step, path in checkpoint_dirs(out):
        if (path / MANIFEST).is_file():
            verify(path)
        else:  # only a directory the crashed save never renamed could lack one, and those live in staging
            raise AssertionError(f"{path} is visible without a manifest")


def logged(losses, pid):
    rows = []
    for line in losses.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line the kill cut short
            continue
    return {r["step"]: r["loss"] for r in rows if r["pid"] == pid}


def finish_and_compare(tiny_llama, tmp_path, out, losses, uninterrupted, pids, resumed_at):
    ref_losses, ref_weights = uninterrupted
    weights_file = tmp_path / "final.safetensors"
    last = start(tiny_llama, out, losses, weights_file)
    stdout, stderr = last.communicate(timeout=300)
    assert last.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == child.MAX_STEPS
    for pid, resume_step in zip([*pids[1:], last.pid], resumed_at):
        got = logged(losses, pid)
        assert min(got) == resume_step + 1, (pid, sorted(got))  # the data order went on from the checkpoint
        assert got == pytest.approx({s: ref_losses[s] for s in got}, rel=0, abs=1e-6)
    from safetensors.torch import load_file

    final = load_file(str(weights_file))
    assert final.keys() == ref_weights.keys()
    for k, v in final.items():
        torch.testing.assert_close(v, ref_weights[k], rtol=0, atol=1e-6, msg=k)
    assert_consistent(out)
    assert not (out / STAGING).exists()


def kill_during_save(tiny_llama, out, losses):
    """Killed inside the save of checkpoint-6: files staged, no manifest, not renamed."""
    proc = start(tiny_llama, out, losses, env={"TUNEKIT_TEST_PAUSE_AT": "6"})
    wait_for(lambda: (out / "paused").exists(), proc)
    kill(proc)
    (out / "paused").unlink()
    assert [p.name for _, p in checkpoint_dirs(out)] == ["checkpoint-3"]
    assert (out / STAGING / "checkpoint-6").is_dir()  # the half-written save, invisible to resume
    assert_consistent(out)
    return proc


def test_killed_during_a_save_resumes_exactly(tiny_llama, tmp_path, uninterrupted):
    out, losses = tmp_path / "run", tmp_path / "losses.jsonl"
    out.mkdir()
    first = kill_during_save(tiny_llama, out, losses)
    finish_and_compare(tiny_llama, tmp_path, out, losses, uninterrupted, [first.pid], [3])


def kill_at_random_step(tiny_llama, out, losses, rng, after):
    """Started (resuming whatever is there), killed at a random moment of a random step after ``after``."""
    proc = start(tiny_llama, out, losses)
    step = rng.randint(after + 1, child.MAX_STEPS - 2)
    wait_for(lambda: losses.exists() and max(logged(losses, proc.pid), default=0) >= step, proc)
    time.sleep(rng.uniform(0.0, 0.1))
    if proc.poll() is not None:
        pytest.skip("the child finished before the kill")
    kill(proc)
    assert_consistent(out)
    found = checkpoint_dirs(out)
    return proc, (found[0][0] if found else 0)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_killed_at_random_points_resumes_exactly(tiny_llama, tmp_path, uninterrupted, trial):
    """Killed at a random point of a random step (inside a save too, when it falls there), resumed, compared."""
    out, losses = tmp_path / "run", tmp_path / "losses.jsonl"
    out.mkdir()
    proc, resume_step = kill_at_random_step(tiny_llama, out, losses, random.Random(1000 + trial), 0)
    finish_and_compare(tiny_llama, tmp_path, out, losses, uninterrupted, [proc.pid], [resume_step])


@pytest.mark.slow
def test_killed_twice_resumes_exactly(tiny_llama, tmp_path, uninterrupted):
    """Killed inside a save, resumed, killed again at a random point, resumed to the end."""
    out, losses = tmp_path / "run", tmp_path / "losses.jsonl"
    out.mkdir()
    first = kill_during_save(tiny_llama, out, losses)
    second, resume_step = kill_at_random_step(tiny_llama, out, losses, random.Random(7), 3)
    finish_and_compare(
        tiny_llama, tmp_path, out, losses, uninterrupted, [first.pid, second.pid], [3, max(resume_step, 3)]
    )
