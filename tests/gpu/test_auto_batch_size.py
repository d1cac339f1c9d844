"""``Training(auto_batch_size=True)`` on a real CUDA out-of-memory error: smaller micro-batch, same effective batch.

The GPU is made small on purpose: a first run measures the peak memory of a micro-batch of 2, then the
process's share of the device is capped at a few times that, so a micro-batch of 32 cannot fit.
Run with ``pytest -m gpu`` (``nox -s gpu``).
"""

from __future__ import annotations

import gc
import logging
import re

import pytest
import torch

import tunekit as tk
from tunekit.testing import reverse_task

pytestmark = pytest.mark.gpu


def long_rows(n: int) -> list[dict[str, str]]:
    return reverse_task(n, seed=11, length=(120, 160))  # a few hundred tokens each: activations dominate memory


def training(**kw):
    base = {"max_length": 384, "precision": "fp32", "device": "cuda", "learning_rate": 3e-3, "log_every": 1}
    return tk.Training(**{**base, **kw})


def test_auto_batch_size_finds_a_micro_batch_that_fits(tiny_llama, caplog):
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    rows = long_rows(64)
    probe = tk.Tuner(tiny_llama, method=tk.Full(), training=training(max_steps=1, batch_size=2, grad_accum=16))
    torch.cuda.reset_peak_memory_stats()
    probe.fit(rows)
    peak_at_2 = torch.cuda.max_memory_allocated()
    del probe
    gc.collect()
    torch.cuda.empty_cache()

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 3 * peak_at_2 / total))
    try:
        tuner = tk.Tuner(
            tiny_llama,
            method=tk.Full(),
            training=training(max_steps=12, batch_size=32, grad_accum=1, auto_batch_size=True),
        )
        with caplog.at_level(logging.WARNING, logger="tunekit"):
            result = tuner.fit(rows)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    retries = re.findall(r"retrying with batch_size=(\d+), grad_accum=(\d+) \(effective batch 32\)", caplog.text)
    assert retries, caplog.text  # batch 32 did not fit
    batch, accum = map(int, retries[-1])
    assert batch < 32 and batch * accum == 32
    assert result.steps == 12
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0]  # it trained, and learned


def test_without_auto_batch_size_the_error_is_the_users(tiny_llama):
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 64 * 2**20 / total))  # 64 MiB
    try:
        tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=training(max_steps=1, batch_size=64))
        with pytest.raises(torch.cuda.OutOfMemoryError):
            tuner.fit(long_rows(64))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
